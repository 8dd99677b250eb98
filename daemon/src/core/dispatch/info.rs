//! Ping, status, metrics and the model list: facts the supervisor holds, answered without a task
//! and without waiting on any worker, so they stay fast however busy the models are.

use std::sync::atomic::Ordering;

use mlxd_proto::{DaemonStatus, Request, Response, WireError, PROTOCOL_VERSION};

use crate::core::caller::Caller;

pub fn answer(session: &Caller, body: &Request) -> Option<Result<Response, WireError>> {
    let daemon = &session.daemon;
    let response = match body {
        Request::Ping => Response::Pong,
        Request::ListModels => Response::Models(daemon.registry.infos()),
        Request::Weights => Response::Weights(daemon.registry.weights()),
        Request::Metrics => Response::Metrics(daemon.render_metrics()),
        Request::Status => Response::Status(DaemonStatus {
            daemon_version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: PROTOCOL_VERSION,
            pid: std::process::id(),
            uptime_ms: daemon.started.elapsed().as_millis() as u64,
            endpoint: daemon.endpoint.clone(),
            sessions: daemon.sessions.load(Ordering::Relaxed),
            models: daemon.registry.infos(),
        }),
        _ => return None,
    };
    Some(Ok(response))
}
