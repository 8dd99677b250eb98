//! The HTTP front end on the daemon's own socket, driven by the real openai-python SDK
//! (installed by `make test`'s set-up) and by raw HTTP for what an SDK hides.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use mlxd_tests::{eventually, model_named, repo_root, run_with_timeout, venv_python, Daemon};

/// Runs `tests/sdk/SCRIPT` (checks written against a real SDK) on `endpoint`: the
/// daemon's socket, or its TCP address with the token.
fn sdk_checks(daemon: &Daemon, script: &str, endpoint: &std::ffi::OsStr, token: &str) {
    let script = repo_root().join("tests/sdk").join(script);
    let fixture = repo_root().join("../shared/fixtures/minilm_reference.json");
    let (status, stdout, stderr) = run_with_timeout(
        Command::new(venv_python()).arg(&script).arg(endpoint).arg(&fixture).env("MLXD_HTTP_TOKEN", token),
        Duration::from_secs(300),
    );
    assert!(status.success(), "{} against mlxd failed:\n{stdout}\n{stderr}\n{}", script.display(), daemon.log_text());
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[test]
fn the_openai_and_ollama_sdks_are_served_on_the_socket_and_on_tcp() {
    // One daemon for all four runs: later runs find the models loaded by the first.
    let daemon = Daemon::start(&["--http", "127.0.0.1:0"]);
    let url = format!("http://{}", http_addr(&daemon));
    // The token of the daemon's store, as a user would get it.
    let (status, token, stderr) = run_with_timeout(
        Command::new(mlxd_tests::bin("mlxctl")).arg("token").env("MLXD_BIN", mlxd_tests::bin("mlxd")),
        Duration::from_secs(30),
    );
    assert!(status.success() && token.trim().len() == 64, "mlxctl token: {token:?} {stderr}");
    for script in ["openai_sdk.py", "ollama_sdk.py"] {
        sdk_checks(&daemon, script, daemon.socket.as_os_str(), "");
        sdk_checks(&daemon, script, url.as_ref(), token.trim());
    }
}

/// Sends one raw HTTP request on the daemon's socket and returns the connection.
fn post(socket: &std::path::Path, path: &str, body: &str) -> UnixStream {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream
}

#[test]
fn a_client_that_disconnects_mid_stream_cancels_its_generation() {
    let daemon = Daemon::start(&[]);
    let body = r#"{"model":"smollm2","prompt":"Once upon a time","max_tokens":4000,"temperature":0,"stream":true}"#;
    let mut stream = post(&daemon.socket, "/v1/completions", body);
    // Read until a few tokens have arrived, then hang up.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.windows(5).filter(|w| w == b"data:").count() < 4 {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // The model was cold: its load progress came first, as SSE comments.
    assert!(text.contains(": loading smollm2"), "{text}");
    drop(stream);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(daemon.client());
    let idle = || {
        let status = runtime.block_on(client.status()).unwrap();
        let smollm2 = model_named(&status.models, "smollm2").clone();
        smollm2.in_flight == 0 && smollm2.sched.running == 0
    };
    assert!(eventually(Duration::from_secs(5), idle), "the disconnected client's generation kept running");
    // The request's log lines carry the HTTP session and the peer's pid.
    let log = daemon.log_text();
    let pid = format!("client=\"http\" pid=Some({})", std::process::id());
    assert!(log.lines().any(|l| l.contains(&pid) && l.contains("request{id=")), "{log}");
}

/// The JSON lines of an NDJSON response read to its end (chunked framing skipped).
fn ndjson_lines(mut stream: UnixStream) -> (String, Vec<serde_json::Value>) {
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let lines = body.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    (head.to_owned(), lines)
}

#[test]
fn ollama_streams_load_progress_and_a_dropped_request_is_cancelled_without_a_stream() {
    let daemon = Daemon::start(&[]);
    // A cold model: NDJSON lines with the load's progress come before the first token,
    // each one a valid (empty) piece for any Ollama client.
    let body = r#"{"model":"smollm2","prompt":"Once upon a time","options":{"num_predict":4,"temperature":0}}"#;
    let (head, lines) = ndjson_lines(post(&daemon.socket, "/api/generate", body));
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("application/x-ndjson"), "{head}");
    let first_token = lines.iter().position(|l| !l["response"].as_str().unwrap_or_default().is_empty()).unwrap();
    let progress: Vec<_> = lines[..first_token].iter().filter(|l| l.get("load").is_some()).collect();
    assert!(!progress.is_empty(), "no load progress before the first token: {lines:?}");
    assert!(progress.iter().all(|l| l["done"] == false && l["response"] == ""), "{progress:?}");
    assert!(progress.iter().any(|l| l["load"]["stage"] == "weights"), "{progress:?}");
    let last = lines.last().unwrap();
    assert!(last["done"] == true && last["eval_count"] == 4, "{last}");
    assert!(last["load_duration"].as_u64().unwrap() > 0, "the load was timed: {last}");

    // Not streamed: the client hangs up while its completion is being generated; the
    // generation stops at once rather than running to max_tokens for nobody.
    let body = r#"{"model":"smollm2","prompt":"Once upon a time","max_tokens":4000,"temperature":0}"#;
    let stream = post(&daemon.socket, "/v1/completions", body);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(daemon.client());
    let running = || {
        let status = runtime.block_on(client.status()).unwrap();
        model_named(&status.models, "smollm2").sched.running
    };
    assert!(eventually(Duration::from_secs(30), || running() == 1), "the completion never started");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(running(), 1, "still generating while the client waits");
    drop(stream);
    assert!(eventually(Duration::from_secs(5), || running() == 0), "the hung-up client's generation kept running");
}

#[test]
fn a_stream_in_progress_finishes_when_the_daemon_shuts_down() {
    let mut daemon = Daemon::start(&[]);
    let body = r#"{"model":"smollm2","prompt":"Once upon a time","max_tokens":16,"temperature":0,"stream":true}"#;
    let mut stream = post(&daemon.socket, "/v1/completions", body);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"text\":\"") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    // SIGTERM while tokens are flowing: the socket stops taking connections, and the
    // stream in progress runs to its end before the daemon exits.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    let text = String::from_utf8_lossy(&seen).into_owned() + &rest;
    assert!(text.contains("\"finish_reason\":\"length\"") && text.contains("data: [DONE]"), "{text}");
    let tokens = text.matches("\"text\":\"").count();
    assert!(tokens >= 16, "all 16 tokens (and the finishing chunk) were sent: {text}");
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
    assert!(UnixStream::connect(&daemon.socket).is_err(), "the socket is gone");
}

#[test]
fn errors_have_openai_statuses_and_busy_carries_retry_after() {
    let daemon = Daemon::start(&["--queue-capacity", "1"]);
    // Unknown endpoint and malformed body.
    let answer = |mut stream: UnixStream| {
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    };
    let mut missing = UnixStream::connect(&daemon.socket).unwrap();
    write!(missing, "GET /v1/nothing HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let text = answer(missing);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    let text = answer(post(&daemon.socket, "/v1/embeddings", r#"{"model": 5}"#));
    assert!(text.starts_with("HTTP/1.1 400") && text.contains("invalid_request_error"), "{text}");
    // Busy: one slow stream fills smollm2's queue (capacity 1); the next request is 429.
    let mut hog = post(
        &daemon.socket,
        "/v1/completions",
        r#"{"model":"smollm2","prompt":"Once upon a time","max_tokens":4000,"temperature":0,"stream":true}"#,
    );
    let mut buf = [0u8; 256];
    assert!(hog.read(&mut buf).unwrap() > 0);
    let text = answer(post(&daemon.socket, "/v1/completions", r#"{"model":"smollm2","prompt":"x","max_tokens":2}"#));
    assert!(text.starts_with("HTTP/1.1 429"), "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after:"), "{text}");
    assert!(text.contains("\"code\":\"busy\""), "{text}");
}

/// The TCP address the daemon bound for `--http 127.0.0.1:0`, from its log.
fn http_addr(daemon: &Daemon) -> String {
    let mut addr = String::new();
    let logged = || {
        let log = daemon.log_text();
        let Some(line) = log.lines().find(|l| l.contains("serving the HTTP API on TCP")) else { return false };
        addr =
            line.split("addr=").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap_or_default().to_owned();
        true
    };
    assert!(eventually(Duration::from_secs(10), logged), "{}", daemon.log_text());
    addr
}

fn get_tcp(addr: &str, headers: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(stream, "GET /v1/models HTTP/1.1\r\nConnection: close\r\n{headers}\r\n").unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

#[test]
fn tcp_needs_the_token_and_refuses_other_hosts_and_origins() {
    let dir = mlxd_tests::TempDir::new();
    let store = dir.join("store");
    let socket = dir.join("s.sock");
    let daemon = Daemon::start_at(dir, socket, &["--http", "127.0.0.1:0", "--store", store.to_str().unwrap()]);
    let addr = http_addr(&daemon);
    let token = std::fs::read_to_string(store.join("http-token")).unwrap();
    let (status, printed, _) = run_with_timeout(
        Command::new(mlxd_tests::bin("mlxd")).args(["token", "--store", store.to_str().unwrap()]),
        Duration::from_secs(30),
    );
    assert!(status.success() && printed.trim() == token.trim(), "mlxd token printed {printed:?}");
    let bearer = format!("Authorization: Bearer {}\r\n", token.trim());
    let ok = get_tcp(&addr, &format!("Host: localhost\r\n{bearer}"));
    assert!(ok.starts_with("HTTP/1.1 200") && ok.contains("minilm"), "{ok}");
    let missing = get_tcp(&addr, "Host: localhost\r\n");
    assert!(missing.starts_with("HTTP/1.1 401"), "{missing}");
    let wrong = get_tcp(&addr, "Host: localhost\r\nAuthorization: Bearer 0000\r\n");
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    // DNS rebinding: a page at evil.example resolving to 127.0.0.1 sends Host: evil.example.
    let rebound = get_tcp(&addr, &format!("Host: evil.example\r\n{bearer}"));
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    // A cross-origin request from a web page carries its Origin.
    let page = get_tcp(&addr, &format!("Host: localhost\r\nOrigin: https://evil.example\r\n{bearer}"));
    assert!(page.starts_with("HTTP/1.1 403"), "{page}");
    // Metrics on the same listener (and on the socket).
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{bearer}\r\n").unwrap();
    let mut metrics = String::new();
    let _ = stream.read_to_string(&mut metrics);
    assert!(metrics.starts_with("HTTP/1.1 200") && metrics.contains("# EOF"), "{metrics}");
}

#[test]
fn a_non_loopback_http_address_needs_allow_remote_and_a_token() {
    let run = |args: &[&str]| {
        let mut command = Command::new(mlxd_tests::bin("mlxd"));
        command.arg("serve").arg("--socket").arg("/nonexistent/x.sock").args(args);
        run_with_timeout(&mut command, Duration::from_secs(30))
    };
    let (status, _, stderr) = run(&["--http", "0.0.0.0:0"]);
    assert!(!status.success() && stderr.contains("--http-allow-remote"), "{stderr}");
    let (status, _, stderr) = run(&["--http", "0.0.0.0:0", "--http-allow-remote", "--http-no-auth"]);
    assert!(!status.success() && stderr.contains("--http-no-auth is refused"), "{stderr}");
}

/// The README's snippets (curl, openai-python, ollama-python, openai-node), run as
/// written against a daemon with only the socket path and TCP port put in; the editors'
/// configuration blocks are parsed.
#[test]
fn the_readmes_http_snippets_work_as_written() {
    // The reranking snippet's "reranker": the checked-in tiny cross-encoder.
    let reranker = format!("reranker={}", repo_root().join("python/tests/fixtures/st/rerank-bert").display());
    let daemon = Daemon::start(&["--http", "127.0.0.1:0", "--model", &reranker]);
    let addr = http_addr(&daemon);
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme.split("## Use mlxd from an OpenAI or Ollama client").nth(1).unwrap();
    let section = section.split("\n## ").next().unwrap();
    let blocks: Vec<(&str, &str)> =
        section.split("```").skip(1).step_by(2).map(|block| block.split_once('\n').unwrap_or((block, ""))).collect();
    let languages: Vec<&str> = blocks.iter().map(|(language, _)| language.trim()).collect();
    for wanted in ["python", "js", "yaml", "json", "env"] {
        assert!(languages.contains(&wanted), "the section has a {wanted} block: {languages:?}");
    }
    let socket = daemon.socket.to_str().unwrap();
    // `mlxctl token` as the snippets call it, and its output as the environment they expect.
    let bin_dir = mlxd_tests::bin("mlxctl").parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let (status, token, _) =
        run_with_timeout(Command::new(mlxd_tests::bin("mlxctl")).arg("token"), Duration::from_secs(30));
    assert!(status.success());
    for (language, code) in blocks {
        let code = code
            .replace("$XDG_RUNTIME_DIR/mlxd/mlxd.sock", socket)
            .replace("/run/user/1000/mlxd/mlxd.sock", socket)
            .replace("127.0.0.1:11434", &addr);
        let mut command = match language.trim() {
            "python" | "yaml" => {
                let mut command = Command::new(venv_python());
                if language.trim() == "yaml" {
                    command.arg("-c").arg("import sys, yaml; print(yaml.safe_load(sys.argv[1]))").arg(&code);
                } else {
                    command.arg("-c").arg(&code);
                }
                command
            }
            "js" => {
                // From the folder where set-up installed the openai package.
                let mut command = Command::new("node");
                command.current_dir(repo_root().join("tests/sdk/node")).args(["--input-type=module", "-e", &code]);
                command
            }
            "json" => {
                let parsed: Result<serde_json::Value, _> = serde_json::from_str(&code);
                assert!(parsed.is_ok(), "the README's json block does not parse: {parsed:?}\n{code}");
                continue;
            }
            "env" => {
                for line in code.lines().filter(|l| !l.trim().is_empty()) {
                    let (key, _) = line.split_once('=').unwrap_or_else(|| panic!("not KEY=VALUE: {line}"));
                    assert!(key.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{line}");
                }
                continue;
            }
            "sh" | "" => {
                let mut command = Command::new("sh");
                command.arg("-ec").arg(&code);
                command
            }
            other => panic!("a README block in {other:?}: run it here or say why not"),
        };
        command.env("PATH", &path).env("MLXD_TOKEN", token.trim()).env("MLXD_BIN", mlxd_tests::bin("mlxd"));
        let (status, stdout, stderr) = run_with_timeout(&mut command, Duration::from_secs(120));
        assert!(status.success(), "the README's {language} snippet failed:\n{code}\n{stdout}\n{stderr}");
        assert!(!stdout.trim().is_empty(), "the {language} snippet printed nothing:\n{code}");
        if code.contains("/v1/rerank") {
            assert!(stdout.contains("\"relevance_score\""), "the rerank snippet did not rerank:\n{stdout}");
        }
    }
}
