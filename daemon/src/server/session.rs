//! One client session: the handshake, then a loop that reads requests and runs each in a
//! task of the session, and a writer that drains a bounded outbound queue.
//!
//! The transport is a parameter (any `AsyncRead` + `AsyncWrite`), so the same code serves
//! a Unix socket connection, `mlxd stdio`, and in-memory pipes in tests.
//!
//! Bounds: a session has at most `max_in_flight` requests running (more are refused with
//! `Busy` at once) and at most `OUTBOUND_CAPACITY` frames waiting to be written; a client
//! that stops reading therefore stalls only its own session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mlxd_proto::codec::FrameCodec;
use mlxd_proto::frame::{FrameError, ABSOLUTE_MAX_FRAME_LEN, HANDSHAKE_MAX_FRAME_LEN};
use mlxd_proto::{
    ClientMessage, ErrorCode, Hello, LeaseId, Request, RequestId, ServerMessage, Welcome, WireError, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{dispatch, Daemon};
use crate::registry::LeaseGuard;

/// Frames queued for the client before request tasks wait for the writer.
pub const OUTBOUND_CAPACITY: usize = 64;

/// How long a new connection has to say Hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end, from the kernel (SO_PEERCRED), not from what the client says.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer {
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Peer {
    pub fn of(stream: &tokio::net::UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(cred) => Peer { pid: cred.pid(), uid: Some(cred.uid()), gid: Some(cred.gid()) },
            Err(_) => Peer::default(),
        }
    }

    /// This process (the stdio mode's only client).
    pub fn of_self() -> Peer {
        Peer {
            pid: Some(std::process::id() as i32),
            uid: Some(nix::unistd::getuid().as_raw()),
            gid: Some(nix::unistd::getgid().as_raw()),
        }
    }

    /// The peer's supplementary groups (Linux: from /proc; empty where unknown).
    fn groups(&self) -> Vec<u32> {
        let Some(pid) = self.pid else { return Vec::new() };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix("Groups:"))
                    .map(|groups| groups.split_whitespace().filter_map(|g| g.parse().ok()).collect())
            })
            .unwrap_or_default()
    }

    /// Checks the peer against the daemon's access policy.
    pub fn authorize(&self, policy: &crate::config::AccessPolicy) -> Result<(), WireError> {
        let Some(uid) = self.uid else {
            return Err(WireError::new(ErrorCode::Unauthorized, "the peer's credentials cannot be read"));
        };
        policy.check(uid, self.gid, &self.groups()).map_err(|why| WireError::new(ErrorCode::Unauthorized, why))
    }
}

/// What the client can still say about a request in flight: Cancel and Credit.
#[derive(Debug, Default)]
pub struct Control {
    pub cancel: CancellationToken,
    pub credit: CreditGate,
    /// A generation stream (counted against the per-session stream limit).
    pub is_stream: bool,
}

/// Stream credit granted by the client and not yet passed on. Lossless however many small
/// grants arrive: they add up in one counter, and `Notify` keeps a wake-up if nobody waits.
#[derive(Debug, Default)]
pub struct CreditGate {
    granted: std::sync::atomic::AtomicU32,
    notify: tokio::sync::Notify,
}

impl CreditGate {
    pub fn add(&self, events: u32) {
        let _ = self.granted.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_add(events)));
        self.notify.notify_one();
    }

    /// Waits for credit and takes all of it.
    pub async fn take(&self) -> u32 {
        loop {
            let events = self.granted.swap(0, Ordering::AcqRel);
            if events > 0 {
                return events;
            }
            self.notify.notified().await;
        }
    }
}

/// What request tasks of one session share.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub daemon: Arc<Daemon>,
    leases: Mutex<HashMap<LeaseId, LeaseGuard>>,
    next_lease: AtomicU64,
    in_flight: Mutex<HashMap<RequestId, Arc<Control>>>,
}

impl Session {
    fn leases(&self) -> MutexGuard<'_, HashMap<LeaseId, LeaseGuard>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn in_flight(&self) -> MutexGuard<'_, HashMap<RequestId, Arc<Control>>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a lease and returns its handle, unless the session holds too many.
    pub fn add_lease(&self, guard: LeaseGuard) -> Result<LeaseId, WireError> {
        let mut leases = self.leases();
        let limit = self.daemon.config.limits.max_leases as usize;
        if leases.len() >= limit {
            return Err(WireError::new(ErrorCode::TooLarge, format!("session holds {limit} leases (max_leases)")));
        }
        // Handles are random-looking per session so that a number guessed or copied from
        // another connection is not accidentally valid here either.
        let lease = self.next_lease.fetch_add(1, Ordering::Relaxed) ^ (self.id << 32);
        leases.insert(lease, guard);
        Ok(lease)
    }

    pub fn release(&self, lease: LeaseId) -> Result<(), WireError> {
        self.leases().remove(&lease).map(drop).ok_or_else(|| invalid_lease(lease))
    }

    /// The model a lease of this session is on.
    pub fn leased_model(&self, lease: LeaseId) -> Result<Arc<crate::registry::Model>, WireError> {
        let leases = self.leases();
        let guard = leases.get(&lease).ok_or_else(|| invalid_lease(lease))?;
        if !guard.is_valid() {
            return Err(WireError::new(
                ErrorCode::InvalidLease,
                format!("lease {lease} was revoked: an operator force-unloaded {}", guard.model.spec.name),
            ));
        }
        Ok(guard.model.clone())
    }
}

fn invalid_lease(lease: LeaseId) -> WireError {
    WireError::new(
        ErrorCode::InvalidLease,
        format!("lease {lease} is not held by this session (a lease belongs to the connection that took it)"),
    )
}

/// Runs one session to its end: the client closes, a framing error, or `stop` (shutdown).
pub async fn run<R, W>(daemon: Arc<Daemon>, reader: R, writer: W, peer: Peer, stop: CancellationToken)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut frames_in = FramedRead::new(reader, FrameCodec::<ClientMessage, ()>::new(HANDSHAKE_MAX_FRAME_LEN, 0));
    let mut frames_out = FramedWrite::new(writer, FrameCodec::<(), ServerMessage>::new(0, HANDSHAKE_MAX_FRAME_LEN));
    if let Err(refusal) = peer.authorize(&daemon.config.access) {
        tracing::warn!(pid = ?peer.pid, uid = ?peer.uid, gid = ?peer.gid, "connection refused: {}", refusal.message);
        let _ = frames_out.send(ServerMessage::Fatal(refusal)).await;
        return;
    }

    let hello = match handshake(&mut frames_in, &stop).await {
        Ok(hello) => hello,
        Err(error) => {
            // A connect-and-close (a liveness probe) is routine; anything else is worth a line.
            if error.message.starts_with("connection closed") {
                tracing::debug!(pid = ?peer.pid, %error, "connection closed before the handshake");
            } else {
                tracing::info!(pid = ?peer.pid, uid = ?peer.uid, %error, "handshake refused");
            }
            let _ = frames_out.send(ServerMessage::Fatal(error)).await;
            return;
        }
    };
    let session_id = daemon.next_session_id();
    // -1: the kernel did not say (never on Linux).
    let pid = peer.pid.unwrap_or(-1);
    let span = tracing::info_span!("session", id = session_id, client = %hello.client_name, pid);
    serve(daemon, frames_in, frames_out, hello, peer, session_id, stop).instrument(span).await;
}

/// The session after a successful handshake.
async fn serve<R, W>(
    daemon: Arc<Daemon>,
    mut frames_in: FramedRead<R, FrameCodec<ClientMessage, ()>>,
    mut frames_out: FramedWrite<W, FrameCodec<(), ServerMessage>>,
    hello: Hello,
    peer: Peer,
    session_id: u64,
    stop: CancellationToken,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let limits = daemon.config.limits.clone();
    let welcome = Welcome {
        protocol_version: PROTOCOL_VERSION,
        daemon_version: env!("CARGO_PKG_VERSION").into(),
        session_id,
        limits: limits.clone(),
    };
    if frames_out.send(ServerMessage::Welcome(welcome)).await.is_err() {
        return;
    }
    frames_in.decoder_mut().set_limits(limits.max_frame_len, 0);
    frames_out.encoder_mut().set_limits(0, hello.max_frame_len.clamp(HANDSHAKE_MAX_FRAME_LEN, ABSOLUTE_MAX_FRAME_LEN));
    tracing::info!(uid = peer.uid.map_or(-1, i64::from), "session opened");
    daemon.sessions.fetch_add(1, Ordering::Relaxed);

    let session = Arc::new(Session {
        id: session_id,
        daemon: daemon.clone(),
        leases: Mutex::new(HashMap::new()),
        next_lease: AtomicU64::new(1),
        in_flight: Mutex::new(HashMap::new()),
    });
    let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let writer_gone = CancellationToken::new();
    let writer = tokio::spawn(write_frames(frames_out, outbound_rx, writer_gone.clone()));
    let requests = TaskTracker::new();

    let end = loop {
        let frame = tokio::select! {
            () = stop.cancelled() => break "daemon shutting down",
            () = writer_gone.cancelled() => break "client stopped reading",
            frame = frames_in.next() => frame,
        };
        let message = match frame {
            None => break "client closed the connection",
            Some(Ok(message)) => message,
            Some(Err(err)) => {
                // A bad frame ends this connection only; logged once, here.
                tracing::warn!(%err, "bad frame; closing the session");
                let code = if matches!(err, FrameError::TooLarge { .. }) {
                    ErrorCode::TooLarge
                } else {
                    ErrorCode::BadRequest
                };
                let _ = outbound.send(ServerMessage::Fatal(WireError::new(code, err.to_string()))).await;
                break "bad frame";
            }
        };
        match message {
            ClientMessage::Request { id, body } => {
                let done = Done::new(&session, &body);
                if let Some(refusal) = admit(&session, id, &body) {
                    done.record(&session, &Err(refusal.code));
                    if outbound.send(ServerMessage::Error { id, error: refusal }).await.is_err() {
                        break "client stopped reading";
                    }
                    continue;
                }
                if let Some(reply) = dispatch::answer_now(&session, &body) {
                    done.record(&session, &reply.outcome());
                    if outbound.send(reply.into_message(id)).await.is_err() {
                        break "client stopped reading";
                    }
                    continue;
                }
                // Limits and the model's queue are checked here, before a task exists:
                // `Busy` is answered from this loop at once, however loaded the daemon is.
                let prepared = match dispatch::admit(&session, &body) {
                    Ok(prepared) => prepared,
                    Err(refusal) => {
                        done.record(&session, &Err(refusal.code));
                        if outbound.send(ServerMessage::Error { id, error: refusal }).await.is_err() {
                            break "client stopped reading";
                        }
                        continue;
                    }
                };
                let control =
                    Arc::new(Control { is_stream: matches!(body, Request::Generate(_)), ..Control::default() });
                session.in_flight().insert(id, control.clone());
                let (session, outbound) = (session.clone(), outbound.clone());
                // Everything logged while the request runs carries the client's request id.
                let span = tracing::info_span!("request", id, kind = done.kind, model = %done.model);
                requests.spawn(
                    async move {
                        let result = dispatch::handle(&session, id, body, prepared, &outbound, &control).await;
                        session.in_flight().remove(&id);
                        let reply = dispatch::Reply(result);
                        done.record(&session, &reply.outcome());
                        if let Err(error) = &reply.0 {
                            tracing::debug!(code = ?error.code, "request failed: {}", error.message);
                        }
                        let _ = outbound.send(reply.into_message(id)).await;
                    }
                    .instrument(span),
                );
            }
            ClientMessage::Cancel { id } => {
                if let Some(control) = session.in_flight().get(&id) {
                    control.cancel.cancel();
                }
            }
            ClientMessage::Credit { id, events } => {
                // Credit for a request that is not (or no longer) streaming is ignored.
                if let Some(control) = session.in_flight().get(&id) {
                    control.credit.add(events);
                }
            }
            ClientMessage::Hello(_) => {
                let error = WireError::bad_request("Hello sent twice");
                let _ = outbound.send(ServerMessage::Fatal(error)).await;
                break "protocol violation";
            }
        }
    };
    tracing::info!(reason = end, "session ending");

    if writer_gone.is_cancelled() {
        // Nobody will read the answers: stop the work now.
        for control in session.in_flight().values() {
            control.cancel.cancel();
        }
    }
    requests.close();
    // In-flight requests finish and are answered; the listener bounds this at shutdown.
    requests.wait().await;
    if stop.is_cancelled() {
        let _ =
            outbound.send(ServerMessage::Fatal(WireError::new(ErrorCode::Shutdown, "daemon is shutting down"))).await;
    }
    drop(outbound);
    let _ = writer.await;
    // Dropping the session releases every lease it still holds.
    let released = session.leases().len();
    drop(session);
    daemon.sessions.fetch_sub(1, Ordering::Relaxed);
    tracing::info!(released_leases = released, "session closed");
}

/// A request's labels and arrival, for the requests and duration metrics.
struct Done {
    kind: &'static str,
    model: String,
    arrived: std::time::Instant,
}

impl Done {
    fn new(session: &Session, body: &Request) -> Done {
        Done {
            kind: dispatch::kind(body),
            model: dispatch::model_label(session, body),
            arrived: std::time::Instant::now(),
        }
    }

    fn record(&self, session: &Session, outcome: &Result<(), ErrorCode>) {
        session.daemon.registry.metrics().request_done(&self.model, self.kind, *outcome, self.arrived.elapsed());
    }
}

/// Refusals decided before any work: duplicate ids and the per-session in-flight limit.
fn admit(session: &Session, id: RequestId, body: &Request) -> Option<WireError> {
    if matches!(body, Request::Ping | Request::Status | Request::ListModels | Request::Weights | Request::Metrics) {
        return None; // answered at once, never counted
    }
    let in_flight = session.in_flight();
    if in_flight.contains_key(&id) {
        return Some(WireError::bad_request(format!("request id {id} is already in flight on this session")));
    }
    let limit = session.daemon.config.limits.max_in_flight as usize;
    if in_flight.len() >= limit {
        return Some(
            WireError::new(ErrorCode::Busy, format!("session has {limit} requests in flight (max_in_flight)"))
                .with_retry_after(10),
        );
    }
    let streams = session.daemon.config.max_streams_per_session;
    if matches!(body, Request::Generate(_)) && in_flight.values().filter(|c| c.is_stream).count() >= streams {
        return Some(
            WireError::new(
                ErrorCode::Busy,
                format!("session has {streams} generation streams open (max_streams_per_session)"),
            )
            .with_retry_after(10),
        );
    }
    None
}

async fn handshake<R: AsyncRead + Unpin>(
    frames_in: &mut FramedRead<R, FrameCodec<ClientMessage, ()>>,
    stop: &CancellationToken,
) -> Result<Hello, WireError> {
    let first = tokio::select! {
        () = stop.cancelled() => return Err(WireError::new(ErrorCode::Shutdown, "daemon is shutting down")),
        first = tokio::time::timeout(HANDSHAKE_TIMEOUT, frames_in.next()) => first,
    };
    match first {
        Err(_) => Err(WireError::bad_request(format!("no Hello within {HANDSHAKE_TIMEOUT:?}"))),
        Ok(None) => Err(WireError::bad_request("connection closed before Hello")),
        Ok(Some(Err(FrameError::TooLarge { len, max }))) => Err(WireError::new(
            ErrorCode::TooLarge,
            format!("first frame claims {len} bytes; a Hello is at most {max}"),
        )),
        Ok(Some(Err(err))) => Err(WireError::bad_request(format!("expected a Hello frame: {err}"))),
        Ok(Some(Ok(ClientMessage::Hello(hello)))) if hello.protocol_version == PROTOCOL_VERSION => Ok(hello),
        Ok(Some(Ok(ClientMessage::Hello(hello)))) => Err(WireError::new(
            ErrorCode::VersionMismatch,
            format!(
                "client speaks protocol version {}, this daemon speaks version {PROTOCOL_VERSION}",
                hello.protocol_version
            ),
        )),
        Ok(Some(Ok(_))) => Err(WireError::bad_request("the first frame must be Hello")),
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(
    mut frames_out: FramedWrite<W, FrameCodec<(), ServerMessage>>,
    mut outbound: mpsc::Receiver<ServerMessage>,
    gone: CancellationToken,
) {
    while let Some(message) = outbound.recv().await {
        let id = match &message {
            ServerMessage::Response { id, .. } | ServerMessage::Event { id, .. } => Some(*id),
            _ => None,
        };
        match frames_out.send(message).await {
            Ok(()) => {}
            Err(FrameError::TooLarge { len, max }) if id.is_some() => {
                // One answer too large for the client's frame limit fails that request only.
                let error = WireError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "answer of {len} bytes exceeds the client's max_frame_len of {max}; ask for less per request"
                    ),
                );
                if frames_out.send(ServerMessage::Error { id: id.unwrap_or_default(), error }).await.is_err() {
                    break;
                }
            }
            Err(err) => {
                tracing::debug!(%err, "writing to client failed");
                break;
            }
        }
    }
    gone.cancel();
}

impl dispatch::Reply {
    fn outcome(&self) -> Result<(), ErrorCode> {
        self.0.as_ref().map(|_| ()).map_err(|error| error.code)
    }

    fn into_message(self, id: RequestId) -> ServerMessage {
        match self.0 {
            Ok(body) => ServerMessage::Response { id, body },
            Err(error) => ServerMessage::Error { id, error },
        }
    }
}
