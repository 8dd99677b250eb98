//! The HTTP API on a TCP address (`--http ADDR`), for clients that cannot use a Unix socket.
//! TCP carries no peer credentials, so a bearer token stands in for them (a file the
//! daemon creates 0600 on first start; `mlxd token` prints it), and every request's Host
//! and Origin must be this machine's, so a web page cannot reach the API through the
//! browser (DNS rebinding, cross-origin requests). All TCP clients are one caller
//! identity for fairness and the prompt cache, and never an operator.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::extract::Request;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mlxd_proto::{ErrorCode, WireError};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::Conn;
use super::error::ApiError;
use crate::config::HttpTcp;
use crate::core::{Caller, Daemon, Peer};

/// Where the token lives: in the daemon's store, readable by the daemon's user only.
pub fn token_path(store: &Path) -> PathBuf {
    store.join("http-token")
}

/// The token, created (0600, random) if there is none yet. A token file that others could
/// read or that is not the daemon user's is refused.
pub fn load_or_create_token(path: &Path) -> Result<String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut file) => {
            let token: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
            file.write_all(token.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
            return Ok(token);
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err).with_context(|| format!("creating {}", path.display())),
    }
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.file_type().is_file() || meta.uid() != me || meta.mode() & 0o077 != 0 {
        bail!(
            "{}: the HTTP token file must be a regular file of uid {me} with mode 0600 (it is uid {}, mode {:o})",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    let token = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(token.trim().to_owned())
}

/// Binds a TCP address for `what` (before the daemon reports ready, so a bad address
/// fails the start rather than a later request).
pub async fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("binding {what} to {addr}"))
}

/// Serves the HTTP API on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    daemon: Arc<Daemon>,
    http: HttpTcp,
    token: Option<String>,
    stop: CancellationToken,
) {
    let local = listener.local_addr().map_or_else(|_| http.addr.to_string(), |a| a.to_string());
    tracing::info!(addr = %local, auth = http.auth, "serving the HTTP API on TCP");
    let guard = Arc::new(Guard { token, loopback_only: http.addr.ip().is_loopback() });
    let max = daemon.config.max_connections;
    accept_loop(listener, daemon, max, stop, move |daemon| {
        // One caller identity for every TCP client: no credentials tell them apart.
        let caller = Arc::new(Caller::new(daemon.next_session_id(), daemon.clone(), &Peer::default()));
        (guard.clone().layer(super::routes(Conn::new(caller.clone()))), true, Some(caller))
    })
    .await;
}

/// Serves `/metrics` alone on `--metrics-addr` (for a Prometheus that cannot reach the
/// API's listeners): the same HTTP stack, Host and Origin checks, no token (scrapers
/// rarely carry one; the address is loopback unless `--metrics-allow-remote`), one
/// request per connection.
pub async fn serve_metrics(listener: TcpListener, daemon: Arc<Daemon>, stop: CancellationToken) {
    let loopback_only = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving metrics over HTTP at /metrics");
    }
    let guard = Arc::new(Guard { token: None, loopback_only });
    accept_loop(listener, daemon, METRICS_CONNECTIONS, stop, move |daemon| {
        let router = axum::Router::new()
            .route("/metrics", axum::routing::get(super::metrics))
            .route("/", axum::routing::get(|| async { "mlxd: metrics at /metrics\n" }))
            .with_state(daemon.clone());
        (guard.clone().layer(router), false, None)
    })
    .await;
}

/// Scrapes need few connections; the API's limit is for clients.
const METRICS_CONNECTIONS: usize = 16;

/// Accepts connections (at most `max` at once) until `stop`, serving each with the router
/// `connection` makes for it, whose caller (if any) is cancelled when the connection ends;
/// then waits for the open connections to finish what they are doing.
async fn accept_loop(
    listener: TcpListener,
    daemon: Arc<Daemon>,
    max: usize,
    stop: CancellationToken,
    connection: impl Fn(&Arc<Daemon>) -> (axum::Router, bool, Option<Arc<Caller>>),
) {
    let slots = Arc::new(Semaphore::new(max));
    let connections = TaskTracker::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot { Ok(slot) => slot, Err(_) => break },
            () = stop.cancelled() => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "HTTP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let (router, keep_alive, caller) = connection(&daemon);
        let header_timeout = daemon.config.frame_read_timeout;
        let stream = super::deadline::WriteDeadline::new(stream, daemon.config.stream_pause_limit);
        let stop = stop.clone();
        let span = tracing::info_span!("session", id = caller.as_ref().map(|c| c.id), client = "http-tcp", %remote);
        let connection = async move {
            let _ = super::http1(stream, router, header_timeout, keep_alive, stop).await;
            if let Some(caller) = caller {
                caller.cancel_all();
            }
            drop(slot);
        };
        connections.spawn(tracing::Instrument::instrument(connection, span));
    }
    connections.close();
    connections.wait().await;
}

/// What every TCP request must show.
#[derive(Debug)]
struct Guard {
    token: Option<String>,
    loopback_only: bool,
}

fn refuse(code: ErrorCode, message: &str) -> Response {
    ApiError(WireError::new(code, message)).into_response()
}

impl Guard {
    /// `router` behind this guard.
    fn layer(self: Arc<Self>, router: axum::Router) -> axum::Router {
        router.layer(axum::middleware::from_fn(move |request: Request, next: Next| {
            let guard = self.clone();
            async move { guard.check(request, next).await }
        }))
    }

    async fn check(&self, request: Request, next: Next) -> Response {
        let headers = request.headers();
        if self.loopback_only && !headers.get(header::HOST).and_then(|h| h.to_str().ok()).is_some_and(is_local_host) {
            return refuse(ErrorCode::Unauthorized, "the Host of a request to this address must be localhost");
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let local =
                origin.to_str().ok().and_then(|o| o.split_once("://")).is_some_and(|(_, rest)| is_local_host(rest));
            if !local {
                return refuse(ErrorCode::Unauthorized, "requests from web pages of other origins are refused");
            }
        }
        if let Some(token) = &self.token {
            if !bearer_matches(headers, token) {
                let mut response = refuse(
                    ErrorCode::Unauthorized,
                    "a bearer token is required: Authorization: Bearer <the output of `mlxd token`>",
                );
                *response.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
                return response;
            }
        }
        next.run(request).await
    }
}

/// `localhost`, `127.0.0.1` or `[::1]`, with or without a port.
fn is_local_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':')
            .map_or(host, |(name, port)| if port.chars().all(|c| c.is_ascii_digit()) { name } else { host })
    };
    matches!(name.to_ascii_lowercase().as_str(), "localhost" | "127.0.0.1" | "::1")
}

/// Compares in constant time (the token's length is not secret: it is always 64).
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    // The scheme is case-insensitive (RFC 9110); the token is not.
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()))
    else {
        return false;
    };
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_machines_names_are_local_hosts() {
        for host in ["localhost", "localhost:11434", "127.0.0.1:8080", "[::1]:80", "[::1]", "LOCALHOST"] {
            assert!(is_local_host(host), "{host}");
        }
        for host in ["evil.example", "evil.example:80", "127.0.0.1.evil.example", "localhost.evil", "10.0.0.1:80"] {
            assert!(!is_local_host(host), "{host}");
        }
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_is_not() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            bearer_matches(&headers, "abc")
        };
        assert!(with("Bearer abc") && with("bearer abc") && with("BEARER abc"));
        assert!(!with("Bearer ABC") && !with("Basic abc") && !with("Bearer") && !with("abc"));
    }

    #[test]
    fn the_token_file_is_created_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("mlxd-token-test-{}", std::process::id()));
        let path = token_path(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let token = load_or_create_token(&path).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_token(&path).unwrap(), token);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        assert!(load_or_create_token(&path).is_err(), "a readable token file is refused");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
