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
use mlxd_proto::bounds::DecodeLimits;
use mlxd_proto::codec::{ClientFrames, FrameCodec, Incoming};
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

/// Longest client name kept for logs and status.
const MAX_CLIENT_NAME: usize = 64;

/// How long the writer may take to flush what is left once the client has gone.
const WRITER_DRAIN_AFTER_EOF: Duration = Duration::from_secs(1);

/// Who is on the other end, from the kernel (SO_PEERCRED, SO_PEERGROUPS), not from what
/// the client says.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Supplementary groups, read from the socket when it was accepted (Linux:
    /// SO_PEERGROUPS, so there is no race with a pid being reused; macOS: the group
    /// database for the peer's uid).
    pub groups: Vec<u32>,
}

impl Peer {
    pub fn of(stream: &tokio::net::UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(cred) => Peer {
                pid: cred.pid(),
                uid: Some(cred.uid()),
                gid: Some(cred.gid()),
                groups: peer_groups(stream, cred.uid(), cred.gid()),
            },
            Err(_) => Peer::default(),
        }
    }

    /// This process (the stdio mode's only client).
    pub fn of_self() -> Peer {
        Peer {
            pid: Some(std::process::id() as i32),
            uid: Some(nix::unistd::getuid().as_raw()),
            gid: Some(nix::unistd::getgid().as_raw()),
            groups: nix::unistd::getgroups().map(|g| g.into_iter().map(|g| g.as_raw()).collect()).unwrap_or_default(),
        }
    }

    /// Checks the peer against the daemon's access policy.
    pub fn authorize(&self, policy: &crate::config::AccessPolicy) -> Result<(), WireError> {
        let Some(uid) = self.uid else {
            return Err(WireError::new(ErrorCode::Unauthorized, "the peer's credentials cannot be read"));
        };
        policy.check(uid, self.gid, &self.groups).map_err(|why| WireError::new(ErrorCode::Unauthorized, why))
    }

    /// Whether the peer may take operator actions (the daemon's own user, root, or a
    /// member of the admin group).
    pub fn is_operator(&self, policy: &crate::config::AccessPolicy) -> bool {
        self.uid.is_some_and(|uid| policy.is_operator(uid, self.gid, &self.groups))
    }
}

/// The peer's supplementary groups as the kernel recorded them at connect time.
#[cfg(target_os = "linux")]
fn peer_groups(stream: &tokio::net::UnixStream, _uid: u32, _gid: u32) -> Vec<u32> {
    use std::os::fd::AsRawFd;
    // NGROUPS_MAX is 65536 on Linux; ask with a small buffer first, then the size it says.
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..2 {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is `len` bytes long and lives across the call.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return groups;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) || count <= groups.len() {
            break;
        }
        groups = vec![0; count];
    }
    Vec::new()
}

/// The peer's groups from the group database (getpeereid gave the uid).
#[cfg(not(target_os = "linux"))]
fn peer_groups(_stream: &tokio::net::UnixStream, uid: u32, gid: u32) -> Vec<u32> {
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else { return Vec::new() };
    let Ok(name) = std::ffi::CString::new(user.name) else { return Vec::new() };
    let mut groups: Vec<libc::c_int> = vec![0; 256];
    let mut count = groups.len() as libc::c_int;
    // SAFETY: `groups` holds `count` entries; getgrouplist writes at most that many.
    let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid as libc::c_int, groups.as_mut_ptr(), &mut count) };
    if rc < 0 {
        return Vec::new();
    }
    groups.truncate(count.max(0) as usize);
    groups.into_iter().map(|g| g as u32).collect()
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
    /// The peer's uid (`u32::MAX` where the kernel did not say): queues take turns by user
    /// before sessions, and the prompt cache is partitioned by it.
    pub uid: u32,
    /// Whether the peer may take operator actions (see [`Peer::is_operator`]).
    pub operator: bool,
    /// Cancelled when the client is gone (closed, stopped reading, broke the protocol):
    /// nothing more is sent to it.
    pub gone: CancellationToken,
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

    /// Who this session is, for the queues' turn-taking.
    pub fn client(&self) -> crate::sched::Client {
        crate::sched::Client { uid: self.uid, session: self.id }
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

/// Refuses a connection before its handshake: one `Fatal` frame, then close (bounded in
/// time, so a peer that never reads cannot hold the task).
pub async fn refuse(stream: tokio::net::UnixStream, error: WireError) {
    use tokio::io::AsyncWriteExt;
    let mut frame = Vec::new();
    if mlxd_proto::frame::encode_frame(&ServerMessage::Fatal(error), HANDSHAKE_MAX_FRAME_LEN, &mut frame).is_err() {
        return;
    }
    let mut stream = stream;
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&frame)).await;
}

/// Runs one session to its end: the client closes, a framing error, or `stop` (shutdown).
pub async fn run<R, W>(daemon: Arc<Daemon>, reader: R, writer: W, peer: Peer, stop: CancellationToken)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut frames_in = FramedRead::new(reader, ClientFrames::new(HANDSHAKE_MAX_FRAME_LEN));
    let mut frames_out = FramedWrite::new(writer, FrameCodec::<(), ServerMessage>::new(0, HANDSHAKE_MAX_FRAME_LEN));
    if let Err(refusal) = peer.authorize(&daemon.config.access) {
        tracing::warn!(pid = ?peer.pid, uid = ?peer.uid, gid = ?peer.gid, "connection refused: {}", refusal.message);
        let _ = frames_out.send(ServerMessage::Fatal(refusal)).await;
        return;
    }

    let hello = match handshake(&mut frames_in, &stop).await {
        Ok(mut hello) => {
            hello.client_name = printable_name(&hello.client_name);
            hello
        }
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
    mut frames_in: FramedRead<R, ClientFrames>,
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
    frames_in.decoder_mut().set_limits(limits.max_frame_len, DecodeLimits::for_session(&limits));
    frames_out.encoder_mut().set_limits(0, hello.max_frame_len.clamp(HANDSHAKE_MAX_FRAME_LEN, ABSOLUTE_MAX_FRAME_LEN));
    let operator = peer.is_operator(&daemon.config.access);
    tracing::info!(uid = peer.uid.map_or(-1, i64::from), operator, "session opened");
    daemon.sessions.fetch_add(1, Ordering::Relaxed);

    let session = Arc::new(Session {
        id: session_id,
        daemon: daemon.clone(),
        uid: peer.uid.unwrap_or(u32::MAX),
        operator,
        gone: CancellationToken::new(),
        leases: Mutex::new(HashMap::new()),
        next_lease: AtomicU64::new(1),
        in_flight: Mutex::new(HashMap::new()),
    });
    let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let writer_gone = CancellationToken::new();
    let writer = tokio::spawn(write_frames(frames_out, outbound_rx, writer_gone.clone()));
    let requests = TaskTracker::new();
    // A frame begun must be finished within `frame_read_timeout` (slow-loris): checked a
    // few times per timeout, since partial bytes arriving wake nothing here.
    let frame_timeout = daemon.config.frame_read_timeout;
    let mut partial_check = tokio::time::interval(frame_timeout / 4);
    partial_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut partial_since: Option<tokio::time::Instant> = None;

    let end = loop {
        let frame = tokio::select! {
            () = stop.cancelled() => break End::Shutdown,
            () = writer_gone.cancelled() => break End::ClientGone("client stopped reading"),
            _ = partial_check.tick() => {
                if frames_in.read_buffer().is_empty() {
                    partial_since = None;
                } else {
                    let since = *partial_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= frame_timeout {
                        let error = WireError::bad_request(format!(
                            "a frame was begun and not finished within {frame_timeout:?} (frame_read_timeout)"
                        ));
                        let _ = outbound.try_send(ServerMessage::Fatal(error));
                        break End::ClientGone("partial frame timed out");
                    }
                }
                continue;
            }
            frame = frames_in.next() => frame,
        };
        partial_since = None;
        let message = match frame {
            None => break End::ClientGone("client closed the connection"),
            Some(Ok(Incoming::Message(message))) => message,
            Some(Ok(Incoming::OverLimit { id, reason })) => {
                let error = WireError::new(ErrorCode::TooLarge, reason);
                tracing::info!(?id, "request refused for its decoded size: {}", error.message);
                let Some(id) = id else {
                    let _ = outbound.send(ServerMessage::Fatal(error)).await;
                    break End::ClientGone("oversized frame");
                };
                if session.in_flight().contains_key(&id) {
                    break duplicate_id(&outbound, id).await;
                }
                daemon.registry.metrics().request_done(
                    crate::metrics::NO_MODEL,
                    "unknown",
                    Err(ErrorCode::TooLarge),
                    Duration::ZERO,
                );
                if outbound.send(ServerMessage::Error { id, error }).await.is_err() {
                    break End::ClientGone("client stopped reading");
                }
                continue;
            }
            Some(Err(err)) => {
                // A bad frame ends this connection only; logged once, here.
                tracing::warn!(%err, "bad frame; closing the session");
                let code = if matches!(err, FrameError::TooLarge { .. }) {
                    ErrorCode::TooLarge
                } else {
                    ErrorCode::BadRequest
                };
                let _ = outbound.send(ServerMessage::Fatal(WireError::new(code, err.to_string()))).await;
                break End::ClientGone("bad frame");
            }
        };
        match message {
            ClientMessage::Request { id, body } => {
                // Two final frames for one id would leave the client unable to tell them
                // apart: reusing an id still in flight is a protocol violation.
                if session.in_flight().contains_key(&id) {
                    break duplicate_id(&outbound, id).await;
                }
                let done = Done::new(&session, &body);
                if let Some(refusal) = admit(&session, &body) {
                    done.record(&session, &Err(refusal.code));
                    if outbound.send(ServerMessage::Error { id, error: refusal }).await.is_err() {
                        break End::ClientGone("client stopped reading");
                    }
                    continue;
                }
                if let Some(reply) = dispatch::answer_now(&session, &body) {
                    done.record(&session, &reply.outcome());
                    if outbound.send(reply.into_message(id)).await.is_err() {
                        break End::ClientGone("client stopped reading");
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
                            break End::ClientGone("client stopped reading");
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
                        let reply = dispatch::Reply(result);
                        done.record(&session, &reply.outcome());
                        if let Err(error) = &reply.0 {
                            tracing::debug!(code = ?error.code, "request failed: {}", error.message);
                        }
                        // The id is freed only once its final frame has a place in the
                        // queue, and the frame is queued right after: it cannot reach the
                        // client (who might then reuse the id) while the id is still taken.
                        let permit = tokio::select! {
                            // The client is gone (cancelled before the work was): no answer.
                            biased;
                            () = session.gone.cancelled() => None,
                            permit = outbound.reserve() => permit.ok(),
                        };
                        session.in_flight().remove(&id);
                        if let Some(permit) = permit {
                            permit.send(reply.into_message(id));
                        }
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
                break End::ClientGone("protocol violation");
            }
        }
    };
    let reason = match end {
        End::Shutdown => "daemon shutting down",
        End::ClientGone(reason) => reason,
    };
    tracing::info!(reason, "session ending");

    if let End::ClientGone(_) = end {
        // Nobody will read the answers (the client closed, stopped reading, or broke the
        // protocol): stop everything now, whatever it waits on — a turn, a load, credit —
        // so its stream slots, queue places and leases are given back at once.
        session.gone.cancel();
        for control in session.in_flight().values() {
            control.cancel.cancel();
        }
    }
    requests.close();
    // In-flight requests finish and are answered (at shutdown; the listener bounds this).
    requests.wait().await;
    if stop.is_cancelled() {
        let _ =
            outbound.send(ServerMessage::Fatal(WireError::new(ErrorCode::Shutdown, "daemon is shutting down"))).await;
    }
    drop(outbound);
    match end {
        End::Shutdown => {
            let _ = writer.await;
        }
        End::ClientGone(_) => {
            // A peer that closed its end but never reads must not keep the session.
            let abort = writer.abort_handle();
            if tokio::time::timeout(WRITER_DRAIN_AFTER_EOF, writer).await.is_err() {
                abort.abort();
            }
        }
    }
    // Dropping the session releases every lease it still holds.
    let released = session.leases().len();
    drop(session);
    daemon.sessions.fetch_sub(1, Ordering::Relaxed);
    tracing::info!(released_leases = released, "session closed");
}

/// Why a session's read loop ended.
#[derive(Debug, Clone, Copy)]
enum End {
    /// The daemon is stopping: in-flight requests finish and are answered.
    Shutdown,
    /// The client closed, stopped reading or broke the protocol: its work is cancelled.
    ClientGone(&'static str),
}

/// Ends the session for reusing request id `id` while it is in flight.
async fn duplicate_id(outbound: &mpsc::Sender<ServerMessage>, id: RequestId) -> End {
    let error = WireError::bad_request(format!(
        "request id {id} is already in flight on this session; ids must be unique among in-flight requests"
    ));
    let _ = outbound.send(ServerMessage::Fatal(error)).await;
    End::ClientGone("request id reused while in flight")
}

/// A client's self-chosen name as logs and status show it: at most [`MAX_CLIENT_NAME`]
/// characters, control characters and quotes escaped (it is the client's text, not ours).
fn printable_name(name: &str) -> String {
    let mut out: String = name.chars().take(MAX_CLIENT_NAME).flat_map(char::escape_debug).collect();
    if name.chars().count() > MAX_CLIENT_NAME {
        out.push('…');
    }
    out
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

/// Refusals decided before any work: the per-session in-flight and stream limits.
fn admit(session: &Session, body: &Request) -> Option<WireError> {
    if matches!(body, Request::Ping | Request::Status | Request::ListModels | Request::Weights | Request::Metrics) {
        return None; // answered at once, never counted
    }
    let in_flight = session.in_flight();
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
    frames_in: &mut FramedRead<R, ClientFrames>,
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
        Ok(Some(Ok(Incoming::Message(ClientMessage::Hello(hello))))) if hello.protocol_version == PROTOCOL_VERSION => {
            Ok(hello)
        }
        Ok(Some(Ok(Incoming::Message(ClientMessage::Hello(hello))))) => Err(WireError::new(
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
