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

use mlxd_proto::{ErrorCode, ModelRef, Request, RequestId, Response, ServerMessage, WireError};
use tokio::sync::mpsc;

use super::session::{Control, Session};
use crate::registry::Model;

/// A request's final answer.
#[derive(Debug)]
pub struct Reply(pub Result<Response, WireError>);

/// Answers requests that need no task (supervisor-only facts); `None` for everything else.
pub fn answer_now(session: &Session, body: &Request) -> Option<Reply> {
    info::answer(session, body).map(Reply)
}

/// Handles a request that may wait (for a load, a queue, a worker). Stream events go to
/// `events`; the final answer is returned. A Cancel ends the request with `Cancelled`,
/// except a generation, which stops its stream and reports how far it got.
pub async fn handle(
    session: &Arc<Session>,
    id: RequestId,
    body: Request,
    events: &mpsc::Sender<ServerMessage>,
    control: &Control,
) -> Result<Response, WireError> {
    let is_stream = matches!(body, Request::Generate(_));
    let work = async {
        match body {
            Request::Generate(request) => generate::generate(session, id, request, events, control).await,
            Request::Lease(request) => lease::lease(session, id, request, events).await,
            Request::Release { lease } => session.release(lease).map(|()| Response::Released),
            Request::Load { model } => lease::load(session, id, &model, events).await,
            Request::Embed(request) => embed::embed(session, request).await,
            Request::Tokenize { model, text, add_special_tokens } => {
                embed::tokenize(session, model, text, add_special_tokens).await
            }
            Request::Detokenize { model, tokens } => embed::detokenize(session, model, tokens).await,
            Request::Unload { model, force } => lease::unload(session, &model, force).await,
            Request::Ping | Request::Status | Request::ListModels | Request::Weights => {
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

/// The model a request names, by name or by a lease of this session.
fn resolve(session: &Session, model: &ModelRef) -> Result<Arc<Model>, WireError> {
    match model {
        ModelRef::Name(name) => session.daemon.registry.get(name).cloned(),
        ModelRef::Lease(lease) => session.leased_model(*lease),
    }
}
