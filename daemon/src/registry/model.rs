//! One model's state machine: Unloaded → Loading → Ready → Unloading → Unloaded (or
//! Failed), its users (leases and in-flight requests), its keep-alive, and its health.
//!
//! Health: a worker that crashes, or a load that fails, is a failure. The next start waits
//! an exponential backoff with jitter (250 ms doubling to 30 s); a worker that served a
//! request before it died starts the count again, so only a crash loop climbs. After
//! `circuit_failures` failures in a row the circuit opens: the model is Failed and
//! requests get `WorkerFailed` at once, with the last cause (exit status or signal and
//! the worker's last stderr lines), until `circuit_cooldown` passes (then one more start
//! is tried) or an operator loads it. A model that crashed while it had users (leases or
//! requests) is restarted by itself; an idle one on its next use. Nothing spins.
//!
//! Every transition happens under the model's one lock, and so does every change to its
//! users. An unload (keep-alive, eviction, operator) is decided under that lock only when
//! the model has no users *and* its use counter (`epoch`) is still the one the decision was
//! made for; taking a lease or starting a request changes both under the same lock. So the
//! race other servers have — a keep-alive timer firing between "is it idle?" and the
//! unload while a request arrives — cannot happen: either the request came first and the
//! unload is off, or the unload came first and the request waits for it and loads again.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

// The tokio clock, so that unit tests drive every timer and deadline here on a paused clock.
use tokio::time::Instant;

use mlxd_proto::{ErrorCode, LoadProgress, LoadStage, ModelInfo, ModelState, WireError};
use tokio::sync::watch;

use super::host::Host;
use crate::metrics::Metrics;
use crate::sched::batcher;
use crate::sched::Admission;
use crate::spec::{KeepAlive, ModelSpec};
use crate::supervise::health::{Health, Next};
use crate::supervise::WorkerHandle;
use crate::weights::pool::Pinned;

/// How long a worker has to exit when unloaded before it is killed.
const UNLOAD_GRACE: Duration = Duration::from_secs(2);
/// What a load in progress tells those waiting on it.
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
    /// The worker is stopping; the receiver turns true when it is gone.
    Unloading(watch::Receiver<bool>),
    Failed(WireError),
}

#[derive(Debug)]
struct State {
    slot: Slot,
    leases: u32,
    in_flight: u32,
    /// Bumped on every acquire and release: a pending unload decision is valid only for
    /// the epoch it was made in.
    epoch: u64,
    /// Bumped by a forced unload: leases taken before it are revoked.
    lease_generation: u64,
    last_used: Option<Instant>,
    /// Set when the last user left; the keep-alive counts from here.
    idle_since: Option<Instant>,
    idle_keep_alive: KeepAlive,
    /// An operator asked for an unload: it happens as soon as the model is idle.
    unload_requested: bool,
    /// Adaptive keep-alive (opt-in): when its keep-alive last unloaded the model, and the
    /// factor its own keep-alive is multiplied by (doubled each time it is wanted back
    /// soon after such an unload, back to 1 when it is not).
    keep_alive_unloaded_at: Option<Instant>,
    keep_alive_factor: u32,
    /// Whether the keep-alive counting now is the model's own (not a lease's or a
    /// request's): only the model's own keep-alive unloading it adapts it.
    own_keep_alive_counting: bool,
    /// The mapped weight files, held while loaded.
    weights: Pinned,
    health: Health,
}

impl State {
    fn users(&self) -> u32 {
        self.leases + self.in_flight
    }
}

/// One servable model.
#[derive(Debug)]
pub struct Model {
    pub spec: ModelSpec,
    pub admission: Arc<Admission>,
    state: Mutex<State>,
    /// Started on the first embedding request (embedding models only).
    batcher: std::sync::OnceLock<()>,
    /// Notified when a dead worker has been dealt with (its slot changed).
    settled: tokio::sync::Notify,
    pub metrics: Arc<Metrics>,
    /// The registry's task owner: loads, restarts, keep-alive timers, the batcher.
    tasks: crate::tasks::Tasks,
    /// The registry around the model (room, restart policy, effects). Weak: the registry
    /// owns its models.
    host: std::sync::Weak<dyn Host>,
}

/// Adaptive keep-alive: at most this multiple of the model's own keep-alive ...
const ADAPTIVE_MAX_FACTOR: u32 = 8;
/// ... and never longer than this (unless the model's own keep-alive is).
const ADAPTIVE_KEEP_ALIVE_CAP: Duration = Duration::from_secs(3600);

/// Why a model is being unloaded (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnloadReason {
    KeepAlive,
    Evicted,
    Requested,
}

impl UnloadReason {
    fn label(self) -> &'static str {
        match self {
            UnloadReason::KeepAlive => "keep_alive",
            UnloadReason::Evicted => "evicted",
            UnloadReason::Requested => "requested",
        }
    }
}

impl Model {
    pub fn new(
        spec: ModelSpec,
        metrics: Arc<Metrics>,
        tasks: crate::tasks::Tasks,
        host: std::sync::Weak<dyn Host>,
    ) -> Model {
        Model {
            admission: Admission::new(spec.queue_capacity, spec.max_streams),
            spec,
            state: Mutex::new(State {
                slot: Slot::Unloaded,
                leases: 0,
                in_flight: 0,
                epoch: 0,
                lease_generation: 0,
                last_used: None,
                idle_since: None,
                idle_keep_alive: KeepAlive::Never,
                unload_requested: false,
                keep_alive_unloaded_at: None,
                keep_alive_factor: 1,
                own_keep_alive_counting: false,
                weights: Pinned::default(),
                health: Health::default(),
            }),
            batcher: std::sync::OnceLock::new(),
            settled: tokio::sync::Notify::new(),
            metrics,
            tasks,
            host,
        }
    }

    /// Starts the model's embedding batcher unless it runs already: it runs each batch
    /// on this model's worker (loading it if needed, replaying on a restarted one).
    pub fn start_batcher(self: &Arc<Self>, policy: crate::config::BatchPolicy) {
        self.batcher.get_or_init(|| {
            let model = Arc::downgrade(self);
            let run: batcher::RunBatch = Arc::new(move |job| {
                let model = model.clone();
                Box::pin(async move {
                    let Some(model) = model.upgrade() else {
                        return Err(WireError::new(ErrorCode::Shutdown, "the model is gone"));
                    };
                    run_replayable(&model, job).await
                })
            });
            let metrics = batcher::BatchMetrics { model: self.spec.name.clone(), metrics: self.metrics.clone() };
            batcher::start(&self.tasks, self.admission.clone(), metrics, policy, run)
        });
    }

    fn host(&self) -> Result<Arc<dyn Host>, WireError> {
        self.host.upgrade().ok_or_else(|| WireError::new(ErrorCode::Shutdown, "the daemon is shutting down"))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a lease: the model stays loaded until the guard is dropped (and then for its
    /// keep-alive: `keep_alive` if given, else the model's).
    pub fn lease(self: &Arc<Self>, keep_alive: Option<KeepAlive>) -> LeaseGuard {
        let mut state = self.state();
        state.leases += 1;
        state.epoch += 1;
        state.idle_since = None;
        LeaseGuard { model: self.clone(), generation: state.lease_generation, keep_alive }
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn begin_request(self: &Arc<Self>) -> InFlightGuard {
        let mut state = self.state();
        state.in_flight += 1;
        state.epoch += 1;
        state.idle_since = None;
        InFlightGuard { model: self.clone() }
    }

    /// Whether a lease taken in `generation` is still valid.
    pub fn lease_valid(&self, generation: u64) -> bool {
        self.state().lease_generation == generation
    }

    /// A ready worker for this model, loading it first if needed (once, however many ask
    /// at the same time). `progress` hears about the load, whoever started it. Call with a
    /// lease or request guard held, so the model cannot be unloaded meanwhile.
    pub async fn ready(
        self: &Arc<Self>,
        mut progress: impl FnMut(LoadProgress),
    ) -> Result<Arc<WorkerHandle>, WireError> {
        loop {
            enum Wait {
                Load(watch::Receiver<LoadStatus>),
                Unload(watch::Receiver<bool>),
                /// A dead worker whose death is being recorded, or a backoff.
                Until(Instant),
            }
            let wait = {
                let mut state = self.state();
                let now = Instant::now();
                match &state.slot {
                    Slot::Ready(worker) if worker.is_alive() => return Ok(worker.clone()),
                    Slot::Ready(_) => Wait::Until(now + Duration::from_millis(100)),
                    Slot::Loading(status) => Wait::Load(status.clone()),
                    Slot::Unloading(done) => Wait::Unload(done.clone()),
                    _ if self.tasks.is_closing() => {
                        return Err(WireError::new(ErrorCode::Shutdown, "the daemon is shutting down"));
                    }
                    Slot::Failed(err) if state.health.open_until.is_some_and(|until| until > now) => {
                        let mut err = err.clone();
                        err.retry_after_ms = state.health.open_until.map(|until| (until - now).as_millis() as u64);
                        return Err(err);
                    }
                    _ if state.health.retry_at.is_some_and(|at| at > now) => {
                        Wait::Until(state.health.retry_at.unwrap_or(now))
                    }
                    _ => {
                        let first = LoadProgress {
                            model: self.spec.name.clone(),
                            stage: LoadStage::Starting,
                            done: 0,
                            total: 1,
                        };
                        if state.health.failures > 0 {
                            self.metrics.worker_restarted(&self.spec.name);
                        }
                        self.adapt_keep_alive(&mut state, now);
                        let (tx, rx) = watch::channel(LoadStatus::Progress(first));
                        state.slot = Slot::Loading(rx.clone());
                        // Its own task: the load completes even if this requester goes away.
                        self.tasks.spawn("model load", self.clone().load(tx));
                        Wait::Load(rx)
                    }
                }
            };
            match wait {
                Wait::Unload(mut done) => {
                    let _ = done.wait_for(|gone| *gone).await;
                }
                Wait::Until(at) => {
                    let _ = tokio::time::timeout_at(at, self.settled.notified()).await;
                }
                Wait::Load(mut status) => loop {
                    let current = status.borrow_and_update().clone();
                    match current {
                        LoadStatus::Ready(worker) => return Ok(worker),
                        LoadStatus::Failed(err) => return Err(err),
                        LoadStatus::Progress(p) => progress(p),
                    }
                    if status.changed().await.is_err() {
                        break; // the load ended; its result is in the slot: look again
                    }
                },
            }
        }
    }

    async fn load(self: Arc<Self>, status: watch::Sender<LoadStatus>) {
        tracing::info!(model = %self.spec.name, path = %self.spec.path.display(), "loading");
        crate::service::notify::status(&format!("loading {}", self.spec.name));
        let started = Instant::now();
        let status = Arc::new(status);
        let result = async {
            let host = self.host()?;
            host.make_room(&self.spec.name).await?;
            // Every weight file is mapped and its header checked before the worker sees it.
            let weights = host.effects().prepare_weights(&self.spec)?;
            let reporter = status.clone();
            let progress: super::host::Progress = Arc::new(move |p| {
                let _ = reporter.send(LoadStatus::Progress(p));
            });
            let worker = host.effects().start_worker(&self.spec, &self.tasks, progress).await?;
            Ok::<_, WireError>((worker, weights))
        }
        .await;
        self.metrics.load_done(&self.spec.name, result.is_ok(), started.elapsed());
        let mut state = self.state();
        match result {
            Ok((worker, weights)) => {
                state.weights = weights;
                tracing::info!(
                    model = %self.spec.name,
                    pid = worker.ready.pid,
                    backend = %worker.ready.backend,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "ready"
                );
                crate::service::notify::status(&format!(
                    "{} ready on {} in {:.1} s",
                    self.spec.name,
                    worker.ready.backend,
                    started.elapsed().as_secs_f64()
                ));
                let worker = Arc::new(worker);
                state.slot = Slot::Ready(worker.clone());
                state.health.retry_at = None;
                state.health.open_until = None;
                state.health.last_cause = None;
                self.tasks.spawn("worker watch", self.clone().watch_worker(worker.clone()));
                let _ = status.send(LoadStatus::Ready(worker));
                // Loaded for requesters that may all have left meanwhile: start the clock.
                if state.users() == 0 {
                    state.idle_since = Some(Instant::now());
                    self.schedule_idle_unload(&mut state);
                }
            }
            Err(err) => {
                tracing::error!(model = %self.spec.name, %err, "load failed");
                crate::service::notify::status(&format!("loading {} failed", self.spec.name));
                let err = self.record_failure(&mut state, err.message.clone(), false).unwrap_or(err);
                let _ = status.send(LoadStatus::Failed(err));
            }
        }
        drop(state);
        self.settled.notify_waiters();
    }

    /// Waits for `worker` to exit; unless the daemon stopped it, records the failure (and
    /// restarts the model if it has users).
    async fn watch_worker(self: Arc<Self>, worker: Arc<WorkerHandle>) {
        worker.exited().await;
        if worker.was_stopped() {
            return;
        }
        let cause = worker.death_cause().await;
        tracing::warn!(model = %self.spec.name, "{cause}");
        self.metrics.worker_failed(&self.spec.name);
        {
            let mut state = self.state();
            if !matches!(&state.slot, Slot::Ready(current) if Arc::ptr_eq(current, &worker)) {
                return;
            }
            state.weights = Pinned::default();
            self.record_failure(&mut state, cause, worker.has_served());
        }
        self.settled.notify_waiters();
    }

    /// Counts a failed load or a dead worker: the slot becomes Failed with the cause, and
    /// the next start waits a backoff — or, after `circuit_failures` in a row, the circuit
    /// opens (returning the error requests will get until it closes). A model with users
    /// is restarted once the backoff has passed.
    fn record_failure(self: &Arc<Self>, state: &mut State, cause: String, served: bool) -> Option<WireError> {
        let policy = self.host.upgrade().map(|host| host.restart_policy()).unwrap_or_default();
        let Next::RetryAfter(delay) = state.health.failed(cause.clone(), served, &policy, Instant::now()) else {
            let failures = state.health.failures;
            let err = WireError::new(
                ErrorCode::WorkerFailed,
                format!(
                    "model {} failed {failures} times in a row and is off for {} s (or until `mlxctl load {}`); last cause: {cause}",
                    self.spec.name,
                    policy.circuit_cooldown.as_secs(),
                    self.spec.name
                ),
            );
            tracing::error!(model = %self.spec.name, failures, "circuit open: {cause}");
            state.slot = Slot::Failed(err.clone());
            return Some(err);
        };
        // Failed, with the cause, until the next start (after the backoff) succeeds.
        state.slot = Slot::Failed(WireError::new(ErrorCode::WorkerFailed, cause));
        if self.tasks.is_closing() {
            tracing::info!(model = %self.spec.name, "not restarting the worker: the daemon is shutting down");
        } else if state.users() > 0 {
            tracing::info!(model = %self.spec.name, delay_ms = delay.as_millis() as u64, "restarting the worker");
            let model = self.clone();
            self.tasks.spawn("worker restart", async move {
                let _ = model.ready(|_| {}).await;
            });
        }
        None
    }

    /// Whether the circuit is open now, and the failures in a row.
    pub fn health_view(&self) -> (bool, u32) {
        let state = self.state();
        (state.health.open_until.is_some_and(|until| until > Instant::now()), state.health.failures)
    }

    /// An operator's load: a model whose circuit is open is tried again now.
    pub fn reset_health(&self) {
        let mut state = self.state();
        state.health.failures = 0;
        state.health.retry_at = None;
        state.health.open_until = None;
        if matches!(state.slot, Slot::Failed(_)) {
            state.slot = Slot::Unloaded;
        }
    }

    /// Called under the lock when the last user leaves (or a load finishes unused).
    fn schedule_idle_unload(self: &Arc<Self>, state: &mut State) {
        if !matches!(state.slot, Slot::Ready(_)) {
            return;
        }
        let keep_alive = if state.unload_requested { KeepAlive::After(Duration::ZERO) } else { state.idle_keep_alive };
        let delay = match keep_alive {
            KeepAlive::Never => return,
            KeepAlive::After(_) if self.spec.pinned && !state.unload_requested => return,
            KeepAlive::After(delay) => delay,
        };
        let epoch = state.epoch;
        let model = self.clone();
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.tasks.spawn("keep-alive timer", async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let reason = if model.state().unload_requested { UnloadReason::Requested } else { UnloadReason::KeepAlive };
            model.unload_if_idle(Some(epoch), reason).await;
        });
    }

    /// Unloads the model if it is loaded and idle — and, with `epoch`, still idle since
    /// that epoch. Returns whether it unloaded. The decision and the transition to
    /// Unloading happen under one lock, which is what makes the keep-alive race impossible.
    pub async fn unload_if_idle(&self, epoch: Option<u64>, reason: UnloadReason) -> bool {
        let (worker, done) = {
            let mut state = self.state();
            let idle = state.users() == 0 && epoch.is_none_or(|e| e == state.epoch);
            if !idle || !matches!(state.slot, Slot::Ready(_)) {
                return false;
            }
            let (done, watch_done) = watch::channel(false);
            let Slot::Ready(worker) = std::mem::replace(&mut state.slot, Slot::Unloading(watch_done)) else {
                return false;
            };
            (worker, done)
        };
        tracing::info!(model = %self.spec.name, ?reason, "unloading");
        self.metrics.unloaded(&self.spec.name, reason.label());
        worker.stop(UNLOAD_GRACE).await;
        {
            let mut state = self.state();
            state.slot = Slot::Unloaded;
            state.unload_requested = false;
            state.weights = Pinned::default();
            state.keep_alive_unloaded_at =
                (reason == UnloadReason::KeepAlive && state.own_keep_alive_counting).then(Instant::now);
        }
        let _ = done.send(true);
        true
    }

    /// An operator's unload: refused while leased unless `force`, which revokes the leases
    /// (their holders get a typed error on next use); waits for in-flight work to finish.
    pub async fn unload(self: &Arc<Self>, force: bool) -> Result<(), WireError> {
        {
            let mut state = self.state();
            if state.leases > 0 && !force {
                return Err(WireError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "model {} is leased ({} lease(s)); unload with force to revoke them",
                        self.spec.name, state.leases
                    ),
                ));
            }
            if force && state.leases > 0 {
                tracing::warn!(model = %self.spec.name, leases = state.leases, "forced unload revokes leases");
                state.lease_generation += 1;
                state.leases = 0;
                state.epoch += 1;
            }
            if matches!(state.slot, Slot::Unloaded | Slot::Failed(_)) {
                return Ok(());
            }
            state.unload_requested = true;
        }
        // Wait for in-flight work (and a load in progress) to finish, then unload.
        loop {
            let mut waiting_for_load = None;
            let idle_ready = {
                let state = self.state();
                match &state.slot {
                    Slot::Unloaded | Slot::Failed(_) => return Ok(()),
                    Slot::Loading(status) => {
                        waiting_for_load = Some(status.clone());
                        false
                    }
                    Slot::Unloading(_) => false,
                    Slot::Ready(_) => state.users() == 0,
                }
            };
            if idle_ready && self.unload_if_idle(None, UnloadReason::Requested).await {
                return Ok(());
            }
            match waiting_for_load {
                Some(mut status) => {
                    let _ = status.wait_for(|s| !matches!(s, LoadStatus::Progress(_))).await;
                }
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// `lease_generation`: Some for a lease (ignored if a forced unload revoked it, which
    /// already took it off the count), None for a request.
    fn release(self: &Arc<Self>, keep_alive: Option<KeepAlive>, lease_generation: Option<u64>) {
        let mut state = self.state();
        match lease_generation {
            Some(generation) if generation != state.lease_generation => return,
            Some(_) => state.leases = state.leases.saturating_sub(1),
            None => state.in_flight = state.in_flight.saturating_sub(1),
        }
        state.epoch += 1;
        let now = Instant::now();
        state.last_used = Some(now);
        if state.users() == 0 {
            state.idle_since = Some(now);
            state.own_keep_alive_counting = keep_alive.is_none();
            state.idle_keep_alive = keep_alive.unwrap_or_else(|| self.own_keep_alive(&state));
            self.schedule_idle_unload(&mut state);
        }
    }

    /// The model's own keep-alive, lengthened by the adaptive factor (a lease's own
    /// keep-alive is used as given).
    fn own_keep_alive(&self, state: &State) -> KeepAlive {
        match self.spec.keep_alive {
            KeepAlive::After(base) if self.spec.adaptive_keep_alive && state.keep_alive_factor > 1 => {
                KeepAlive::After(base.saturating_mul(state.keep_alive_factor).min(ADAPTIVE_KEEP_ALIVE_CAP.max(base)))
            }
            other => other,
        }
    }

    /// At the start of a load: a model its keep-alive unloaded and that is wanted back
    /// within as long again gets twice the keep-alive next time (up to
    /// [`ADAPTIVE_MAX_FACTOR`] and [`ADAPTIVE_KEEP_ALIVE_CAP`]); one wanted back later gets
    /// its own again.
    fn adapt_keep_alive(&self, state: &mut State, now: Instant) {
        if !self.spec.adaptive_keep_alive {
            return;
        }
        let Some(unloaded) = state.keep_alive_unloaded_at.take() else { return };
        // As long again as the keep-alive that unloaded it.
        let KeepAlive::After(window) = self.own_keep_alive(state) else { return };
        state.keep_alive_factor = if now.duration_since(unloaded) <= window {
            (state.keep_alive_factor * 2).min(ADAPTIVE_MAX_FACTOR)
        } else {
            1
        };
        if state.keep_alive_factor > 1 {
            tracing::info!(
                model = %self.spec.name,
                back_after = ?now.duration_since(unloaded),
                keep_alive = ?self.own_keep_alive(state),
                "wanted back soon after its keep-alive unloaded it: keep-alive lengthened"
            );
        }
    }

    /// For eviction: loaded, idle, not pinned — and when it was last used.
    pub(super) fn eviction_candidate(&self) -> Option<(Option<Instant>, u64)> {
        let state = self.state();
        let ready = matches!(state.slot, Slot::Ready(_));
        (ready && state.users() == 0 && !self.spec.pinned).then_some((state.last_used, state.epoch))
    }

    /// Whether the model holds (or is about to hold) memory.
    pub(super) fn occupies_memory(&self) -> bool {
        matches!(self.state().slot, Slot::Loading(_) | Slot::Ready(_) | Slot::Unloading(_))
    }

    pub(super) fn holders(&self) -> String {
        let state = self.state();
        format!(
            "{} ({} MB, {} lease(s), {} request(s) in flight{})",
            self.spec.name,
            self.spec.estimated_bytes() / 1_000_000,
            state.leases,
            state.in_flight,
            if self.spec.pinned { ", pinned" } else { "" }
        )
    }

    /// Takes the loaded worker, leaving the model unloaded (daemon shutdown).
    pub(super) fn take_worker(&self) -> Option<Arc<WorkerHandle>> {
        let mut state = self.state();
        state.weights = Pinned::default();
        match std::mem::replace(&mut state.slot, Slot::Unloaded) {
            Slot::Ready(worker) => Some(worker),
            _ => None,
        }
    }

    pub fn info(&self) -> ModelInfo {
        let state = self.state();
        let (model_state, worker, last_error) = match &state.slot {
            Slot::Loading(_) => (ModelState::Loading, None, state.health.last_cause.clone()),
            Slot::Ready(worker) if worker.is_alive() => (ModelState::Ready, Some(worker.clone()), None),
            Slot::Ready(_) => (ModelState::Unloaded, None, Some("worker exited; restarting".into())),
            Slot::Unloading(_) => (ModelState::Unloading, None, None),
            Slot::Failed(err) => (ModelState::Failed, None, Some(err.message.clone())),
            Slot::Unloaded => (ModelState::Unloaded, None, None),
        };
        let now = Instant::now();
        let keep_alive_left_ms = match (&state.slot, state.idle_since, state.idle_keep_alive) {
            (Slot::Ready(_), Some(since), KeepAlive::After(delay)) if !self.spec.pinned => {
                Some(delay.saturating_sub(now - since).as_millis() as u64)
            }
            _ => None,
        };
        ModelInfo {
            name: self.spec.name.clone(),
            kind: self.spec.kind,
            state: model_state,
            source: self.spec.source.clone(),
            leases: state.leases,
            in_flight: state.in_flight,
            queue_depth: self.admission.depth(),
            queue_capacity: self.admission.capacity(),
            resident_bytes: worker.as_ref().map_or(0, |w| w.resident_bytes()),
            dim: worker.as_ref().map_or(0, |w| w.ready.dim),
            max_seq_len: worker.as_ref().map_or(0, |w| w.ready.max_seq_len),
            idle_ms: state.last_used.map(|t| (now - t).as_millis() as u64),
            keep_alive_left_ms,
            backend: worker.as_ref().map_or_else(String::new, |w| w.ready.backend.clone()),
            worker_pid: worker.as_ref().map(|w| w.ready.pid),
            last_error,
            sched: self.admission.stats(),
            prompts: self.spec.prompts.clone(),
            default_prompt: self.spec.default_prompt.clone(),
            tools: self.spec.tools,
            estimated_bytes: self.spec.estimated_bytes(),
        }
    }

    /// Whether the model, as loaded now, uses the weight file at `path`.
    pub(super) fn uses_weights(&self, path: &std::path::Path) -> bool {
        self.state().weights.files.iter().any(|f| f.path == path)
    }
}

/// Times an idempotent job (embed, tokenize, detokenize) is run again on a restarted
/// worker after the one running it died.
pub const MAX_REPLAYS: u32 = 3;

/// Runs an idempotent job on the model's worker (loading it if needed). If the worker dies
/// with the job in hand, the job is run again on its replacement, up to [`MAX_REPLAYS`]
/// times: the client sees one answer either way. Errors the job itself caused (bad input
/// reported by a live worker) are not replayed.
pub async fn run_replayable(
    model: &std::sync::Arc<Model>,
    job: mlxd_proto::worker::Job,
) -> Result<mlxd_proto::worker::JobOutput, mlxd_proto::WireError> {
    let mut replays = 0;
    loop {
        let worker = model.ready(|_| {}).await?;
        match worker.run(job.clone()).await {
            Err(err) if !worker.is_alive() && !worker.was_stopped() && replays < MAX_REPLAYS => {
                replays += 1;
                tracing::warn!(model = %model.spec.name, replays, "worker died with a job in hand; running it again: {err}");
            }
            result => return result,
        }
    }
}

/// A lease on a model: keeps it loaded while held.
#[derive(Debug)]
pub struct LeaseGuard {
    pub model: Arc<Model>,
    generation: u64,
    keep_alive: Option<KeepAlive>,
}

impl LeaseGuard {
    /// False once an operator force-unloaded the model.
    pub fn is_valid(&self) -> bool {
        self.model.lease_valid(self.generation)
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.model.release(self.keep_alive, Some(self.generation));
    }
}

/// One request in flight on a model.
#[derive(Debug)]
pub struct InFlightGuard {
    model: Arc<Model>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.model.release(None, None);
    }
}
