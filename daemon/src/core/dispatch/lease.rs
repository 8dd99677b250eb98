//! Lease, release and load. A lease keeps its model loaded and is usable only on the
//! session that took it; load progress is streamed to the requester as events.

use std::sync::Arc;

use mlxd_proto::{Event, LeaseInfo, LeaseRequest, Response, WireError};

use crate::core::caller::Caller;
use crate::core::events::EventSink;
use crate::spec::KeepAlive;

pub async fn lease(
    session: &Arc<Caller>,
    request: LeaseRequest,
    events: &impl EventSink,
) -> Result<Response, WireError> {
    let registry = &session.daemon.registry;
    let model = registry.get(&request.model)?.clone();
    if request.keep_alive_ms.is_some() && !session.operator {
        return Err(operator_only(
            "choosing a lease's keep-alive",
            "it decides how long the model stays loaded for everyone; leave keep_alive_ms unset",
        ));
    }
    // Lease first, then load: the model is held from the moment we start waiting for it.
    let guard = model.lease(request.keep_alive_ms.map(KeepAlive::from_millis));
    model.ready(progress_to(events)).await?;
    let lease = session.add_lease(guard)?;
    Ok(Response::Leased(LeaseInfo { lease, model: model.info() }))
}

pub async fn load(session: &Arc<Caller>, name: &str, events: &impl EventSink) -> Result<Response, WireError> {
    let registry = &session.daemon.registry;
    let model = registry.get(name)?.clone();
    // Held as a request while loading, so it cannot be unloaded before it is reported.
    let _loading = model.begin_request();
    // An operator's load tries a model whose circuit is open again now; anyone else's
    // waits for the circuit like any request.
    if session.operator {
        model.reset_health();
    }
    model.ready(progress_to(events)).await?;
    Ok(Response::Loaded(model.info()))
}

pub async fn unload(session: &Arc<Caller>, name: &str, force: bool) -> Result<Response, WireError> {
    if !session.operator {
        return Err(operator_only(
            "unloading a model",
            "other sessions may be using it, and a forced unload revokes their leases",
        ));
    }
    let registry = &session.daemon.registry;
    let model = registry.get(name)?.clone();
    model.unload(force).await?;
    Ok(Response::Unloaded(model.info()))
}

/// Forwards load progress as events. Progress is advisory: when the client's queue is
/// full an update is skipped rather than waited for (the next one supersedes it).
fn progress_to(events: &impl EventSink) -> impl FnMut(mlxd_proto::LoadProgress) + '_ {
    move |progress| events.offer(Event::LoadProgress(progress))
}

/// The refusal of an operator action to a peer that is not an operator.
fn operator_only(action: &str, why: &str) -> WireError {
    WireError::new(
        mlxd_proto::ErrorCode::Unauthorized,
        format!(
            "{action} is an operator action ({why}); only the daemon's own user, root and members of an \
             --admin-group may"
        ),
    )
}
