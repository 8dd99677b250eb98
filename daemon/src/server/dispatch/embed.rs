//! Embed, tokenize and detokenize: checked against the session's limits, admitted to the
//! model's bounded queue (or refused with `Busy`), then run on the model's worker —
//! embeddings through the model's batcher, merged with other requests.

use std::sync::Arc;

use mlxd_proto::worker::{Job, JobOutput};
use mlxd_proto::{EmbedRequest, ErrorCode, ModelKind, ModelRef, Priority, Response, WireError};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::resolve;
use crate::registry::Model;
use crate::sched::batcher::EmbedItem;
use crate::sched::{self, Pending};
use crate::server::session::Session;

pub async fn embed(session: &Arc<Session>, request: EmbedRequest) -> Result<Response, WireError> {
    let limits = &session.daemon.config.limits;
    if request.texts.len() > limits.max_texts_per_embed as usize {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!(
                "{} texts in one request; max_texts_per_embed is {}",
                request.texts.len(),
                limits.max_texts_per_embed
            ),
        ));
    }
    if let Some((index, text)) =
        request.texts.iter().enumerate().find(|(_, t)| t.len() > limits.max_text_bytes as usize)
    {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!("text {index} is {} bytes; max_text_bytes is {}", text.len(), limits.max_text_bytes),
        ));
    }
    let model = resolve(session, &request.model)?;
    if model.spec.kind != ModelKind::Embedding {
        return Err(WireError::bad_request(format!("model {} is not an embedding model", model.spec.name)));
    }
    let arrived = Instant::now();
    let admitted = model.admission.admit(&model.spec.name, session.id, request.priority)?;
    let _in_flight = model.begin_request();
    model.start_batcher(&session.daemon.registry);
    let (reply, mut answer) = oneshot::channel();
    let item = EmbedItem { texts: request.texts, normalize: request.normalize, priority: request.priority, reply };
    let deadline = sched::deadline(arrived, request.deadline_ms);
    admitted.enqueue(Pending::Embed(item), deadline);
    if let Some(deadline) = deadline {
        if let Ok(answer) = tokio::time::timeout_at(deadline, &mut answer).await {
            return finish(answer);
        }
        if let Some(timeout) = admitted.expire() {
            return Err(timeout);
        }
    }
    finish(answer.await)
}

fn finish(
    answer: Result<Result<mlxd_proto::Embeddings, WireError>, oneshot::error::RecvError>,
) -> Result<Response, WireError> {
    let embeddings = answer.unwrap_or_else(|_| Err(WireError::internal("the embedding batch was dropped")))?;
    Ok(Response::Embeddings(embeddings))
}

pub async fn tokenize(
    session: &Arc<Session>,
    model: ModelRef,
    text: String,
    add_special_tokens: bool,
) -> Result<Response, WireError> {
    let limit = session.daemon.config.limits.max_text_bytes as usize;
    if text.len() > limit {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!("text is {} bytes; max_text_bytes is {limit}", text.len()),
        ));
    }
    let model = resolve(session, &model)?;
    match run(session, &model, Job::Tokenize { text, add_special_tokens }).await? {
        JobOutput::Tokens(tokens) => Ok(Response::Tokens(tokens)),
        other => Err(unexpected(&other)),
    }
}

pub async fn detokenize(session: &Arc<Session>, model: ModelRef, tokens: Vec<u32>) -> Result<Response, WireError> {
    let model = resolve(session, &model)?;
    match run(session, &model, Job::Detokenize { tokens }).await? {
        JobOutput::Text(text) => Ok(Response::Text(text)),
        other => Err(unexpected(&other)),
    }
}

/// Admission (a place, not a turn: one-shot jobs are quick and run between batches), then
/// the model's worker (loading it if needed), then the job.
async fn run(session: &Arc<Session>, model: &Arc<Model>, job: Job) -> Result<JobOutput, WireError> {
    let _admitted = model.admission.admit(&model.spec.name, session.id, Priority::Interactive)?;
    let registry = &session.daemon.registry;
    let _in_flight = model.begin_request();
    let worker = model.ready(registry, |_| {}).await?;
    let started = Instant::now();
    let output = worker.run(job).await?;
    model.admission.record_service(started.elapsed());
    Ok(output)
}

fn unexpected(output: &JobOutput) -> WireError {
    let kind = match output {
        JobOutput::Embeddings { .. } => "embeddings",
        JobOutput::Tokens(_) => "tokens",
        JobOutput::Text(_) => "text",
        JobOutput::Generated(_) => "a generation summary",
    };
    WireError::internal(format!("worker answered with {kind} for a different job"))
}
