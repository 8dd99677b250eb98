//! The embedding batcher: requests for one model are merged into one worker call
//! (embeddings, and reranking's query/document pairs, which batch the same way).
//!
//! A batch is flushed when it holds `max_batch` texts, or `max_delay` after its first
//! request was taken. A lone interactive request goes at once when waiting could not find it
//! company: the model is idle (no batch ended in the last `max_delay`), or no other session
//! has sent the model anything lately (a single client sending one request after another
//! would otherwise wait `max_delay` every time). While a batch runs, new requests queue, so under load batches
//! fill by themselves. Entries are taken in the admission queue's order: interactive
//! before batch, sessions in turn, so a flooding client fills batches only with what the
//! others leave. The worker returns the model's own vectors (pooled, and normalised only
//! if the model's pipeline has a Normalize module); each request's vectors are
//! L2-normalised here if it asked, so requests with and without normalisation share
//! batches, as do requests with different prompts (each text carries its prompt's name).
//! Results are split back by text count. A rerank batch carries each request's query with
//! its documents; its scores are split the same way, then sorted and cut to `top_n` per
//! request.
//!
//! The queue is the model's [`crate::sched::Admission`], bounded by its capacity.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use mlxd_proto::worker::{Job, JobOutput};
use mlxd_proto::{Embeddings, RerankResult, Reranked, Response};
use mlxd_proto::{ErrorCode, Priority, WireError};

use super::{Admission, BatchItem, BatchWork};
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
            if let Some(item) = queue.pop_batch(|_| true) {
                break item;
            }
            queue.wait_queued().await;
        };
        let mut texts = first.work.len();
        let mut batch = vec![first];
        // One model has one kind, so a batch is all embeddings or all pairs; checked anyway.
        let room = |texts: usize, first: &BatchWork| {
            let rerank = first.is_rerank();
            move |item: &BatchItem| {
                policy.max_batch > 1 && item.work.is_rerank() == rerank && texts + item.work.len() <= policy.max_batch
            }
        };
        // What is already waiting joins at once.
        while let Some(item) = queue.pop_batch(room(texts, &batch[0].work)) {
            texts += item.work.len();
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
                while let Some(item) = queue.pop_batch(room(texts, &batch[0].work)) {
                    texts += item.work.len();
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

async fn run_one(queue: &Admission, metrics: &BatchMetrics, run_batch: &RunBatch, batch: Vec<BatchItem>) {
    // Requests whose client went away are dropped before they cost anything.
    let batch: Vec<BatchItem> = batch.into_iter().filter(|item| !item.reply.is_closed()).collect();
    if batch.is_empty() {
        return;
    }
    let now = tokio::time::Instant::now();
    let model = metrics.model.as_str();
    for item in &batch {
        metrics.metrics.queue_wait(model, now - item.arrived);
    }
    let rerank = batch[0].work.is_rerank();
    metrics.metrics.batch_size(model, if rerank { "rerank" } else { "embed" }, batch.len());
    let texts: usize = batch.iter().map(|item| item.work.len()).sum();
    if rerank {
        tracing::debug!(model, requests = batch.len(), pairs = texts, "rerank batch");
    } else {
        tracing::debug!(model, requests = batch.len(), texts, "embedding batch");
    }
    let job = if rerank { rerank_job(&batch) } else { embed_job(&batch) };
    let started = std::time::Instant::now();
    let result = run_batch(job).await;
    queue.record_service(started.elapsed() / batch.len() as u32);
    queue.count_batch(batch.len());
    let result = match result {
        Ok(output) => output,
        Err(err) => return fail_all(batch, err),
    };
    match (rerank, result) {
        (false, JobOutput::Embeddings { dim, vectors, tokens, .. }) => {
            split_embeddings(model, batch, dim, vectors, tokens)
        }
        (true, JobOutput::Scores { scores, tokens }) => split_scores(model, batch, scores, tokens),
        _ => fail_all(batch, WireError::internal("worker answered a batch with something else")),
    }
}

fn embed_job(batch: &[BatchItem]) -> Job {
    let mut texts = Vec::new();
    let mut prompts = Vec::new();
    for item in batch {
        if let BatchWork::Embed { texts: own, prompt, .. } = &item.work {
            texts.extend(own.iter().cloned());
            prompts.extend(std::iter::repeat_n(prompt.clone(), own.len()));
        }
    }
    Job::Embed { texts, normalize: false, prompts }
}

fn rerank_job(batch: &[BatchItem]) -> Job {
    let (queries, documents) = batch
        .iter()
        .filter_map(|item| match &item.work {
            BatchWork::Rerank { query, documents, .. } => Some((query.clone(), documents.clone())),
            BatchWork::Embed { .. } => None,
        })
        .unzip();
    Job::Rerank { queries, documents }
}

/// A worker answer of the wrong shape fails the whole batch (it says nothing about which
/// request it belonged to) and is logged: it is a worker bug.
fn wrong_shape(model: &str, batch: Vec<BatchItem>, what: String) {
    let error = WireError::new(ErrorCode::WorkerFailed, what);
    tracing::error!(model, "{}", error.message);
    fail_all(batch, error);
}

fn split_embeddings(model: &str, batch: Vec<BatchItem>, dim: u32, vectors: Vec<f32>, tokens: Vec<u32>) {
    let dim = dim as usize;
    // The answer is split by the requests' text counts: check its shape first.
    let texts: usize = batch.iter().map(|item| item.work.len()).sum();
    if (texts > 0 && dim == 0) || vectors.len() != texts * dim || tokens.len() != texts {
        let what = format!(
            "the worker answered {} values of dimension {dim} and {} token counts for a batch of {texts} texts",
            vectors.len(),
            tokens.len()
        );
        return wrong_shape(model, batch, what);
    }
    let mut offset = 0;
    for item in batch {
        let BatchWork::Embed { texts, normalize, .. } = &item.work else { continue };
        let count = texts.len();
        let mut rows = vectors[offset * dim..(offset + count) * dim].to_vec();
        if *normalize {
            for row in rows.chunks_mut(dim.max(1)) {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                row.iter_mut().for_each(|v| *v /= norm);
            }
        }
        let prompt_tokens = tokens[offset..offset + count].iter().map(|&t| u64::from(t)).sum();
        offset += count;
        let _ = item.reply.send(Ok(Response::Embeddings(Embeddings {
            model: model.to_owned(),
            count: count as u32,
            dim: dim as u32,
            vectors: rows,
            prompt_tokens,
        })));
    }
}

fn split_scores(model: &str, batch: Vec<BatchItem>, scores: Vec<f32>, tokens: Vec<u32>) {
    let pairs: usize = batch.iter().map(|item| item.work.len()).sum();
    if scores.len() != pairs || tokens.len() != pairs {
        let what = format!(
            "the worker answered {} scores and {} token counts for a batch of {pairs} pairs",
            scores.len(),
            tokens.len()
        );
        return wrong_shape(model, batch, what);
    }
    let mut offset = 0;
    for item in batch {
        let BatchWork::Rerank { documents, top_n, .. } = &item.work else { continue };
        let count = documents.len();
        let mut results: Vec<RerankResult> = scores[offset..offset + count]
            .iter()
            .enumerate()
            .map(|(index, &score)| RerankResult { index: index as u32, score })
            .collect();
        // Best first; equal scores keep document order (a stable sort); NaN (a broken
        // model) last.
        let key = |score: f32| if score.is_nan() { f32::NEG_INFINITY } else { score };
        results.sort_by(|a, b| key(b.score).total_cmp(&key(a.score)));
        if let Some(top_n) = top_n {
            results.truncate(*top_n as usize);
        }
        let prompt_tokens = tokens[offset..offset + count].iter().map(|&t| u64::from(t)).sum();
        offset += count;
        let _ = item.reply.send(Ok(Response::Reranked(Reranked { model: model.to_owned(), results, prompt_tokens })));
    }
}

fn fail_all(batch: Vec<BatchItem>, error: WireError) {
    for item in batch {
        let _ = item.reply.send(Err(error.clone()));
    }
}
