//! What the worker's I/O thread and its MLX thread hand each other: the work items the
//! relay passes on in arrival order, the liveness the MLX thread records for heartbeats,
//! and the worker's arguments.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use mlxd_proto::worker::{FromWorker, Job, JobId};
use mlxd_proto::ModelKind;

/// What the relay hands the MLX thread, in arrival order.
#[derive(Debug)]
pub enum WorkItem {
    Job(JobId, Job),
    Credit(JobId, u32),
    Cancel(JobId),
    /// A spare worker's model.
    Load(mlxd_proto::worker::ModelToLoad),
}
/// Liveness shared by the MLX thread (which records progress) and the I/O thread (which
/// reports it in heartbeats).
#[derive(Debug)]
pub struct Pulse {
    started: Instant,
    last_progress_ms: AtomicU64,
    busy: AtomicBool,
}

impl Pulse {
    pub(super) fn new() -> Pulse {
        Pulse {
            started: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            busy: AtomicBool::new(true), // loading is work
        }
    }

    /// The work in hand moved forward.
    pub fn progress(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_progress_ms.store(now, Ordering::Relaxed);
    }

    /// Whether the MLX thread has work; becoming busy counts as progress.
    pub fn set_busy(&self, busy: bool) {
        if busy && !self.busy.load(Ordering::Relaxed) {
            self.progress();
        }
        self.busy.store(busy, Ordering::Relaxed);
    }

    pub(super) fn heartbeat(&self) -> FromWorker {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_progress_ms.load(Ordering::Relaxed);
        FromWorker::Heartbeat { busy: self.busy.load(Ordering::Relaxed), since_progress_ms: now.saturating_sub(last) }
    }
}

/// A worker's model and environment: from its command line, or for a spare worker from
/// the `Load` it is sent.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    pub name: String,
    pub kind: ModelKind,
    pub path: PathBuf,
    pub python: PathBuf,
    pub max_streams: usize,
    pub prompt_cache_bytes: u64,
    pub max_context: u32,
}

impl WorkerArgs {
    /// The arguments a spare worker (whose virtualenv is `python`) takes from `Load`.
    pub fn from_load(model: mlxd_proto::worker::ModelToLoad, python: PathBuf) -> WorkerArgs {
        WorkerArgs {
            name: model.name,
            kind: model.kind,
            path: PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&model.path)),
            python,
            max_streams: model.max_streams as usize,
            prompt_cache_bytes: model.prompt_cache_bytes,
            max_context: model.max_context,
        }
    }
}
