//! No client can hurt another: each test reproduces an attack or a crash of one client on
//! the real daemon and workers, and shows that the others are unharmed.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::time::{Duration, Instant};

use mlxd_client::proto::{
    ChatMessage, DaemonStatus, EmbedRequest, ErrorCode, FinishReason, GenerateParams, GenerateRequest, ModelRef,
    Priority, PromptInput, Request, Response, ServerMessage, WireError,
};
use mlxd_tests::raw::{self, Raw};
use mlxd_tests::{eventually, model_named, process_alive, Daemon};

/// Users the tests act as (unused on a test machine; nothing of theirs exists).
const OTHER_UID: u32 = 40_113;
const ATTACKER_UID: u32 = 40_112;

fn cannot_switch_users() -> Option<&'static str> {
    if unsafe { libc::getuid() } != 0 {
        return Some("not root: cannot act as another user");
    }
    if std::process::Command::new("setpriv").arg("--version").output().is_err() {
        return Some("setpriv (util-linux) is not installed");
    }
    None
}

fn story(initial_credit: u32, max_tokens: u32) -> Request {
    Request::Generate(GenerateRequest {
        model: ModelRef::Name("smollm2".into()),
        input: PromptInput::Raw("Once upon a time".into()),
        params: GenerateParams { max_tokens, temperature: 0.0, ..GenerateParams::default() },
        initial_credit,
        priority: Priority::Interactive,
        deadline_ms: None,
    })
}

fn status(raw: &mut Raw, id: u64) -> DaemonStatus {
    raw.send(&raw::request(id, Request::Status));
    match raw.until_final(id).1 {
        ServerMessage::Response { body: Response::Status(status), .. } => status,
        other => panic!("status: {other:?}"),
    }
}

fn error_of(message: &ServerMessage) -> &WireError {
    match message {
        ServerMessage::Error { error, .. } | ServerMessage::Fatal(error) => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Generation: paused streams, a client leaving, reused ids, the prompt cache per user.
#[test]
fn paused_and_abandoned_streams_give_their_slots_back() {
    // The other user reaches the socket as a member of its group.
    let dir = mlxd_tests::TempDir::new();
    let socket = dir.join("run/s.sock");
    let daemon =
        Daemon::start_at(dir, socket, &["--stream-pause-limit", "6s", "--socket-group", &OTHER_UID.to_string()]);
    let mut observer = Raw::connect(&daemon.socket, "observer");

    // One connection opens 8 streams (every slot of the model) with no credit, then closes.
    let mut greedy_client = Raw::connect(&daemon.socket, "zero-credit");
    for id in 1..=8 {
        greedy_client.send(&raw::request(id, story(0, 512)));
    }
    let slots_taken = eventually(Duration::from_secs(60), || {
        model_named(&status(&mut observer, 100).models, "smollm2").sched.running == 8
    });
    assert!(slots_taken, "the 8 zero-credit streams never all started:\n{}", daemon.log_text());
    drop(greedy_client);
    let closed = Instant::now();
    // Forgotten at once: the session is gone and every slot is free within a second.
    let forgotten = eventually(Duration::from_secs(1), || {
        let status = status(&mut observer, 101);
        let smollm2 = model_named(&status.models, "smollm2");
        status.sessions == 1 && smollm2.sched.running == 0 && smollm2.in_flight == 0
    });
    assert!(forgotten, "the closed client's session or slots lingered: {:?}", status(&mut observer, 102));
    eprintln!("forgotten in {:?}", closed.elapsed());

    // A new generation answers normally.
    observer.send(&raw::request(200, story(64, 8)));
    match observer.until_final(200).1 {
        ServerMessage::Response { body: Response::Generated(summary), .. } => {
            assert_eq!(summary.completion_tokens, 8)
        }
        other => panic!("generation after the abandoned streams: {other:?}"),
    }

    // A stream paused for lack of credit ends after the pause limit with a typed error,
    // while another client's stream decodes to its end meanwhile.
    let mut paused = Raw::connect(&daemon.socket, "paused");
    let started = Instant::now();
    paused.send(&raw::request(1, story(2, 512)));
    observer.send(&raw::request(201, story(1000, 24)));
    match observer.until_final(201).1 {
        ServerMessage::Response { body: Response::Generated(summary), .. } => {
            assert_eq!(summary.completion_tokens, 24);
            // It decoded to its end while the paused stream still held its slot.
            assert!(started.elapsed() < Duration::from_secs(6), "the paused stream held the other back");
        }
        other => panic!("the other client's generation: {other:?}"),
    }
    let (events, last) = paused.until_final(1);
    let error = error_of(&last);
    assert_eq!(error.code, ErrorCode::Timeout, "{error}");
    assert!(error.message.contains("stream_pause_limit"), "{error}");
    assert_eq!(events.len(), 2, "exactly the granted credit was delivered: {events:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(6) && waited < Duration::from_secs(20), "ended after {waited:?}");
    assert_eq!(model_named(&status(&mut observer, 202).models, "smollm2").sched.running, 0);

    // Reusing an id still in flight ends the session with a typed error, and the request
    // never gets two final frames.
    paused.send(&raw::request(2, story(0, 512)));
    paused.send(&raw::request(2, Request::Ping));
    let fatal = loop {
        match paused.read() {
            Some(ServerMessage::Fatal(error)) => break error,
            Some(ServerMessage::Event { .. }) => {}
            other => panic!("expected Fatal for the reused id, got {other:?}"),
        }
    };
    assert_eq!(fatal.code, ErrorCode::BadRequest);
    assert!(fatal.message.contains("request id 2 is already in flight"), "{fatal}");
    let after = paused.read();
    assert!(after.is_none(), "nothing follows the Fatal: {after:?}");

    // The prompt cache is partitioned by user: another uid's identical prompt computes
    // everything, while the same user's repeat reuses the cached prefix.
    let prompt = Request::Generate(GenerateRequest {
        model: ModelRef::Name("smollm2".into()),
        input: PromptInput::Chat(vec![ChatMessage::new(
            "user",
            "Tell me something about the sea and the sky, please.",
        )]),
        params: GenerateParams { max_tokens: 2, temperature: 0.0, ..GenerateParams::default() },
        initial_credit: 8,
        priority: Priority::Interactive,
        deadline_ms: None,
    });
    let cached = |raw: &mut Raw, id| match raw.until_final(id).1 {
        ServerMessage::Response { body: Response::Generated(summary), .. } => summary.cached_prompt_tokens,
        other => panic!("generation: {other:?}"),
    };
    observer.send(&raw::request(300, prompt.clone()));
    assert_eq!(cached(&mut observer, 300), 0, "a fresh prompt");
    observer.send(&raw::request(301, prompt.clone()));
    assert!(cached(&mut observer, 301) > 0, "the same user's repeat reuses its prefix");
    if let Some(why) = cannot_switch_users() {
        eprintln!("SKIPPED the other-user half of the prompt cache check: {why}");
        return;
    }
    let frames = [raw::frame(&raw::hello("other-user")), raw::request(1, prompt.clone()), raw::request(2, prompt)];
    let answers = raw::exchange_as(OTHER_UID, OTHER_UID, &[], &daemon.socket, &frames, 2, Duration::from_secs(60));
    let summaries: Vec<_> = answers
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Response { body: Response::Generated(summary), .. } => Some(summary.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(summaries.len(), 2, "{answers:?}");
    assert_eq!(summaries[0].cached_prompt_tokens, 0, "another user's cached prompt was reused");
    assert!(summaries[1].cached_prompt_tokens > 0, "a user's own repeat is cached");
    assert!(summaries.iter().all(|s| s.finish_reason == FinishReason::Length));
}

/// A chat prompt of `messages` empty messages, as one frame built by hand (the test never
/// holds the messages in memory).
fn amplifying_frame(id: u64, messages: u32) -> Vec<u8> {
    let with = |n: usize| {
        raw::request(
            id,
            Request::Generate(GenerateRequest {
                model: ModelRef::Name("smollm2".into()),
                input: PromptInput::Chat(vec![ChatMessage::new("", ""); n]),
                params: GenerateParams::default(),
                initial_credit: 0,
                priority: Priority::Interactive,
                deadline_ms: None,
            }),
        )
    };
    let (one, two) = (with(1), with(2));
    // The count is the first byte that differs; each empty message is two zero bytes.
    let at = 4 + one[4..].iter().zip(&two[4..]).position(|(a, b)| a != b).unwrap();
    let mut body = one[4..at].to_vec();
    body.push(252); // varint: a u32 follows
    body.extend_from_slice(&messages.to_le_bytes());
    body.resize(body.len() + 2 * messages as usize, 0);
    body.extend_from_slice(&one[at + 3..]);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Decoded size: frames that would decode to far more memory than their bytes are refused
/// per request, and the daemon's memory stays within a fixed bound.
#[test]
fn frames_that_would_amplify_in_memory_are_refused_within_a_fixed_bound() {
    let daemon = Daemon::start(&[]);
    let mut probe = Raw::connect(&daemon.socket, "probe");
    // Every catalog model's metric series exist from the start, at zero.
    probe.send(&raw::request(1, Request::Metrics));
    match probe.until_final(1).1 {
        ServerMessage::Response { body: Response::Metrics(text), .. } => {
            for series in [
                "mlxd_requests_total{model=\"minilm\",kind=\"embed\",outcome=\"ok\"} 0",
                "mlxd_loads_total{model=\"smollm2\",outcome=\"ok\"} 0",
            ] {
                assert!(text.contains(series), "no {series} at start:\n{text}");
            }
        }
        other => panic!("metrics: {other:?}"),
    }
    let before = raw::peak_rss_kib(daemon.pid());

    // 8 million empty chat messages in a 16 MB frame, from four connections at once.
    let frame = amplifying_frame(7, 8_000_000);
    assert!(frame.len() < 16 << 20);
    let senders: Vec<_> = (0..4)
        .map(|i| {
            let (socket, frame) = (daemon.socket.clone(), frame.clone());
            std::thread::spawn(move || {
                let mut raw = Raw::connect(&socket, &format!("amplifier-{i}"));
                for _ in 0..3 {
                    raw.send(&frame);
                    let error = error_of(&raw.until_final(7).1).clone();
                    assert_eq!(error.code, ErrorCode::TooLarge, "{error}");
                    assert!(
                        error.message.contains("8000000 chat messages") && error.message.contains("at most 1024"),
                        "{error}"
                    );
                }
                // The session goes on.
                let _ = status(&mut raw, 8);
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    let grown_mib = (raw::peak_rss_kib(daemon.pid()).saturating_sub(before)) / 1024;
    // Four 16 MiB frames buffered at once, and their decoding claims nothing: well under
    // 160 MiB. (Decoded, each frame would be over 380 MiB of `String`s.)
    assert!(grown_mib < 160, "daemon peak RSS grew by {grown_mib} MiB");
    eprintln!("peak RSS grew by {grown_mib} MiB");

    // Each kind of sequence has its cap, answered under the request's id.
    let detokenize = Request::Detokenize { model: ModelRef::Name("minilm".into()), tokens: vec![1; 65_537] };
    probe.send(&raw::request(20, detokenize));
    let error = error_of(&probe.until_final(20).1).clone();
    assert!(error.code == ErrorCode::TooLarge && error.message.contains("65537 tokens"), "{error}");
    let embed = Request::Embed(EmbedRequest {
        model: ModelRef::Name("minilm".into()),
        texts: vec![String::new(); 1025],
        normalize: true,
        priority: Priority::Batch,
        deadline_ms: None,
        prompt: None,
    });
    probe.send(&raw::request(21, embed));
    let error = error_of(&probe.until_final(21).1).clone();
    assert!(error.code == ErrorCode::TooLarge && error.message.contains("max_texts_per_embed"), "{error}");

    // A client's name reaches the log escaped and capped: it cannot forge log lines.
    let forged = format!("evil\nINFO mlxd: forged line {}", "x".repeat(200));
    let _named = Raw::connect(&daemon.socket, &forged);
    assert!(eventually(Duration::from_secs(5), || daemon.log_text().contains("evil\\nINFO")), "the session is logged");
    let log = daemon.log_text();
    assert!(!log.contains("\nINFO mlxd: forged line"), "a client's name broke a log line:\n{log}");
    assert!(log.contains("evil\\nINFO mlxd: forged line"), "the name is logged escaped");
    assert!(!log.contains(&"x".repeat(100)), "the name is capped");
}

/// A worker's reply too large for its link, and a batch answered with the wrong shape:
/// each fails its own requests with a typed error, at once; the worker and the batcher go on.
#[test]
fn oversized_and_misshapen_worker_replies_fail_only_their_requests() {
    let dir = mlxd_tests::TempDir::new();
    let socket = dir.join("s.sock");
    let daemon = Daemon::start_with_env(dir, socket, &[], &[("MLXD_TEST_FAULT", "detokenize:huge,embed:short")]);
    let mut raw = Raw::connect(&daemon.socket, "replies");
    raw.send(&raw::request(
        1,
        Request::Tokenize { model: ModelRef::Name("minilm".into()), text: "hi".into(), add_special_tokens: false },
    ));
    assert!(matches!(raw.until_final(1).1, ServerMessage::Response { body: Response::Tokens(_), .. }));
    let pid = model_named(&status(&mut raw, 2).models, "minilm").worker_pid.unwrap();

    let started = Instant::now();
    raw.send(&raw::request(3, Request::Detokenize { model: ModelRef::Name("minilm".into()), tokens: vec![1, 2, 3] }));
    let error = error_of(&raw.until_final(3).1).clone();
    assert_eq!(error.code, ErrorCode::TooLarge, "{error}");
    assert!(error.message.contains("over the worker link's limit"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(20), "answered at once, not by the watchdog");

    for id in [4, 5] {
        let embed = Request::Embed(EmbedRequest {
            model: ModelRef::Name("minilm".into()),
            texts: vec!["one".into(), "two".into()],
            normalize: true,
            priority: Priority::Interactive,
            deadline_ms: None,
            prompt: None,
        });
        raw.send(&raw::request(id, embed));
        let error = error_of(&raw.until_final(id).1).clone();
        assert_eq!(error.code, ErrorCode::WorkerFailed, "{error}");
        assert!(error.message.contains("for a batch of 2 texts"), "{error}");
    }
    // The same worker served all of it: nothing crashed, nothing was restarted.
    let minilm = model_named(&status(&mut raw, 6).models, "minilm").clone();
    assert_eq!(minilm.worker_pid, Some(pid));
    assert!(process_alive(pid));
    assert!(!daemon.log_text().contains("panicked"), "{}", daemon.log_text());
}

/// Owners and members: a member of the socket group may use models but not take operator
/// actions; the owner may, and so may a member of an admin group (read from the peer's
/// supplementary groups as the kernel recorded them).
#[test]
fn members_use_models_and_only_operators_act_on_them_for_everyone() {
    if let Some(why) = cannot_switch_users() {
        eprintln!("SKIPPED members_use_models_and_only_operators_act_on_them_for_everyone: {why}");
        return;
    }
    const ADMIN_GID: u32 = 40_114;
    let dir = mlxd_tests::TempDir::new();
    let socket = dir.join("run/s.sock");
    let group = OTHER_UID.to_string();
    let daemon = Daemon::start_at(dir, socket, &["--socket-group", &group, "--admin-group", &ADMIN_GID.to_string()]);
    let unload = |force| Request::Unload { model: "minilm".into(), force };
    let lease =
        |keep_alive_ms| Request::Lease(mlxd_client::proto::LeaseRequest { model: "minilm".into(), keep_alive_ms });
    let frames = [
        raw::frame(&raw::hello("member")),
        raw::request(1, Request::Load { model: "minilm".into() }),
        raw::request(2, unload(true)),
        raw::request(3, lease(Some(0))),
        raw::request(4, lease(None)),
    ];
    let answers = raw::exchange_as(OTHER_UID, OTHER_UID, &[], &daemon.socket, &frames, 4, Duration::from_secs(60));
    let finals: Vec<_> =
        answers.iter().filter(|m| matches!(m, ServerMessage::Response { .. } | ServerMessage::Error { .. })).collect();
    assert!(matches!(finals[0], ServerMessage::Response { body: Response::Loaded(_), .. }), "{answers:?}");
    for refused in [finals[1], finals[2]] {
        let error = error_of(refused);
        assert_eq!(error.code, ErrorCode::Unauthorized, "{error}");
        assert!(error.message.contains("operator action"), "{error}");
    }
    assert!(matches!(finals[3], ServerMessage::Response { body: Response::Leased(_), .. }), "{answers:?}");

    // A member of the admin group (a supplementary group) is an operator.
    let frames = [raw::frame(&raw::hello("admin")), raw::request(1, unload(true))];
    let answers =
        raw::exchange_as(40_115, OTHER_UID, &[ADMIN_GID], &daemon.socket, &frames, 1, Duration::from_secs(60));
    assert!(
        answers.iter().any(|m| matches!(m, ServerMessage::Response { body: Response::Unloaded(_), .. })),
        "{answers:?}"
    );
    // And so is the daemon's own user.
    let mut owner = Raw::connect(&daemon.socket, "owner");
    owner.send(&raw::request(1, Request::Load { model: "minilm".into() }));
    let _ = owner.until_final(1);
    owner.send(&raw::request(2, unload(true)));
    assert!(matches!(owner.until_final(2).1, ServerMessage::Response { body: Response::Unloaded(_), .. }));
}

/// Fair shares per user: one user opening 200 connections gets its per-user share and no
/// more, and another user is served meanwhile; a frame begun and never finished does not
/// hold a connection.
#[test]
fn one_user_with_many_connections_cannot_crowd_out_another() {
    if let Some(why) = cannot_switch_users() {
        eprintln!("SKIPPED one_user_with_many_connections_cannot_crowd_out_another: {why}");
        return;
    }
    let dir = mlxd_tests::TempDir::new();
    let socket = dir.join("run/s.sock");
    let daemon = Daemon::start_at(
        dir,
        socket,
        &["--socket-group", &ATTACKER_UID.to_string(), "--max-connections-per-uid", "64", "--frame-read-timeout", "1s"],
    );
    let hello_hex: String = raw::frame(&raw::hello("crowd")).iter().map(|b| format!("{b:02x}")).collect();
    let mut crowd = std::process::Command::new("setpriv")
        .arg(format!("--reuid={ATTACKER_UID}"))
        .arg(format!("--regid={ATTACKER_UID}"))
        .args(["--clear-groups", "--", "/usr/bin/python3", "-c", CROWD_PY])
        .arg(&daemon.socket)
        .arg(&hello_hex)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(crowd.stdout.take().unwrap()));
    let report = lines.next().unwrap().unwrap();
    let (welcomed, refused, refusal_hex) = {
        let mut parts = report.split_whitespace();
        let mut next = || parts.next().unwrap_or_default().to_owned();
        (next().parse::<usize>().unwrap(), next().parse::<usize>().unwrap(), next())
    };
    assert_eq!((welcomed, refused), (64, 136), "{report}");
    let body: Vec<u8> =
        (0..refusal_hex.len()).step_by(2).map(|i| u8::from_str_radix(&refusal_hex[i..i + 2], 16).unwrap()).collect();
    let refusal: ServerMessage = mlxd_proto::frame::decode_body(&body).unwrap();
    let error = error_of(&refusal);
    assert!(error.code == ErrorCode::Busy && error.message.contains("max_connections_per_uid"), "{error}");

    // While the crowd holds its 64 sessions, another user is served at once.
    let started = Instant::now();
    let mut other = Raw::connect(&daemon.socket, "other");
    let sessions = status(&mut other, 1).sessions;
    assert_eq!(sessions, 65, "the crowd's share and this one");
    let embed = Request::Embed(EmbedRequest {
        model: ModelRef::Name("minilm".into()),
        texts: vec!["served".into()],
        normalize: true,
        priority: Priority::Interactive,
        deadline_ms: None,
        prompt: None,
    });
    other.send(&raw::request(2, embed));
    assert!(matches!(other.until_final(2).1, ServerMessage::Response { body: Response::Embeddings(_), .. }));
    eprintln!("served beside the crowd in {:?}", started.elapsed());

    // A frame begun and never finished ends its session after frame_read_timeout.
    let mut loris = Raw::connect(&daemon.socket, "slow-loris");
    loris.send(&[0, 0]);
    let started = Instant::now();
    match loris.read() {
        Some(ServerMessage::Fatal(error)) => assert!(error.message.contains("frame_read_timeout"), "{error}"),
        other => panic!("a half-sent frame got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "closed after {:?}", started.elapsed());
    assert!(loris.read().is_none());
    let _ = crowd.kill();
    let _ = crowd.wait();
}

/// Opens 200 connections with a Hello each, prints how many were welcomed and refused
/// (with the first refusal's body), then holds them until killed.
const CROWD_PY: &str = r#"
import socket, struct, sys, time
path, hello = sys.argv[1], bytes.fromhex(sys.argv[2])
held, welcomed, refused, refusal = [], 0, 0, ""
for _ in range(200):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.settimeout(30)
    try:
        s.sendall(hello)
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused before its Hello: the refusal is already in our receive buffer
    head = b""
    while len(head) < 4:
        head += s.recv(4 - len(head))
    n = struct.unpack(">I", head)[0]
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    if body[0] == 0:
        welcomed += 1
        held.append(s)
    else:
        refused += 1
        refusal = refusal or body.hex()
        s.close()
print(welcomed, refused, refusal, flush=True)
time.sleep(600)
"#;

/// During shutdown a model's worker is not restarted: a worker killed while requests drain
/// fails them instead of coming back.
#[test]
fn a_worker_that_dies_during_shutdown_is_not_restarted() {
    let dir = mlxd_tests::TempDir::new();
    let socket = dir.join("s.sock");
    let mut daemon = Daemon::start_with_env(dir, socket, &[], &[("MLXD_TEST_FAULT", "embed:slow:30")]);
    let mut raw = Raw::connect(&daemon.socket, "drained");
    let embed = Request::Embed(EmbedRequest {
        model: ModelRef::Name("minilm".into()),
        texts: vec!["slow".into()],
        normalize: true,
        priority: Priority::Interactive,
        deadline_ms: None,
        prompt: None,
    });
    raw.send(&raw::request(1, embed));
    let mut probe = Raw::connect(&daemon.socket, "probe");
    let mut pid = None;
    assert!(eventually(Duration::from_secs(60), || {
        let minilm = model_named(&status(&mut probe, 1).models, "minilm").clone();
        pid = minilm.worker_pid;
        minilm.in_flight > 0 && pid.is_some()
    }));
    let pid = pid.unwrap();
    // SAFETY: kill(2) on our own child, then on its worker.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGTERM) };
    let log = &daemon.log;
    let draining = || std::fs::read_to_string(log).unwrap_or_default().contains("draining in-flight requests");
    assert!(eventually(Duration::from_secs(10), draining), "the daemon began to shut down");
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    // Its request is not replayed on a new worker: it ends with a typed error.
    let error = error_of(&raw.until_final(1).1).clone();
    assert_eq!(error.code, ErrorCode::Shutdown, "{error}");
    let status = mlxd_tests::wait_timeout(&mut daemon.child, Duration::from_secs(20)).expect("the daemon exits");
    assert!(status.success(), "{status}");
    let log = daemon.log_text();
    assert_eq!(log.matches("starting worker").count(), 1, "a worker was started during shutdown:\n{log}");
    assert!(log.contains("the daemon is shutting down"), "{log}");
}
