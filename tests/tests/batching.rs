//! Embedding batches and admission on the real daemon: concurrent requests are merged
//! into one worker call and get exactly what they would get alone; a full queue refuses
//! at once with Busy and a retry hint.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use mlxd_client::proto::{EmbedRequest, ErrorCode, ModelRef, Priority};
use mlxd_client::ClientError;
use mlxd_tests::{minilm_reference, Daemon};

fn request(texts: Vec<String>, normalize: bool, priority: Priority) -> EmbedRequest {
    EmbedRequest { model: ModelRef::Name("minilm".into()), texts, normalize, priority, deadline_ms: None, prompt: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_embeddings_equal_unbatched_ones() {
    let daemon = Daemon::start(&["--embed-max-delay", "20ms"]);
    let reference = minilm_reference();
    let texts: Vec<String> = reference.iter().map(|r| r.text.clone()).collect();
    let client = daemon.client().await;
    client.embed("minilm", vec!["warm".into()]).await.unwrap();

    // Alone: one at a time, interactive, so each goes to the worker by itself.
    let mut alone = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let e = client.embed_with(request(vec![text.clone()], i % 2 == 0, Priority::Interactive)).await.unwrap();
        alone.push(e.vectors);
    }
    // Together: batch priority from many connections at once, so they merge.
    let mut tasks = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let client = daemon.client().await;
        let text = text.clone();
        tasks.push(tokio::spawn(async move {
            client.embed_with(request(vec![text], i % 2 == 0, Priority::Batch)).await.unwrap().vectors
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let together = task.await.unwrap();
        let worst = together.iter().zip(&alone[i]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-5, "text {i}: batched differs from alone by {worst}");
    }
    let log = daemon.log_text();
    let merged = log.lines().filter(|l| l.contains("embedding batch") && !l.contains("requests=1 ")).count();
    assert!(merged > 0, "no batch merged several requests");
}

/// A client sending one request after another, alone, never waits for a batch to fill:
/// nobody else is there to fill it. With a 500 ms batch delay, a wait would show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_sequential_client_is_not_held_back_for_company() {
    let daemon = Daemon::start(&["--embed-max-delay", "500ms"]);
    let client = daemon.client().await;
    client.embed("minilm", vec!["warm".into()]).await.unwrap();
    for i in 0..8 {
        let started = std::time::Instant::now();
        client.embed("minilm", vec![format!("sentence {i}")]).await.unwrap();
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_millis(450), "request {i} took {took:?}: it waited for company");
    }
    // With a second client sending at the same time, waiting for company is right again.
    let other = daemon.client().await;
    let (a, b) = tokio::join!(
        client.embed("minilm", vec!["together one".into()]),
        other.embed("minilm", vec!["together two".into()])
    );
    a.unwrap();
    b.unwrap();
    let log = daemon.log_text();
    assert!(log.lines().filter(|l| l.contains("embedding batch")).count() >= 9, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_with_a_retry_hint() {
    let daemon = Daemon::start(&["--queue-capacity", "2", "--embed-max-batch", "1"]);
    let long = minilm_reference().into_iter().max_by_key(|r| r.text.len()).unwrap().text;
    let warm = daemon.client().await;
    warm.embed("minilm", vec!["warm".into()]).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let client = daemon.client().await;
        let texts = vec![long.clone(); 4];
        tasks.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = client.embed_with(request(texts, true, Priority::Interactive)).await;
            (result, started.elapsed())
        }));
    }
    let (mut served, mut busy) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            (Ok(e), _) => {
                assert_eq!(e.count, 4);
                served += 1;
            }
            (Err(ClientError::Wire(err)), elapsed) => {
                assert_eq!(err.code, ErrorCode::Busy, "{err}");
                assert!(err.retry_after_ms.is_some_and(|ms| ms > 0), "{err:?}");
                assert!(elapsed < std::time::Duration::from_millis(500), "refused at once, not after {elapsed:?}");
                busy += 1;
            }
            (Err(other), _) => panic!("{other}"),
        }
    }
    assert!(served >= 2, "the queue's capacity was served ({served})");
    assert!(busy >= 1, "nothing was refused with 12 requests on a queue of 2");
}

#[test]
fn mlxctl_bench_reports_throughput_latency_and_refusals() {
    let daemon = Daemon::start(&[]);
    let bench = |args: &[&str]| -> serde_json::Value {
        let (status, stdout, stderr) = mlxd_tests::run_with_timeout(
            std::process::Command::new(mlxd_tests::bin("mlxctl"))
                .arg("--socket")
                .arg(&daemon.socket)
                .args(["--no-fallback", "--json", "bench", "--model", "minilm"])
                .args(args),
            std::time::Duration::from_secs(120),
        );
        assert!(status.success(), "{stderr}");
        serde_json::from_str(stdout.trim()).unwrap()
    };
    // Closed loop for a fixed time.
    let report = bench(&["--connections", "4", "--duration", "1"]);
    assert!(report["ok"].as_u64().unwrap() > 0, "{report}");
    assert!(report["texts_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["latency_ms"]["p99"].as_f64().unwrap() >= report["latency_ms"]["p50"].as_f64().unwrap());
    assert_eq!(report["errors"], serde_json::json!({}));
    // A fixed number of requests, closed and open loop: exactly that many are answered.
    for args in
        [&["--connections", "3", "--requests", "10"][..], &["--connections", "2", "--requests", "7", "--rate", "50"]]
    {
        let report = bench(args);
        let wanted: u64 = args[args.iter().position(|a| *a == "--requests").unwrap() + 1].parse().unwrap();
        assert_eq!(report["ok"].as_u64().unwrap() + report["busy"].as_u64().unwrap(), wanted, "{report}");
        assert_eq!(report["errors"], serde_json::json!({}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_retries_busy_idempotent_requests_after_the_hint() {
    let daemon = Daemon::start(&["--queue-capacity", "1", "--embed-max-batch", "1"]);
    let long = minilm_reference().into_iter().max_by_key(|r| r.text.len()).unwrap().text;
    daemon.client().await.embed("minilm", vec!["warm".into()]).await.unwrap();
    let connect = |retry| mlxd_client::ConnectOptions {
        socket: Some(daemon.socket.clone()),
        fallback: false,
        retry,
        ..Default::default()
    };
    let patient = mlxd_client::RetryPolicy { max_retries: 100, max_wait: std::time::Duration::from_secs(1) };
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let client = connect(patient).connect().await.unwrap();
        let texts = vec![long.clone(); 2];
        tasks.push(tokio::spawn(async move { client.embed_with(request(texts, true, Priority::Interactive)).await }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().expect("retried until served").count, 2);
    }
    // Without retries, the same load gets Busy answers back.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let client = connect(mlxd_client::RetryPolicy::NONE).connect().await.unwrap();
        let texts = vec![long.clone(); 2];
        tasks.push(tokio::spawn(async move { client.embed_with(request(texts, true, Priority::Interactive)).await }));
    }
    let mut busy = 0;
    for task in tasks {
        if let Err(ClientError::Wire(err)) = task.await.unwrap() {
            assert_eq!(err.code, ErrorCode::Busy);
            busy += 1;
        }
    }
    assert!(busy > 0, "a queue of 1 under 6 concurrent requests refused nothing");
}
