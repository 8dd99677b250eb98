//! The model state machine on tokio's paused clock: in-process workers on in-memory links
//! stand in for `mlxd worker` processes (the registry's [`Effects`]), so each race runs
//! in milliseconds and exactly the same way every time.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mlxd_proto::worker::{Job, JobOutput};
use mlxd_proto::{ErrorCode, ModelKind, ModelState};

use super::in_process::InProcess;
use super::Registry;
use crate::catalog::Catalog;
use crate::config::{DaemonConfig, RestartPolicy};
use crate::spec::{KeepAlive, ModelSpec};
use crate::weights::pool::WeightPool;

const MB: u64 = 1_000_000;

/// A registry of embedding models `(name, size, keep-alive)` under `budget` bytes.
fn registry(models: &[(&str, u64, KeepAlive)], budget: u64, restart: RestartPolicy) -> (Registry, Arc<InProcess>) {
    let mut config = DaemonConfig::for_tests();
    config.memory_budget = budget;
    config.restart = restart;
    let catalog = Catalog {
        models: models
            .iter()
            .map(|&(name, size, keep_alive)| {
                let mut spec = ModelSpec::new(name.into(), ModelKind::Embedding, "/nonexistent".into(), "test".into());
                spec.size_bytes = size;
                spec.keep_alive = keep_alive;
                spec
            })
            .collect(),
        aliases: BTreeMap::new(),
    };
    let workers = Arc::new(InProcess::default());
    let registry = Registry::with_effects(Arc::new(config), catalog, Arc::new(WeightPool::default()), workers.clone());
    (registry, workers)
}

fn state(registry: &Registry, name: &str) -> ModelState {
    registry.get(name).unwrap().info().state
}

/// Lets every task that can run, run (the paused clock does not move).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

const KEEP: KeepAlive = KeepAlive::After(Duration::from_secs(10));

#[tokio::test(start_paused = true)]
async fn concurrent_cold_leases_cause_one_load() {
    let (registry, workers) = registry(&[("a", MB, KEEP)], 10 * MB, RestartPolicy::default());
    *workers.load_time.lock().unwrap() = Duration::from_secs(3);
    let model = registry.get("a").unwrap().clone();
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let model = model.clone();
            tokio::spawn(async move {
                let lease = model.lease(None);
                let worker = model.ready(|_| {}).await.unwrap();
                (lease, worker.ready.pid)
            })
        })
        .collect();
    let mut pids = Vec::new();
    for waiter in waiters {
        pids.push(waiter.await.unwrap().1);
    }
    assert_eq!(workers.starts(), 1, "eight cold leases, one load");
    assert!(pids.iter().all(|&pid| pid == 1), "{pids:?}");
    assert_eq!(state(&registry, "a"), ModelState::Ready);
}

#[tokio::test(start_paused = true)]
async fn keep_alive_expiry_racing_a_new_lease_never_unloads_a_used_model() {
    let (registry, workers) = registry(&[("a", MB, KEEP)], 10 * MB, RestartPolicy::default());
    let model = registry.get("a").unwrap().clone();
    let lease = model.lease(None);
    model.ready(|_| {}).await.unwrap();
    drop(lease); // the keep-alive starts: 10 s
    tokio::time::advance(Duration::from_secs(10)).await;
    // The timer has fired but its task has not run yet: a lease taken now wins the race.
    let lease = model.lease(None);
    settle().await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(state(&registry, "a"), ModelState::Ready, "unloaded while leased");
    let worker = model.ready(|_| {}).await.unwrap();
    assert_eq!(worker.ready.pid, 1, "same worker, never reloaded");
    // Once released, the keep-alive counts from the release and then unloads.
    drop(lease);
    tokio::time::sleep(Duration::from_millis(9_900)).await;
    assert_eq!(state(&registry, "a"), ModelState::Ready, "unloaded before its keep-alive");
    tokio::time::sleep(Duration::from_millis(200)).await;
    settle().await;
    assert_eq!(state(&registry, "a"), ModelState::Unloaded);
    assert_eq!(workers.starts(), 1);
}

#[tokio::test(start_paused = true)]
async fn eviction_chooses_only_idle_unleased_models() {
    let never = KeepAlive::Never;
    let (registry, _) = registry(
        &[("a", 100 * MB, never), ("b", 100 * MB, never), ("c", 100 * MB, never)],
        200 * MB,
        RestartPolicy::default(),
    );
    let (a, b, c) =
        (registry.get("a").unwrap().clone(), registry.get("b").unwrap().clone(), registry.get("c").unwrap().clone());
    let lease_a = a.lease(None);
    a.ready(|_| {}).await.unwrap();
    let lease_b = b.lease(None);
    b.ready(|_| {}).await.unwrap();
    drop(lease_b); // b is idle (and would stay loaded forever: keep-alive never)
    let lease_c = c.lease(None);
    c.ready(|_| {}).await.unwrap();
    settle().await;
    assert_eq!(state(&registry, "a"), ModelState::Ready, "a leased model was evicted");
    assert_eq!(state(&registry, "b"), ModelState::Unloaded, "the idle model was not evicted");
    assert_eq!(state(&registry, "c"), ModelState::Ready);
    // Nothing idle is left: the next load fails at once, naming what holds the memory.
    let lease_b = b.lease(None);
    let err = b.ready(|_| {}).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::OutOfMemory, "{err}");
    assert!(err.message.contains("a (100 MB, 1 lease(s)") && err.message.contains("c (100 MB"), "{err}");
    drop((lease_a, lease_b, lease_c));
}

#[tokio::test(start_paused = true)]
async fn a_forced_unload_revokes_leases_and_a_plain_one_is_refused() {
    let (registry, workers) = registry(&[("a", MB, KeepAlive::Never)], 10 * MB, RestartPolicy::default());
    let model = registry.get("a").unwrap().clone();
    let lease = model.lease(None);
    model.ready(|_| {}).await.unwrap();
    assert_eq!(model.unload(false).await.unwrap_err().code, ErrorCode::BadRequest);
    assert_eq!(state(&registry, "a"), ModelState::Ready);
    model.unload(true).await.unwrap();
    assert_eq!(state(&registry, "a"), ModelState::Unloaded);
    assert!(!lease.is_valid(), "the lease survived a forced unload");
    assert_eq!(model.info().leases, 0);
    drop(lease); // releasing a revoked lease changes nothing
    assert_eq!(model.info().leases, 0);
    // The next user loads it again.
    let _lease = model.lease(None);
    model.ready(|_| {}).await.unwrap();
    assert_eq!(workers.starts(), 2);
}

#[tokio::test(start_paused = true)]
async fn failed_loads_back_off_then_open_the_circuit_until_its_cool_down() {
    let restart = RestartPolicy {
        stuck_after: Duration::from_secs(120),
        circuit_failures: 3,
        circuit_cooldown: Duration::from_secs(60),
    };
    let (registry, workers) = registry(&[("a", MB, KEEP)], 10 * MB, restart);
    workers.failing_loads.store(3, Ordering::SeqCst);
    let model = registry.get("a").unwrap().clone();
    let _lease = model.lease(None);
    let started = tokio::time::Instant::now();
    for attempt in 1..=3 {
        let err = model.ready(|_| {}).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::WorkerFailed, "attempt {attempt}: {err}");
    }
    assert_eq!(workers.starts(), 3);
    assert!(started.elapsed() >= Duration::from_millis(250), "the retries waited a backoff");
    // Open: refused at once with the cause and when it will be tried again.
    let err = model.ready(|_| {}).await.unwrap_err();
    assert!(err.message.contains("failed 3 times in a row") && err.message.contains("on purpose"), "{err}");
    assert!(err.retry_after_ms.is_some_and(|ms| ms > 50_000), "{err:?}");
    assert_eq!(state(&registry, "a"), ModelState::Failed);
    assert_eq!(workers.starts(), 3, "no start while the circuit is open");
    // After the cool-down one more start is tried (and now succeeds).
    tokio::time::sleep(Duration::from_secs(61)).await;
    model.ready(|_| {}).await.unwrap();
    assert_eq!(workers.starts(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_crashed_worker_of_a_leased_model_is_restarted_and_jobs_are_replayed() {
    let (registry, workers) = registry(&[("a", MB, KEEP)], 10 * MB, RestartPolicy::default());
    let model = registry.get("a").unwrap().clone();
    let _lease = model.lease(None);
    model.ready(|_| {}).await.unwrap();
    workers.kill_last();
    settle().await;
    // The model restarts by itself (it has a user); a job sent meanwhile is answered by
    // the new worker.
    let output = super::run_replayable(
        &model,
        Job::Embed { texts: vec!["abc".into()], normalize: false, prompts: vec![String::new()] },
    )
    .await;
    match output {
        Ok(JobOutput::Embeddings { vectors, .. }) => assert_eq!(vectors, vec![3.0, 2.0], "answered by worker 2"),
        other => panic!("{other:?}"),
    }
    assert_eq!(workers.starts(), 2);
}

/// Holds `model` once (load, then release) and returns how long its keep-alive then
/// kept it loaded, to the second.
async fn keep_alive_after_use(registry: &Registry, name: &str) -> Duration {
    let model = registry.get(name).unwrap().clone();
    let lease = model.lease(None);
    model.ready(|_| {}).await.unwrap();
    drop(lease);
    let released = tokio::time::Instant::now();
    while state(registry, name) != ModelState::Unloaded {
        tokio::time::sleep(Duration::from_millis(500)).await;
        settle().await;
        assert!(released.elapsed() < Duration::from_secs(7200), "never unloaded");
    }
    Duration::from_secs(released.elapsed().as_secs_f64().round() as u64)
}

#[tokio::test(start_paused = true)]
async fn adaptive_keep_alive_lengthens_for_a_model_wanted_back_soon_and_resets_otherwise() {
    let spec = |name: &str, adaptive: bool| {
        let mut spec = ModelSpec::new(name.into(), ModelKind::Embedding, "/nonexistent".into(), "test".into());
        (spec.size_bytes, spec.keep_alive, spec.adaptive_keep_alive) = (MB, KEEP, adaptive);
        spec
    };
    assert!(!spec("x", false).adaptive_keep_alive && !DaemonConfig::for_tests().model_defaults.adaptive_keep_alive);
    let catalog = Catalog { models: vec![spec("a", true), spec("b", false)], aliases: BTreeMap::new() };
    let config = Arc::new(DaemonConfig { memory_budget: 10 * MB, ..DaemonConfig::for_tests() });
    let registry =
        Registry::with_effects(config, catalog, Arc::new(WeightPool::default()), Arc::new(InProcess::default()));
    // First use: its own 10 s.
    assert_eq!(keep_alive_after_use(&registry, "a").await, Duration::from_secs(10));
    // Wanted back 3 s after that unload (within 10 s): 20 s next time, then 40 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(keep_alive_after_use(&registry, "a").await, Duration::from_secs(20));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(keep_alive_after_use(&registry, "a").await, Duration::from_secs(40));
    // Then not for longer than that window (here 40 s): back to its own.
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(keep_alive_after_use(&registry, "a").await, Duration::from_secs(10));
    // Never past 8x (80 s here).
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(keep_alive_after_use(&registry, "a").await <= Duration::from_secs(80));
    }
    // A lease's own short keep-alive unloading it does not lengthen the model's.
    tokio::time::sleep(Duration::from_secs(1000)).await;
    assert_eq!(keep_alive_after_use(&registry, "a").await, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(1000)).await;
    let model = registry.get("a").unwrap().clone();
    let lease = model.lease(Some(KeepAlive::After(Duration::from_secs(1))));
    model.ready(|_| {}).await.unwrap();
    drop(lease);
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(state(&registry, "a"), ModelState::Unloaded);
    assert_eq!(keep_alive_after_use(&registry, "a").await, Duration::from_secs(10));
    // Not opted in: always its own.
    for _ in 0..3 {
        assert_eq!(keep_alive_after_use(&registry, "b").await, Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
