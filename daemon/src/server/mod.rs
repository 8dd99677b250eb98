//! The client-facing server: the listener accepts connections under a connection limit
//! and runs one session per connection; `mlxd stdio` runs one session on stdin/stdout.
//!
//! This is the binary protocol's front end: everything below the wire format is the
//! request core's ([`crate::core`]).
//!
//! - [`listener`]: binding the socket (permissions, one daemon per path, stale sockets).
//! - [`peer`]: reading a connection's peer credentials.
//! - [`session`]: handshake, frames in and out, credit; a thin adapter over the core.

pub mod listener;
pub mod peer;
pub mod session;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::core::Daemon;
use listener::BoundSocket;

/// How long a worker has to exit after being asked to at shutdown, before it is killed.
pub const WORKER_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves `socket` until `shutdown` resolves; then stops accepting, removes the socket,
/// lets sessions finish in-flight requests for up to the drain timeout, and stops workers.
pub async fn run(socket: BoundSocket, daemon: Arc<Daemon>, shutdown: impl Future<Output = ()>) {
    let connection_slots = Arc::new(Semaphore::new(daemon.config.max_connections));
    let per_uid = PerUid::default();
    let sessions = TaskTracker::new();
    let stop_sessions = CancellationToken::new();
    tokio::pin!(shutdown);
    tracing::info!(socket = %socket.path.display(), "serving");
    crate::service::notify::ready(&daemon.endpoint);

    loop {
        // The connection limit is taken before accept: past it, connections wait in the
        // kernel backlog instead of costing us a task and buffers each.
        let slot = tokio::select! {
            slot = connection_slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = socket.listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let peer = peer::peer_of(&stream);
        // One user's connections come out of that user's share, so a user opening many
        // cannot take every slot from the others.
        let Some(user_slot) = per_uid.take(peer.uid, daemon.config.max_connections_per_uid) else {
            tracing::warn!(uid = ?peer.uid, pid = ?peer.pid, "connection refused: max_connections_per_uid reached");
            let limit = daemon.config.max_connections_per_uid;
            sessions.spawn(async move {
                let error = mlxd_proto::WireError::new(
                    mlxd_proto::ErrorCode::Busy,
                    format!("this user already has {limit} connections open (max_connections_per_uid)"),
                )
                .with_retry_after(1000);
                session::refuse(stream, error).await;
                drop(slot);
            });
            continue;
        };
        let daemon = daemon.clone();
        let stop = stop_sessions.child_token();
        sessions.spawn(async move {
            let peer = peer::with_groups(peer).await;
            // A binary client's first byte is 0 (a Hello's length prefix is at most 64 KiB);
            // an HTTP request line starts with a method's capital letter. Anything else
            // goes to the binary session, which refuses it with a typed error frame.
            let first = tokio::time::timeout(session::HANDSHAKE_TIMEOUT, peek_first_byte(&stream)).await;
            if matches!(first, Ok(Some(byte)) if byte.is_ascii_uppercase()) {
                crate::http::serve_connection(stream, daemon, peer, stop).await;
            } else {
                let (reader, writer) = stream.into_split();
                session::run(daemon, reader, writer, peer, stop).await;
            }
            drop(user_slot);
            drop(slot);
        });
    }

    tracing::info!("shutting down: no new connections; draining in-flight requests");
    // From now on nothing is loaded or restarted: a worker that dies while requests drain
    // fails them instead of coming back.
    daemon.registry.begin_shutdown();
    crate::service::notify::stopping();
    socket.remove_socket_file();
    drop(socket);
    stop_sessions.cancel();
    sessions.close();
    if tokio::time::timeout(daemon.config.drain_timeout, sessions.wait()).await.is_err() {
        tracing::warn!(timeout = ?daemon.config.drain_timeout, "drain deadline passed; abandoning remaining requests");
    }
    daemon.registry.shutdown(WORKER_STOP_GRACE).await;
}

/// Connections open per peer uid.
#[derive(Debug, Default, Clone)]
struct PerUid(Arc<std::sync::Mutex<std::collections::HashMap<Option<u32>, usize>>>);

impl PerUid {
    /// A connection slot of `uid`'s, unless it holds `limit` already.
    fn take(&self, uid: Option<u32>, limit: usize) -> Option<UserSlot> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(uid).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(UserSlot { per_uid: self.clone(), uid })
    }
}

/// One connection of a user; given back when dropped.
#[derive(Debug)]
struct UserSlot {
    per_uid: PerUid,
    uid: Option<u32>,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut open = self.per_uid.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

/// The connection's first byte, left in the socket for whoever reads it next; `None` if the
/// peer closed (or the socket failed) before sending one.
async fn peek_first_byte(stream: &tokio::net::UnixStream) -> Option<u8> {
    use std::os::fd::AsRawFd;
    loop {
        stream.readable().await.ok()?;
        let mut byte = 0u8;
        let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
            // SAFETY: one byte into `byte`, which outlives the call; MSG_PEEK leaves it queued.
            let n = unsafe {
                libc::recv(stream.as_raw_fd(), (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
            };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n)
            }
        });
        match peeked {
            Ok(1) => return Some(byte),
            Ok(_) => return None,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
    }
}
