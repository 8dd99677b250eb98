//! The HTTP front end: OpenAI-compatible `/v1` and Ollama-compatible `/api` on the
//! daemon's own Unix socket. A
//! connection whose first byte is a capital letter (an HTTP method) is HTTP (a
//! binary-protocol client's first bytes are a Hello's length prefix, at most 64 KiB: its
//! first byte is always 0), so one socket
//! serves both, behind the same peer-credential checks and per-user limits.
//!
//! Handlers only translate: JSON in, a core call ([`crate::core`]) with a [`Caller`] for
//! the connection, JSON or server-sent events out. Admission, limits, leases and queues
//! are the core's, exactly as for the binary protocol.
//!
//! - [`openai`]: `/v1/models`, `/v1/embeddings`, `/v1/chat/completions`, `/v1/completions`.
//! - [`ollama`]: `/api/version`, `tags`, `ps`, `show`, `chat`, `generate`, `embed`, `embeddings`.
//! - [`error`]: core errors as HTTP statuses and OpenAI error objects.
//! - [`call`]: running a request through the core, collecting or streaming its events.

mod call;
mod conn;
mod error;
mod ollama;
mod openai;
pub mod tcp;

use conn::Conn;

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;

use crate::core::{Caller, Daemon, Peer};

/// Serves HTTP on one accepted connection until the client closes it or `stop` (shutdown).
pub async fn serve_connection<S>(stream: S, daemon: Arc<Daemon>, peer: Peer, stop: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if let Err(refusal) = peer.authorize(&daemon.config.access) {
        tracing::warn!(pid = ?peer.pid, uid = ?peer.uid, "HTTP connection refused: {}", refusal.message);
        let router = axum::Router::new().fallback(move || {
            let refusal = refusal.clone();
            async move { error::ApiError::from(refusal) }
        });
        let _ = http1(stream, router).await;
        return;
    }
    let caller = Arc::new(Caller::new(daemon.next_session_id(), daemon.clone(), &peer));
    let conn = Conn::new(caller.clone());
    let router = routes(conn);
    tracing::debug!(pid = ?peer.pid, uid = ?peer.uid, "HTTP connection");
    tokio::select! {
        result = http1(stream, router) => {
            if let Err(err) = result {
                tracing::debug!(%err, "HTTP connection ended");
            }
        }
        () = stop.cancelled() => {}
    }
    // The client is gone: whatever it still had running is cancelled now.
    caller.cancel_all();
}

/// Every endpoint, for one connection.
fn routes(conn: Conn) -> axum::Router {
    let daemon = conn.caller.daemon.clone();
    openai::routes()
        .merge(ollama::routes())
        .route(
            "/metrics",
            axum::routing::get(move || {
                let daemon = daemon.clone();
                async move {
                    ([(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], daemon.render_metrics())
                }
            }),
        )
        .with_state(conn)
}

async fn http1<S>(stream: S, router: axum::Router) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    auto::Builder::new(TokioExecutor::new())
        .http1_only()
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
        .await
}
