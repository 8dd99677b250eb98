//! Embed, tokenize and detokenize: checked against the session's limits, admitted to the
//! model's bounded queue (or refused with `Busy`), then run on the model's worker —
//! embeddings through the model's batcher, merged with other requests.

use std::sync::Arc;
use std::time::Instant;

use mlxd_proto::worker::{Job, JobOutput};
use mlxd_proto::{EmbedRequest, ErrorCode, ModelKind, ModelRef, Response, WireError};
use tokio::sync::oneshot;

use super::resolve;
use crate::registry::Model;
use crate::sched::batcher::EmbedItem;
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
    let registry = &session.daemon.registry;
    let _ticket = model.admission.try_admit(&model.spec.name)?;
    let _in_flight = model.begin_request();
    let (reply, answer) = oneshot::channel();
    let item = EmbedItem { texts: request.texts, normalize: request.normalize, priority: request.priority, reply };
    model.batcher(registry).embed(item).await?;
    let embeddings = answer.await.unwrap_or_else(|_| Err(WireError::internal("the embedding batch was dropped")))?;
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

/// Admission, then the model's worker (loading it if needed), then the job.
async fn run(session: &Arc<Session>, model: &Arc<Model>, job: Job) -> Result<JobOutput, WireError> {
    let _ticket = model.admission.try_admit(&model.spec.name)?;
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
