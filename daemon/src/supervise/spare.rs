//! The spare worker: an `mlxd worker --spare` kept started, its interpreter, MLX, mlx-lm
//! and the tokenizer libraries already imported, waiting without a model. The next load
//! of any model adopts it (sends it `Load`), so the load costs the model's weights rather
//! than a process start and the imports; a new spare is started once that load is done
//! (not during it: the two would compete for the CPU).
//!
//! One keeper task owns the spare: it reads the spare's link while it waits (heartbeats;
//! end of file when it dies, then a new one is started after a backoff), hands it over on
//! request, and kills it when the daemon shuts down. The spare is started like any worker
//! (same environment, death signal and `--store`, so the orphan sweep covers it too).

use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use mlxd_proto::codec::FrameCodec;
use mlxd_proto::frame::ABSOLUTE_MAX_FRAME_LEN;
use mlxd_proto::worker::{FromWorker, ToWorker};
use tokio::net::UnixStream;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::config::DaemonConfig;
use crate::supervise::process::{spawn_spare_child, KillOnDrop};
use crate::supervise::stderr::{forward_stderr, StderrTail};
use crate::tasks::Tasks;

/// A spare worker's end of the link.
pub type SpareLink = Framed<UnixStream, FrameCodec<FromWorker, ToWorker>>;

/// A started spare worker, handed to the load that adopts it.
#[derive(Debug)]
pub struct Spare {
    pub link: SpareLink,
    pub child: Child,
    pub stderr: StderrTail,
    pub pid: u32,
}

/// How long a load waits for the keeper to hand over a ready spare (it answers at once;
/// this only bounds a keeper that cannot run). Without a ready spare a load does not wait.
const TAKE_WAIT: Duration = Duration::from_secs(2);
/// The longest an adopted spare's load may delay the next spare.
const AFTER_ADOPTION_MAX: Duration = Duration::from_secs(60);
/// After that load, the next spare waits this much longer, so that its imports (a couple
/// of CPU seconds) do not compete with the first requests to the model just loaded.
const AFTER_ADOPTION_PAUSE: Duration = Duration::from_secs(2);
/// A spare that dies is replaced after this, doubled each time in a row, up to the max.
const RESPAWN_BACKOFF: Duration = Duration::from_secs(1);
const RESPAWN_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A spare that lived this long resets the backoff; this many failures in a row (a broken
/// environment) stop the spares for good, with an error in the log.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
const GIVE_UP_AFTER: u32 = 6;

/// The daemon's spare worker (none when `spare_workers` is 0).
#[derive(Debug)]
pub struct SparePool {
    enabled: bool,
    requests: mpsc::Sender<oneshot::Sender<Spare>>,
    /// The keeper's end, taken when it starts.
    keeper: Mutex<Option<mpsc::Receiver<oneshot::Sender<Spare>>>>,
    /// The adopting load is done (ready or failed): the next spare may start.
    adopted_done: Notify,
    /// A spare has finished its imports and waits: only then does a load take it (one
    /// still importing might yet fail, which must not count against the model).
    ready: std::sync::atomic::AtomicBool,
}

impl SparePool {
    pub fn new(config: &DaemonConfig) -> Arc<SparePool> {
        let (requests, keeper) = mpsc::channel(1);
        Arc::new(SparePool {
            enabled: config.spare_workers > 0,
            requests,
            keeper: Mutex::new(Some(keeper)),
            adopted_done: Notify::new(),
            ready: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Starts the keeper (once; a no-op when spares are off). Within the tokio runtime.
    pub fn start(self: &Arc<Self>, config: Arc<DaemonConfig>, tasks: &Tasks) {
        let keeper = self.keeper.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let (true, Some(requests)) = (self.enabled, keeper) {
            let pool = self.clone();
            let stop = tasks.closing_token();
            let spawner = tasks.clone();
            tasks.spawn("spare worker", keep(pool, config, requests, spawner, stop));
        }
    }

    /// The spare, if one has finished its imports and waits.
    pub async fn take(&self) -> Option<Spare> {
        if !self.enabled || !self.ready.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let (reply, mut answer) = oneshot::channel();
        self.requests.try_send(reply).ok()?;
        match tokio::time::timeout(TAKE_WAIT, &mut answer).await {
            Ok(spare) => spare.ok(),
            Err(_) => {
                // Closed before giving up, so a spare sent at this very moment is still
                // taken here rather than dropped (which would kill it).
                answer.close();
                answer.try_recv().ok()
            }
        }
    }

    /// The load that adopted the spare is over; a new spare may start.
    pub fn adoption_done(&self) {
        self.adopted_done.notify_one();
    }
}

/// Why a spare stopped waiting.
enum End {
    Adopted,
    Died(String),
    Stop,
}

async fn keep(
    pool: Arc<SparePool>,
    config: Arc<DaemonConfig>,
    mut requests: mpsc::Receiver<oneshot::Sender<Spare>>,
    tasks: Tasks,
    stop: CancellationToken,
) {
    let mut backoff = RESPAWN_BACKOFF;
    let mut failures = 0;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let started = tokio::time::Instant::now();
        let end = match start_spare(&config, &tasks) {
            Ok(spare) => wait(&pool, spare, &mut requests, config.restart.stuck_after, &stop).await,
            Err(err) => End::Died(format!("cannot start: {err}")),
        };
        pool.ready.store(false, std::sync::atomic::Ordering::Release);
        if started.elapsed() >= HEALTHY_AFTER {
            (backoff, failures) = (RESPAWN_BACKOFF, 0);
        }
        match end {
            End::Stop => return,
            End::Adopted => {
                (backoff, failures) = (RESPAWN_BACKOFF, 0);
                tokio::select! {
                    () = pool.adopted_done.notified() => {}
                    () = tokio::time::sleep(AFTER_ADOPTION_MAX) => {}
                    () = stop.cancelled() => return,
                }
                tokio::select! {
                    () = tokio::time::sleep(AFTER_ADOPTION_PAUSE) => {}
                    () = stop.cancelled() => return,
                }
            }
            End::Died(why) => {
                failures += 1;
                if failures >= GIVE_UP_AFTER {
                    tracing::error!(
                        "the spare worker {why}; {failures} in a row failed, so no more are started \
                         (loads start their own workers)"
                    );
                    return;
                }
                tracing::warn!(retry_in = ?backoff, "the spare worker {why}; starting another");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(RESPAWN_BACKOFF_MAX);
            }
        }
    }
}

fn start_spare(config: &DaemonConfig, tasks: &Tasks) -> std::io::Result<Spare> {
    let (ours, theirs) = StdUnixStream::pair()?;
    let mut child = spawn_spare_child(config, theirs.into())?;
    let pid = child.id().unwrap_or(0);
    let stderr = StderrTail::default();
    stderr.set_model("(spare)");
    if let Some(pipe) = child.stderr.take() {
        tasks.spawn("worker stderr", forward_stderr(pipe, stderr.clone(), pid));
    }
    ours.set_nonblocking(true)?;
    let link = Framed::new(
        UnixStream::from_std(ours)?,
        FrameCodec::<FromWorker, ToWorker>::new(ABSOLUTE_MAX_FRAME_LEN, ABSOLUTE_MAX_FRAME_LEN),
    );
    tracing::info!(pid, "spare worker started");
    Ok(Spare { link, child, stderr, pid })
}

/// Holds `spare` until a load takes it, it dies, or the daemon stops (which kills it).
async fn wait(
    pool: &SparePool,
    spare: Spare,
    requests: &mut mpsc::Receiver<oneshot::Sender<Spare>>,
    stuck_after: Duration,
    stop: &CancellationToken,
) -> End {
    let Spare { mut link, child, stderr, pid } = spare;
    // Killed if this returns without handing it over.
    let mut child = KillOnDrop(Some(child));
    loop {
        // The link first: a spare that died is never handed over in the same turn.
        tokio::select! {
            biased;
            frame = link.next() => match frame {
                // Its start (Starting 0/1, then 1/1 when its imports are done).
                Some(Ok(FromWorker::Progress { stage: mlxd_proto::LoadStage::Starting, done, total })) => {
                    if done >= total && !pool.ready.swap(true, std::sync::atomic::Ordering::AcqRel) {
                        tracing::info!(pid, "spare worker ready");
                    }
                }
                Some(Ok(FromWorker::Heartbeat { busy, since_progress_ms })) => {
                    // Importing (busy) without progress for as long as a load may be: hung.
                    if busy && Duration::from_millis(since_progress_ms) > stuck_after {
                        return End::Died(format!("made no progress for {} s while importing", stuck_after.as_secs()));
                    }
                }
                Some(Ok(FromWorker::Progress { .. })) => {}
                Some(Ok(FromWorker::LoadFailed { message })) => return End::Died(format!("failed: {message}")),
                Some(Ok(other)) => return End::Died(format!("sent {other:?} before it was given a model")),
                Some(Err(err)) => return End::Died(format!("broke its link: {err}")),
                None => {
                    let status = child.wait_briefly().await;
                    stderr.wait_closed().await;
                    let tail = stderr.joined();
                    return End::Died(if tail.is_empty() { status } else { format!("{status}: {tail}") });
                }
            },
            request = requests.recv() => {
                let Some(reply) = request else { return End::Stop };
                let Some(process) = child.0.take() else { return End::Died("was already reaped".into()) };
                match reply.send(Spare { link, child: process, stderr: stderr.clone(), pid }) {
                    Ok(()) => return End::Adopted,
                    // The load stopped waiting: keep the spare for the next one.
                    Err(back) => {
                        link = back.link;
                        child = KillOnDrop(Some(back.child));
                    }
                }
            }
            () = stop.cancelled() => return End::Stop,
        }
    }
}
