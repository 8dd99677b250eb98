//! The daemon's socket and process lifecycle: permissions, one daemon per path, stale
//! sockets, clean shutdown, and the stdio mode and client fallback.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::Duration;

use mlxd_tests::{bin, cosine, minilm_reference, model_named, run_with_timeout, Daemon, TempDir};

#[test]
fn socket_is_private_and_single_and_removed_at_shutdown() {
    let dir = TempDir::new();
    let socket = dir.join("run/mlxd/s.sock");
    let mut daemon = Daemon::start_at(dir, socket.clone(), &[]);

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600, "socket mode");
    assert_eq!(mode(socket.parent().unwrap()), 0o700, "socket directory mode");

    // A second daemon on the same path refuses to start and leaves the first alone.
    let (status, _, stderr) = run_with_timeout(
        Command::new(bin("mlxd")).arg("serve").arg("--socket").arg(&socket).stdin(Stdio::null()),
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert!(stderr.contains("already serving"), "clear message: {stderr}");
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok(), "first daemon still serves");

    let status = daemon.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(!socket.exists(), "socket removed at shutdown");
}

#[test]
fn stale_socket_of_a_dead_daemon_is_replaced() {
    let dir = TempDir::new();
    let socket = dir.join("s.sock");
    // A socket file nobody listens on, as a SIGKILLed daemon leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(std::fs::symlink_metadata(&socket).unwrap().file_type().is_socket());
    let daemon = Daemon::start_at(dir, socket.clone(), &[]);
    assert!(daemon.log_text().contains("stale socket"), "{}", daemon.log_text());

    // And a daemon that is SIGKILLed: the next one takes over its path.
    let mut daemon = daemon;
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    assert!(socket.exists());
    let dir2 = TempDir::new();
    let log = dir2.join("second.log");
    let mut second = mlxd_tests::spawn_daemon(&socket, &log, &[]);
    let serving = || std::os::unix::net::UnixStream::connect(&socket).is_ok();
    assert!(
        mlxd_tests::eventually(Duration::from_secs(30), serving),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    second.kill().unwrap();
    second.wait().unwrap();
}

#[test]
fn a_path_that_is_not_a_socket_is_never_removed() {
    let dir = TempDir::new();
    let path = dir.join("precious.txt");
    std::fs::write(&path, "data").unwrap();
    let (status, _, stderr) = run_with_timeout(
        Command::new(bin("mlxd")).arg("serve").arg("--socket").arg(&path).stdin(Stdio::null()),
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
}

#[test]
fn mlxctl_falls_back_to_stdio_when_no_daemon_runs() {
    let dir = TempDir::new();
    let missing = dir.join("nobody-home.sock");
    let reference = &minilm_reference()[0];
    let (status, stdout, stderr) = run_with_timeout(
        Command::new(bin("mlxctl"))
            .arg("--socket")
            .arg(&missing)
            .args(["embed", "--model", "minilm", "--json", &reference.text])
            .stdin(Stdio::null()),
        Duration::from_secs(120),
    );
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("fell back"), "says it fell back: {stderr}");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON on stdout");
    let vector: Vec<f32> =
        json["embeddings"][0].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert_eq!(vector.len(), 384);
    assert!(cosine(&vector, &reference.embedding) >= 0.999);

    let (status, _, stderr) = run_with_timeout(
        Command::new(bin("mlxctl"))
            .arg("--socket")
            .arg(&missing)
            .args(["--no-fallback", "embed", "--model", "minilm", "x"])
            .stdin(Stdio::null()),
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert!(stderr.contains("no daemon at") && stderr.contains("mlxd serve"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_mode_exits_when_stdin_closes_and_leaves_no_worker() {
    let mut child = tokio::process::Command::new(bin("mlxd"))
        .arg("stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mlxd stdio");
    let (stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let options = mlxd_client::ConnectOptions::default();
    let client = mlxd_client::Client::over(stdout, stdin, &options, mlxd_client::Endpoint::Stdio { pid: None }, None)
        .await
        .expect("handshake over stdio");
    // Load the model, so that a worker exists, then close stdin by dropping the client.
    let e = client.embed("minilm", vec!["hello world".into()]).await.expect("embed over stdio");
    assert_eq!(e.dim, 384);
    let status = client.status().await.unwrap();
    assert_eq!(status.endpoint, "stdio");
    let worker_pid = model_named(&status.models, "minilm").worker_pid.expect("a worker runs");
    drop(client);

    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("mlxd stdio exits when stdin closes")
        .unwrap();
    assert!(status.success(), "{status}");
    let gone = || !mlxd_tests::process_alive(worker_pid);
    assert!(mlxd_tests::eventually(Duration::from_secs(5), gone), "worker {worker_pid} outlived mlxd stdio");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    let mut daemon = Daemon::start(&[]);
    let client = daemon.client().await;
    let _lease = client.lease("minilm").await.expect("lease"); // loaded before the clock starts
    let reference = minilm_reference();
    let long = reference.iter().max_by_key(|r| r.text.len()).unwrap().clone();
    let texts = vec![long.text.clone(); 4];
    let request = {
        let client = client.clone();
        tokio::spawn(async move { client.embed("minilm", texts).await })
    };
    // Let the request reach the worker, then ask the daemon to stop.
    let in_flight = || async { model_named(&client.status().await.unwrap().models, "minilm").in_flight > 0 };
    assert!(mlxd_tests::eventually_async(Duration::from_secs(10), in_flight).await, "request never went in flight");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGTERM) };
    let embeddings = request.await.unwrap().expect("the in-flight request is answered, not dropped");
    assert_eq!(embeddings.count, 4);
    assert!(cosine(embeddings.rows().next().unwrap(), &long.embedding) >= 0.999);
    let status = daemon.terminate();
    assert!(status.success());
    assert!(!daemon.socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_die_with_a_killed_daemon() {
    let mut daemon = Daemon::start(&[]);
    let client = daemon.client().await;
    client.embed("minilm", vec!["warm up".into()]).await.expect("embed");
    let worker_pid = model_named(&client.status().await.unwrap().models, "minilm").worker_pid.expect("worker pid");
    daemon.child.kill().unwrap(); // SIGKILL: no chance to clean up
    daemon.child.wait().unwrap();
    let gone = || !mlxd_tests::process_alive(worker_pid);
    assert!(mlxd_tests::eventually(Duration::from_secs(2), gone), "worker {worker_pid} outlived its daemon by 2 s");
}
