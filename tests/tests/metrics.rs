//! Metrics on the real daemon: the HTTP endpoint scraped while `mlxctl bench` runs has every
//! family the operations issue lists, with values that agree with what was sent; the same
//! exposition comes over the socket (`mlxctl metrics`) and in `mlxctl status --json`.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use mlxd_tests::{bin, model_named, run_with_timeout, Daemon};

/// One sample: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let labels = rest
                    .trim_end_matches('}')
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").unwrap();
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name, labels)
            }
            None => (series, BTreeMap::new()),
        };
        samples.push(Sample { name: name.to_owned(), labels, value: value.parse().unwrap() });
    }
    samples
}

/// Sum of the samples named `name` whose labels include every pair in `with`.
fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && with.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

fn scrape(addr: &str) -> Vec<Sample> {
    let (head, body) = http_get(addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "a complete exposition");
    parse(&body)
}

/// The metrics address the daemon bound (it was given port 0), from its log.
fn metrics_addr(daemon: &Daemon) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = daemon.log_text();
        if let Some(line) = log.lines().find(|l| l.contains("serving metrics over HTTP")) {
            return line.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no metrics listener in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mlxctl(daemon: &Daemon, args: &[&str]) -> String {
    let (status, stdout, stderr) = run_with_timeout(
        Command::new(bin("mlxctl")).arg("--socket").arg(&daemon.socket).arg("--no-fallback").args(args),
        Duration::from_secs(120),
    );
    assert!(status.success(), "mlxctl {args:?}: {stderr}");
    stdout
}

const FAMILIES: &[&str] = &[
    "mlxd_requests_total",
    "mlxd_request_duration_seconds_count",
    "mlxd_queue_depth",
    "mlxd_queue_wait_seconds_count",
    "mlxd_batch_size_count",
    "mlxd_time_to_first_token_seconds_count",
    "mlxd_generation_tokens_per_second_count",
    "mlxd_models_loaded",
    "mlxd_resident_bytes",
    "mlxd_leases",
    "mlxd_sessions",
    "mlxd_loads_total",
    "mlxd_unloads_total",
    "mlxd_evictions_total",
    "mlxd_worker_restarts_total",
    "mlxd_worker_failures_total",
    "mlxd_circuit_open",
    "mlxd_busy_refusals_total",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_metrics_scraped_during_a_bench_agree_with_what_was_sent() {
    // A queue of 16: the first bench (12 connections) always fits, the second (40) meets
    // Busy. At most one model loaded, so that loading the second evicts the first.
    let daemon =
        Daemon::start(&["--metrics-addr", "127.0.0.1:0", "--queue-capacity", "16", "--max-loaded-models", "1"]);
    let addr = metrics_addr(&daemon);
    let (head, _) = http_get(&addr, "/nope");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // Embeddings under load, scraped while the bench runs.
    let bench = |connections: &str, requests: &str| {
        let socket = daemon.socket.clone();
        let (connections, requests) = (connections.to_owned(), requests.to_owned());
        std::thread::spawn(move || {
            let (status, stdout, stderr) = run_with_timeout(
                Command::new(bin("mlxctl"))
                    .args(["bench", "--no-fallback", "--json", "-m", "minilm", "--duration", "120"])
                    .args([
                        "--socket",
                        socket.to_str().unwrap(),
                        "--connections",
                        &connections,
                        "--requests",
                        &requests,
                    ]),
                Duration::from_secs(180),
            );
            assert!(status.success(), "bench: {stderr}");
            let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
            assert!(report["errors"].as_object().unwrap().is_empty(), "{report}");
            (report["ok"].as_u64().unwrap() as f64, report["busy"].as_u64().unwrap() as f64)
        })
    };
    let steady = bench("12", "400");
    let mut during = Vec::new();
    while !steady.is_finished() {
        let samples = scrape(&addr);
        for sample in
            samples.iter().filter(|s| ["mlxd_queue_depth", "mlxd_leases", "mlxd_in_flight"].contains(&s.name.as_str()))
        {
            assert!(sample.value >= 0.0, "{sample:?}");
        }
        during.push(sum(&samples, "mlxd_requests_total", &[("model", "minilm"), ("kind", "embed")]));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (steady_ok, steady_busy) = steady.join().unwrap();
    assert_eq!((steady_ok, steady_busy), (400.0, 0.0), "12 connections fit a queue of 16");
    assert!(during.len() >= 3, "scraped {} times during the bench", during.len());
    assert!(during.windows(2).all(|w| w[0] <= w[1]), "a counter never goes down: {during:?}");
    assert!(during.last() > during.first(), "requests were counted while the bench ran: {during:?}");
    // 40 connections on a queue of 16: some are refused.
    let (burst_ok, busy) = bench("40", "400").join().unwrap();
    assert!(busy > 0.0 && burst_ok > 0.0, "{burst_ok} ok, {busy} busy");
    let ok = steady_ok + burst_ok;

    // Generation: a few streams, so time to first token and decode speed are observed.
    let mut generated = 0.0;
    for _ in 0..3 {
        let out =
            mlxctl(&daemon, &["--json", "generate", "-m", "smollm2", "--max-tokens", "8", "--raw", "Once upon a time"]);
        let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        generated += summary["completion_tokens"].as_f64().unwrap();
    }
    // Minilm was evicted for smollm2 (one model at most); unload smollm2 by request.
    mlxctl(&daemon, &["unload", "smollm2"]);
    // A worker killed under the daemon is a failure; the next request restarts it.
    mlxctl(&daemon, &["embed", "-m", "minilm", "one"]);
    let status = daemon.client().await.status().await.unwrap();
    let pid = model_named(&status.models, "minilm").worker_pid.unwrap();
    // SAFETY: kill(2) with a pid we read from the daemon's status.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0, "kill -9 {pid}");
    // The daemon has noticed the death (the worker's failure is counted) before the next request.
    let failed = || scrape(&addr).iter().any(|s| s.name == "mlxd_worker_failures_total" && s.value >= 1.0);
    assert!(mlxd_tests::eventually(Duration::from_secs(10), failed), "the worker's death was not noticed");
    mlxctl(&daemon, &["embed", "-m", "minilm", "two"]);

    let samples = scrape(&addr);
    for family in FAMILIES {
        assert!(samples.iter().any(|s| s.name == *family), "no {family} in the exposition");
    }
    let embed = [("model", "minilm"), ("kind", "embed")];
    // Each bench's warm-up request, their answered requests, then "one" and "two".
    let served = 2.0 + ok + 2.0;
    let sent_embeds = served + busy;
    assert_eq!(sum(&samples, "mlxd_requests_total", &embed), sent_embeds, "every embed counted once");
    assert_eq!(
        sum(&samples, "mlxd_requests_total", &[("model", "minilm"), ("kind", "embed"), ("outcome", "ok")]),
        served
    );
    assert_eq!(sum(&samples, "mlxd_requests_total", &[("model", "minilm"), ("outcome", "busy")]), busy);
    assert_eq!(sum(&samples, "mlxd_request_duration_seconds_count", &embed), sent_embeds);
    // Busy from a full queue: counted by the scheduler and as request outcomes alike.
    assert_eq!(sum(&samples, "mlxd_busy_refusals_total", &[("model", "minilm"), ("reason", "queue_full")]), busy);
    // Each served embed waited in the queue once and was in exactly one batch.
    assert_eq!(sum(&samples, "mlxd_queue_wait_seconds_count", &[("model", "minilm")]), served);
    assert_eq!(sum(&samples, "mlxd_batch_size_sum", &embed), served);
    let batches = sum(&samples, "mlxd_batch_size_count", &embed);
    assert!(batches >= 1.0 && batches < ok, "{batches} batches for {ok} requests: batched");

    let generate = [("model", "smollm2"), ("kind", "generate")];
    assert_eq!(sum(&samples, "mlxd_requests_total", &generate), 3.0);
    assert_eq!(sum(&samples, "mlxd_time_to_first_token_seconds_count", &[("model", "smollm2")]), 3.0);
    assert_eq!(sum(&samples, "mlxd_generation_tokens_per_second_count", &[("model", "smollm2")]), 3.0);
    assert_eq!(sum(&samples, "mlxd_generated_tokens_total", &[("model", "smollm2")]), generated);
    let ttft = sum(&samples, "mlxd_time_to_first_token_seconds_sum", &[("model", "smollm2")]);
    assert!(ttft > 0.0 && ttft < 600.0, "time to first token {ttft}");

    // Loads: minilm (bench), smollm2 (evicting minilm), minilm again, and its restart.
    assert_eq!(sum(&samples, "mlxd_evictions_total", &[("model", "minilm")]), 1.0);
    assert_eq!(sum(&samples, "mlxd_unloads_total", &[("model", "smollm2"), ("reason", "requested")]), 1.0);
    assert_eq!(sum(&samples, "mlxd_loads_total", &[("model", "smollm2"), ("outcome", "ok")]), 1.0);
    assert_eq!(sum(&samples, "mlxd_loads_total", &[("model", "minilm"), ("outcome", "ok")]), 3.0);
    assert_eq!(sum(&samples, "mlxd_worker_failures_total", &[("model", "minilm")]), 1.0);
    assert_eq!(sum(&samples, "mlxd_worker_restarts_total", &[("model", "minilm")]), 1.0);
    assert_eq!(sum(&samples, "mlxd_circuit_open", &[("model", "minilm")]), 0.0);
    assert_eq!(sum(&samples, "mlxd_models_loaded", &[]), 1.0);
    assert_eq!(sum(&samples, "mlxd_model_loaded", &[("model", "minilm")]), 1.0);
    assert!(sum(&samples, "mlxd_resident_bytes", &[("model", "minilm")]) > 50e6, "a loaded worker's memory");
    assert_eq!(sum(&samples, "mlxd_resident_bytes", &[("model", "smollm2")]), 0.0);
    assert_eq!(sum(&samples, "mlxd_queue_depth", &[]), 0.0, "all answered");
    assert_eq!(sum(&samples, "mlxd_leases", &[]), 0.0);

    // The same exposition over the socket, and inside `status --json`.
    let text = mlxctl(&daemon, &["metrics"]);
    assert!(text.contains("# TYPE mlxd_requests counter") && text.ends_with("# EOF\n"));
    let status: serde_json::Value = serde_json::from_str(&mlxctl(&daemon, &["status", "--json"])).unwrap();
    let loads = &status["metrics"]["mlxd_loads_total"];
    assert!(loads.as_array().is_some_and(|samples| !samples.is_empty()), "{status}");
    assert_eq!(status["models"].as_array().unwrap().len(), 2);
}

#[test]
fn a_non_loopback_metrics_address_is_refused_unless_allowed() {
    let dir = mlxd_tests::TempDir::new();
    let (status, _, stderr) = run_with_timeout(
        Command::new(bin("mlxd")).args(["serve", "--metrics-addr", "0.0.0.0:0", "--socket"]).arg(dir.join("s.sock")),
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert!(stderr.contains("not a loopback address") && stderr.contains("--metrics-allow-remote"), "{stderr}");
}
