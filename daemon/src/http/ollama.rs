//! Ollama-compatible `/api`: version, tags, ps, show, chat and generate (NDJSON streaming by
//! default, `stream: false` for one object), embed and the older embeddings. Shapes, names
//! and durations (nanoseconds) as Ollama documents them. A model may be named `NAME` or
//! `NAME:latest`.

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use mlxd_proto::{
    ChatMessage, EmbedRequest, Event, FinishReason, GenerateParams, GenerateRequest, GenerationSummary, LeaseRequest,
    ModelInfo, ModelKind, ModelRef, ModelState, Priority, PromptInput, Request, Response as CoreResponse, ToolCall,
    WireError,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::call::{self, Item};
use super::conn::Conn;
use super::error::OllamaError as ApiError;
use super::tools;

pub fn routes() -> Router<Conn> {
    Router::new()
        .route("/api/version", get(version))
        .route("/api/tags", get(tags))
        .route("/api/ps", get(ps))
        .route("/api/show", post(show))
        .route("/api/chat", post(chat))
        .route("/api/generate", post(generate))
        .route("/api/embed", post(embed))
        .route("/api/embeddings", post(embeddings))
}

/// `NAME:latest` is `NAME`.
fn model_name(name: &str) -> String {
    name.strip_suffix(":latest").unwrap_or(name).to_owned()
}

fn created_at() -> String {
    rfc3339(std::time::SystemTime::now())
}

/// RFC 3339 in UTC, as Ollama writes times.
fn rfc3339(at: std::time::SystemTime) -> String {
    let now = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_nanos()
    )
}

async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

async fn model_list(conn: &Conn) -> Result<Vec<ModelInfo>, ApiError> {
    match call::run(conn, Request::ListModels, |_| {}).await? {
        CoreResponse::Models(models) => Ok(models),
        _ => Err(ApiError(WireError::internal("the model list answered something else"))),
    }
}

fn details(m: &ModelInfo) -> Value {
    let family = match m.kind {
        ModelKind::Embedding | ModelKind::Rerank => "bert",
        ModelKind::Generation => "llama",
    };
    json!({ "format": "mlx", "family": family, "families": [family], "parameter_size": "", "quantization_level": "" })
}

fn entry(m: &ModelInfo) -> Value {
    json!({
        "name": format!("{}:latest", m.name),
        "model": format!("{}:latest", m.name),
        "modified_at": "1970-01-01T00:00:00Z",
        "size": m.resident_bytes,
        "digest": "",
        "details": details(m),
    })
}

async fn tags(State(conn): State<Conn>) -> Result<Json<Value>, ApiError> {
    let models = model_list(&conn).await?;
    Ok(Json(json!({ "models": models.iter().map(entry).collect::<Vec<_>>() })))
}

async fn ps(State(conn): State<Conn>) -> Result<Json<Value>, ApiError> {
    let models = model_list(&conn).await?;
    let loaded: Vec<Value> = models
        .iter()
        .filter(|m| m.state == ModelState::Ready)
        .map(|m| {
            let mut e = entry(m);
            // Ollama's clients parse it as a time; "never" is far in the future, as Ollama does.
            let left = m
                .keep_alive_left_ms
                .map_or(std::time::Duration::from_secs(100 * 365 * 86_400), std::time::Duration::from_millis);
            e["expires_at"] = json!(rfc3339(std::time::SystemTime::now() + left));
            e["size_vram"] = json!(0);
            e
        })
        .collect();
    Ok(Json(json!({ "models": loaded })))
}

#[derive(Debug, Deserialize)]
struct ShowBody {
    #[serde(alias = "name")]
    model: String,
}

async fn show(State(conn): State<Conn>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body: ShowBody = call::parse(&body)?;
    let name = model_name(&body.model);
    let models = model_list(&conn).await?;
    let Some(m) = models.iter().find(|m| m.name == name) else {
        return Err(ApiError(WireError::new(
            mlxd_proto::ErrorCode::NotFound,
            format!("model '{}' not found", body.model),
        )));
    };
    let capabilities = match m.kind {
        ModelKind::Embedding => json!(["embedding"]),
        // "tools": what Ollama's clients (Zed, Continue, ...) check before sending tools.
        ModelKind::Generation if m.tools => json!(["completion", "tools"]),
        ModelKind::Generation => json!(["completion"]),
        // Ollama has no reranking capability name; its clients cannot use the model.
        ModelKind::Rerank => json!([]),
    };
    Ok(Json(json!({
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": details(m),
        "model_info": { "general.source": m.source, "mlxd.max_seq_len": m.max_seq_len, "mlxd.dim": m.dim },
        "capabilities": capabilities,
    })))
}

/// Ollama's `options` this daemon honours; others are ignored, as Ollama ignores options
/// a model does not use.
#[derive(Debug, Default, Deserialize)]
struct Options {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    seed: Option<i64>,
    num_predict: Option<i64>,
    stop: Option<Vec<String>>,
    repeat_penalty: Option<f32>,
}

#[derive(Debug, Deserialize)]
struct Common {
    model: String,
    #[serde(default = "yes")]
    stream: bool,
    #[serde(default)]
    options: Option<Options>,
    #[serde(default)]
    keep_alive: Option<Value>,
    #[serde(default)]
    format: Option<Value>,
    /// Each token's log probability (with `top_logprobs` alternatives), as Ollama 0.12 takes it.
    #[serde(default)]
    logprobs: bool,
    #[serde(default)]
    top_logprobs: Option<u32>,
}

fn yes() -> bool {
    true
}

impl Common {
    /// The generation request; `tools` (chat only) and the choice (Ollama's: auto).
    fn request(
        &self,
        conn: &Conn,
        input: PromptInput,
        (tools, tool_choice): (Vec<mlxd_proto::Tool>, mlxd_proto::ToolChoice),
    ) -> Result<Request, ApiError> {
        let constraint = match &self.format {
            None | Some(Value::Null) => None,
            Some(Value::String(format)) if format == "json" => Some(mlxd_proto::Constraint::JsonObject),
            Some(Value::String(format)) if format.is_empty() => None,
            Some(schema @ Value::Object(_)) => Some(mlxd_proto::Constraint::JsonSchema(schema.to_string())),
            Some(_) => return Err(ApiError::bad_request("format must be \"json\" or a JSON schema object")),
        };
        let o = self.options.as_ref();
        let max = conn.caller.daemon.config.limits.max_tokens;
        let max_tokens = match o.and_then(|o| o.num_predict) {
            // -1 (or absent): until the model stops, within this daemon's limit.
            None | Some(-1) | Some(-2) => max,
            Some(n) if n > 0 => u32::try_from(n).unwrap_or(u32::MAX),
            Some(n) => return Err(ApiError::bad_request(format!("num_predict {n}: a positive count, or -1"))),
        };
        let params = GenerateParams {
            max_tokens,
            // Ollama's defaults.
            temperature: o.and_then(|o| o.temperature).unwrap_or(0.8),
            top_p: o.and_then(|o| o.top_p).unwrap_or(0.9),
            top_k: o.and_then(|o| o.top_k).unwrap_or(40),
            min_p: o.and_then(|o| o.min_p).unwrap_or(0.0),
            repetition_penalty: o.and_then(|o| o.repeat_penalty).unwrap_or(1.1),
            seed: o.and_then(|o| o.seed).and_then(|s| u64::try_from(s).ok()),
            stop: o.and_then(|o| o.stop.clone()).unwrap_or_default().into_iter().map(String::into_bytes).collect(),
            logprobs: match (self.logprobs, self.top_logprobs) {
                (true, top) => Some(top.unwrap_or(0)),
                (false, Some(k)) if k > 0 => return Err(ApiError::bad_request("top_logprobs needs logprobs: true")),
                (false, _) => None,
            },
            constraint,
            tools,
            tool_choice,
            parallel_tool_calls: true,
        };
        let initial_credit = if self.stream { call::STREAM_WINDOW } else { max_tokens };
        Ok(Request::Generate(GenerateRequest {
            model: ModelRef::Name(model_name(&self.model)),
            input,
            params,
            initial_credit,
            priority: Priority::Interactive,
            deadline_ms: None,
        }))
    }
}

/// Ollama's `keep_alive` ("5m", "0", seconds, -1) in milliseconds (negative: never).
fn keep_alive_ms(value: &Value) -> Result<i64, ApiError> {
    let bad = || ApiError::bad_request(format!("keep_alive {value}: a duration like \"5m\", seconds, or -1"));
    match value {
        Value::Number(n) => n.as_f64().map(|s| if s < 0.0 { -1 } else { (s * 1000.0) as i64 }).ok_or_else(bad),
        Value::String(text) if text.starts_with('-') => Ok(-1),
        Value::String(text) => crate::units::parse_duration(text).map(|d| d.as_millis() as i64).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// Holds a lease with the request's keep-alive for its duration, so the model's keep-alive
/// after it is the one asked for (an operator action: members get `Unauthorized`).
async fn keep_alive_lease(conn: &Conn, common: &Common) -> Result<Option<u64>, ApiError> {
    let Some(value) = common.keep_alive.as_ref().filter(|v| !v.is_null()) else { return Ok(None) };
    let ms = keep_alive_ms(value)?;
    if !conn.caller.operator {
        // Ollama's clients send it routinely; for a member it would decide for everyone,
        // so it is not honoured (and not an error).
        tracing::debug!(keep_alive = %value, "keep_alive ignored: an operator action");
        return Ok(None);
    }
    let request = Request::Lease(LeaseRequest { model: model_name(&common.model), keep_alive_ms: Some(ms) });
    match call::run(conn, request, |_| {}).await? {
        CoreResponse::Leased(info) => Ok(Some(info.lease)),
        _ => Err(ApiError(WireError::internal("a lease answered something else"))),
    }
}

async fn release(conn: &Conn, lease: Option<u64>) {
    if let Some(lease) = lease {
        let _ = call::run(conn, Request::Release { lease }, |_| {}).await;
    }
}

#[derive(Debug, Deserialize)]
struct ChatBody {
    messages: Vec<OllamaMessage>,
    #[serde(default)]
    tools: Option<Value>,
    /// mlxd's extension (Ollama has none; the model decides): OpenAI's `tool_choice`.
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(flatten)]
    common: Common,
}

/// A chat message as Ollama takes it: an assistant's `tool_calls` (arguments as objects,
/// ids optional), a `tool` message's `tool_name`.
#[derive(Debug, Deserialize)]
struct OllamaMessage {
    role: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    images: Option<Value>,
    #[serde(default)]
    tool_calls: Option<Value>,
    #[serde(default)]
    tool_name: Option<String>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

/// The conversation as the protocol carries it. Ollama's messages have no call ids: a
/// `tool` message without one answers the next unanswered call of the assistant message
/// before it (in order), and gets that call's (made-up) id, which templates may need.
fn chat_messages(messages: Vec<OllamaMessage>) -> Result<Vec<ChatMessage>, ApiError> {
    let mut out = Vec::with_capacity(messages.len());
    let mut unanswered: std::collections::VecDeque<String> = Default::default();
    for (index, message) in messages.into_iter().enumerate() {
        if message.images.as_ref().is_some_and(|i| i.as_array().is_some_and(|a| !a.is_empty())) {
            return Err(ApiError::bad_request(format!("messages[{index}]: images are not supported (text models)")));
        }
        let tool_calls = tools::message_calls(message.tool_calls.as_ref(), index)?;
        if !tool_calls.is_empty() {
            unanswered = tool_calls.iter().map(|c| c.id.clone()).collect();
        }
        let tool_call_id = match message.tool_call_id {
            Some(id) => Some(id),
            None if message.role == "tool" => unanswered.pop_front(),
            None => None,
        };
        out.push(ChatMessage {
            role: message.role,
            content: message.content.unwrap_or_default(),
            tool_calls,
            tool_call_id,
            name: message.tool_name,
        });
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
struct GenerateBody {
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    raw: bool,
    #[serde(flatten)]
    common: Common,
}

async fn chat(State(conn): State<Conn>, body: Bytes) -> Result<Response, ApiError> {
    let body: ChatBody = call::parse(&body)?;
    let tools = (tools::tools(body.tools.as_ref())?, tools::tool_choice(body.tool_choice.as_ref())?);
    let request = body.common.request(&conn, PromptInput::Chat(chat_messages(body.messages)?), tools)?;
    reply(conn, body.common, request, Kind::Chat).await
}

async fn generate(State(conn): State<Conn>, body: Bytes) -> Result<Response, ApiError> {
    let body: GenerateBody = call::parse(&body)?;
    let input = if body.raw {
        PromptInput::Raw(body.prompt)
    } else {
        let mut messages = Vec::new();
        if let Some(system) = body.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", body.prompt));
        PromptInput::Chat(messages)
    };
    let request = body.common.request(&conn, input, (Vec::new(), mlxd_proto::ToolChoice::Auto))?;
    reply(conn, body.common, request, Kind::Generate).await
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Chat,
    Generate,
}

/// Ollama's `logprobs` list for these tokens.
fn logprobs(tokens: &[mlxd_proto::TokenLogprobs]) -> Value {
    let entries: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let top: Vec<Value> = t.top.iter().map(|a| json!({ "token": a.text, "logprob": a.logprob })).collect();
            json!({ "token": t.text, "logprob": t.logprob, "top_logprobs": top })
        })
        .collect();
    Value::Array(entries)
}

fn piece(kind: Kind, model: &str, text: &str, done: bool) -> Value {
    let mut object = json!({ "model": model, "created_at": created_at(), "done": done });
    match kind {
        Kind::Chat => object["message"] = json!({ "role": "assistant", "content": text }),
        Kind::Generate => object["response"] = json!(text),
    }
    object
}

/// A chat piece carrying tool calls (numbered from `first`).
fn with_calls(mut object: Value, calls: &[ToolCall], first: usize) -> Value {
    if !calls.is_empty() {
        object["message"]["tool_calls"] =
            calls.iter().enumerate().map(|(i, call)| tools::ollama_call(call, first + i)).collect();
    }
    object
}

/// How long a cold model took to load for this request: from its first load-progress event
/// to the `Ready` one, or to the first token if that event was dropped (progress is
/// advisory: it is dropped rather than queued when the client lags).
#[derive(Debug, Default, Clone, Copy)]
struct LoadClock {
    first: Option<Instant>,
    ready: Option<Instant>,
}

impl LoadClock {
    fn saw(&mut self, progress: &mlxd_proto::LoadProgress) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        if progress.stage == mlxd_proto::LoadStage::Ready {
            self.ready = Some(now);
        }
    }

    fn token(&mut self) {
        if self.first.is_some() && self.ready.is_none() {
            self.ready = Some(Instant::now());
        }
    }

    fn nanos(&self) -> u64 {
        match (self.first, self.ready) {
            (Some(first), Some(ready)) => ready.duration_since(first).as_nanos() as u64,
            _ => 0,
        }
    }
}

/// A streamed line while a cold model loads: an empty piece (every Ollama client reads it
/// as no text yet) that also says how far the load is, so no client times out silently.
fn loading(kind: Kind, model: &str, progress: &mlxd_proto::LoadProgress) -> Value {
    let mut object = piece(kind, model, "", false);
    let stage = match progress.stage {
        mlxd_proto::LoadStage::Starting => "starting",
        mlxd_proto::LoadStage::Weights => "weights",
        mlxd_proto::LoadStage::Ready => "ready",
    };
    object["status"] = json!(format!("loading {}", progress.model));
    object["load"] = json!({ "stage": stage, "completed": progress.done, "total": progress.total });
    object
}

fn finish(mut object: Value, summary: &GenerationSummary, started: Instant, load: LoadClock) -> Value {
    let nanos =
        |tokens: u32, per_s: f32| if per_s > 0.0 { (f64::from(tokens) / f64::from(per_s) * 1e9) as u64 } else { 0 };
    object["done_reason"] = json!(if summary.finish_reason == FinishReason::Length { "length" } else { "stop" });
    object["total_duration"] = json!(started.elapsed().as_nanos() as u64);
    object["load_duration"] = json!(load.nanos());
    object["prompt_eval_count"] = json!(summary.prompt_tokens);
    object["prompt_eval_duration"] = json!(nanos(summary.prompt_tokens, summary.prompt_tokens_per_s));
    object["eval_count"] = json!(summary.completion_tokens);
    object["eval_duration"] = json!(nanos(summary.completion_tokens, summary.generation_tokens_per_s));
    object
}

async fn reply(conn: Conn, common: Common, request: Request, kind: Kind) -> Result<Response, ApiError> {
    let started = Instant::now();
    let model = format!("{}:latest", model_name(&common.model));
    let lease = keep_alive_lease(&conn, &common).await?;
    if !common.stream {
        let mut text = String::new();
        let mut tokens = Vec::new();
        let mut calls = Vec::new();
        let mut load = LoadClock::default();
        let answer = call::run(&conn, request, |event| match event {
            Event::Token { text: t, logprobs: token_logprobs, .. } => {
                load.token();
                text.push_str(&t);
                tokens.extend(token_logprobs);
            }
            Event::ToolCall(call) => calls.push(call),
            Event::LoadProgress(progress) => load.saw(&progress),
        })
        .await;
        release(&conn, lease).await;
        let CoreResponse::Generated(summary) = answer? else {
            return Err(ApiError(WireError::internal("a generation answered something else")));
        };
        let mut last = finish(with_calls(piece(kind, &model, &text, true), &calls, 0), &summary, started, load);
        if common.logprobs {
            last["logprobs"] = logprobs(&tokens);
        }
        return Ok(Json(last).into_response());
    }
    let begin = async {
        let mut running = call::start(&conn, request)?;
        running.started().await?;
        Ok::<_, WireError>(running)
    };
    let running = match begin.await {
        Ok(running) => running,
        Err(err) => {
            release(&conn, lease).await;
            return Err(err.into());
        }
    };
    // Each line is one JSON object; the lease (if any) is released when the body ends.
    // State: the request, the connection, the lease, the load clock, tool calls sent.
    let lines = stream::unfold(Some((running, conn, lease, LoadClock::default(), 0usize)), move |state| {
        let model = model.clone();
        async move {
            let (mut running, conn, lease, mut load, calls) = state?;
            match running.next().await {
                Some(Item::Event(Event::Token { text, logprobs: token_logprobs, .. })) => {
                    load.token();
                    // The tokens that spelled a tool call have no text: no line for them.
                    if text.is_empty() && token_logprobs.is_none() {
                        return Some((Ok(String::new()), Some((running, conn, lease, load, calls))));
                    }
                    let mut line = piece(kind, &model, &text, false);
                    if let Some(token_logprobs) = token_logprobs {
                        line["logprobs"] = logprobs(std::slice::from_ref(&token_logprobs));
                    }
                    let line = format!("{line}\n");
                    Some((Ok::<_, std::convert::Infallible>(line), Some((running, conn, lease, load, calls))))
                }
                Some(Item::Event(Event::ToolCall(call))) => {
                    let line = with_calls(piece(kind, &model, "", false), std::slice::from_ref(&call), calls);
                    Some((Ok(format!("{line}\n")), Some((running, conn, lease, load, calls + 1))))
                }
                Some(Item::Event(Event::LoadProgress(progress))) => {
                    load.saw(&progress);
                    let line = format!("{}\n", loading(kind, &model, &progress));
                    Some((Ok(line), Some((running, conn, lease, load, calls))))
                }
                Some(Item::Done(answer)) => {
                    release(&conn, lease).await;
                    let last = match *answer {
                        Ok(CoreResponse::Generated(summary)) => {
                            finish(piece(kind, &model, "", true), &summary, started, load)
                        }
                        Ok(_) => json!({ "error": "a generation answered something else" }),
                        Err(error) => json!({ "error": error.message }),
                    };
                    Some((Ok(format!("{last}\n")), None))
                }
                None => {
                    release(&conn, lease).await;
                    None
                }
            }
        }
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines.boxed())).into_response())
}

#[derive(Debug, Deserialize)]
struct EmbedBody {
    model: String,
    input: Value,
    #[serde(default)]
    truncate: Option<bool>,
    /// mlxd's extensions, as on `/v1/embeddings`: a named prompt of the model ("" = none)
    /// or an `input_type` ("query", "document", ...).
    #[serde(default)]
    prompt_name: Option<String>,
    #[serde(default)]
    input_type: Option<String>,
}

async fn embed_texts(
    conn: &Conn,
    model: &str,
    texts: Vec<String>,
    prompt: Option<String>,
) -> Result<mlxd_proto::Embeddings, ApiError> {
    let request = Request::Embed(EmbedRequest {
        model: ModelRef::Name(model_name(model)),
        texts,
        normalize: true,
        priority: Priority::Interactive,
        deadline_ms: None,
        prompt,
    });
    match call::run(conn, request, |_| {}).await? {
        CoreResponse::Embeddings(embeddings) => Ok(embeddings),
        _ => Err(ApiError(WireError::internal("embeddings answered something else"))),
    }
}

async fn embed(State(conn): State<Conn>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let body: EmbedBody = call::parse(&body)?;
    if body.truncate == Some(false) {
        return Err(ApiError::bad_request(
            "truncate: false is not supported (texts longer than the model's context are truncated)",
        ));
    }
    let texts = match body.input {
        Value::String(text) => vec![text],
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(text) => Ok(text),
                _ => Err(ApiError::bad_request("input must be a string or an array of strings")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(ApiError::bad_request("input must be a string or an array of strings")),
    };
    let prompt =
        call::prompt_choice(&conn, &model_name(&body.model), body.prompt_name, body.input_type.as_deref()).await?;
    let e = embed_texts(&conn, &body.model, texts, prompt).await?;
    Ok(Json(json!({
        "model": format!("{}:latest", model_name(&body.model)),
        "embeddings": e.rows().collect::<Vec<_>>(),
        "total_duration": started.elapsed().as_nanos() as u64,
        "load_duration": 0,
        "prompt_eval_count": e.prompt_tokens,
    })))
}

#[derive(Debug, Deserialize)]
struct EmbeddingsBody {
    model: String,
    prompt: String,
}

async fn embeddings(State(conn): State<Conn>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body: EmbeddingsBody = call::parse(&body)?;
    let e = embed_texts(&conn, &body.model, vec![body.prompt], None).await?;
    Ok(Json(json!({ "embedding": e.rows().next().unwrap_or_default() })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_messages_without_ids_answer_the_calls_before_them_in_order() {
        let messages: Vec<OllamaMessage> = serde_json::from_value(json!([
            { "role": "user", "content": "Weather in Oslo and Rome?" },
            { "role": "assistant", "tool_calls": [
                { "function": { "name": "get_weather", "arguments": { "city": "Oslo" } } },
                { "function": { "name": "get_weather", "arguments": { "city": "Rome" } } },
            ] },
            { "role": "tool", "tool_name": "get_weather", "content": "-3" },
            { "role": "tool", "tool_name": "get_weather", "content": "14" },
        ]))
        .unwrap();
        let out = chat_messages(messages).unwrap();
        let calls = &out[1].tool_calls;
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].arguments, r#"{"city":"Oslo"}"#);
        assert_ne!(calls[0].id, calls[1].id);
        assert_eq!(out[2].tool_call_id.as_deref(), Some(calls[0].id.as_str()));
        assert_eq!(out[3].tool_call_id.as_deref(), Some(calls[1].id.as_str()));
        assert_eq!(out[3].name.as_deref(), Some("get_weather"));
        assert_eq!(out[1].content, "");

        let images: Vec<OllamaMessage> =
            serde_json::from_value(json!([{ "role": "user", "content": "x", "images": ["aGk="] }])).unwrap();
        assert!(chat_messages(images).unwrap_err().0.message.contains("images are not supported"));
    }
}
