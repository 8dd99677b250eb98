//! Lease, release and load. A lease keeps its model loaded and is usable only on the
//! session that took it; load progress is streamed to the requester as events.

use std::sync::Arc;

use mlxd_proto::{Event, LeaseInfo, LeaseRequest, RequestId, Response, ServerMessage, WireError};
use tokio::sync::mpsc;

use crate::server::session::Session;

pub async fn lease(
    session: &Arc<Session>,
    id: RequestId,
    request: LeaseRequest,
    events: &mpsc::Sender<ServerMessage>,
) -> Result<Response, WireError> {
    let model = session.daemon.registry.get(&request.model)?.clone();
    // Lease first, then load: the model is held from the moment we start waiting for it.
    let guard = model.lease();
    model.ready(&session.daemon.config, progress_to(id, events)).await?;
    let lease = session.add_lease(guard)?;
    Ok(Response::Leased(LeaseInfo { lease, model: model.info() }))
}

pub async fn load(
    session: &Arc<Session>,
    id: RequestId,
    name: &str,
    events: &mpsc::Sender<ServerMessage>,
) -> Result<Response, WireError> {
    let model = session.daemon.registry.get(name)?.clone();
    model.ready(&session.daemon.config, progress_to(id, events)).await?;
    Ok(Response::Loaded(model.info()))
}

/// Forwards load progress as events. Progress is advisory: when the client's queue is
/// full an update is skipped rather than waited for (the next one supersedes it).
fn progress_to(id: RequestId, events: &mpsc::Sender<ServerMessage>) -> impl FnMut(mlxd_proto::LoadProgress) + '_ {
    move |progress| {
        let _ = events.try_send(ServerMessage::Event { id, event: Event::LoadProgress(progress) });
    }
}
