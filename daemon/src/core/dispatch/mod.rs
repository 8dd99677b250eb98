//! Request dispatch: one module per request family.
//!
//! - [`info`]: ping, status, list models — answered by the supervisor at once, never
//!   waiting on a worker.
//! - [`lease`]: lease, release, load.
//! - [`embed`]: embed, rerank, tokenize, detokenize — admitted to the model's bounded
//!   queue, then run on its worker (embed and rerank in batches).
//! - [`generate`]: generation streams, with credit-based flow control and cancellation.

mod embed;
mod generate;
mod info;
mod lease;
mod ticket;

use std::sync::Arc;

use mlxd_proto::worker::GenerateJob;
use mlxd_proto::{ErrorCode, ModelRef, Request, RequestId, Response, WireError};

use crate::core::caller::Caller;
use crate::core::events::EventSink;
use crate::core::flow::Control;
pub use ticket::Ticket;

/// Answers requests that need no task (supervisor-only facts); `None` for everything else.
pub fn answer_now(session: &Caller, body: &Request) -> Option<Result<Response, WireError>> {
    info::answer(session, body)
}

/// What [`admit`] prepared for a request's task.
#[derive(Debug)]
pub enum Prepared {
    /// Requests that queue nowhere (leases, loads, ...).
    None,
    Embed(embed::EmbedTicket),
    Rerank(Ticket),
    /// Tokenize and detokenize: a place, not a turn.
    OneShot(Ticket),
    Generate(Ticket, GenerateJob),
}

/// Checks a model request against the limits and admits it to its model's queue, without
/// waiting; an `Err` is the request's final answer.
pub fn admit(session: &Caller, body: &Request) -> Result<Prepared, WireError> {
    match body {
        Request::Embed(request) => embed::admit(session, request).map(Prepared::Embed),
        Request::Rerank(request) => embed::admit_rerank(session, request).map(Prepared::Rerank),
        Request::Tokenize { model, text, .. } => {
            embed::admit_one_shot(session, model, Some(text)).map(Prepared::OneShot)
        }
        Request::Detokenize { model, tokens } => {
            embed::check_detokenize(tokens)?;
            embed::admit_one_shot(session, model, None).map(Prepared::OneShot)
        }
        Request::Generate(request) => generate::admit(session, request).map(|(t, job)| Prepared::Generate(t, job)),
        _ => Ok(Prepared::None),
    }
}

/// Handles a request that may wait (for a load, a queue, a worker), with what [`admit`]
/// prepared for it. Stream events go to `events`; the final answer is returned. A Cancel
/// ends the request with `Cancelled`, except a generation, which stops its stream and
/// reports how far it got.
pub async fn handle(
    session: &Arc<Caller>,
    id: RequestId,
    body: Request,
    prepared: Prepared,
    events: &impl EventSink,
    control: &Control,
) -> Result<Response, WireError> {
    let is_stream = matches!(body, Request::Generate(_));
    let work = async {
        match (body, prepared) {
            (Request::Generate(request), Prepared::Generate(ticket, job)) => {
                generate::generate(session, id, request, ticket, job, events, control).await
            }
            (Request::Embed(request), Prepared::Embed(ticket)) => embed::embed(session, request, ticket).await,
            (Request::Rerank(request), Prepared::Rerank(ticket)) => embed::rerank(session, request, ticket).await,
            (Request::Tokenize { text, add_special_tokens, .. }, Prepared::OneShot(ticket)) => {
                embed::tokenize(ticket, text, add_special_tokens).await
            }
            (Request::Detokenize { tokens, .. }, Prepared::OneShot(ticket)) => embed::detokenize(ticket, tokens).await,
            (
                Request::Generate(_)
                | Request::Embed(_)
                | Request::Rerank(_)
                | Request::Tokenize { .. }
                | Request::Detokenize { .. },
                _,
            ) => Err(WireError::internal("a model request reached its task without admission")),
            (Request::Lease(request), _) => lease::lease(session, request, events).await,
            (Request::Release { lease }, _) => session.release(lease).map(|()| Response::Released),
            (Request::Load { model }, _) => lease::load(session, &model, events).await,
            (Request::Unload { model, force }, _) => lease::unload(session, &model, force).await,
            (Request::Ping | Request::Status | Request::ListModels | Request::Weights | Request::Metrics, _) => {
                Err(WireError::internal("a request answered at once reached a request task"))
            }
        }
    };
    if is_stream {
        return work.await;
    }
    tokio::select! {
        result = work => result,
        () = control.cancel.cancelled() => Err(WireError::new(ErrorCode::Cancelled, format!("request {id} cancelled"))),
    }
}

/// The model a request is for, as a metrics label: a known model's name, else "-".
pub fn model_label(session: &Caller, body: &Request) -> String {
    let registry = &session.daemon.registry;
    let by_ref = |model: &ModelRef| match model {
        ModelRef::Name(name) => registry.metric_label(name),
        ModelRef::Lease(lease) => {
            session.leased_model(*lease).map_or_else(|_| crate::metrics::NO_MODEL.to_owned(), |m| m.spec.name.clone())
        }
    };
    match body {
        Request::Embed(request) => by_ref(&request.model),
        Request::Rerank(request) => by_ref(&request.model),
        Request::Generate(request) => by_ref(&request.model),
        Request::Tokenize { model, .. } | Request::Detokenize { model, .. } => by_ref(model),
        Request::Lease(request) => registry.metric_label(&request.model),
        Request::Load { model } | Request::Unload { model, .. } => registry.metric_label(model),
        Request::Release { lease } => by_ref(&ModelRef::Lease(*lease)),
        Request::Ping | Request::Status | Request::ListModels | Request::Weights | Request::Metrics => {
            crate::metrics::NO_MODEL.to_owned()
        }
    }
}
