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
//! - [`tools`]: tool definitions, choices and calls in both APIs' JSON shapes.

mod call;
mod conn;
mod deadline;
mod error;
mod ollama;
mod openai;
mod rerank;
pub mod tcp;
mod tools;

use conn::Conn;

use std::sync::Arc;

use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;

use crate::core::{Caller, Daemon, Peer};

/// Serves HTTP on one accepted connection until the client closes it or `stop`
/// (shutdown: the request in progress finishes, then the connection closes).
pub async fn serve_connection<S>(stream: S, daemon: Arc<Daemon>, peer: Peer, stop: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = daemon.config.frame_read_timeout;
    let stream = deadline::WriteDeadline::new(stream, daemon.config.stream_pause_limit);
    if let Err(refusal) = peer.authorize(&daemon.config.access) {
        tracing::warn!(pid = ?peer.pid, uid = ?peer.uid, "HTTP connection refused: {}", refusal.message);
        let router = axum::Router::new().fallback(move || {
            let refusal = refusal.clone();
            async move { error::ApiError::from(refusal) }
        });
        // One answer, then closed, within a bounded time (as the binary protocol's refusal).
        let once = http1(stream, router, header_timeout.min(Duration::from_secs(5)), false, stop);
        let _ = tokio::time::timeout(Duration::from_secs(10), once).await;
        return;
    }
    let caller = Arc::new(Caller::new(daemon.next_session_id(), daemon.clone(), &peer));
    // Everything logged for this connection's requests carries the session id and the
    // peer's pid, as for a binary session.
    let span = tracing::info_span!("session", id = caller.id, client = "http", pid = ?peer.pid);
    let connection = async {
        tracing::debug!(uid = ?peer.uid, "HTTP connection");
        if let Err(err) = http1(stream, routes(Conn::new(caller.clone())), header_timeout, true, stop).await {
            tracing::debug!(%err, "HTTP connection ended");
        }
    };
    tracing::Instrument::instrument(connection, span).await;
    // The client is gone: whatever it still had running is cancelled now.
    caller.cancel_all();
}

/// Every endpoint, for one connection.
fn routes(conn: Conn) -> axum::Router {
    let daemon = conn.caller.daemon.clone();
    // Bodies up to the binary protocol's frame limit (axum's default is 2 MiB).
    let body_limit = daemon.config.limits.max_frame_len as usize;
    openai::routes()
        .merge(ollama::routes())
        .merge(rerank::routes())
        .route("/metrics", axum::routing::get(metrics).with_state(daemon))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(conn)
}

/// `GET /metrics`: the OpenMetrics exposition, built from what the supervisor holds (it
/// never waits on a worker).
async fn metrics(axum::extract::State(daemon): axum::extract::State<Arc<Daemon>>) -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], daemon.render_metrics())
}

/// HTTP/1.1 on `stream`: a request's headers must arrive within `header_timeout` (also
/// the longest a kept-alive connection may sit idle); at `stop` the connection finishes
/// the request in progress and closes.
async fn http1<S>(
    stream: S,
    router: axum::Router,
    header_timeout: Duration,
    keep_alive: bool,
    stop: CancellationToken,
) -> Result<(), hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(keep_alive)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}
