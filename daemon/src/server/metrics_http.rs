//! The optional HTTP listener for Prometheus (`--metrics-addr`): `GET /metrics` answers the
//! OpenMetrics exposition, `GET /` a pointer to it, anything else 404 or 405.
//!
//! Deliberately tiny (no HTTP library): one request per connection, `Connection: close`,
//! a request head of at most 8 KiB read within 5 s, at most 16 connections at once. It
//! never waits on a worker: the exposition is built from what the supervisor holds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Daemon;

const MAX_HEAD: usize = 8 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 16;

/// Binds the metrics address (before the daemon reports itself ready, so a bad address
/// fails the start rather than a later scrape).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("binding the metrics listener on {addr}"))
}

/// Serves scrapes until `stop`.
pub async fn serve(listener: TcpListener, daemon: Arc<Daemon>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = TaskTracker::new();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving metrics over HTTP at /metrics");
    }
    loop {
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot { Ok(slot) => slot, Err(_) => break },
        };
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(%err, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let daemon = daemon.clone();
        connections.spawn(async move {
            if let Err(err) = answer(stream, &daemon).await {
                tracing::debug!(%err, "metrics connection");
            }
            drop(slot);
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), connections.wait()).await;
}

async fn answer(mut stream: TcpStream, daemon: &Daemon) -> std::io::Result<()> {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return respond(&mut stream, "400 Bad Request", "text/plain", "bad request\n").await,
        Ok(Err(err)) => return Err(err),
        Err(_) => return respond(&mut stream, "408 Request Timeout", "text/plain", "timeout\n").await,
    };
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = daemon.render_metrics();
            let body = if method == "HEAD" { String::new() } else { body };
            respond(&mut stream, "200 OK", crate::metrics::CONTENT_TYPE, &body).await
        }
        ("GET", "/") => respond(&mut stream, "200 OK", "text/plain", "mlxd: metrics at /metrics\n").await,
        ("GET" | "HEAD", _) => respond(&mut stream, "404 Not Found", "text/plain", "not found; try /metrics\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", "only GET\n").await,
    }
}

/// The request line and headers, up to the blank line; `None` if malformed or too long.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(String::from_utf8(head).ok());
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
