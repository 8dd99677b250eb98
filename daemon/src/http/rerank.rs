//! Reranking over HTTP: `POST /v1/rerank` (also `/rerank`, `/v1/reranking` and
//! `/v2/rerank`) in the shape Jina, Cohere (v2) and llama.cpp's server share: a query,
//! documents (strings or `{"text": ...}` objects), optional `top_n` and
//! `return_documents`; results best first, each with the document's `index` and its
//! `relevance_score`.

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use mlxd_proto::{ModelRef, Priority, Request, RerankRequest, Response as CoreResponse, WireError};
use serde::Deserialize;
use serde_json::{json, Value};

use super::call;
use super::conn::Conn;
use super::error::ApiError;

pub fn routes() -> Router<Conn> {
    Router::new()
        .route("/v1/rerank", post(rerank))
        .route("/v1/reranking", post(rerank))
        .route("/rerank", post(rerank))
        .route("/v2/rerank", post(rerank))
}

#[derive(Debug, Deserialize)]
struct RerankBody {
    model: String,
    query: String,
    documents: Vec<Value>,
    #[serde(default)]
    top_n: Option<u32>,
    #[serde(default)]
    return_documents: Option<bool>,
}

async fn rerank(State(conn): State<Conn>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body: RerankBody = call::parse(&body)?;
    let documents = body
        .documents
        .iter()
        .enumerate()
        .map(|(index, document)| match document {
            Value::String(text) => Ok(text.clone()),
            Value::Object(fields) => match fields.get("text") {
                Some(Value::String(text)) => Ok(text.clone()),
                _ => Err(ApiError::bad_request(format!("documents[{index}] is an object without a string \"text\""))),
            },
            _ => Err(ApiError::bad_request(format!("documents[{index}] must be a string or {{\"text\": string}}"))),
        })
        .collect::<Result<Vec<String>, ApiError>>()?;
    if body.top_n == Some(0) {
        return Err(ApiError::bad_request("top_n must be at least 1"));
    }
    let request = Request::Rerank(RerankRequest {
        model: ModelRef::Name(body.model.clone()),
        query: body.query,
        documents: documents.clone(),
        top_n: body.top_n,
        priority: Priority::Interactive,
        deadline_ms: None,
    });
    let CoreResponse::Reranked(reranked) = call::run(&conn, request, |_| {}).await? else {
        return Err(ApiError(WireError::internal("rerank answered something else")));
    };
    let with_documents = body.return_documents.unwrap_or(false);
    let results: Vec<Value> = reranked
        .results
        .iter()
        .map(|result| {
            let mut item = json!({ "index": result.index, "relevance_score": result.score });
            if with_documents {
                item["document"] = json!({ "text": documents[result.index as usize] });
            }
            item
        })
        .collect();
    let tokens = reranked.prompt_tokens;
    Ok(Json(json!({
        "id": format!("mlxd-rerank-{}-{}", conn.caller.id, conn.next_id()),
        "object": "list",
        "model": reranked.model,
        "results": results,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    })))
}
