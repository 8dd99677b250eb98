//! The model catalog and each model's state: which are loaded, by which worker, who holds
//! leases on them, and how many requests are in flight.
//!
//! State changes happen under one lock per model. Concurrent requests for a model that is
//! not loaded share one load: the first starts it in a task of its own (so it completes
//! even if that client goes away) and everyone waits on the same watch channel, receiving
//! its progress. Leases and in-flight requests are counted by guards whose `Drop` gives the
//! count back, so a session that ends however it ends releases everything it held.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use mlxd_proto::{ErrorCode, LoadProgress, LoadStage, ModelInfo, ModelState, WireError};
use tokio::sync::watch;

use crate::config::{DaemonConfig, ModelSpec};
use crate::sched::Admission;
use crate::supervise::WorkerHandle;

/// What a load in progress has to say to those waiting on it.
#[derive(Debug, Clone)]
enum LoadStatus {
    Progress(LoadProgress),
    Ready(Arc<WorkerHandle>),
    Failed(WireError),
}

#[derive(Debug)]
enum Slot {
    Unloaded,
    Loading(watch::Receiver<LoadStatus>),
    Ready(Arc<WorkerHandle>),
    Failed(WireError),
}

/// One servable model.
#[derive(Debug)]
pub struct Model {
    pub spec: ModelSpec,
    slot: Mutex<Slot>,
    leases: AtomicU32,
    in_flight: AtomicU32,
    pub admission: Admission,
}

impl Model {
    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A ready worker for this model, loading it first if needed. `progress` hears about
    /// the load, if one happens, whoever started it.
    pub async fn ready(
        self: &Arc<Self>,
        config: &Arc<DaemonConfig>,
        mut progress: impl FnMut(LoadProgress),
    ) -> Result<Arc<WorkerHandle>, WireError> {
        let mut status = {
            let mut slot = self.slot();
            match &*slot {
                Slot::Ready(worker) if worker.is_alive() => return Ok(worker.clone()),
                Slot::Loading(status) => status.clone(),
                _ => {
                    let (tx, rx) = watch::channel(LoadStatus::Progress(LoadProgress {
                        model: self.spec.name.clone(),
                        stage: LoadStage::Starting,
                        done: 0,
                        total: 1,
                    }));
                    *slot = Slot::Loading(rx.clone());
                    tokio::spawn(self.clone().load(config.clone(), tx));
                    rx
                }
            }
        };
        loop {
            let current = status.borrow_and_update().clone();
            match current {
                LoadStatus::Ready(worker) => return Ok(worker),
                LoadStatus::Failed(err) => return Err(err),
                LoadStatus::Progress(p) => progress(p),
            }
            if status.changed().await.is_err() {
                // The sender is gone; its final value is in the slot.
                return match &*self.slot() {
                    Slot::Ready(worker) => Ok(worker.clone()),
                    Slot::Failed(err) => Err(err.clone()),
                    _ => Err(WireError::internal(format!("load of {} ended without a result", self.spec.name))),
                };
            }
        }
    }

    async fn load(self: Arc<Self>, config: Arc<DaemonConfig>, status: watch::Sender<LoadStatus>) {
        tracing::info!(model = %self.spec.name, path = %self.spec.path.display(), "loading");
        let started = std::time::Instant::now();
        let result = WorkerHandle::spawn(&config, &self.spec, |p| {
            let _ = status.send(LoadStatus::Progress(p));
        })
        .await;
        let mut slot = self.slot();
        match result {
            Ok(worker) => {
                tracing::info!(
                    model = %self.spec.name,
                    pid = worker.ready.pid,
                    backend = %worker.ready.backend,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "ready"
                );
                let worker = Arc::new(worker);
                *slot = Slot::Ready(worker.clone());
                let _ = status.send(LoadStatus::Ready(worker));
            }
            Err(err) => {
                tracing::error!(model = %self.spec.name, %err, "load failed");
                *slot = Slot::Failed(err.clone());
                let _ = status.send(LoadStatus::Failed(err));
            }
        }
    }

    /// Takes a lease; the model counts as leased until the guard is dropped.
    pub fn lease(self: &Arc<Self>) -> LeaseGuard {
        self.leases.fetch_add(1, Ordering::AcqRel);
        LeaseGuard { model: self.clone() }
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn begin_request(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlightGuard { model: self.clone() }
    }

    pub fn info(&self) -> ModelInfo {
        let slot = self.slot();
        let (state, worker, last_error) = match &*slot {
            Slot::Unloaded => (ModelState::Unloaded, None, None),
            Slot::Loading(_) => (ModelState::Loading, None, None),
            Slot::Ready(worker) if worker.is_alive() => (ModelState::Ready, Some(worker.clone()), None),
            Slot::Ready(_) => (ModelState::Unloaded, None, Some("worker exited; reloads on next use".into())),
            Slot::Failed(err) => (ModelState::Failed, None, Some(err.message.clone())),
        };
        drop(slot);
        ModelInfo {
            name: self.spec.name.clone(),
            kind: self.spec.kind,
            state,
            source: self.spec.source.clone(),
            leases: self.leases.load(Ordering::Acquire),
            in_flight: self.in_flight.load(Ordering::Acquire),
            queue_depth: self.admission.depth(),
            queue_capacity: self.admission.capacity(),
            resident_bytes: 0,
            dim: worker.as_ref().map_or(0, |w| w.ready.dim),
            max_seq_len: worker.as_ref().map_or(0, |w| w.ready.max_seq_len),
            idle_ms: None,
            keep_alive_left_ms: None,
            backend: worker.as_ref().map_or_else(String::new, |w| w.ready.backend.clone()),
            worker_pid: worker.as_ref().map(|w| w.ready.pid),
            last_error,
        }
    }

    /// Takes the loaded worker, if any, leaving the model unloaded (daemon shutdown).
    fn take_worker(&self) -> Option<Arc<WorkerHandle>> {
        match std::mem::replace(&mut *self.slot(), Slot::Unloaded) {
            Slot::Ready(worker) => Some(worker),
            _ => None,
        }
    }
}

/// A lease on a model: keeps it from being unloaded while held.
#[derive(Debug)]
pub struct LeaseGuard {
    pub model: Arc<Model>,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.model.leases.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One request in flight on a model.
#[derive(Debug)]
pub struct InFlightGuard {
    model: Arc<Model>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.model.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// All servable models by name.
#[derive(Debug)]
pub struct Registry {
    models: BTreeMap<String, Arc<Model>>,
}

impl Registry {
    pub fn new(config: &DaemonConfig) -> Registry {
        let models = config
            .models
            .iter()
            .map(|spec| {
                let model = Model {
                    spec: spec.clone(),
                    slot: Mutex::new(Slot::Unloaded),
                    leases: AtomicU32::new(0),
                    in_flight: AtomicU32::new(0),
                    admission: Admission::new(config.queue_capacity),
                };
                (spec.name.clone(), Arc::new(model))
            })
            .collect();
        Registry { models }
    }

    pub fn get(&self, name: &str) -> Result<&Arc<Model>, WireError> {
        self.models.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.models.keys().map(String::as_str).collect();
            WireError::new(ErrorCode::NotFound, format!("no model named {name:?} (known: {})", known.join(", ")))
        })
    }

    pub fn infos(&self) -> Vec<ModelInfo> {
        self.models.values().map(|m| m.info()).collect()
    }

    /// Stops every worker, all at once, each within `grace`; used at daemon shutdown after
    /// requests have drained, so no worker is left to be killed by the kernel.
    pub async fn shutdown(&self, grace: std::time::Duration) {
        let workers: Vec<_> = self.models.values().filter_map(|m| m.take_worker()).collect();
        let stops = workers.iter().map(|w| w.stop(grace));
        futures_util::future::join_all(stops).await;
    }
}
