//! Embed, tokenize and detokenize: checked against the session's limits, admitted to the
//! model's bounded queue (or refused with `Busy`), then run on the model's worker —
//! embeddings through the model's batcher, merged with other requests.

use std::sync::Arc;

use mlxd_proto::worker::{Job, JobOutput};
use mlxd_proto::{EmbedRequest, ErrorCode, ModelKind, ModelRef, Priority, Response, WireError};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::ticket::{resolve, Ticket};
use crate::core::caller::Caller;
use crate::sched::EmbedItem;
use crate::sched::{self, Pending};

/// Limits, the model, and a place in its queue (or `Busy`), without waiting.
pub fn admit(session: &Caller, request: &EmbedRequest) -> Result<Ticket, WireError> {
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
    let admitted = model.admission.admit(&model.spec.name, session.client(), request.priority)?;
    Ok(Ticket { model, admitted, arrived })
}

/// Queues the texts for the model's batcher and waits for their vectors (or the deadline).
pub async fn embed(session: &Arc<Caller>, request: EmbedRequest, ticket: Ticket) -> Result<Response, WireError> {
    let Ticket { model, admitted, arrived } = ticket;
    let _in_flight = model.begin_request();
    model.start_batcher(session.daemon.config.embed_batch);
    let (reply, mut answer) = oneshot::channel();
    let item = EmbedItem {
        texts: request.texts,
        normalize: request.normalize,
        priority: request.priority,
        session: session.id,
        arrived,
        reply,
    };
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

/// Tokenize and detokenize: the text limit, the model, and a place in its queue (a place,
/// not a turn: one-shot jobs are quick and run between batches).
pub fn admit_one_shot(session: &Caller, model: &ModelRef, text: Option<&String>) -> Result<Ticket, WireError> {
    let limit = session.daemon.config.limits.max_text_bytes as usize;
    if let Some(text) = text.filter(|text| text.len() > limit) {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!("text is {} bytes; max_text_bytes is {limit}", text.len()),
        ));
    }
    let model = resolve(session, model)?;
    let admitted = model.admission.admit(&model.spec.name, session.client(), Priority::Interactive)?;
    Ok(Ticket { model, admitted, arrived: Instant::now() })
}

/// The token count of a Detokenize (the decoder already refuses more on the binary
/// protocol; checked here for every front end).
pub fn check_detokenize(tokens: &[u32]) -> Result<(), WireError> {
    let max = mlxd_proto::bounds::MAX_DETOKENIZE_TOKENS as usize;
    if tokens.len() > max {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!("{} tokens in one Detokenize; at most {max} are allowed", tokens.len()),
        ));
    }
    Ok(())
}

pub async fn tokenize(ticket: Ticket, text: String, add_special_tokens: bool) -> Result<Response, WireError> {
    match run(ticket, Job::Tokenize { text, add_special_tokens }).await? {
        JobOutput::Tokens(tokens) => Ok(Response::Tokens(tokens)),
        other => Err(unexpected(&other)),
    }
}

pub async fn detokenize(ticket: Ticket, tokens: Vec<u32>) -> Result<Response, WireError> {
    match run(ticket, Job::Detokenize { tokens }).await? {
        JobOutput::Text(text) => Ok(Response::Text(text)),
        other => Err(unexpected(&other)),
    }
}

/// The model's worker (loading it if needed), then the job.
async fn run(ticket: Ticket, job: Job) -> Result<JobOutput, WireError> {
    let Ticket { model, admitted: _admitted, .. } = ticket;
    let _in_flight = model.begin_request();
    let started = Instant::now();
    let output = crate::registry::run_replayable(&model, job).await?;
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
