//! Client errors: the daemon's typed refusals, and what can go wrong on the way to it.

use std::path::PathBuf;

use mlxd_proto::frame::FrameError;
use mlxd_proto::{ErrorCode, WireError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon answered with a typed error (Busy, NotFound, ...).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// No daemon listens at the socket and the stdio fallback is disabled.
    #[error("no daemon at {path} ({source})")]
    NoDaemon { path: PathBuf, source: std::io::Error },
    /// The socket is served by another user than this process's, root, or a trusted uid:
    /// perhaps someone else's listener put where the daemon's socket should be. Nothing
    /// was sent to it.
    #[error(
        "refusing to talk to {path}: it is served by uid {server_uid}, not by you (uid {client_uid}) or root; \
         if that is intended, add {server_uid} to MLXD_TRUSTED_UIDS"
    )]
    UntrustedServer { path: PathBuf, server_uid: u32, client_uid: u32 },
    /// The fallback `mlxd stdio` could not be started.
    #[error("cannot start `{binary} stdio` as a fallback: {source}")]
    Fallback { binary: PathBuf, source: std::io::Error },
    /// The daemon refused the session (version mismatch, shutdown, ...).
    #[error("handshake refused: {0}")]
    Handshake(WireError),
    #[error("connection closed by the daemon")]
    Closed,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// The wire error code, if the daemon sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Wire(err) | ClientError::Handshake(err) => Some(err.code),
            _ => None,
        }
    }
}
