//! Embedding models as sentence-transformers defines them, and rerankers, through the real
//! daemon and workers: tiny models built by `python/tests/tools/st_fixtures.py` (run by hand with
//! sentence-transformers itself; its models and reference outputs are checked in under
//! `python/tests/fixtures/st/`) answer as sentence-transformers did — pooling, Dense and
//! Normalize modules, named prompts chosen per request (and the model's default), decoder
//! embeddings through mlx-lm, cross-encoder scores — on the binary protocol and over HTTP.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use mlxd_client::proto::{EmbedRequest, ErrorCode, ModelKind, ModelRef, Priority};
use mlxd_client::{Client, ClientError};
use mlxd_tests::{cosine, http_post_json, model_named, repo_root, Daemon};
use serde_json::Value;

const EMBEDDERS: &[&str] =
    &["st-bert-mean", "st-bert-cls-dense", "st-xlmr-max", "st-roberta-wmean", "st-qwen3-last", "st-distilbert-sqrt"];
const RERANKERS: &[&str] = &["rerank-bert", "rerank-xlmr", "rerank-distilbert"];

fn fixture(name: &str) -> PathBuf {
    repo_root().join("python/tests/fixtures/st").join(name)
}

fn reference(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(name).join("reference.json")).unwrap()).unwrap()
}

fn daemon() -> Daemon {
    let models: Vec<String> =
        EMBEDDERS.iter().chain(RERANKERS).map(|name| format!("{name}={}", fixture(name).display())).collect();
    let mut args = Vec::new();
    for model in &models {
        args.extend(["--model", model.as_str()]);
    }
    Daemon::start(&args)
}

async fn embed(
    client: &Client,
    model: &str,
    texts: Vec<String>,
    prompt: Option<&str>,
) -> Result<Vec<Vec<f32>>, ClientError> {
    let request = EmbedRequest {
        model: ModelRef::Name(model.into()),
        texts,
        normalize: false,
        priority: Priority::Interactive,
        deadline_ms: None,
        prompt: prompt.map(str::to_owned),
    };
    Ok(client.embed_with(request).await?.rows().map(<[f32]>::to_vec).collect())
}

fn floats(value: &Value) -> Vec<f32> {
    value.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

fn assert_close(model: &str, what: &str, got: &[f32], want: &[f32]) {
    let cos = cosine(got, want);
    let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(cos >= 0.999 && diff < 1e-3, "{model} {what}: cosine {cos}, max abs diff {diff}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_and_scores_equal_sentence_transformers_and_prompts_are_chosen_per_request() {
    let daemon = daemon();
    let client = daemon.client().await;
    let models = client.models().await.unwrap();
    for name in EMBEDDERS {
        let info = model_named(&models, name);
        assert_eq!(info.kind, ModelKind::Embedding, "{name}");
        let reference = reference(name);
        let mut names: Vec<String> =
            reference["prompts"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default();
        names.sort();
        assert_eq!(info.prompts, names, "{name}");
        assert_eq!(info.default_prompt.as_deref(), reference["default_prompt_name"].as_str(), "{name}");
        // The reference's items grouped by prompt: one request per prompt, so texts of a
        // request share their prompt while requests with different prompts share batches.
        let mut by_prompt: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
        for item in reference["items"].as_array().unwrap() {
            by_prompt.entry(item["prompt_name"].as_str().unwrap().to_owned()).or_default().push(item);
        }
        let mut tasks = Vec::new();
        for (prompt, items) in &by_prompt {
            let texts: Vec<String> = items.iter().map(|i| i["text"].as_str().unwrap().to_owned()).collect();
            let (client, prompt) = (client.clone(), prompt.clone());
            tasks.push(tokio::spawn(async move {
                let vectors = embed(&client, name, texts, Some(&prompt)).await.unwrap();
                (prompt, vectors)
            }));
        }
        for task in tasks {
            let (prompt, vectors) = task.await.unwrap();
            for (item, got) in by_prompt[&prompt].iter().zip(&vectors) {
                assert_close(
                    name,
                    &format!("prompt {prompt:?} text {:?}", item["text"]),
                    got,
                    &floats(&item["embedding"]),
                );
            }
        }
        // No prompt named: the model's default, if it has one.
        let default = info.default_prompt.clone().unwrap_or_default();
        let item = by_prompt[&default][1];
        let got = embed(&client, name, vec![item["text"].as_str().unwrap().into()], None).await.unwrap();
        assert_close(name, "the default prompt", &got[0], &floats(&item["embedding"]));
    }

    // A prompt is its text put before the text: "query" = "query: " + text, without a prompt.
    let a = embed(&client, "st-bert-mean", vec!["where is Paris".into()], Some("query")).await.unwrap();
    let b = embed(&client, "st-bert-mean", vec!["query: where is Paris".into()], Some("")).await.unwrap();
    assert_close("st-bert-mean", "prompt text", &a[0], &b[0]);
    match embed(&client, "st-bert-mean", vec!["x".into()], Some("passage")).await {
        Err(ClientError::Wire(err)) => {
            assert_eq!(err.code, ErrorCode::BadRequest);
            assert!(err.message.contains("\"document\", \"query\""), "names the model's prompts: {err}");
        }
        other => panic!("an unknown prompt must be refused: {other:?}"),
    }

    for name in RERANKERS {
        assert_eq!(model_named(&models, name).kind, ModelKind::Rerank, "{name}");
        let reference = reference(name);
        let documents: Vec<String> =
            reference["documents"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_owned()).collect();
        for query in reference["queries"].as_array().unwrap() {
            let query = query.as_str().unwrap();
            let want: Vec<(f32, u64)> = reference["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["query"] == query)
                .map(|i| (i["score"].as_f64().unwrap() as f32, i["tokens"].as_u64().unwrap()))
                .collect();
            assert_eq!(want.len(), documents.len());
            let reranked = client.rerank(name, query, documents.clone(), None).await.unwrap();
            assert_eq!(reranked.results.len(), documents.len());
            assert_eq!(reranked.prompt_tokens, want.iter().map(|w| w.1).sum::<u64>(), "{name}: pair tokens");
            for pair in reranked.results.windows(2) {
                assert!(pair[0].score >= pair[1].score, "{name}: best first: {:?}", reranked.results);
            }
            for result in &reranked.results {
                let expected = want[result.index as usize].0;
                assert!(
                    (result.score - expected).abs() < 1e-4,
                    "{name} {query:?} doc {}: {} vs {expected}",
                    result.index,
                    result.score
                );
            }
            let top = client.rerank(name, query, documents.clone(), Some(2)).await.unwrap();
            assert_eq!(top.results, reranked.results[..2].to_vec(), "{name}: top_n keeps the best");
        }
    }
    // mlxctl, as a person would use it: the same order and scores.
    let reference = reference("rerank-bert");
    let query = reference["queries"][0].as_str().unwrap();
    let documents: Vec<&str> = reference["documents"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    let expected = client
        .rerank("rerank-bert", query, documents.iter().map(|d| (*d).to_owned()).collect(), Some(3))
        .await
        .unwrap();
    let (status, stdout, stderr) = mlxd_tests::run_with_timeout(
        std::process::Command::new(mlxd_tests::bin("mlxctl"))
            .arg("--socket")
            .arg(&daemon.socket)
            .args(["--no-fallback", "--json", "rerank", "--model", "rerank-bert", "--top-n", "3", query])
            .args(&documents),
        Duration::from_secs(60),
    );
    assert!(status.success(), "{stderr}");
    let printed: Value = serde_json::from_str(&stdout).unwrap();
    let printed = printed["results"].as_array().unwrap();
    assert_eq!(printed.len(), 3, "{stdout}");
    for (line, want) in printed.iter().zip(&expected.results) {
        assert_eq!(line["index"].as_u64().unwrap(), u64::from(want.index), "{stdout}");
        assert_eq!(line["document"].as_str().unwrap(), documents[want.index as usize]);
    }
    let (status, stdout, stderr) = mlxd_tests::run_with_timeout(
        std::process::Command::new(mlxd_tests::bin("mlxctl")).arg("--socket").arg(&daemon.socket).args([
            "--no-fallback",
            "--json",
            "embed",
            "--model",
            "st-bert-mean",
            "--prompt",
            "query",
            "where is Paris",
        ]),
        Duration::from_secs(60),
    );
    assert!(status.success(), "{stderr}");
    let printed: Value = serde_json::from_str(&stdout).unwrap();
    let with_prompt = embed(&client, "st-bert-mean", vec!["where is Paris".into()], Some("query")).await.unwrap();
    assert_close("st-bert-mean", "mlxctl embed --prompt query", &floats(&printed["embeddings"][0]), &with_prompt[0]);

    match client.rerank("st-bert-mean", "q", vec!["d".into()], None).await {
        Err(ClientError::Wire(err)) => assert_eq!(err.code, ErrorCode::BadRequest, "{err}"),
        other => panic!("rerank on an embedding model must be refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_reranks_in_the_jina_and_cohere_shape_and_maps_input_type_to_a_prompt() {
    let daemon = daemon();
    let reference = reference("rerank-xlmr");
    let query = reference["queries"][0].as_str().unwrap();
    let documents: Vec<Value> = reference["documents"].as_array().unwrap().clone();
    let want: Vec<f64> = reference["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["query"] == query)
        .map(|i| i["score"].as_f64().unwrap())
        .collect();
    // Documents as strings and as {"text": ...} objects, as the APIs allow.
    let mixed: Vec<Value> = documents
        .iter()
        .enumerate()
        .map(|(i, d)| if i % 2 == 0 { d.clone() } else { serde_json::json!({ "text": d }) })
        .collect();
    let body = serde_json::json!({
        "model": "rerank-xlmr", "query": query, "documents": mixed, "top_n": 3, "return_documents": true,
    });
    for path in ["/v1/rerank", "/rerank", "/v2/rerank"] {
        let (status, answer) = http_post_json(&daemon.socket, path, &body);
        assert_eq!(status, 200, "{path}: {answer}");
        let results = answer["results"].as_array().unwrap();
        assert_eq!(results.len(), 3, "{answer}");
        let mut best: Vec<usize> = (0..want.len()).collect();
        best.sort_by(|a, b| want[*b].total_cmp(&want[*a]));
        for (result, index) in results.iter().zip(best) {
            assert_eq!(result["index"].as_u64().unwrap() as usize, index, "{answer}");
            assert!((result["relevance_score"].as_f64().unwrap() - want[index]).abs() < 1e-4, "{answer}");
            assert_eq!(result["document"]["text"], documents[index], "{answer}");
        }
        assert!(answer["usage"]["total_tokens"].as_u64().unwrap() > 0, "{answer}");
    }
    let (status, answer) = http_post_json(
        &daemon.socket,
        "/v1/rerank",
        &serde_json::json!({ "model": "rerank-xlmr", "query": "q", "documents": [1] }),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("documents[0]"), "{answer}");
    let (status, answer) = http_post_json(
        &daemon.socket,
        "/v1/rerank",
        &serde_json::json!({ "model": "st-bert-mean", "query": "q", "documents": ["d"] }),
    );
    assert_eq!(status, 400, "{answer}");

    // input_type as Cohere and Voyage send it picks the model's matching prompt.
    let embedding = |body: Value| {
        let (status, answer) = http_post_json(&daemon.socket, "/v1/embeddings", &body);
        assert_eq!(status, 200, "{answer}");
        floats(&answer["data"][0]["embedding"])
    };
    let text = "where is Paris";
    let query = embedding(serde_json::json!({ "model": "st-bert-mean", "input": text, "input_type": "search_query" }));
    let named = embedding(serde_json::json!({ "model": "st-bert-mean", "input": text, "prompt_name": "query" }));
    let passage = embedding(serde_json::json!({ "model": "st-bert-mean", "input": text, "input_type": "passage" }));
    let plain = embedding(serde_json::json!({ "model": "st-bert-mean", "input": text }));
    assert_close("st-bert-mean", "input_type query", &query, &named);
    assert!(cosine(&query, &plain) < 0.9999 && cosine(&passage, &query) < 0.9999, "prompts change the vector");
    let client = daemon.client().await;
    let document = embed(&client, "st-bert-mean", vec![text.into()], Some("document")).await.unwrap();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let normalized: Vec<f32> = document[0].iter().map(|x| x / norm(&document[0])).collect();
    assert_close("st-bert-mean", "input_type passage = prompt document", &passage, &normalized);
    // A model without prompts ignores input_type (clients send it to every model).
    let (status, _) = http_post_json(
        &daemon.socket,
        "/v1/embeddings",
        &serde_json::json!({ "model": "st-bert-cls-dense", "input": "x", "input_type": "query" }),
    );
    assert_eq!(status, 200);
    let (status, answer) = http_post_json(
        &daemon.socket,
        "/v1/embeddings",
        &serde_json::json!({ "model": "st-bert-mean", "input": "x", "input_type": "classification" }),
    );
    assert_eq!(status, 400, "{answer}");
}
