//! Supervision on the real daemon and real workers: a worker killed under load loses no
//! request, a model that cannot start opens its circuit and says why, and no worker
//! outlives its daemon.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlxd_client::proto::{
    ErrorCode, GenerateParams, GenerateRequest, ModelRef, ModelState, Priority, PromptInput, Request,
};
use mlxd_client::{ClientError, StreamItem};
use mlxd_tests::{cosine, minilm_reference, model_named, process_alive, Daemon, TempDir};

/// The minilm worker's pid once it is ready (and has a pid other than `not`).
async fn ready_worker(daemon: &Daemon, not: Option<u32>) -> u32 {
    let client = daemon.client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = client.status().await.unwrap();
        let model = model_named(&status.models, "minilm");
        if let (ModelState::Ready, Some(pid)) = (model.state, model.worker_pid) {
            if Some(pid) != not {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "no new ready worker within 60 s: {model:?}\n{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Seconds of the day at which the first log line containing `needle` was written.
fn log_time(log: &str, needle: &str) -> f64 {
    let line = log.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in the log:\n{log}"));
    // "2026-11-23T00:49:07.641759Z ..."
    let time = line.split_whitespace().next().and_then(|t| t.split_once('T')).map(|(_, t)| t.trim_end_matches('Z'));
    let parts: Vec<f64> = time.unwrap_or("").split(':').filter_map(|p| p.parse().ok()).collect();
    assert_eq!(parts.len(), 3, "no timestamp on {line:?}");
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

/// A daemon whose workers get `MLXD_TEST_FAULT=fault(marker)`, `marker` being a fresh
/// path for `-once` faults (only the first worker to create it is affected).
fn with_fault(fault: impl Fn(&str) -> String, args: &[&str]) -> Daemon {
    let dir = TempDir::new();
    let marker = dir.join("fault-once");
    let socket = dir.join("s.sock");
    let fault = fault(marker.to_str().unwrap());
    Daemon::start_with_env(dir, socket, args, &[("MLXD_TEST_FAULT", &fault)])
}

fn kill9(pid: u32) {
    // SAFETY: kill(2) with a pid we read from the daemon's status.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0, "kill -9 {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_worker_under_load_loses_no_embedding() {
    let daemon = Daemon::start(&[]);
    let daemon_pid = daemon.client().await.status().await.unwrap().pid;
    let reference = Arc::new(minilm_reference());
    daemon.client().await.embed("minilm", vec!["warm".into()]).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..8 {
        let client = daemon.client().await;
        let (stop, served, reference) = (stop.clone(), served.clone(), reference.clone());
        clients.push(tokio::spawn(async move {
            let mut n = c;
            while !stop.load(Ordering::Relaxed) {
                let item = &reference[n % reference.len()];
                let got = client.embed("minilm", vec![item.text.clone()]).await;
                let got = got.unwrap_or_else(|err| panic!("client {c}, request {n}: {err}"));
                let similarity = cosine(&got.vectors, &item.embedding);
                assert!(similarity > 0.9999, "client {c}: wrong vector for {:?} ({similarity})", item.text);
                served.fetch_add(1, Ordering::Relaxed);
                n += 8;
            }
        }));
    }

    let mut pid = ready_worker(&daemon, None).await;
    for round in 0..20 {
        // Kill it while it works: wait for some answers from this worker first.
        let before = served.load(Ordering::Relaxed);
        while served.load(Ordering::Relaxed) < before + 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        kill9(pid);
        let next = ready_worker(&daemon, Some(pid)).await;
        assert!(!process_alive(pid), "round {round}: the killed worker {pid} is still there");
        pid = next;
    }
    let before = served.load(Ordering::Relaxed);
    while served.load(Ordering::Relaxed) < before + 8 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("a client saw an error or a wrong vector");
    }
    let status = daemon.client().await.status().await.unwrap();
    assert_eq!(status.pid, daemon_pid, "the daemon restarted");
    let log = daemon.log_text();
    assert!(log.matches("was killed by signal 9 (SIGKILL)").count() >= 20, "20 kills are not all in the log:\n{log}");
    assert!(log.contains("running it again"), "no job in hand was replayed:\n{log}");
    eprintln!(
        "{} embeddings served, {} replayed jobs over 20 kills",
        served.load(Ordering::Relaxed),
        log.matches("running it again").count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_crashes_on_every_load_opens_its_circuit_and_says_why() {
    let config = "[daemon]\ncircuit_failures = 3\ncircuit_cooldown = \"1h\"\n";
    let daemon = Daemon::with_config(config, &[("MLXD_TEST_FAULT", "load:crash")]);
    let client = daemon.client().await;

    let mut errors = Vec::new();
    let started = Instant::now();
    while errors.len() < 3 {
        match client.embed("minilm", vec!["hello".into()]).await {
            Err(ClientError::Wire(err)) => errors.push(err),
            other => panic!("a model that cannot load answered {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(60), "3 failed loads took over a minute");
    }
    for err in &errors {
        eprintln!("{err}");
        assert_eq!(err.code, ErrorCode::WorkerFailed, "{err}");
        assert!(err.message.contains("exited with status 17"), "the cause is named: {err}");
        assert!(err.message.contains("mlxd test fault: crashing at load"), "with the worker's last words: {err}");
    }
    assert!(errors[2].message.contains("3 times in a row"), "the third failure opens the circuit: {}", errors[2]);

    // Open: refused at once with the cause and a retry hint, no new worker started.
    let asked = Instant::now();
    let Err(ClientError::Wire(err)) = client.embed("minilm", vec!["hello".into()]).await else {
        panic!("an open circuit served a request");
    };
    assert!(asked.elapsed() < Duration::from_secs(1), "an open circuit answers at once");
    assert_eq!(err.code, ErrorCode::WorkerFailed);
    assert!(err.message.contains("exited with status 17") && err.retry_after_ms.is_some(), "{err}");
    let status = client.status().await.unwrap();
    let model = model_named(&status.models, "minilm");
    assert_eq!(model.state, ModelState::Failed);
    assert!(model.last_error.as_deref().unwrap_or("").contains("exited with status 17"), "{model:?}");
    // The other model is untouched.
    assert_eq!(model_named(&status.models, "smollm2").state, ModelState::Unloaded);

    // An operator's load tries again at once (and here fails the same way, not with the circuit).
    let Err(ClientError::Wire(err)) = client.call(Request::Load { model: "minilm".into() }).await else {
        panic!("the load cannot succeed")
    };
    assert!(!err.message.contains("times in a row") && err.message.contains("status 17"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_worker_outlives_a_killed_daemon() {
    let mut daemon = Daemon::start(&[]);
    let client = daemon.client().await;
    client.embed("minilm", vec!["hello".into()]).await.unwrap();
    let worker = model_named(&client.status().await.unwrap().models, "minilm").worker_pid.unwrap();
    assert!(process_alive(worker));
    kill9(daemon.pid());
    let _ = daemon.child.wait();
    let gone = || !process_alive(worker);
    assert!(mlxd_tests::eventually(Duration::from_secs(2), gone), "worker {worker} outlived its daemon by 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_is_killed_and_its_job_replayed_but_a_slow_steady_one_is_left_alone() {
    // The first worker hangs in its first embedding (no progress); a worker that makes
    // progress every 0.25 s for 5 s is slow, not stuck.
    let daemon = with_fault(|marker| format!("embed:hang-once:{marker},embed:slow:5"), &["--stuck-after", "2s"]);
    let client = daemon.client().await;
    let reference = minilm_reference();

    let asked = Instant::now();
    let got = client.embed("minilm", vec![reference[0].text.clone()]).await.expect("replayed on a new worker");
    let took = asked.elapsed();
    assert!(cosine(&got.vectors, &reference[0].embedding) > 0.9999);
    let log = daemon.log_text();
    assert!(log.contains("made no progress for"), "the watchdog did not act:\n{log}");
    assert!(log.contains("mlxd test fault: hanging at embed"), "the first worker did not hang:\n{log}");
    // Detected within the configured 2 s (checked on the daemon's own clock, one
    // heartbeat of slack), then killed, restarted and replayed on the new worker.
    let hung_at = log_time(&log, "mlxd test fault: hanging at embed");
    let killed_at = log_time(&log, "; killing it");
    let detection = killed_at - hung_at;
    // (The hang's log line arrives through the worker's stderr pipe, a little after the
    // job's last progress; the watchdog looks once a second.)
    assert!((1.0..=4.0).contains(&detection), "the hang was acted on after {detection:.2} s, not ~2 s:\n{log}");
    assert!(took < Duration::from_secs(40), "hang detection and replay took {took:?}");
    let pid = model_named(&client.status().await.unwrap().models, "minilm").worker_pid.unwrap();

    // The new worker takes 5 s per request, progressing all the while: never killed.
    let asked = Instant::now();
    let got = client.embed("minilm", vec![reference[1].text.clone()]).await.unwrap();
    assert!(asked.elapsed() >= Duration::from_secs(5), "the slow fault did not apply");
    assert!(cosine(&got.vectors, &reference[1].embedding) > 0.9999);
    let after = model_named(&client.status().await.unwrap().models, "minilm").worker_pid.unwrap();
    assert_eq!(pid, after, "a slow worker making progress was restarted");
    assert_eq!(daemon.log_text().matches("; killing it").count(), 1, "{}", daemon.log_text());
}

fn story(max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        model: ModelRef::Name("smollm2".into()),
        input: PromptInput::Raw("Once upon a time".into()),
        params: GenerateParams { max_tokens, temperature: 0.0, ..GenerateParams::default() },
        initial_credit: 0,
        priority: Priority::Interactive,
        deadline_ms: None,
    }
}

async fn tokens_of(stream: &mut mlxd_client::GenerationStream) -> Result<Vec<u32>, ClientError> {
    let mut tokens = Vec::new();
    loop {
        match stream.next().await? {
            Some(StreamItem::Token { token, .. }) => tokens.extend(token),
            Some(StreamItem::Done(_)) => return Ok(tokens),
            Some(StreamItem::ToolCall(_)) | None => unreachable!("no tools; the stream ends with a summary"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_is_replayed_if_it_had_not_started_and_ends_typed_if_it_had() {
    // The first worker dies at its first decoding step, before any token was sent.
    let daemon = with_fault(|marker| format!("step:crash-once:{marker}"), &[]);
    let client = daemon.client().await;

    let mut stream = client.generate(story(12)).await.unwrap();
    let replayed = tokens_of(&mut stream).await.expect("a stream that had not started is replayed");
    assert_eq!(replayed.len(), 12);
    let log = daemon.log_text();
    assert!(log.contains("mlxd test fault: crashing at step"), "the first worker did not crash:\n{log}");
    assert!(log.contains("worker died before the stream started"), "{log}");
    // The same greedy request on the healthy worker gives the same tokens.
    let mut again = client.generate(story(12)).await.unwrap();
    assert_eq!(tokens_of(&mut again).await.unwrap(), replayed);

    // A stream that had delivered tokens ends with a typed error when its worker dies.
    let mut stream = client.generate(story(400)).await.unwrap();
    for _ in 0..3 {
        assert!(matches!(stream.next().await.unwrap(), Some(StreamItem::Token { .. })));
    }
    kill9(model_named(&client.status().await.unwrap().models, "smollm2").worker_pid.unwrap());
    match tokens_of(&mut stream).await {
        Err(ClientError::Wire(err)) => assert_eq!(err.code, ErrorCode::WorkerFailed, "{err}"),
        other => panic!("a stream whose worker died mid-way ended with {other:?}"),
    }
    // And the model serves the next one on a new worker.
    let mut next = client.generate(story(12)).await.unwrap();
    assert_eq!(tokens_of(&mut next).await.unwrap(), replayed);
}

#[test]
fn a_new_daemon_ends_workers_left_behind_on_its_store() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::{CommandExt, ExitStatusExt};

    let dir = TempDir::new();
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    // A worker whose supervisor is not a daemon (this test plays a dead daemon's part): it
    // has a live link, so nothing else would ever end it.
    let (_ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let link = theirs.as_raw_fd();
    let mut command = std::process::Command::new(mlxd_tests::bin("mlxd"));
    command
        .args([
            "worker",
            "--name",
            "minilm",
            "--kind",
            "embedding",
            "--path",
            "/nonexistent",
            "--python",
            "/nonexistent",
        ])
        .arg("--store")
        .arg(&store)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: dup2 is async-signal-safe; the closure allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(link, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut left_behind = command.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(left_behind.try_wait().unwrap().is_none(), "the stand-in worker did not stay up");

    // Another store's daemon leaves it alone; a daemon on its store ends it.
    let other = Daemon::start(&[]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(left_behind.try_wait().unwrap().is_none(), "a daemon on another store ended it");
    drop(other);
    let daemon = Daemon::start(&["--store", store.to_str().unwrap()]);
    let status = mlxd_tests::wait_timeout(&mut left_behind, Duration::from_secs(3))
        .expect("the left-behind worker was not ended within 3 s of the daemon starting");
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status}");
    assert!(daemon.log_text().contains("left behind by an earlier daemon"), "{}", daemon.log_text());
}
