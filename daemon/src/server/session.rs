//! One client session of the binary protocol: the handshake, then a loop that reads
//! frames and hands each request to the request core ([`crate::core`]) — in a task of
//! the session when it may wait — and a writer that drains a bounded outbound queue. This
//! module knows frames and credit; what a request means is the core's.
//!
//! The transport is a parameter (any `AsyncRead` + `AsyncWrite`), so the same code serves
//! a Unix socket connection, `mlxd stdio`, and in-memory pipes in tests.
//!
//! Bounds: a session has at most `max_in_flight` requests running (more are refused with
//! `Busy` at once) and at most `OUTBOUND_CAPACITY` frames waiting to be written; a client
//! that stops reading therefore stalls only its own session.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mlxd_proto::bounds::DecodeLimits;
use mlxd_proto::codec::{ClientFrames, FrameCodec, Incoming};
use mlxd_proto::frame::{FrameError, ABSOLUTE_MAX_FRAME_LEN, HANDSHAKE_MAX_FRAME_LEN};
use mlxd_proto::{
    ClientMessage, ErrorCode, Event, Hello, Request, RequestId, Response, ServerMessage, Welcome, WireError,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::core::{caller, dispatch, kind, Caller, Control, Daemon, EventSink, Gone, Peer};

/// Frames queued for the client before request tasks wait for the writer.
pub const OUTBOUND_CAPACITY: usize = 64;

/// How long a new connection has to say Hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest client name kept for logs and status.
const MAX_CLIENT_NAME: usize = 64;

/// How long the writer may take to flush what is left once the client has gone.
const WRITER_DRAIN_AFTER_EOF: Duration = Duration::from_secs(1);

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
        // A connect-and-close (a liveness probe) is routine; anything else is worth a line.
        Err(NoHello::Closed) => {
            tracing::debug!(pid = ?peer.pid, "connection closed before the handshake");
            return;
        }
        Err(NoHello::Refused(error)) => {
            tracing::info!(pid = ?peer.pid, uid = ?peer.uid, %error, "handshake refused");
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
    let session = Arc::new(Caller::new(session_id, daemon.clone(), &peer));
    tracing::info!(uid = peer.uid.map_or(-1, i64::from), operator = session.operator, "session opened");
    daemon.sessions.fetch_add(1, Ordering::Relaxed);

    let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let writer_gone = CancellationToken::new();
    // A client that takes no frame for this long is gone, as if it had closed.
    let write_deadline = daemon.config.stream_pause_limit;
    let writer = tokio::spawn(write_frames(frames_out, outbound_rx, writer_gone.clone(), write_deadline));
    // The read loop's own answers wait for room like any frame, but never past the
    // client going away or the daemon stopping.
    let queue = |message: ServerMessage| {
        let (outbound, writer_gone, stop) = (&outbound, &writer_gone, &stop);
        async move {
            tokio::select! {
                sent = outbound.send(message) => sent.is_ok(),
                () = writer_gone.cancelled() => false,
                () = stop.cancelled() => false,
            }
        }
    };
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
                        session.cancel_all();
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
                    session.cancel_all();
                    let _ = queue(ServerMessage::Fatal(error)).await;
                    break End::ClientGone("oversized frame");
                };
                if session.in_flight().contains_key(&id) {
                    break duplicate_id(&session, &queue, id).await;
                }
                daemon.registry.metrics().request_done(
                    crate::metrics::NO_MODEL,
                    "unknown",
                    Err(ErrorCode::TooLarge),
                    Duration::ZERO,
                );
                if !queue(ServerMessage::Error { id, error }).await {
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
                session.cancel_all();
                let _ = queue(ServerMessage::Fatal(WireError::new(code, err.to_string()))).await;
                break End::ClientGone("bad frame");
            }
        };
        match message {
            ClientMessage::Request { id, body } => {
                // Two final frames for one id would leave the client unable to tell them
                // apart: reusing an id still in flight is a protocol violation.
                if session.in_flight().contains_key(&id) {
                    break duplicate_id(&session, &queue, id).await;
                }
                let done = Done::new(&session, &body);
                if let Some(refusal) = caller::admit(&session, &body) {
                    done.record(&session, &Err(refusal.code));
                    if !queue(ServerMessage::Error { id, error: refusal }).await {
                        break End::ClientGone("client stopped reading");
                    }
                    continue;
                }
                if let Some(reply) = dispatch::answer_now(&session, &body) {
                    done.record(&session, &outcome(&reply));
                    if !queue(final_frame(id, reply)).await {
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
                        if !queue(ServerMessage::Error { id, error: refusal }).await {
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
                        let events = RequestEvents { id, outbound: outbound.clone(), gone: session.gone.clone() };
                        let reply = dispatch::handle(&session, id, body, prepared, &events, &control).await;
                        done.record(&session, &outcome(&reply));
                        if let Err(error) = &reply {
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
                            permit.send(final_frame(id, reply));
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
                session.cancel_all();
                let _ = queue(ServerMessage::Fatal(error)).await;
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
        session.cancel_all();
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
    let released = session.lease_count();
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

/// Ends the session for reusing request id `id` while it is in flight: everything is
/// cancelled first (no final frame may follow the Fatal), then the Fatal is queued.
async fn duplicate_id<F, Fut>(session: &Caller, queue: &F, id: RequestId) -> End
where
    F: Fn(ServerMessage) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    session.cancel_all();
    let error = WireError::bad_request(format!(
        "request id {id} is already in flight on this session; ids must be unique among in-flight requests"
    ));
    let _ = queue(ServerMessage::Fatal(error)).await;
    End::ClientGone("request id reused while in flight")
}

/// A request's stream events, as frames on this session's outbound queue.
struct RequestEvents {
    id: RequestId,
    outbound: mpsc::Sender<ServerMessage>,
    gone: CancellationToken,
}

impl EventSink for RequestEvents {
    async fn send(&self, event: Event) -> Result<(), Gone> {
        tokio::select! {
            sent = self.outbound.send(ServerMessage::Event { id: self.id, event }) => sent.map_err(|_| Gone),
            () = self.gone.cancelled() => Err(Gone),
        }
    }

    fn offer(&self, event: Event) {
        let _ = self.outbound.try_send(ServerMessage::Event { id: self.id, event });
    }
}

fn outcome(reply: &Result<Response, WireError>) -> Result<(), ErrorCode> {
    reply.as_ref().map(|_| ()).map_err(|error| error.code)
}

fn final_frame(id: RequestId, reply: Result<Response, WireError>) -> ServerMessage {
    match reply {
        Ok(body) => ServerMessage::Response { id, body },
        Err(error) => ServerMessage::Error { id, error },
    }
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
    fn new(session: &Caller, body: &Request) -> Done {
        Done { kind: kind::kind(body), model: dispatch::model_label(session, body), arrived: std::time::Instant::now() }
    }

    fn record(&self, session: &Caller, outcome: &Result<(), ErrorCode>) {
        session.daemon.registry.metrics().request_done(&self.model, self.kind, *outcome, self.arrived.elapsed());
    }
}

/// Why a connection ended before its Hello.
enum NoHello {
    /// It closed without sending anything (a liveness probe).
    Closed,
    /// It is answered `Fatal` with this.
    Refused(WireError),
}

async fn handshake<R: AsyncRead + Unpin>(
    frames_in: &mut FramedRead<R, ClientFrames>,
    stop: &CancellationToken,
) -> Result<Hello, NoHello> {
    let first = tokio::select! {
        () = stop.cancelled() => return Err(NoHello::Refused(WireError::new(ErrorCode::Shutdown, "daemon is shutting down"))),
        first = tokio::time::timeout(HANDSHAKE_TIMEOUT, frames_in.next()) => first,
    };
    let refused = |error| Err(NoHello::Refused(error));
    match first {
        Err(_) => refused(WireError::bad_request(format!("no Hello within {HANDSHAKE_TIMEOUT:?}"))),
        Ok(None) => Err(NoHello::Closed),
        Ok(Some(Err(FrameError::TooLarge { len, max }))) => refused(WireError::new(
            ErrorCode::TooLarge,
            format!("first frame claims {len} bytes; a Hello is at most {max}"),
        )),
        Ok(Some(Err(err))) => refused(WireError::bad_request(format!("expected a Hello frame: {err}"))),
        Ok(Some(Ok(Incoming::Message(ClientMessage::Hello(hello))))) if hello.protocol_version == PROTOCOL_VERSION => {
            Ok(hello)
        }
        Ok(Some(Ok(Incoming::Message(ClientMessage::Hello(hello))))) => refused(WireError::new(
            ErrorCode::VersionMismatch,
            format!(
                "client speaks protocol version {}, this daemon speaks version {PROTOCOL_VERSION}",
                hello.protocol_version
            ),
        )),
        Ok(Some(Ok(_))) => refused(WireError::bad_request("the first frame must be Hello")),
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(
    mut frames_out: FramedWrite<W, FrameCodec<(), ServerMessage>>,
    mut outbound: mpsc::Receiver<ServerMessage>,
    gone: CancellationToken,
    deadline: Duration,
) {
    while let Some(message) = outbound.recv().await {
        let id = match &message {
            ServerMessage::Response { id, .. } | ServerMessage::Event { id, .. } => Some(*id),
            _ => None,
        };
        let Ok(sent) = tokio::time::timeout(deadline, frames_out.send(message)).await else {
            tracing::info!(?deadline, "the client took no frame for the write deadline; it is gone");
            break;
        };
        match sent {
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
