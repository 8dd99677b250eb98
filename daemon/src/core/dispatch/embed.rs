//! Embed, rerank, tokenize and detokenize: checked against the session's limits, admitted
//! to the model's bounded queue (or refused with `Busy`), then run on the model's worker —
//! embeddings and reranking through the model's batcher, merged with other requests.

use std::sync::Arc;

use mlxd_proto::worker::{Job, JobOutput};
use mlxd_proto::{EmbedRequest, ErrorCode, ModelKind, ModelRef, Priority, RerankRequest, Response, WireError};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::ticket::{resolve, Ticket};
use crate::core::caller::Caller;
use crate::sched::{self, BatchItem, BatchWork, Pending};

/// The session's limits on a batched request's texts: how many, and how long each.
fn check_texts<'a>(
    session: &Caller,
    what: &str,
    count: usize,
    texts: impl Iterator<Item = (String, &'a String)>,
) -> Result<(), WireError> {
    let limits = &session.daemon.config.limits;
    if count > limits.max_texts_per_embed as usize {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!("{count} {what} in one request; max_texts_per_embed is {}", limits.max_texts_per_embed),
        ));
    }
    for (name, text) in texts {
        if text.len() > limits.max_text_bytes as usize {
            return Err(WireError::new(
                ErrorCode::TooLarge,
                format!("{name} is {} bytes; max_text_bytes is {}", text.len(), limits.max_text_bytes),
            ));
        }
    }
    Ok(())
}

/// What an embedding request will run as, once [`admit`]ted: the prompt it resolved to.
#[derive(Debug)]
pub struct EmbedTicket {
    pub ticket: Ticket,
    pub prompt: String,
}

/// Limits, the model, its prompt, and a place in its queue (or `Busy`), without waiting.
pub fn admit(session: &Caller, request: &EmbedRequest) -> Result<EmbedTicket, WireError> {
    let texts = request.texts.iter().enumerate().map(|(index, text)| (format!("text {index}"), text));
    check_texts(session, "texts", request.texts.len(), texts)?;
    let model = resolve(session, &request.model)?;
    match model.spec.kind {
        ModelKind::Embedding => {}
        ModelKind::Rerank => {
            return Err(WireError::bad_request(format!(
                "model {} is a reranker, not an embedding model: send it Rerank requests",
                model.spec.name
            )))
        }
        ModelKind::Generation => {
            return Err(WireError::bad_request(format!("model {} is not an embedding model", model.spec.name)))
        }
    }
    // A prompt the model lacks is refused here, before it could share a batch with others.
    let prompt = model.spec.resolve_prompt(request.prompt.as_deref()).map_err(WireError::bad_request)?;
    let arrived = Instant::now();
    let admitted = model.admission.admit(&model.spec.name, session.client(), request.priority)?;
    Ok(EmbedTicket { ticket: Ticket { model, admitted, arrived }, prompt })
}

/// Limits, the model (a reranker), and a place in its queue (or `Busy`), without waiting.
pub fn admit_rerank(session: &Caller, request: &RerankRequest) -> Result<Ticket, WireError> {
    let query = std::iter::once(("the query".to_owned(), &request.query));
    let documents = request.documents.iter().enumerate().map(|(index, text)| (format!("document {index}"), text));
    check_texts(session, "documents", request.documents.len(), query.chain(documents))?;
    if request.top_n == Some(0) {
        return Err(WireError::bad_request("top_n must be at least 1 (or absent for every document)"));
    }
    let model = resolve(session, &request.model)?;
    if model.spec.kind != ModelKind::Rerank {
        return Err(WireError::bad_request(format!(
            "model {} is not a reranking model (a cross-encoder with one label)",
            model.spec.name
        )));
    }
    let arrived = Instant::now();
    let admitted = model.admission.admit(&model.spec.name, session.client(), request.priority)?;
    Ok(Ticket { model, admitted, arrived })
}

/// Queues the texts for the model's batcher and waits for their vectors (or the deadline).
pub async fn embed(session: &Arc<Caller>, request: EmbedRequest, ticket: EmbedTicket) -> Result<Response, WireError> {
    let work = BatchWork::Embed { texts: request.texts, prompt: ticket.prompt, normalize: request.normalize };
    batched(session, work, request.priority, request.deadline_ms, ticket.ticket).await
}

/// Queues the pairs for the model's batcher and waits for their scores (or the deadline).
pub async fn rerank(session: &Arc<Caller>, request: RerankRequest, ticket: Ticket) -> Result<Response, WireError> {
    let work = BatchWork::Rerank { query: request.query, documents: request.documents, top_n: request.top_n };
    batched(session, work, request.priority, request.deadline_ms, ticket).await
}

async fn batched(
    session: &Arc<Caller>,
    work: BatchWork,
    priority: Priority,
    deadline_ms: Option<u64>,
    ticket: Ticket,
) -> Result<Response, WireError> {
    let Ticket { model, admitted, arrived } = ticket;
    let _in_flight = model.begin_request();
    model.start_batcher(session.daemon.config.embed_batch);
    let (reply, mut answer) = oneshot::channel();
    let item = BatchItem { work, priority, session: session.id, arrived, reply };
    let deadline = sched::deadline(arrived, deadline_ms);
    admitted.enqueue(Pending::Batch(item), deadline);
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

fn finish(answer: Result<Result<Response, WireError>, oneshot::error::RecvError>) -> Result<Response, WireError> {
    answer.unwrap_or_else(|_| Err(WireError::internal("the batch was dropped")))
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
        JobOutput::Scores { .. } => "scores",
    };
    WireError::internal(format!("worker answered with {kind} for a different job"))
}
