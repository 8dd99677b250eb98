//! What a model's state machine needs from outside itself, as traits, so that unit tests
//! can drive it with fakes on tokio's paused clock:
//!
//! - [`Host`]: the registry around the model — room within the memory budget (which may
//!   evict other models), the restart policy, and the [`Effects`].
//! - [`Effects`]: the model's effects on the machine — mapping and checking its weight
//!   files, starting a worker for it. [`Processes`] is the real one (`mlxd worker`
//!   processes); tests start in-process workers on in-memory links instead.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use mlxd_proto::{LoadProgress, WireError};

use crate::config::{DaemonConfig, RestartPolicy};
use crate::spec::ModelSpec;
use crate::supervise::spare::SparePool;
use crate::supervise::WorkerHandle;
use crate::tasks::Tasks;
use crate::weights::pool::{Pinned, WeightPool};

/// Load progress as a worker start reports it.
pub type Progress = Arc<dyn Fn(LoadProgress) + Send + Sync>;

/// The registry, as one of its models sees it.
pub trait Host: Send + Sync + std::fmt::Debug {
    /// Makes room within the memory budget and the model count for the model `name`,
    /// evicting idle models, or fails with `OutOfMemory`.
    fn make_room<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), WireError>>;
    fn restart_policy(&self) -> RestartPolicy;
    fn effects(&self) -> &dyn Effects;
}

/// Starting a model: its weights, then its worker.
pub trait Effects: Send + Sync + std::fmt::Debug {
    /// Maps and checks the model's weight files (held while it is loaded).
    fn prepare_weights(&self, spec: &ModelSpec) -> Result<Pinned, WireError>;
    /// Starts a worker for the model and waits until it has loaded it.
    fn start_worker<'a>(
        &'a self,
        spec: &'a ModelSpec,
        tasks: &'a Tasks,
        progress: Progress,
    ) -> BoxFuture<'a, Result<WorkerHandle, WireError>>;
}

/// The real effects: the daemon's mmap pool, and `mlxd worker` processes (the spare one
/// adopted first, when there is one).
#[derive(Debug)]
pub struct Processes {
    pub config: Arc<DaemonConfig>,
    pub pool: Arc<WeightPool>,
    pub spares: Arc<SparePool>,
}

impl Effects for Processes {
    fn prepare_weights(&self, spec: &ModelSpec) -> Result<Pinned, WireError> {
        self.pool.prepare(&spec.name, &spec.path)
    }

    fn start_worker<'a>(
        &'a self,
        spec: &'a ModelSpec,
        tasks: &'a Tasks,
        progress: Progress,
    ) -> BoxFuture<'a, Result<WorkerHandle, WireError>> {
        Box::pin(async move {
            if let Some(spare) = self.spares.take().await {
                let adopted = WorkerHandle::adopt(spare, &self.config, spec, tasks, |p| progress(p)).await;
                self.spares.adoption_done();
                return adopted;
            }
            WorkerHandle::spawn(&self.config, spec, tasks, move |p| progress(p)).await
        })
    }
}
