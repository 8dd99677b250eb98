//! Real embeddings through the real daemon and MLX worker, against sentence-transformers.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::process::Command;
use std::time::Duration;

use mlxd_client::proto::{EmbedRequest, ErrorCode, LeaseRequest, ModelRef, Priority, Request, Response};
use mlxd_client::ClientError;
use mlxd_tests::{bin, cosine, minilm_reference, model_named, run_with_timeout, Daemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reference_text_matches_sentence_transformers() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client().await;
    let reference = minilm_reference();
    assert_eq!(reference.len(), 24);
    // The fixture holds the cases that matter: the empty string, a 300-word text (cut at
    // 256 tokens) and non-ASCII text with accents, emoji and CJK.
    assert!(reference.iter().any(|r| r.text.is_empty()));
    assert!(reference.iter().any(|r| r.text.split_whitespace().count() >= 300));
    assert!(reference.iter().any(|r| !r.text.is_ascii()));

    let minilm = client.lease("minilm").await.expect("lease minilm");
    assert_eq!(minilm.info().dim, 384);
    let texts: Vec<String> = reference.iter().map(|r| r.text.clone()).collect();
    let batch = minilm.embed(texts).await.expect("embed the reference texts");
    assert_eq!((batch.count, batch.dim), (24, 384));
    for (item, vector) in reference.iter().zip(batch.rows()) {
        let similarity = cosine(vector, &item.embedding);
        assert!(similarity >= 0.999, "cosine {similarity:.6} for {:?}", &item.text[..item.text.len().min(40)]);
    }

    // One at a time, by name rather than lease, gives the same vectors.
    for item in reference.iter().filter(|r| r.text.is_empty() || !r.text.is_ascii() || r.text.len() > 1000) {
        let single = client.embed("minilm", vec![item.text.clone()]).await.expect("embed one");
        let similarity = cosine(&single.vectors, &item.embedding);
        assert!(similarity >= 0.999, "cosine {similarity:.6} alone for {:?}", &item.text[..item.text.len().min(40)]);
    }
}

#[test]
fn eight_client_processes_embed_concurrently() {
    let daemon = Daemon::start(&[]);
    let reference = minilm_reference();
    let picks: Vec<_> = reference.iter().step_by(3).take(8).cloned().collect();
    assert_eq!(picks.len(), 8);
    let handles: Vec<_> = picks
        .into_iter()
        .map(|item| {
            let socket = daemon.socket.clone();
            std::thread::spawn(move || {
                let mut command = Command::new(bin("mlxctl"));
                command.arg("--socket").arg(&socket).args(["--no-fallback", "embed", "--model", "minilm", "--json"]);
                command.arg(&item.text);
                let (status, stdout, stderr) = run_with_timeout(&mut command, Duration::from_secs(120));
                assert!(status.success(), "mlxctl failed: {stderr}");
                let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("mlxctl --json prints JSON");
                let vector: Vec<f32> = json["embeddings"][0]
                    .as_array()
                    .expect("one vector")
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(vector.len(), 384);
                let similarity = cosine(&vector, &item.embedding);
                assert!(similarity >= 0.999, "cosine {similarity} for {:?}", item.text);
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("client process check");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_only_valid_on_its_own_connection() {
    let daemon = Daemon::start(&[]);
    let owner = daemon.client().await;
    let stranger = daemon.client().await;
    let handle = owner.lease("minilm").await.expect("lease");
    let lease = handle.lease_id();

    let request = EmbedRequest {
        model: ModelRef::Lease(lease),
        texts: vec!["hello world".into()],
        normalize: true,
        priority: Priority::Interactive,
        deadline_ms: None,
        prompt: None,
    };
    match stranger.embed_with(request.clone()).await {
        Err(ClientError::Wire(err)) => assert_eq!(err.code, ErrorCode::InvalidLease, "{err}"),
        other => panic!("a foreign lease was accepted: {other:?}"),
    }
    match stranger.call(mlxd_client::proto::Request::Release { lease }).await {
        Err(ClientError::Wire(err)) => assert_eq!(err.code, ErrorCode::InvalidLease, "{err}"),
        other => panic!("a foreign lease was released: {other:?}"),
    }
    // Still valid where it was taken.
    let vectors = owner.embed_with(request).await.expect("owner can use its lease");
    assert_eq!(vectors.dim, 384);
    handle.release().await.expect("release");
    assert_eq!(model_named(&owner.status().await.unwrap().models, "minilm").leases, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_end_with_their_connection() {
    let daemon = Daemon::start(&[]);
    let observer = daemon.client().await;
    {
        let leaver = daemon.client().await;
        // Raw Lease requests rather than ModelHandles, so that no Release is ever sent:
        // only the end of the connection can free these leases.
        let lease = || Request::Lease(LeaseRequest { model: "minilm".into(), keep_alive_ms: None });
        for _ in 0..2 {
            assert!(matches!(leaver.call(lease()).await, Ok(Response::Leased(_))));
        }
        let model = observer.models().await.unwrap().into_iter().find(|m| m.name == "minilm").unwrap();
        assert_eq!(model.leases, 2);
        drop(leaver);
    }
    let released = || async {
        let model = observer.models().await.unwrap().into_iter().find(|m| m.name == "minilm").unwrap();
        model.leases == 0
    };
    assert!(
        mlxd_tests::eventually_async(Duration::from_secs(10), released).await,
        "leases of a closed connection were not released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_errors_for_bad_requests() {
    let daemon = Daemon::start(&[]);
    let client = daemon.client().await;
    let code = |result: Result<_, ClientError>| match result {
        Err(ClientError::Wire(err)) => err.code,
        other => panic!("expected a typed error, got {other:?}"),
    };
    assert_eq!(code(client.embed("no-such-model", vec!["x".into()]).await.map(drop)), ErrorCode::NotFound);
    let too_many = vec![String::from("x"); client.welcome().limits.max_texts_per_embed as usize + 1];
    assert_eq!(code(client.embed("minilm", too_many).await.map(drop)), ErrorCode::TooLarge);
    let too_long = "x".repeat(client.welcome().limits.max_text_bytes as usize + 1);
    assert_eq!(code(client.embed("minilm", vec![too_long]).await.map(drop)), ErrorCode::TooLarge);
    let unload = mlxd_client::proto::Request::Unload { model: "no-such-model".into(), force: false };
    assert_eq!(code(client.call(unload).await.map(drop)), ErrorCode::NotFound);
    // And the session still works.
    assert_eq!(client.embed("minilm", vec!["ok".into()]).await.expect("embed").count, 1);
    let tokens = client.tokenize(ModelRef::Name("minilm".into()), "hello world").await.expect("tokenize");
    assert_eq!(tokens, vec![101, 7592, 2088, 102]);
    let text = client.detokenize(ModelRef::Name("minilm".into()), tokens).await.expect("detokenize");
    assert_eq!(text, "hello world");
}
