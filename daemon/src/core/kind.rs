//! Request families as the core sorts them: a name for metrics and logs, and which are
//! answered by the daemon itself at once (never queued, never counted against limits).
//! The one list of both.

use mlxd_proto::Request;

/// Answered from the daemon's own state at once: never waits on a model, takes no slot.
pub fn answered_at_once(body: &Request) -> bool {
    matches!(body, Request::Ping | Request::Status | Request::ListModels | Request::Weights | Request::Metrics)
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
        Request::Rerank(_) => "rerank",
        Request::Generate(_) => "generate",
        Request::Tokenize { .. } => "tokenize",
        Request::Detokenize { .. } => "detokenize",
        Request::Load { .. } => "load",
        Request::Unload { .. } => "unload",
        Request::Weights => "weights",
        Request::Metrics => "metrics",
    }
}
