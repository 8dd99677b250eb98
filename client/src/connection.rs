//! The connection: reach the daemon (or start a private `mlxd stdio`), check that the
//! socket is served by a user we trust, say Hello, then multiplex requests over one
//! transport.
//!
//! Every request registers a bounded channel under its id; a reader task routes frames to
//! it. A request whose future is dropped sends `Cancel` and stops listening.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mlxd_proto::codec::FrameCodec;
use mlxd_proto::frame::{DEFAULT_MAX_FRAME_LEN, HANDSHAKE_MAX_FRAME_LEN};
use mlxd_proto::{
    ClientMessage, ErrorCode, Event, Hello, Request, RequestId, Response, ServerMessage, Welcome, WireError,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::ClientError;

/// Frames a request's channel holds before stream events are dropped (load progress is
/// advisory; the final frame always waits for room).
const PER_REQUEST_BUFFER: usize = 32;
const OUTBOUND_BUFFER: usize = 64;

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Socket path [default: as the daemon decides, see `mlxd_proto::paths`].
    pub socket: Option<PathBuf>,
    /// Start a private `mlxd stdio` when no daemon answers (default: true).
    pub fallback: bool,
    /// The `mlxd` binary for the fallback [default: `$MLXD_BIN`, beside this executable,
    /// then `mlxd` on PATH].
    pub mlxd_binary: Option<PathBuf>,
    /// Shown in the daemon's logs.
    pub client_name: String,
    /// Largest frame accepted from the daemon.
    pub max_frame_len: u32,
    /// Retries of idempotent requests (embed, tokenize, detokenize, status, ping, list)
    /// refused with `Busy`.
    pub retry: RetryPolicy,
    /// Users besides this process's own and root whose daemon this client talks to: a
    /// socket served by anyone else is refused before anything is sent [default: from
    /// `$MLXD_TRUSTED_UIDS`, comma-separated].
    pub trusted_uids: Vec<u32>,
}

/// Environment variable with the uids (comma-separated) of other users whose daemons a
/// client trusts, e.g. a system service's own user.
pub const TRUSTED_UIDS_ENV: &str = "MLXD_TRUSTED_UIDS";

/// How `Busy` refusals of idempotent requests are retried: after the daemon's
/// `retry_after_ms` (10 ms if it gave none), with ±50 % jitter so clients refused together
/// do not come back together, at most `max_retries` times.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_retries: u32,
    /// Longest single wait, whatever the daemon suggests.
    pub max_wait: Duration,
}

impl RetryPolicy {
    /// No retries: every `Busy` reaches the caller (benchmarks want this).
    pub const NONE: RetryPolicy = RetryPolicy { max_retries: 0, max_wait: Duration::ZERO };
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_retries: 3, max_wait: Duration::from_secs(2) }
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            socket: None,
            fallback: true,
            mlxd_binary: None,
            client_name: std::env::args().next().map_or_else(|| "mlxd-client".into(), base_name),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            retry: RetryPolicy::default(),
            trusted_uids: trusted_uids_from_env(),
        }
    }
}

/// `$MLXD_TRUSTED_UIDS`; an entry that is not a uid is skipped with a warning (trusting
/// fewer users than meant fails safe, and the refusal then says what to add).
fn trusted_uids_from_env() -> Vec<u32> {
    let Some(value) = std::env::var_os(TRUSTED_UIDS_ENV) else { return Vec::new() };
    let value = value.to_string_lossy();
    let mut uids = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.parse() {
            Ok(uid) => uids.push(uid),
            Err(_) => eprintln!("mlxd-client: ignoring {entry:?} in {TRUSTED_UIDS_ENV}: not a uid"),
        }
    }
    uids
}

fn base_name(arg0: String) -> String {
    Path::new(&arg0).file_name().map_or(arg0.clone(), |n| n.to_string_lossy().into_owned())
}

/// What the client is connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Socket(PathBuf),
    /// A private `mlxd stdio` child process.
    Stdio {
        pid: Option<u32>,
    },
}

impl ConnectOptions {
    pub async fn connect(self) -> Result<Client, ClientError> {
        let path = match self.socket.clone() {
            Some(path) => path,
            None => {
                // SAFETY: getuid has no preconditions and cannot fail.
                let default = mlxd_proto::paths::client_socket(unsafe { libc::getuid() });
                for passed in &default.passed_over {
                    eprintln!(
                        "mlxd-client: passed over {}: its directory belongs to uid {}, not to you or root, \
                         so it is not used (set MLXD_SOCKET to use it anyway)",
                        passed.path.display(),
                        passed.directory_owner
                    );
                }
                default.path
            }
        };
        match tokio::net::UnixStream::connect(&path).await {
            Ok(stream) => {
                // Before the Hello: anyone who could create the socket's directory first
                // (e.g. /tmp/mlxd-$UID) could be listening, and must not get our texts.
                // An untrusted server is never a reason to fall back: it is an attack to
                // report, not a missing daemon.
                self.check_server(&path, &stream)?;
                let (reader, writer) = stream.into_split();
                Client::over(reader, writer, &self, Endpoint::Socket(path), None).await
            }
            Err(err) if self.fallback && is_no_daemon(&err) => {
                let binary = self.mlxd_binary.clone().unwrap_or_else(find_mlxd);
                eprintln!(
                    "mlxd-client: no daemon at {} ({err}); fell back to a private `mlxd stdio` \
                     (models load for this process only; start `mlxd serve` to share them)",
                    path.display()
                );
                let mut command = tokio::process::Command::new(&binary);
                if std::env::var_os("MLXD_LOG").is_none() {
                    // The child shares our stderr: keep it to warnings unless asked.
                    command.env("MLXD_LOG", "warn");
                }
                let mut child = command
                    .arg("stdio")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|source| ClientError::Fallback { binary: binary.clone(), source })?;
                let pid = child.id();
                let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                    return Err(ClientError::Fallback { binary, source: std::io::Error::other("no stdio pipes") });
                };
                Client::over(stdout, stdin, &self, Endpoint::Stdio { pid }, Some(child)).await
            }
            Err(source) => Err(ClientError::NoDaemon { path, source }),
        }
    }
}

impl ConnectOptions {
    /// Refuses a socket served by a user other than this process's, root, or one in
    /// `trusted_uids` (the server's uid comes from the kernel: `SO_PEERCRED`).
    fn check_server(&self, path: &Path, stream: &tokio::net::UnixStream) -> Result<(), ClientError> {
        let server_uid = stream.peer_cred()?.uid();
        // SAFETY: geteuid has no preconditions and cannot fail.
        let client_uid = unsafe { libc::geteuid() };
        if server_uid == client_uid || server_uid == 0 || self.trusted_uids.contains(&server_uid) {
            return Ok(());
        }
        Err(ClientError::UntrustedServer { path: path.to_path_buf(), server_uid, client_uid })
    }
}

fn is_no_daemon(err: &std::io::Error) -> bool {
    matches!(err.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused)
}

/// The `mlxd` binary: `$MLXD_BIN`, else the one beside this executable, else `mlxd` on PATH.
pub fn find_mlxd() -> PathBuf {
    if let Some(path) = std::env::var_os("MLXD_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if let Some(beside) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join("mlxd"))) {
        if beside.is_file() {
            return beside;
        }
    }
    PathBuf::from("mlxd")
}

type Routes = HashMap<RequestId, mpsc::Sender<ServerMessage>>;

#[derive(Debug)]
struct Inner {
    outbound: mpsc::Sender<ClientMessage>,
    routes: Arc<Mutex<Option<Routes>>>,
    next_id: AtomicU64,
    welcome: Welcome,
    endpoint: Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    retry: RetryPolicy,
    /// The fallback `mlxd stdio`; it exits when its stdin closes and is killed on drop.
    _child: Option<tokio::process::Child>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A connection to mlxd. Cheap to clone; usable from many tasks at once.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects with default options (socket from the environment, stdio fallback on).
    pub async fn connect() -> Result<Client, ClientError> {
        ConnectOptions::default().connect().await
    }

    /// Runs the protocol over any transport (a socket, a child's pipes, an in-memory pipe).
    pub async fn over<R, W>(
        reader: R,
        writer: W,
        options: &ConnectOptions,
        endpoint: Endpoint,
        child: Option<tokio::process::Child>,
    ) -> Result<Client, ClientError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut frames_in = FramedRead::new(reader, FrameCodec::<ServerMessage, ()>::new(HANDSHAKE_MAX_FRAME_LEN, 0));
        let mut frames_out = FramedWrite::new(writer, FrameCodec::<(), ClientMessage>::new(0, HANDSHAKE_MAX_FRAME_LEN));
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: options.client_name.clone(),
            pid: std::process::id(),
            max_frame_len: options.max_frame_len,
        };
        // A daemon that refuses the peer (its credentials) answers before reading the Hello
        // and closes, so the Hello may meet a closed socket: the refusal is still there to
        // be read, and says more than the broken pipe.
        let sent = frames_out.send(ClientMessage::Hello(hello)).await;
        let answer = frames_in.next().await;
        if let Err(err) = sent {
            return match answer {
                Some(Ok(ServerMessage::Fatal(refusal))) => Err(ClientError::Handshake(refusal)),
                _ => Err(err.into()),
            };
        }
        let welcome = match answer {
            Some(Ok(ServerMessage::Welcome(welcome))) => welcome,
            Some(Ok(ServerMessage::Fatal(err))) => return Err(ClientError::Handshake(err)),
            Some(Ok(other)) => {
                return Err(ClientError::Handshake(WireError::bad_request(format!("expected Welcome, got {other:?}"))))
            }
            Some(Err(err)) => return Err(err.into()),
            None => return Err(ClientError::Closed),
        };
        frames_in.decoder_mut().set_limits(options.max_frame_len, 0);
        frames_out.encoder_mut().set_limits(0, welcome.limits.max_frame_len);

        let (outbound, mut outbound_rx) = mpsc::channel::<ClientMessage>(OUTBOUND_BUFFER);
        let routes: Arc<Mutex<Option<Routes>>> = Arc::new(Mutex::new(Some(HashMap::new())));
        let writer_task = tokio::spawn(async move {
            while let Some(message) = outbound_rx.recv().await {
                if frames_out.send(message).await.is_err() {
                    break;
                }
            }
        });
        let reader_routes = routes.clone();
        let reader_task = tokio::spawn(async move {
            while let Some(Ok(message)) = frames_in.next().await {
                route(&reader_routes, message).await;
            }
            // Dropping every route wakes every waiting request with `Closed`.
            lock_routes(&reader_routes).take();
        });
        // Both tasks are aborted when the last clone of the client goes away.
        let inner = Arc::new(Inner {
            outbound,
            routes,
            next_id: AtomicU64::new(1),
            welcome,
            endpoint,
            tasks: vec![writer_task, reader_task],
            retry: options.retry,
            _child: child,
        });
        Ok(Client { inner })
    }

    pub fn welcome(&self) -> &Welcome {
        &self.inner.welcome
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// Sends a request and waits for its final answer; stream events go to `on_event`.
    pub async fn call_with_events(
        &self,
        body: Request,
        mut on_event: impl FnMut(Event),
    ) -> Result<Response, ClientError> {
        let (id, mut rx) = self.start_request(body, PER_REQUEST_BUFFER).await?;
        let mut guard = InFlight { inner: &self.inner, id, done: false };
        let result = loop {
            match rx.recv().await {
                Some(ServerMessage::Response { body, .. }) => break Ok(body),
                Some(ServerMessage::Error { error, .. }) => break Err(ClientError::Wire(error)),
                Some(ServerMessage::Event { event, .. }) => on_event(event),
                Some(other) => break Err(ClientError::Wire(WireError::internal(format!("misrouted frame {other:?}")))),
                None => break Err(ClientError::Closed),
            }
        };
        guard.done = true;
        result
    }

    /// Registers a request and sends it; its frames arrive on the returned channel (a
    /// buffer of `buffer` frames). The caller removes the route with [`Client::forget`].
    pub(crate) async fn start_request(
        &self,
        body: Request,
        buffer: usize,
    ) -> Result<(RequestId, mpsc::Receiver<ServerMessage>), ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(buffer);
        match self.inner.lock_routes().as_mut() {
            Some(routes) => routes.insert(id, tx),
            None => return Err(ClientError::Closed),
        };
        if self.inner.outbound.send(ClientMessage::Request { id, body }).await.is_err() {
            self.forget(id);
            return Err(ClientError::Closed);
        }
        Ok((id, rx))
    }

    pub(crate) async fn send_control(&self, message: ClientMessage) {
        let _ = self.inner.outbound.send(message).await;
    }

    pub(crate) fn forget(&self, id: RequestId) {
        if let Some(routes) = self.inner.lock_routes().as_mut() {
            routes.remove(&id);
        }
    }

    pub(crate) fn cancel_and_forget(&self, id: RequestId) {
        self.forget(id);
        let _ = self.inner.outbound.try_send(ClientMessage::Cancel { id });
    }

    /// Sends a request and waits for its final answer, retrying `Busy` refusals of
    /// idempotent requests as the connection's [`RetryPolicy`] says.
    pub async fn call(&self, body: Request) -> Result<Response, ClientError> {
        let policy = self.inner.retry;
        let idempotent = matches!(
            body,
            Request::Embed(_)
                | Request::Tokenize { .. }
                | Request::Detokenize { .. }
                | Request::Status
                | Request::Ping
                | Request::ListModels
        );
        let retries_allowed = if idempotent { policy.max_retries } else { 0 };
        for _ in 0..retries_allowed {
            match self.call_with_events(body.clone(), |_| {}).await {
                Err(ClientError::Wire(err)) if err.code == ErrorCode::Busy => {
                    let suggested = Duration::from_millis(err.retry_after_ms.unwrap_or(10).max(1));
                    tokio::time::sleep(jitter(suggested).min(policy.max_wait)).await;
                }
                other => return other,
            }
        }
        self.call_with_events(body, |_| {}).await
    }

    /// Queues a request whose answer nobody waits for (used by `Drop` impls).
    pub(crate) fn send_and_forget(&self, body: Request) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = self.inner.outbound.try_send(ClientMessage::Request { id, body });
    }
}

impl Inner {
    fn lock_routes(&self) -> MutexGuard<'_, Option<Routes>> {
        lock_routes(&self.routes)
    }
}

fn lock_routes(routes: &Mutex<Option<Routes>>) -> MutexGuard<'_, Option<Routes>> {
    routes.lock().unwrap_or_else(|p| p.into_inner())
}

/// Delivers one frame from the daemon to the request waiting for it.
async fn route(routes: &Mutex<Option<Routes>>, message: ServerMessage) {
    let (id, last) = match &message {
        ServerMessage::Response { id, .. } | ServerMessage::Error { id, .. } => (*id, true),
        ServerMessage::Event { id, .. } => (*id, false),
        ServerMessage::Fatal(err) => {
            eprintln!("mlxd-client: the daemon ended the session: {err}");
            lock_routes(routes).take();
            return;
        }
        ServerMessage::Welcome(_) => return,
    };
    let route = {
        let mut routes = lock_routes(routes);
        let Some(routes) = routes.as_mut() else {
            return;
        };
        if last {
            routes.remove(&id)
        } else {
            routes.get(&id).cloned()
        }
    };
    let Some(route) = route else { return }; // e.g. the answer to a fire-and-forget Release
    if last {
        let _ = route.send(message).await;
    } else {
        let _ = route.try_send(message);
    }
}

/// Removes a request's route and cancels it on the daemon if its future is dropped early.
struct InFlight<'a> {
    inner: &'a Inner,
    id: RequestId,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(routes) = self.inner.lock_routes().as_mut() {
            routes.remove(&self.id);
        }
        if !self.done {
            let _ = self.inner.outbound.try_send(ClientMessage::Cancel { id: self.id });
        }
    }
}

/// `wait` scaled by a random factor in [0.5, 1.5), so clients refused at the same moment
/// do not come back at the same moment.
fn jitter(wait: Duration) -> Duration {
    if wait.is_zero() {
        return wait;
    }
    rand::random_range(wait / 2..wait.saturating_mul(3) / 2)
}

pub(crate) fn unexpected(response: &Response) -> ClientError {
    ClientError::Wire(WireError::internal(format!("unexpected answer {response:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_retries_wait_half_to_one_and_a_half_times_the_hint_and_spread() {
        let hint = Duration::from_millis(10);
        let waits: Vec<Duration> = (0..1000).map(|_| jitter(hint)).collect();
        assert!(waits.iter().all(|w| *w >= hint / 2 && *w < hint * 3 / 2), "{waits:?}");
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 900, "{} distinct waits of 1000", distinct.len());
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
