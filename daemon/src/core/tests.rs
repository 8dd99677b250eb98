//! The request core driven directly, as a front end would, with no socket: a caller is
//! admitted, its requests dispatched and answered, its events collected from a channel;
//! the registry's workers live in this process, on tokio's paused clock.

use std::collections::BTreeMap;
use std::sync::Arc;

use mlxd_proto::{
    EmbedRequest, ErrorCode, LeaseRequest, ModelKind, ModelRef, Priority, Request, RerankRequest, RerankResult,
    Response,
};

use super::{caller, dispatch, Caller, Control, Daemon, Peer};
use crate::catalog::Catalog;
use crate::config::DaemonConfig;
use crate::registry::in_process::InProcess;
use crate::registry::Registry;
use crate::spec::ModelSpec;
use crate::weights::pool::WeightPool;

fn daemon() -> (Arc<Daemon>, Arc<InProcess>) {
    daemon_with(DaemonConfig::for_tests())
}

fn daemon_with(config: DaemonConfig) -> (Arc<Daemon>, Arc<InProcess>) {
    let config = Arc::new(config);
    let spec = ModelSpec::new("e".into(), ModelKind::Embedding, "/nonexistent".into(), "test".into());
    let catalog = Catalog { models: vec![spec], aliases: BTreeMap::new() };
    let workers = Arc::new(InProcess::default());
    let registry = Registry::with_effects(config.clone(), catalog, Arc::new(WeightPool::default()), workers.clone());
    (Daemon::with_registry(config, registry, "test".into()), workers)
}

/// Admits and runs `body` as the session does, returning its final answer.
async fn call(caller: &Arc<Caller>, id: u64, body: Request) -> Result<Response, mlxd_proto::WireError> {
    if let Some(refusal) = caller::admit(caller, &body) {
        return Err(refusal);
    }
    if let Some(answer) = dispatch::answer_now(caller, &body) {
        return answer;
    }
    let prepared = dispatch::admit(caller, &body)?;
    let (events, _received) = tokio::sync::mpsc::channel(16);
    dispatch::handle(caller, id, body, prepared, &events, &Control::default()).await
}

fn embed(texts: &[&str]) -> Request {
    Request::Embed(EmbedRequest {
        model: ModelRef::Name("e".into()),
        texts: texts.iter().map(|t| (*t).to_owned()).collect(),
        normalize: false,
        priority: Priority::Interactive,
        deadline_ms: None,
        prompt: None,
    })
}

#[tokio::test(start_paused = true)]
async fn a_front_end_without_a_socket_leases_embeds_and_releases() {
    let (daemon, workers) = daemon();
    let caller = Arc::new(Caller::new(1, daemon.clone(), &Peer::of_self()));
    let lease = match call(&caller, 1, Request::Lease(LeaseRequest { model: "e".into(), keep_alive_ms: None })).await {
        Ok(Response::Leased(info)) => info.lease,
        other => panic!("{other:?}"),
    };
    let body = Request::Embed(EmbedRequest {
        model: ModelRef::Lease(lease),
        ..match embed(&["ab", "c"]) {
            Request::Embed(request) => request,
            _ => unreachable!(),
        }
    });
    match call(&caller, 2, body).await {
        Ok(Response::Embeddings(e)) => {
            assert_eq!((e.count, e.dim), (2, 2));
            assert_eq!(e.vectors, vec![2.0, 1.0, 1.0, 1.0], "text lengths, from worker 1");
        }
        other => panic!("{other:?}"),
    }
    match call(&caller, 3, Request::Status).await {
        Ok(Response::Status(status)) => assert_eq!(status.models[0].leases, 1),
        other => panic!("{other:?}"),
    }
    assert!(matches!(call(&caller, 4, Request::Release { lease }).await, Ok(Response::Released)));
    assert_eq!(caller.lease_count(), 0);
    assert_eq!(workers.starts(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_member_uses_models_but_takes_no_operator_action() {
    let (daemon, _workers) = daemon();
    let member = Peer { pid: Some(1), uid: Some(54_321), gid: Some(54_321), groups: Vec::new() };
    let member = Arc::new(Caller::new(7, daemon.clone(), &member));
    assert!(!member.operator);
    assert!(matches!(call(&member, 1, embed(&["x"])).await, Ok(Response::Embeddings(_))));
    for body in [
        Request::Unload { model: "e".into(), force: true },
        Request::Lease(LeaseRequest { model: "e".into(), keep_alive_ms: Some(0) }),
    ] {
        let err = call(&member, 2, body).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Unauthorized, "{err}");
    }
    let owner = Arc::new(Caller::new(8, daemon, &Peer::of_self()));
    assert!(owner.operator);
    assert!(matches!(
        call(&owner, 1, Request::Unload { model: "e".into(), force: true }).await,
        Ok(Response::Unloaded(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn the_callers_own_limits_come_before_any_work() {
    let (daemon, _workers) = daemon();
    let caller = Arc::new(Caller::new(1, daemon.clone(), &Peer::of_self()));
    let limit = daemon.config.limits.max_in_flight as u64;
    for id in 0..limit {
        caller.in_flight().insert(id, Arc::new(Control::default()));
    }
    let refusal = caller::admit(&caller, &embed(&["x"])).expect("over max_in_flight");
    assert_eq!(refusal.code, ErrorCode::Busy);
    assert!(refusal.message.contains("max_in_flight"), "{refusal}");
    assert!(caller::admit(&caller, &Request::Ping).is_none(), "answered at once, never counted");
    caller.cancel_all();
    assert!(caller.in_flight().values().all(|control| control.cancel.is_cancelled()));
    assert!(caller.gone.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn only_an_operators_load_retries_a_model_whose_circuit_is_open() {
    let mut config = DaemonConfig::for_tests();
    config.restart.circuit_failures = 1;
    let (daemon, workers) = daemon_with(config);
    workers.failing_loads.store(1, std::sync::atomic::Ordering::SeqCst);
    let member = Peer { pid: Some(1), uid: Some(54_321), gid: Some(54_321), groups: Vec::new() };
    let member = Arc::new(Caller::new(7, daemon.clone(), &member));
    let load = || Request::Load { model: "e".into() };
    // The one failed load opens the circuit (circuit_failures = 1).
    assert_eq!(call(&member, 1, load()).await.unwrap_err().code, ErrorCode::WorkerFailed);
    // A member's load waits for the cool-down like any request: refused at once.
    let err = call(&member, 2, load()).await.unwrap_err();
    assert!(err.code == ErrorCode::WorkerFailed && err.message.contains("failed 1 times in a row"), "{err}");
    assert_eq!(workers.starts(), 1);
    // The owner's load tries it again now.
    let owner = Arc::new(Caller::new(8, daemon, &Peer::of_self()));
    assert!(matches!(call(&owner, 1, load()).await, Ok(Response::Loaded(_))));
    assert_eq!(workers.starts(), 2);
}

/// An embedding model with named prompts ("doc", "query"; "query" by default) and a reranker.
fn daemon_with_prompts_and_a_reranker() -> Arc<Daemon> {
    let config = Arc::new(DaemonConfig::for_tests());
    let mut embedder = ModelSpec::new("e".into(), ModelKind::Embedding, "/nonexistent".into(), "test".into());
    embedder.prompts = vec!["doc".into(), "query".into()];
    embedder.default_prompt = Some("query".into());
    let reranker = ModelSpec::new("r".into(), ModelKind::Rerank, "/nonexistent".into(), "test".into());
    let catalog = Catalog { models: vec![embedder, reranker], aliases: BTreeMap::new() };
    let workers = Arc::new(InProcess::default());
    let registry = Registry::with_effects(config.clone(), catalog, Arc::new(WeightPool::default()), workers);
    Daemon::with_registry(config, registry, "test".into())
}

fn rerank(model: &str, query: &str, documents: &[&str], top_n: Option<u32>) -> Request {
    Request::Rerank(RerankRequest {
        model: ModelRef::Name(model.into()),
        query: query.into(),
        documents: documents.iter().map(|d| (*d).to_owned()).collect(),
        top_n,
        priority: Priority::Interactive,
        deadline_ms: None,
    })
}

#[tokio::test(start_paused = true)]
async fn named_prompts_are_resolved_before_the_batch_and_a_wrong_one_is_refused() {
    let daemon = daemon_with_prompts_and_a_reranker();
    let caller = Arc::new(Caller::new(1, daemon, &Peer::of_self()));
    let with_prompt = |prompt: Option<&str>| match embed(&["abc"]) {
        Request::Embed(request) => Request::Embed(EmbedRequest { prompt: prompt.map(str::to_owned), ..request }),
        _ => unreachable!(),
    };
    // The test worker's first component is the text's length plus its prompt name's.
    for (prompt, first) in [(None, 3.0 + 5.0), (Some("doc"), 3.0 + 3.0), (Some(""), 3.0)] {
        match call(&caller, 1, with_prompt(prompt)).await {
            Ok(Response::Embeddings(e)) => assert_eq!(e.vectors[0], first, "prompt {prompt:?}"),
            other => panic!("{prompt:?}: {other:?}"),
        }
    }
    let err = call(&caller, 2, with_prompt(Some("passage"))).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::BadRequest);
    assert!(err.message.contains("no prompt \"passage\"") && err.message.contains("\"doc\", \"query\""), "{err}");
    let err = call(&caller, 3, rerank("e", "q", &["a"], None)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::BadRequest);
    assert!(err.message.contains("not a reranking model"), "{err}");
    let to_reranker = match embed(&["x"]) {
        Request::Embed(request) => Request::Embed(EmbedRequest { model: ModelRef::Name("r".into()), ..request }),
        _ => unreachable!(),
    };
    let err = call(&caller, 4, to_reranker).await.unwrap_err();
    assert!(err.message.contains("is a reranker"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn reranking_orders_documents_best_first_keeps_ties_in_order_and_cuts_to_top_n() {
    let daemon = daemon_with_prompts_and_a_reranker();
    let caller = Arc::new(Caller::new(1, daemon, &Peer::of_self()));
    // The test worker scores a document by its length.
    let documents = ["bb", "a", "dddd", "cc", ""];
    match call(&caller, 1, rerank("r", "qq", &documents, None)).await {
        Ok(Response::Reranked(r)) => {
            let order: Vec<u32> = r.results.iter().map(|x| x.index).collect();
            assert_eq!(order, vec![2, 0, 3, 1, 4], "best first, equal scores in document order");
            assert_eq!(r.results[0], RerankResult { index: 2, score: 4.0 });
            assert_eq!(r.prompt_tokens, 9 + 2 * 5, "documents' and the query's tokens of each pair");
        }
        other => panic!("{other:?}"),
    }
    match call(&caller, 2, rerank("r", "qq", &documents, Some(2))).await {
        Ok(Response::Reranked(r)) => assert_eq!(r.results.iter().map(|x| x.index).collect::<Vec<_>>(), vec![2, 0]),
        other => panic!("{other:?}"),
    }
    match call(&caller, 3, rerank("r", "qq", &[], Some(3))).await {
        Ok(Response::Reranked(r)) => assert!(r.results.is_empty()),
        other => panic!("{other:?}"),
    }
    let err = call(&caller, 4, rerank("r", "q", &["a"], Some(0))).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::BadRequest);
    let limit = DaemonConfig::for_tests().limits.max_text_bytes as usize;
    let long = "x".repeat(limit + 1);
    let err = call(&caller, 5, rerank("r", "q", &["a", &long], None)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLarge);
    assert!(err.message.contains("document 1 is"), "{err}");
}
