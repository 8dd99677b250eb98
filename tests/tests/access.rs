//! Who may connect, and the per-session and per-request limits: the socket's file modes,
//! the peer-credential allow-list (run as other users with `setpriv`), and each limit
//! refused with a typed error that names it.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use mlxd_client::proto::{
    ErrorCode, GenerateParams, GenerateRequest, ModelRef, Priority, PromptInput, Request, Response,
};
use mlxd_client::{ClientError, ConnectOptions};
use mlxd_tests::{as_user, bin, cannot_switch_users, eventually_async, model_named, run_with_timeout, Daemon, TempDir};

const NOBODY: u32 = 65534;

async fn refused_or_served(socket: &Path) -> Result<(), ClientError> {
    // The daemon runs as uid 65534, which this client (root) talks to only when told to:
    // what is tested here is whether the daemon refuses the client.
    let options = ConnectOptions {
        socket: Some(socket.to_path_buf()),
        fallback: false,
        trusted_uids: vec![NOBODY],
        ..Default::default()
    };
    options.connect().await?.status().await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_outside_the_allow_list_is_refused_with_unauthorized() {
    if let Some(why) = cannot_switch_users() {
        eprintln!("SKIPPED a_peer_outside_the_allow_list_is_refused_with_unauthorized: {why}");
        return;
    }
    let dir = TempDir::new();
    std::os::unix::fs::chown(&dir.0, Some(NOBODY), Some(NOBODY)).unwrap();
    // The daemon runs as nobody. This test's process is root, which reaches the 0600 socket
    // anyway (root ignores file modes): exactly the peer the allow-list has to stop.
    for (name, extra, allowed) in [("closed", &[][..], false), ("open", &["--allow-uid", "0"][..], true)] {
        let socket = dir.join(&format!("{name}.sock"));
        let log = dir.join(&format!("{name}.log"));
        let mut daemon = as_user(NOBODY, NOBODY, &bin("mlxd"))
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .env("HOME", &dir.0)
            .env("XDG_CONFIG_HOME", &dir.0)
            .env("MLXD_LOG", "info")
            .env("MLXD_LOG_FORMAT", "human")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "daemon as nobody did not start: {}",
                std::fs::read_to_string(&log).unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(std::fs::metadata(&socket).unwrap().uid(), NOBODY);
        let result = refused_or_served(&socket).await;
        // HTTP on the same socket is behind the same check: nothing is served to the peer.
        let http = {
            use std::io::{Read, Write};
            let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            write!(stream, "GET /v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text);
            text
        };
        let _ = daemon.kill();
        let _ = daemon.wait();
        let log = std::fs::read_to_string(&log).unwrap();
        if allowed {
            result.unwrap_or_else(|err| panic!("uid 0 is on the allow-list but was refused: {err}\n{log}"));
            assert!(http.starts_with("HTTP/1.1 200") && http.contains("minilm"), "{http}");
        } else {
            assert!(http.starts_with("HTTP/1.1 403") && http.contains("uid 0 is not allowed"), "{http}");
            assert!(!http.contains("minilm"), "{http}");
            match result {
                Err(ClientError::Handshake(err)) => {
                    assert_eq!(err.code, ErrorCode::Unauthorized, "{err}");
                    assert!(err.message.contains("uid 0 is not allowed"), "{err}");
                }
                other => panic!("a peer outside the allow-list got {other:?}"),
            }
            assert!(log.contains("connection refused") && log.contains("uid=Some(0)"), "the refusal is logged:\n{log}");
        }
    }
}

#[test]
fn the_socket_group_gets_0660_and_only_its_members_reach_the_socket() {
    if let Some(why) = cannot_switch_users() {
        eprintln!("SKIPPED the_socket_group_gets_0660_and_only_its_members_reach_the_socket: {why}");
        return;
    }
    let dir = TempDir::new();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.join("run/s.sock");
    let daemon = Daemon::start_at(dir, socket.clone(), &["--socket-group", &NOBODY.to_string()]);
    let meta = |p: &Path| std::fs::metadata(p).unwrap();
    assert_eq!(meta(&socket).permissions().mode() & 0o777, 0o660, "socket mode");
    assert_eq!(meta(&socket).gid(), NOBODY, "socket group");
    let run = socket.parent().unwrap();
    assert_eq!(meta(run).permissions().mode() & 0o777, 0o710, "socket directory mode");
    assert_eq!(meta(run).gid(), NOBODY);

    let status = |uid: u32, gid: u32| {
        run_with_timeout(
            as_user(uid, gid, &bin("mlxctl"))
                .arg("--socket")
                .arg(&socket)
                .args(["--no-fallback", "status"])
                .env("HOME", "/"),
            Duration::from_secs(30),
        )
    };
    // A member of the socket's group is served (the policy allows its members).
    let (ok, stdout, stderr) = status(NOBODY, NOBODY);
    assert!(ok.success(), "a member of the socket group was refused: {stderr}");
    assert!(stdout.contains("mlxd"), "{stdout}");
    // Another user outside the group never reaches the daemon: the file modes stop it.
    let (refused, _, stderr) = status(NOBODY, 12345);
    assert!(!refused.success(), "a user outside the socket group was served");
    assert!(stderr.to_lowercase().contains("permission denied"), "{stderr}");
    assert!(!daemon.log_text().contains("uid=Some(65534) gid=Some(12345)"), "it never got as far as the daemon");
}

/// The request was refused with `code`, by a message naming the `limit`.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, ClientError>, code: ErrorCode, limit: &str) {
    match result {
        Err(ClientError::Wire(err)) => {
            assert_eq!(err.code, code, "{err}");
            assert!(err.message.contains(limit), "the refusal does not name {limit}: {err}");
        }
        other => panic!("over {limit}, and accepted: {other:?}"),
    }
}

fn long_story() -> GenerateRequest {
    GenerateRequest {
        model: ModelRef::Name("smollm2".into()),
        input: PromptInput::Raw("Once upon a time".into()),
        params: GenerateParams { max_tokens: 4000, temperature: 0.0, ..GenerateParams::default() },
        initial_credit: 0,
        priority: Priority::Interactive,
        deadline_ms: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_session_limit_is_refused_with_a_typed_error_naming_it() {
    // Every embedding takes 30 s (progressing), so requests stay in flight.
    let daemon =
        Daemon::with_config("[daemon]\nmax_streams_per_session = 3\n", &[("MLXD_TEST_FAULT", "embed:slow:30")]);
    let client = daemon.client().await;
    let limits = client.welcome().limits.clone();

    // Leases: max_leases per session.
    let mut leases = Vec::new();
    for _ in 0..limits.max_leases {
        leases.push(client.lease("minilm").await.unwrap());
    }
    assert_refused(client.lease("minilm").await, ErrorCode::TooLarge, "max_leases");
    drop(leases);

    // Generation streams: max_streams_per_session (3 here); a fourth is refused at once.
    // (Each limit on a session of its own: the releases above are requests too.)
    let client = daemon.client().await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(client.generate(long_story()).await.unwrap());
    }
    let mut fourth = client.generate(long_story()).await.unwrap();
    assert_refused(fourth.next().await, ErrorCode::Busy, "max_streams_per_session");
    for mut stream in streams {
        stream.cancel().await;
        while let Ok(Some(_)) = stream.next().await {}
    }

    // Per request: prompt bytes (max_text_bytes) and max_tokens.
    let client = daemon.client().await;
    let huge_prompt =
        GenerateRequest { input: PromptInput::Raw("x".repeat(limits.max_text_bytes as usize + 1)), ..long_story() };
    let mut too_long = client.generate(huge_prompt).await.unwrap();
    assert_refused(too_long.next().await, ErrorCode::TooLarge, "max_text_bytes");
    let greedy_too_far = GenerateRequest {
        params: GenerateParams { max_tokens: limits.max_tokens + 1, ..long_story().params },
        ..long_story()
    };
    let mut too_many = client.generate(greedy_too_far).await.unwrap();
    assert_refused(too_many.next().await, ErrorCode::TooLarge, "max_tokens");

    // Requests in flight: max_in_flight per session (the embeddings take 30 s each).
    let client = daemon.client().await;
    let mut pending = Vec::new();
    for i in 0..limits.max_in_flight {
        let client = client.clone();
        pending.push(tokio::spawn(async move { client.embed("minilm", vec![format!("text {i}")]).await }));
    }
    // Wait until all of them are in flight (seen from another session), so the next one
    // is over the limit: sending it earlier would be admitted and wait out the 30 s fault.
    let observer = daemon.client().await;
    let all_in_flight = || async {
        let status = observer.status().await.unwrap();
        model_named(&status.models, "minilm").in_flight >= limits.max_in_flight
    };
    assert!(eventually_async(Duration::from_secs(30), all_in_flight).await, "max_in_flight was never reached");
    match client.call(Request::Ping).await {
        Ok(Response::Pong) => {}
        other => panic!("ping: {other:?}"),
    }
    let refused = match client.embed("minilm", vec!["one too many".into()]).await {
        Err(ClientError::Wire(err)) if err.message.contains("max_in_flight") => err,
        other => panic!("over max_in_flight, and got {other:?}"),
    };
    assert_eq!(refused.code, ErrorCode::Busy, "{refused}");
    assert!(refused.retry_after_ms.is_some());
    for task in pending {
        task.abort();
    }
}
