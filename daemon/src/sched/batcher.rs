//! The embedding batcher: requests for one model are merged into one worker call.
//!
//! A batch is flushed when it holds `max_batch` texts, or `max_delay` after its first
//! request was taken. A lone interactive request goes at once when waiting could not find it
//! company: the model is idle (no batch ended in the last `max_delay`), or no other session
//! has sent the model anything lately (a single client sending one request after another
//! would otherwise wait `max_delay` every time). While a batch runs, new requests queue, so under load batches
//! fill by themselves. Entries are taken in the admission queue's order: interactive
//! before batch, sessions in turn, so a flooding client fills batches only with what the
//! others leave. The worker always returns raw (unnormalised) mean-pooled
//! vectors; each request's vectors are normalised here if it asked, so requests with and
//! without normalisation share batches. Results are split back by text count.
//!
//! The queue is the model's [`crate::sched::Admission`], bounded by its capacity.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use mlxd_proto::worker::{Job, JobOutput};
use mlxd_proto::Embeddings;
use mlxd_proto::{ErrorCode, Priority, WireError};

use super::{Admission, EmbedItem};
use crate::config::BatchPolicy;
use crate::metrics::Metrics;
use crate::tasks::Tasks;

/// Runs one merged batch on the model's worker: the batcher decides batches, its owner
/// (the model) runs them.
pub type RunBatch = Arc<dyn Fn(Job) -> BoxFuture<'static, Result<JobOutput, WireError>> + Send + Sync>;

/// Where the batcher records queue waits and batch sizes.
#[derive(Debug, Clone)]
pub struct BatchMetrics {
    pub model: String,
    pub metrics: Arc<Metrics>,
}

/// How far back "another client sent something" counts.
const RECENT: Duration = Duration::from_millis(250);

/// Starts the batcher task for `model`: it takes entries from the model's admission queue
/// (interactive first, sessions in turn) and runs them in batches, for as long as the
/// daemon runs — restarted by the registry's task owner should it ever panic.
pub fn start(tasks: &Tasks, queue: Arc<Admission>, metrics: BatchMetrics, policy: BatchPolicy, run_batch: RunBatch) {
    tasks.spawn_service("embedding batcher", move || run(queue.clone(), metrics.clone(), policy, run_batch.clone()));
}

async fn run(queue: Arc<Admission>, metrics: BatchMetrics, policy: BatchPolicy, run_batch: RunBatch) {
    // When the last batch ended: a model that finished one a moment ago is under load, and
    // the next request will likely have company within `max_delay`...
    let mut last_batch_end: Option<tokio::time::Instant> = None;
    // ... if more than one client is sending: the sessions of recent requests, newest last.
    let mut recent: std::collections::VecDeque<(tokio::time::Instant, u64)> = std::collections::VecDeque::new();
    loop {
        let first = loop {
            if let Some(item) = queue.pop_embed(|_| true) {
                break item;
            }
            queue.wait_queued().await;
        };
        let mut texts = first.texts.len();
        let mut batch = vec![first];
        let room =
            |texts: usize| move |item: &EmbedItem| policy.max_batch > 1 && texts + item.texts.len() <= policy.max_batch;
        // What is already waiting joins at once.
        while let Some(item) = queue.pop_embed(room(texts)) {
            texts += item.texts.len();
            batch.push(item);
        }
        // Work that finds company or a model busy a moment ago waits a little for more;
        // a lone interactive request that finds the model idle, or no other client about,
        // goes now.
        let now = tokio::time::Instant::now();
        while recent.front().is_some_and(|(at, _)| now - *at > RECENT) || recent.len() > 64 {
            recent.pop_front();
        }
        let others_active = recent.iter().any(|(_, session)| *session != batch[0].session);
        let idle = last_batch_end.is_none_or(|end| end.elapsed() >= policy.max_delay);
        let alone_on_idle_model =
            batch.len() == 1 && batch[0].priority == Priority::Interactive && (idle || !others_active);
        if !alone_on_idle_model && policy.max_batch > 1 && texts < policy.max_batch {
            let deadline = tokio::time::Instant::now() + policy.max_delay;
            while texts < policy.max_batch {
                if tokio::time::timeout_at(deadline, queue.wait_queued()).await.is_err() {
                    break;
                }
                let before = batch.len();
                while let Some(item) = queue.pop_embed(room(texts)) {
                    texts += item.texts.len();
                    batch.push(item);
                }
                if batch.len() == before && queue.queued() > 0 {
                    break; // the next entry does not fit: run what we have
                }
            }
        }
        recent.extend(batch.iter().map(|item| (now, item.session)));
        run_one(&queue, &metrics, &run_batch, batch).await;
        last_batch_end = Some(tokio::time::Instant::now());
    }
}

async fn run_one(queue: &Admission, metrics: &BatchMetrics, run_batch: &RunBatch, batch: Vec<EmbedItem>) {
    // Requests whose client went away are dropped before they cost anything.
    let batch: Vec<EmbedItem> = batch.into_iter().filter(|item| !item.reply.is_closed()).collect();
    if batch.is_empty() {
        return;
    }
    let texts: Vec<String> = batch.iter().flat_map(|item| item.texts.iter().cloned()).collect();
    let now = tokio::time::Instant::now();
    let model = metrics.model.as_str();
    for item in &batch {
        metrics.metrics.queue_wait(model, now - item.arrived);
    }
    metrics.metrics.batch_size(model, "embed", batch.len());
    tracing::debug!(model, requests = batch.len(), texts = texts.len(), "embedding batch");
    let started = std::time::Instant::now();
    let result = run_batch(Job::Embed { texts, normalize: false }).await;
    queue.record_service(started.elapsed() / batch.len() as u32);
    queue.count_batch(batch.len());
    let (dim, vectors, tokens) = match result {
        Ok(JobOutput::Embeddings { dim, vectors, tokens, .. }) => (dim as usize, vectors, tokens),
        Ok(_) => {
            return fail_all(batch, WireError::internal("worker answered an embedding batch with something else"));
        }
        Err(err) => return fail_all(batch, err),
    };
    // The answer is split by the requests' text counts: check its shape first.
    let texts: usize = batch.iter().map(|item| item.texts.len()).sum();
    if (texts > 0 && dim == 0) || vectors.len() != texts * dim || tokens.len() != texts {
        let error = WireError::new(
            ErrorCode::WorkerFailed,
            format!(
                "the worker answered {} values of dimension {dim} and {} token counts for a batch of {texts} texts",
                vectors.len(),
                tokens.len()
            ),
        );
        tracing::error!(model, "{}", error.message);
        return fail_all(batch, error);
    }
    let mut offset = 0;
    for item in batch {
        let count = item.texts.len();
        let mut rows = vectors[offset * dim..(offset + count) * dim].to_vec();
        if item.normalize {
            for row in rows.chunks_mut(dim.max(1)) {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                row.iter_mut().for_each(|v| *v /= norm);
            }
        }
        let prompt_tokens = tokens[offset..offset + count].iter().map(|&t| u64::from(t)).sum();
        offset += count;
        let _ = item.reply.send(Ok(Embeddings {
            model: model.to_owned(),
            count: count as u32,
            dim: dim as u32,
            vectors: rows,
            prompt_tokens,
        }));
    }
}

fn fail_all(batch: Vec<EmbedItem>, error: WireError) {
    for item in batch {
        let _ = item.reply.send(Err(error.clone()));
    }
}
