//! The embedding batcher: requests for one model are merged into one worker call.
//!
//! A batch is flushed when it holds `max_batch` texts, or `max_delay` after its first
//! request arrived; an interactive request that finds the model idle (no batch ended in the
//! last `max_delay`) goes at once, with whatever else is already waiting. While a batch runs, new requests queue, so under load
//! batches fill by themselves. The worker always returns raw (unnormalised) mean-pooled
//! vectors; each request's vectors are normalised here if it asked, so requests with and
//! without normalisation share batches. Results are split back by text count.
//!
//! The queue is bounded by the model's admission capacity: a request only gets here with
//! an admission ticket.

use std::sync::Arc;
use std::time::Duration;

use mlxd_proto::worker::{Job, JobOutput};
use mlxd_proto::{Embeddings, Priority, WireError};
use tokio::sync::{mpsc, oneshot};

use crate::registry::{Model, Registry};

/// How the batcher merges requests.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Most texts in one worker call; 1 disables merging (one request per call).
    pub max_batch: usize,
    pub max_delay: Duration,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy { max_batch: 64, max_delay: Duration::from_millis(2) }
    }
}

/// One request waiting for its vectors.
#[derive(Debug)]
pub struct EmbedItem {
    pub texts: Vec<String>,
    pub normalize: bool,
    pub priority: Priority,
    pub reply: oneshot::Sender<Result<Embeddings, WireError>>,
}

/// The sending side, held by the model.
#[derive(Debug, Clone)]
pub struct EmbedBatcher {
    queue: mpsc::Sender<EmbedItem>,
}

impl EmbedBatcher {
    /// Starts the batcher task for `model`. It ends when every sender is gone.
    pub fn start(model: Arc<Model>, registry: Registry, policy: BatchPolicy, capacity: usize) -> EmbedBatcher {
        let (queue, items) = mpsc::channel(capacity.max(1));
        tokio::spawn(run(model, registry, policy, items));
        EmbedBatcher { queue }
    }

    /// Queues a request; never waits long, since admission bounds how many are queued.
    pub async fn embed(&self, item: EmbedItem) -> Result<(), WireError> {
        self.queue.send(item).await.map_err(|_| WireError::internal("the embedding batcher stopped"))
    }
}

async fn run(model: Arc<Model>, registry: Registry, policy: BatchPolicy, mut items: mpsc::Receiver<EmbedItem>) {
    let mut carried: Option<EmbedItem> = None;
    // When the last batch ended: a model that finished one a moment ago is under load, and
    // the next request will likely have company within `max_delay`.
    let mut last_batch_end: Option<tokio::time::Instant> = None;
    loop {
        let first = match carried.take() {
            Some(item) => item,
            None => match items.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let mut batch = vec![first];
        let mut texts = batch[0].texts.len();
        let fits = |texts: usize, more: usize| policy.max_batch > 1 && texts + more <= policy.max_batch;
        // What is already waiting joins at once.
        while let Ok(item) = items.try_recv() {
            if !fits(texts, item.texts.len()) {
                carried = Some(item);
                break;
            }
            texts += item.texts.len();
            batch.push(item);
        }
        // Batch work, and interactive work that finds company or a model busy a moment ago,
        // waits a little for more; interactive work that finds the model idle goes now.
        let idle = last_batch_end.is_none_or(|end| end.elapsed() >= policy.max_delay);
        let alone_and_urgent = batch.len() == 1 && batch[0].priority == Priority::Interactive && idle;
        if carried.is_none() && !alone_and_urgent && policy.max_batch > 1 {
            let deadline = tokio::time::Instant::now() + policy.max_delay;
            while texts < policy.max_batch {
                match tokio::time::timeout_at(deadline, items.recv()).await {
                    Ok(Some(item)) if fits(texts, item.texts.len()) => {
                        texts += item.texts.len();
                        batch.push(item);
                    }
                    Ok(Some(item)) => {
                        carried = Some(item);
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        run_batch(&model, &registry, batch).await;
        last_batch_end = Some(tokio::time::Instant::now());
    }
}

async fn run_batch(model: &Arc<Model>, registry: &Registry, batch: Vec<EmbedItem>) {
    // Requests whose client went away are dropped before they cost anything.
    let batch: Vec<EmbedItem> = batch.into_iter().filter(|item| !item.reply.is_closed()).collect();
    if batch.is_empty() {
        return;
    }
    let texts: Vec<String> = batch.iter().flat_map(|item| item.texts.iter().cloned()).collect();
    tracing::debug!(model = %model.spec.name, requests = batch.len(), texts = texts.len(), "embedding batch");
    let started = std::time::Instant::now();
    let result = match model.ready(registry, |_| {}).await {
        Ok(worker) => worker.run(Job::Embed { texts, normalize: false }).await,
        Err(err) => Err(err),
    };
    model.admission.record_service(started.elapsed() / batch.len() as u32);
    let (dim, vectors, tokens) = match result {
        Ok(JobOutput::Embeddings { dim, vectors, tokens, .. }) => (dim as usize, vectors, tokens),
        Ok(_) => {
            return fail_all(batch, WireError::internal("worker answered an embedding batch with something else"));
        }
        Err(err) => return fail_all(batch, err),
    };
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
            model: model.spec.name.clone(),
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
