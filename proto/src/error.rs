//! Typed errors that travel on the wire: a machine-readable code, a human message and,
//! for refusals that are worth retrying, how long to wait.

use serde::{Deserialize, Serialize};

/// What went wrong, for programs. Appended only: the index is the wire encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request is malformed or its parameters are out of range. Since v1.
    BadRequest,
    /// The named model or the referenced request/lease does not exist. Since v1.
    NotFound,
    /// The model's queue is full; retry after `retry_after_ms`. Since v1.
    Busy,
    /// The model is still loading and the request did not ask to wait. Since v1.
    Loading,
    /// The worker serving the model failed while handling the request. Since v1.
    WorkerFailed,
    /// The request was cancelled by its client. Since v1.
    Cancelled,
    /// The peer is not allowed to use this daemon or this handle. Since v1.
    Unauthorized,
    /// A frame, text, batch or prompt exceeds a limit named in the message. Since v1.
    TooLarge,
    /// The daemon is shutting down and takes no new work. Since v1.
    Shutdown,
    /// A bug or an unexpected condition in the daemon. Since v1.
    Internal,
    /// The client speaks a protocol version this daemon does not. Since v1.
    VersionMismatch,
    /// The request family exists in the protocol but this daemon does not serve it yet. Since v1.
    NotImplemented,
    /// A lease handle that is unknown on this session (never issued here, or released). Since v1.
    InvalidLease,
    /// A deadline passed before the request reached the model. Since v1.
    Timeout,
    /// Loading the model would exceed the memory budget and nothing can be evicted. Since v1.
    OutOfMemory,
    /// The model cannot serve the request as asked (e.g. a chat prompt for a model without
    /// a chat template); the message says what it can do instead. Since v3.
    Unsupported,
}

impl ErrorCode {
    /// Stable lowercase name, for logs and human output (`busy: ...`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Busy => "busy",
            ErrorCode::Loading => "loading",
            ErrorCode::WorkerFailed => "worker_failed",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Shutdown => "shutdown",
            ErrorCode::Internal => "internal",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::NotImplemented => "not_implemented",
            ErrorCode::InvalidLease => "invalid_lease",
            ErrorCode::Timeout => "timeout",
            ErrorCode::OutOfMemory => "out_of_memory",
            ErrorCode::Unsupported => "unsupported",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An expected failure, carried as data to the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
    /// For `Busy` (and other transient refusals): when a retry is likely to be admitted.
    pub retry_after_ms: Option<u64>,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError { code, message: message.into(), retry_after_ms: None }
    }

    pub fn with_retry_after(mut self, retry_after_ms: u64) -> Self {
        self.retry_after_ms = Some(retry_after_ms);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}
