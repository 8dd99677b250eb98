//! Worker processes seen from the supervisor: spawn `mlxd worker` on a socketpair, wait for
//! it to load, route jobs and their answers, and notice when it dies.
//!
//! A worker's death never takes the daemon down: the link's reader sees EOF, marks the
//! handle dead and fails every job still pending on it with `WorkerFailed`, so no accepted
//! request is left without an answer; the cause (exit status or signal, and the worker's
//! last lines on stderr) is kept for the model's status and its circuit breaker. The
//! model ([`crate::registry::Model`]) restarts workers with backoff and replays what can
//! be replayed.

use std::collections::HashMap;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use mlxd_proto::codec::FrameCodec;
use mlxd_proto::frame::ABSOLUTE_MAX_FRAME_LEN;
use mlxd_proto::worker::{FromWorker, Job, JobId, JobOutput, ToWorker, WorkerReady};
use mlxd_proto::{ErrorCode, LoadProgress, LoadStage, WireError};
use tokio::net::UnixStream;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::Framed;

use crate::config::DaemonConfig;
use crate::spec::ModelSpec;
use crate::tasks::Tasks;
use process::{spawn_child, KillOnDrop};

mod fault_hook;
pub mod health;
mod orphans;
mod process;
pub mod spare;
mod stderr;
mod watchdog;

pub use orphans::end_orphans;
pub use stderr::StderrTail;
use stderr::{forward_stderr, tail_suffix};
use watchdog::{watchdog, Beat};

type Reply = oneshot::Sender<Result<JobOutput, WireError>>;

/// A generated piece: text, the token that completed it, its log probabilities if asked,
/// and the tool calls it completed.
#[derive(Debug)]
pub struct TokenEvent {
    pub text: String,
    pub token: Option<u32>,
    pub logprobs: Option<mlxd_proto::TokenLogprobs>,
    pub tool_calls: Vec<mlxd_proto::ToolCall>,
}

impl TokenEvent {
    /// The client's events for it: the token, then each call.
    pub fn into_events(self) -> impl Iterator<Item = mlxd_proto::Event> {
        let token = mlxd_proto::Event::Token { text: self.text, token: self.token, logprobs: self.logprobs };
        std::iter::once(token).chain(self.tool_calls.into_iter().map(mlxd_proto::Event::ToolCall))
    }
}

/// Who waits for a job: its final answer, and for a stream, its token events.
#[derive(Debug)]
struct Waiter {
    reply: Reply,
    tokens: Option<mpsc::Sender<TokenEvent>>,
}

/// Jobs sent but not yet answered. `closed` is set, under the same lock, when the link
/// dies, so a job can never be registered after the failure sweep and wait forever.
#[derive(Debug, Default)]
struct Pending {
    jobs: HashMap<JobId, Waiter>,
    closed: Option<String>,
    /// Set by `stop`: the link closing is then expected, not a failure.
    stopping: bool,
}

/// A generation stream running on a worker.
#[derive(Debug)]
pub struct StreamJob {
    pub id: JobId,
    /// Never holds more than the credit granted to the worker for this stream.
    pub tokens: mpsc::Receiver<TokenEvent>,
    pub done: oneshot::Receiver<Result<JobOutput, WireError>>,
}

/// A running, loaded worker.
#[derive(Debug)]
pub struct WorkerHandle {
    pub ready: WorkerReady,
    outbound: mpsc::Sender<ToWorker>,
    pending: Arc<Mutex<Pending>>,
    next_job: AtomicU64,
    /// Killed (SIGKILL) when the handle is dropped: a worker never outlives its handle.
    child: Arc<Mutex<Option<Child>>>,
    /// Turns true when the link closes (the worker exited or was stopped).
    gone: watch::Receiver<bool>,
    /// Set once the worker has answered a job successfully: a worker that crashes after
    /// serving is not a crash loop.
    served: Arc<AtomicBool>,
    stderr: StderrTail,
    model: String,
    /// Set by the watchdog when it kills the worker: why.
    stuck: Arc<Mutex<Option<String>>>,
    tasks: Tasks,
}

impl WorkerHandle {
    /// Starts a worker for `spec` and waits until it has loaded the model, reporting load
    /// progress through `progress`.
    pub async fn spawn(
        config: &DaemonConfig,
        spec: &ModelSpec,
        tasks: &Tasks,
        progress: impl Fn(LoadProgress),
    ) -> Result<WorkerHandle, WireError> {
        tracing::info!(model = %spec.name, "starting worker");
        let (ours, theirs) = StdUnixStream::pair().map_err(|e| spawn_error(spec, e))?;
        let mut child = spawn_child(config, spec, theirs.into()).map_err(|e| spawn_error(spec, e))?;
        let stderr = StderrTail::default();
        stderr.set_model(&spec.name);
        if let Some(pipe) = child.stderr.take() {
            tasks.spawn("worker stderr", forward_stderr(pipe, stderr.clone(), child.id().unwrap_or(0)));
        }
        ours.set_nonblocking(true).map_err(|e| spawn_error(spec, e))?;
        let stream = UnixStream::from_std(ours).map_err(|e| spawn_error(spec, e))?;
        Self::attach(Box::new(stream), Some(child), stderr, spec, config.restart.stuck_after, tasks, progress).await
    }

    /// Takes over a worker on `link` (its process `child`, if it is one): waits until it
    /// has loaded the model, then routes jobs to it. The link is any byte stream, so unit
    /// tests attach in-process workers on in-memory pipes.
    pub async fn attach(
        link: Box<dyn LinkIo>,
        child: Option<Child>,
        stderr: StderrTail,
        spec: &ModelSpec,
        stuck_after: std::time::Duration,
        tasks: &Tasks,
        progress: impl Fn(LoadProgress),
    ) -> Result<WorkerHandle, WireError> {
        let link =
            Framed::new(link, FrameCodec::<FromWorker, ToWorker>::new(ABSOLUTE_MAX_FRAME_LEN, ABSOLUTE_MAX_FRAME_LEN));
        Self::attach_framed(link, child, stderr, spec, stuck_after, tasks, progress).await
    }

    /// Gives the spare worker `spare` the model `spec` to load, then takes it over as
    /// [`WorkerHandle::attach`] does: its pid becomes the model's worker.
    pub async fn adopt(
        spare: spare::Spare,
        config: &DaemonConfig,
        spec: &ModelSpec,
        tasks: &Tasks,
        progress: impl Fn(LoadProgress),
    ) -> Result<WorkerHandle, WireError> {
        let spare::Spare { mut link, child, stderr, pid } = spare;
        tracing::info!(model = %spec.name, pid, "adopting the spare worker");
        stderr.set_model(&spec.name);
        let load = ToWorker::Load(mlxd_proto::worker::ModelToLoad {
            name: spec.name.clone(),
            kind: spec.kind,
            path: std::os::unix::ffi::OsStrExt::as_bytes(spec.path.as_os_str()).to_vec(),
            max_streams: spec.max_streams as u32,
            prompt_cache_bytes: spec.prompt_cache_bytes,
            max_context: spec.max_context,
        });
        if let Err(err) = link.send(load).await {
            let _ = KillOnDrop(Some(child)).wait_briefly().await;
            return Err(WireError::new(ErrorCode::WorkerFailed, format!("the spare worker's link broke: {err}")));
        }
        // The same link, behind the type every worker link has (bytes already read kept).
        let parts = link.into_parts();
        let mut boxed =
            tokio_util::codec::FramedParts::new::<ToWorker>(Box::new(parts.io) as Box<dyn LinkIo>, parts.codec);
        boxed.read_buf = parts.read_buf;
        boxed.write_buf = parts.write_buf;
        let link = Framed::from_parts(boxed);
        Self::attach_framed(link, Some(child), stderr, spec, config.restart.stuck_after, tasks, progress).await
    }

    async fn attach_framed(
        mut link: Framed<Box<dyn LinkIo>, FrameCodec<FromWorker, ToWorker>>,
        child: Option<Child>,
        stderr: StderrTail,
        spec: &ModelSpec,
        stuck_after: std::time::Duration,
        tasks: &Tasks,
        progress: impl Fn(LoadProgress),
    ) -> Result<WorkerHandle, WireError> {
        // Kill the child if loading fails or is abandoned: it must not outlive this call.
        let mut child = KillOnDrop(child);

        let ready = loop {
            let Ok(frame) = tokio::time::timeout(stuck_after, link.next()).await else {
                let status = child.wait_briefly().await;
                return Err(WireError::new(
                    ErrorCode::WorkerFailed,
                    format!(
                        "worker for {} sent nothing for {} s while loading and {status}{}",
                        spec.name,
                        stuck_after.as_secs(),
                        tail_suffix(&stderr)
                    ),
                ));
            };
            match frame {
                Some(Ok(FromWorker::Progress { stage, done, total })) => {
                    progress(LoadProgress { model: spec.name.clone(), stage, done, total })
                }
                Some(Ok(FromWorker::Heartbeat { busy, since_progress_ms })) => {
                    let beat = Beat { at: std::time::Instant::now(), busy, since_progress_ms };
                    if let Some(why) = beat.stuck(stuck_after) {
                        let status = child.wait_briefly().await; // kills it: it is not exiting
                        return Err(WireError::new(
                            ErrorCode::WorkerFailed,
                            format!(
                                "worker for {} {why} while loading; it {status}{}",
                                spec.name,
                                tail_suffix(&stderr)
                            ),
                        ));
                    }
                }
                Some(Ok(FromWorker::Ready(ready))) => break ready,
                Some(Ok(FromWorker::LoadFailed { message })) => {
                    return Err(WireError::new(
                        ErrorCode::WorkerFailed,
                        format!("loading {} failed: {message}", spec.name),
                    ))
                }
                None => {
                    let status = child.wait_briefly().await;
                    stderr.wait_closed().await;
                    return Err(WireError::new(
                        ErrorCode::WorkerFailed,
                        format!("worker for {} {status} while loading{}", spec.name, tail_suffix(&stderr)),
                    ));
                }
                Some(Ok(other)) => {
                    return Err(WireError::internal(format!("worker sent {other:?} before it was ready")))
                }
                Some(Err(err)) => {
                    return Err(WireError::new(
                        ErrorCode::WorkerFailed,
                        format!("worker link broke while loading {}: {err}", spec.name),
                    ))
                }
            }
        };
        progress(LoadProgress { model: spec.name.clone(), stage: LoadStage::Ready, done: 1, total: 1 });

        let (sink, stream) = link.split();
        let child = Arc::new(Mutex::new(child.0.take()));
        // The outbound queue never holds more than the model's admission capacity allows
        // in flight, plus a Shutdown.
        let (outbound, outbound_rx) = mpsc::channel(2 * spec.queue_capacity + 16);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let served = Arc::new(AtomicBool::new(false));
        let (gone_tx, gone) = watch::channel(false);
        let beat = Arc::new(Mutex::new(Beat { at: std::time::Instant::now(), busy: false, since_progress_ms: 0 }));
        let stuck = Arc::new(Mutex::new(None));
        tasks.spawn("worker link writer", write_link(sink, outbound_rx, pending.clone(), child.clone()));
        let link = Link { pending: pending.clone(), served: served.clone(), beat: beat.clone(), gone: gone_tx };
        tasks.spawn("worker link reader", read_link(stream, link, spec.name.clone(), ready.pid));
        tasks.spawn(
            "worker watchdog",
            watchdog(beat, gone.clone(), stuck.clone(), stuck_after, spec.name.clone(), ready.pid),
        );
        Ok(WorkerHandle {
            ready,
            outbound,
            pending,
            next_job: AtomicU64::new(1),
            child,
            gone,
            served,
            stderr,
            model: spec.name.clone(),
            stuck,
            tasks: tasks.clone(),
        })
    }

    /// Waits until the worker's link closes (it exited, crashed or was stopped).
    pub async fn exited(&self) {
        let mut gone = self.gone.clone();
        let _ = gone.wait_for(|gone| *gone).await;
    }

    /// Whether the link closed because the daemon stopped the worker (not a failure).
    pub fn was_stopped(&self) -> bool {
        lock(&self.pending).stopping
    }

    /// Whether the worker ever answered a job successfully.
    pub fn has_served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// Why a dead worker died: its exit status or signal and its last stderr lines.
    pub async fn death_cause(&self) -> String {
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        let status = KillOnDrop(child).wait_briefly().await;
        self.stderr.wait_closed().await;
        let stuck = self.stuck.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let stuck = stuck.map_or_else(String::new, |why| format!(" after the watchdog found it stuck ({why})"));
        format!("worker {} for {} {status}{stuck}{}", self.ready.pid, self.model, tail_suffix(&self.stderr))
    }

    /// Runs one job on the worker and waits for its answer. Fails with `WorkerFailed` if
    /// the worker dies first.
    pub async fn run(&self, job: Job) -> Result<JobOutput, WireError> {
        let (_, answer) = self.submit(job, None).await?;
        answer.await.unwrap_or_else(|_| Err(WireError::new(ErrorCode::WorkerFailed, "worker dropped the job")))
    }

    /// Starts a generation stream. `max_credit` bounds the events it may have outstanding,
    /// which sizes its buffer: the worker never sends more than the credit it was granted.
    pub async fn start_stream(&self, job: Job, max_credit: usize) -> Result<StreamJob, WireError> {
        let (tokens_tx, tokens) = mpsc::channel(max_credit.max(1));
        let (id, done) = self.submit(job, Some(tokens_tx)).await?;
        Ok(StreamJob { id, tokens, done })
    }

    /// Lets stream `id` produce `events` more tokens.
    pub async fn grant(&self, id: JobId, events: u32) {
        let _ = self.outbound.send(ToWorker::Credit { id, events }).await;
    }

    /// Stops stream `id` at its next step. Never blocks: used from `Drop`.
    pub fn cancel(&self, id: JobId) {
        if let Err(mpsc::error::TrySendError::Full(message)) = self.outbound.try_send(ToWorker::Cancel { id }) {
            let outbound = self.outbound.clone();
            self.tasks.spawn("worker cancel", async move {
                let _ = outbound.send(message).await;
            });
        }
    }

    async fn submit(
        &self,
        job: Job,
        tokens: Option<mpsc::Sender<TokenEvent>>,
    ) -> Result<(JobId, oneshot::Receiver<Result<JobOutput, WireError>>), WireError> {
        let id = self.next_job.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if let Some(cause) = &pending.closed {
                return Err(WireError::new(ErrorCode::WorkerFailed, cause.clone()));
            }
            pending.jobs.insert(id, Waiter { reply, tokens });
        }
        if self.outbound.send(ToWorker::Job { id, job }).await.is_err() {
            lock(&self.pending).jobs.remove(&id);
            return Err(WireError::new(ErrorCode::WorkerFailed, "worker link is closed"));
        }
        Ok((id, answer))
    }

    /// The worker's resident memory (Linux: VmRSS from /proc; 0 where unknown).
    pub fn resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.ready.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    /// Whether the worker is still connected.
    pub fn is_alive(&self) -> bool {
        lock(&self.pending).closed.is_none()
    }

    /// Asks the worker to finish what it has and exit; kills it if it has not within `grace`.
    pub async fn stop(&self, grace: std::time::Duration) {
        lock(&self.pending).stopping = true;
        let _ = self.outbound.send(ToWorker::Shutdown).await;
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = child {
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                tracing::warn!(pid = self.ready.pid, "worker did not exit in time; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    // A panic while holding this lock cannot leave the map inconsistent (single inserts
    // and removes), so a poisoned lock is still usable.
    pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn spawn_error(spec: &ModelSpec, err: std::io::Error) -> WireError {
    WireError::new(ErrorCode::WorkerFailed, format!("cannot start a worker for {}: {err}", spec.name))
}

/// A worker link's byte stream (a socketpair to a process, or an in-memory pipe).
pub trait LinkIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> LinkIo for T {}

type LinkSink = futures_util::stream::SplitSink<Framed<Box<dyn LinkIo>, FrameCodec<FromWorker, ToWorker>>, ToWorker>;
type LinkStream = futures_util::stream::SplitStream<Framed<Box<dyn LinkIo>, FrameCodec<FromWorker, ToWorker>>>;

async fn write_link(
    mut sink: LinkSink,
    mut outbound: mpsc::Receiver<ToWorker>,
    pending: Arc<Mutex<Pending>>,
    child: Arc<Mutex<Option<Child>>>,
) {
    while let Some(message) = outbound.recv().await {
        let job = match &message {
            ToWorker::Job { id, .. } => Some(*id),
            _ => None,
        };
        let err = match sink.send(message).await {
            Ok(()) => continue,
            Err(err) => err,
        };
        // A job too large for the link fails alone, with a typed error.
        if let (Some(id), mlxd_proto::frame::FrameError::TooLarge { len, max }) = (job, &err) {
            if let Some(waiter) = lock(&pending).jobs.remove(&id) {
                let error = WireError::new(
                    ErrorCode::TooLarge,
                    format!("the job is {len} bytes, over the worker link's limit of {max}; send less per request"),
                );
                let _ = waiter.reply.send(Err(error));
            }
            continue;
        }
        // The link is unusable: end the worker now, so its reader sees the link close and
        // the model restarts it (replaying what it can) at once, not after the watchdog.
        // Through the child's handle, never a bare pid: a worker reaped already may have
        // had its pid reused. (An in-process worker sees the link close when we return.)
        tracing::warn!(%err, "writing to worker failed; killing it");
        if let Some(child) = child.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let _ = child.start_kill();
        }
        break;
    }
}

/// What the link's reader updates.
struct Link {
    pending: Arc<Mutex<Pending>>,
    served: Arc<AtomicBool>,
    beat: Arc<Mutex<Beat>>,
    gone: watch::Sender<bool>,
}

async fn read_link(mut stream: LinkStream, link: Link, model: String, pid: u32) {
    let Link { pending, served, beat, gone } = link;
    let cause = loop {
        match stream.next().await {
            Some(Ok(FromWorker::Heartbeat { busy, since_progress_ms })) => {
                *beat.lock().unwrap_or_else(|p| p.into_inner()) =
                    Beat { at: std::time::Instant::now(), busy, since_progress_ms };
            }
            Some(Ok(FromWorker::Done { id, result })) => {
                if result.is_ok() {
                    served.store(true, Ordering::Relaxed);
                }
                let waiter = lock(&pending).jobs.remove(&id);
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.reply.send(result);
                    }
                    None => {
                        tracing::warn!(%model, job = id, "worker answered a job nobody waits for")
                    }
                }
            }
            Some(Ok(FromWorker::Token { id, text, token, logprobs, tool_calls })) => {
                let tokens = lock(&pending).jobs.get(&id).and_then(|w| w.tokens.clone());
                if let Some(tokens) = tokens {
                    // Cannot be full: the worker sends no more than the credit it was given,
                    // and the buffer is as large as the most credit a stream may have.
                    if let Err(mpsc::error::TrySendError::Full(_)) =
                        tokens.try_send(TokenEvent { text, token, logprobs, tool_calls })
                    {
                        tracing::error!(%model, job = id, "worker exceeded a stream's credit; token dropped");
                    }
                }
            }
            Some(Ok(other)) => {
                tracing::warn!(%model, "unexpected message from a ready worker: {other:?}")
            }
            Some(Err(err)) => break format!("worker {pid} for {model} sent a bad frame: {err}"),
            None => break format!("worker {pid} for {model} exited"),
        }
    };
    let orphans = {
        let mut pending = lock(&pending);
        if pending.stopping {
            tracing::info!(%model, pid, "worker stopped");
        } else {
            tracing::warn!(%model, pid, "{cause}");
        }
        pending.closed = Some(cause.clone());
        std::mem::take(&mut pending.jobs)
    };
    for (_, waiter) in orphans {
        let _ = waiter.reply.send(Err(WireError::new(ErrorCode::WorkerFailed, cause.clone())));
    }
    let _ = gone.send(true);
}
