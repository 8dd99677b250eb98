//! The scheduler on the real daemon and worker: interactive work goes before queued batch
//! work (and sheds it when the model is full), a session flooding a model does not starve
//! another session, and a deadline that passes in the queue answers `Timeout` without the
//! request ever reaching the model.
//!
//! Batching is off (`--embed-max-batch 1`) so each request is one worker call and the order
//! of service is the order of completion.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mlxd_client::proto::{EmbedRequest, ErrorCode, ModelRef, Priority};
use mlxd_client::{Client, ClientError};
use mlxd_tests::{minilm_reference, model_named, Daemon};

fn request(texts: Vec<String>, priority: Priority, deadline_ms: Option<u64>) -> EmbedRequest {
    EmbedRequest { model: ModelRef::Name("minilm".into()), texts, normalize: true, priority, deadline_ms, prompt: None }
}

/// Texts that take the worker a noticeable while (tens of ms) per request.
fn slow_texts() -> Vec<String> {
    let long = minilm_reference().into_iter().max_by_key(|r| r.text.len()).unwrap().text;
    vec![long; 2]
}

/// Waits until minilm has `depth` requests queued or running.
async fn wait_for_depth(client: &Client, depth: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let models = client.models().await.unwrap();
        if model_named(&models, "minilm").queue_depth >= depth {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the queue never reached {depth}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

type Finished = Arc<AtomicUsize>;

/// Sends an embed request on its own task; answers with (completion index, result).
fn spawn_embed(
    client: &Client,
    request: EmbedRequest,
    finished: &Finished,
) -> tokio::task::JoinHandle<(usize, Result<u32, ClientError>)> {
    let (client, finished) = (client.clone(), finished.clone());
    tokio::spawn(async move {
        let result = client.embed_with(request).await.map(|e| e.count);
        (finished.fetch_add(1, Ordering::SeqCst), result)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_work_goes_first_and_sheds_queued_batch_work_when_full() {
    let daemon = Daemon::start(&["--embed-max-batch", "1", "--queue-capacity", "8"]);
    let flooder = daemon.client().await;
    let observer = daemon.client().await;
    flooder.embed("minilm", vec!["warm".into()]).await.unwrap();
    let finished = Finished::default();

    // Fill the model with batch work: one runs, seven wait.
    let batch: Vec<_> =
        (0..8).map(|_| spawn_embed(&flooder, request(slow_texts(), Priority::Batch, None), &finished)).collect();
    wait_for_depth(&observer, 8).await;
    // Full: more batch work is refused at once ...
    let refused = observer.embed_with(request(slow_texts(), Priority::Batch, None)).await.unwrap_err();
    assert!(matches!(&refused, ClientError::Wire(e) if e.code == ErrorCode::Busy), "{refused}");
    // ... but interactive work takes the place of the newest queued batch request.
    let urgent = spawn_embed(&observer, request(slow_texts(), Priority::Interactive, None), &finished);

    let (urgent_at, urgent_result) = urgent.await.unwrap();
    assert_eq!(urgent_result.unwrap(), 2);
    let (mut served, mut shed) = (Vec::new(), 0);
    for task in batch {
        match task.await.unwrap() {
            (at, Ok(_)) => served.push(at),
            (_, Err(ClientError::Wire(err))) => {
                assert_eq!(err.code, ErrorCode::Busy, "{err}");
                assert!(err.message.contains("shed"), "{err}");
                assert!(err.retry_after_ms.is_some());
                shed += 1;
            }
            (_, Err(other)) => panic!("{other}"),
        }
    }
    assert_eq!(shed, 1, "exactly one batch request made room");
    // Only the batch request already running (and at most one the worker had just taken)
    // finished before the interactive one; the other six waited for it.
    let before = served.iter().filter(|&&at| at < urgent_at).count();
    assert!(before <= 2, "{before} queued batch requests were served before the interactive one");
    let stats = model_named(&observer.models().await.unwrap(), "minilm").sched.clone();
    assert_eq!(stats.shed, 1, "{stats:?}");
    assert!(stats.busy >= 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_session_does_not_starve_another() {
    let daemon = Daemon::start(&["--embed-max-batch", "1", "--queue-capacity", "64"]);
    let flooder = daemon.client().await;
    let other = daemon.client().await;
    flooder.embed("minilm", vec!["warm".into()]).await.unwrap();
    let finished = Finished::default();

    // One connection (one session) queues 20 requests of the same priority ...
    let flood: Vec<_> =
        (0..20).map(|_| spawn_embed(&flooder, request(slow_texts(), Priority::Interactive, None), &finished)).collect();
    wait_for_depth(&other, 20).await;
    // ... and another session's single request is served in the next round, not after all
    // 20 (which is what one first-come-first-served queue would do).
    let (other_at, result) =
        spawn_embed(&other, request(slow_texts(), Priority::Interactive, None), &finished).await.unwrap();
    assert_eq!(result.unwrap(), 2);
    assert!(other_at <= 3, "the other session's request finished {other_at}th, behind the flood");
    for task in flood {
        assert_eq!(task.await.unwrap().1.unwrap(), 2, "the flood is served too");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_in_the_queue_answers_timeout_and_never_runs() {
    let daemon = Daemon::start(&["--embed-max-batch", "1", "--queue-capacity", "64"]);
    let busy = daemon.client().await;
    let client = daemon.client().await;
    busy.embed("minilm", vec!["warm".into()]).await.unwrap();
    let finished = Finished::default();
    let backlog: Vec<_> =
        (0..12).map(|_| spawn_embed(&busy, request(slow_texts(), Priority::Interactive, None), &finished)).collect();
    wait_for_depth(&client, 12).await;

    let started = std::time::Instant::now();
    let late = client.embed_with(request(vec!["too late".into()], Priority::Interactive, Some(30))).await;
    let err = match late {
        Err(ClientError::Wire(err)) => err,
        other => panic!("expected Timeout, got {other:?}"),
    };
    assert_eq!(err.code, ErrorCode::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(2), "answered at its deadline, not {:?}", started.elapsed());
    // A generous deadline is met normally.
    let ok = client.embed_with(request(vec!["in time".into()], Priority::Interactive, Some(60_000))).await.unwrap();
    assert_eq!(ok.count, 1);
    for task in backlog {
        task.await.unwrap().1.unwrap();
    }
    let stats = model_named(&client.models().await.unwrap(), "minilm").sched.clone();
    assert_eq!(stats.timeouts, 1, "{stats:?}");
    // Every request that reached the worker was a batch of one: the warm-up, the 12, the
    // one in time. The timed-out one never did.
    assert_eq!(stats.batched_requests, 14, "{stats:?}");
}
