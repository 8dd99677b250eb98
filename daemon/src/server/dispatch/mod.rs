//! Request dispatch: one module per request family.
//!
//! - [`info`]: ping, status, list models — answered by the supervisor at once, never
//!   waiting on a worker.
//! - [`lease`]: lease, release, load.
//! - [`embed`]: embed, tokenize, detokenize — admitted to the model's bounded queue, then
//!   run on its worker.
//! - [`generate`]: generation streams, with credit-based flow control and cancellation.

mod embed;
mod generate;
mod info;
mod lease;

use std::sync::Arc;

use mlxd_proto::worker::GenerateJob;
use mlxd_proto::{ErrorCode, ModelRef, Request, RequestId, Response, ServerMessage, WireError};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::session::{Control, Session};
use crate::registry::Model;
use crate::sched::Admitted;

/// A request's final answer.
#[derive(Debug)]
pub struct Reply(pub Result<Response, WireError>);

/// Answers requests that need no task (supervisor-only facts); `None` for everything else.
pub fn answer_now(session: &Session, body: &Request) -> Option<Reply> {
    info::answer(session, body).map(Reply)
}

/// A place in a model's queue, taken in the session's read loop before the request's task
/// starts, so that a refusal (a limit, an unknown model, `Busy`) is answered at once.
#[derive(Debug)]
pub struct Ticket {
    model: Arc<Model>,
    admitted: Admitted,
    arrived: Instant,
}

/// What [`admit`] prepared for a request's task.
#[derive(Debug)]
pub enum Prepared {
    /// Requests that queue nowhere (leases, loads, ...).
    None,
    Embed(Ticket),
    /// Tokenize and detokenize: a place, not a turn.
    OneShot(Ticket),
    Generate(Ticket, GenerateJob),
}

/// Checks a model request against the limits and admits it to its model's queue, without
/// waiting; an `Err` is the request's final answer.
pub fn admit(session: &Session, body: &Request) -> Result<Prepared, WireError> {
    match body {
        Request::Embed(request) => embed::admit(session, request).map(Prepared::Embed),
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
    session: &Arc<Session>,
    id: RequestId,
    body: Request,
    prepared: Prepared,
    events: &mpsc::Sender<ServerMessage>,
    control: &Control,
) -> Result<Response, WireError> {
    let is_stream = matches!(body, Request::Generate(_));
    let work = async {
        match (body, prepared) {
            (Request::Generate(request), Prepared::Generate(ticket, job)) => {
                generate::generate(session, id, request, ticket, job, events, control).await
            }
            (Request::Embed(request), Prepared::Embed(ticket)) => embed::embed(session, request, ticket).await,
            (Request::Tokenize { text, add_special_tokens, .. }, Prepared::OneShot(ticket)) => {
                embed::tokenize(session, ticket, text, add_special_tokens).await
            }
            (Request::Detokenize { tokens, .. }, Prepared::OneShot(ticket)) => {
                embed::detokenize(session, ticket, tokens).await
            }
            (Request::Generate(_) | Request::Embed(_) | Request::Tokenize { .. } | Request::Detokenize { .. }, _) => {
                Err(WireError::internal("a model request reached its task without admission"))
            }
            (Request::Lease(request), _) => lease::lease(session, id, request, events).await,
            (Request::Release { lease }, _) => session.release(lease).map(|()| Response::Released),
            (Request::Load { model }, _) => lease::load(session, id, &model, events).await,
            (Request::Unload { model, force }, _) => lease::unload(session, &model, force).await,
            (Request::Ping | Request::Status | Request::ListModels | Request::Weights | Request::Metrics, _) => {
                Err(WireError::internal("supervisor request reached a request task"))
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

/// A request's kind, for metrics and logs.
pub fn kind(body: &Request) -> &'static str {
    match body {
        Request::Ping => "ping",
        Request::Status => "status",
        Request::ListModels => "list_models",
        Request::Lease(_) => "lease",
        Request::Release { .. } => "release",
        Request::Embed(_) => "embed",
        Request::Generate(_) => "generate",
        Request::Tokenize { .. } => "tokenize",
        Request::Detokenize { .. } => "detokenize",
        Request::Load { .. } => "load",
        Request::Unload { .. } => "unload",
        Request::Weights => "weights",
        Request::Metrics => "metrics",
    }
}

/// The model a request is for, as a metrics label: a known model's name, else "-".
pub fn model_label(session: &Session, body: &Request) -> String {
    let registry = &session.daemon.registry;
    let by_ref = |model: &ModelRef| match model {
        ModelRef::Name(name) => registry.metric_label(name),
        ModelRef::Lease(lease) => {
            session.leased_model(*lease).map_or_else(|_| crate::metrics::NO_MODEL.to_owned(), |m| m.spec.name.clone())
        }
    };
    match body {
        Request::Embed(request) => by_ref(&request.model),
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

/// The model a request names, by name or by a lease of this session.
fn resolve(session: &Session, model: &ModelRef) -> Result<Arc<Model>, WireError> {
    match model {
        ModelRef::Name(name) => session.daemon.registry.get(name).cloned(),
        ModelRef::Lease(lease) => session.leased_model(*lease),
    }
}
