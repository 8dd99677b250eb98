//! OpenAI-compatible `/v1`: models, embeddings, chat completions and completions (with
//! server-sent events when `stream` is set). Request bodies are parsed leniently as
//! OpenAI's are (unknown fields ignored) and strictly in type (a wrong type is 400).

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use futures_util::stream::{self, Stream};
use futures_util::StreamExt;
use mlxd_proto::{
    ChatMessage, Constraint, EmbedRequest, Event, FinishReason, GenerateParams, GenerateRequest, GenerationSummary,
    ModelRef, Priority, PromptInput, Request, Response as CoreResponse, TokenLogprobs, ToolCall, WireError,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::call::{self, Item};
use super::conn::Conn;
use super::error::ApiError;
use super::tools;

pub fn routes() -> Router<Conn> {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .fallback(|| async {
            ApiError(WireError::new(mlxd_proto::ErrorCode::NotFound, "no such endpoint (see /v1/models)"))
        })
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn models(State(conn): State<Conn>) -> Result<Json<Value>, ApiError> {
    let CoreResponse::Models(models) = call::run(&conn, Request::ListModels, |_| {}).await? else {
        return Err(ApiError(WireError::internal("the model list answered something else")));
    };
    let data: Vec<Value> =
        models.iter().map(|m| json!({ "id": m.name, "object": "model", "created": 0, "owned_by": "mlxd" })).collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

#[derive(Debug, Deserialize)]
struct EmbeddingsBody {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u32>,
    /// mlxd's extension: one of the model's named prompts ("" = none).
    #[serde(default)]
    prompt_name: Option<String>,
    /// As Cohere, Voyage and NVIDIA's embedding APIs take it ("query", "document", ...).
    #[serde(default)]
    input_type: Option<String>,
}

async fn embeddings(State(conn): State<Conn>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body: EmbeddingsBody = call::parse(&body)?;
    let texts: Vec<String> = match &body.input {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
        }
        Value::Array(items) if items.iter().all(|v| v.is_number() || v.is_array()) => {
            return Err(ApiError::bad_request("token-array input is not supported; send the text"))
        }
        _ => return Err(ApiError::bad_request("input must be a string or an array of strings")),
    };
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(ApiError::bad_request(format!("encoding_format {other:?}: use float or base64"))),
    };
    let prompt = call::prompt_choice(&conn, &body.model, body.prompt_name.clone(), body.input_type.as_deref()).await?;
    let request = Request::Embed(EmbedRequest {
        model: ModelRef::Name(body.model.clone()),
        texts,
        // OpenAI's embeddings are unit vectors (sentence-transformers' MiniLM is too).
        normalize: true,
        priority: Priority::Interactive,
        deadline_ms: None,
        prompt,
    });
    let CoreResponse::Embeddings(embeddings) = call::run(&conn, request, |_| {}).await? else {
        return Err(ApiError(WireError::internal("embeddings answered something else")));
    };
    if let Some(dimensions) = body.dimensions.filter(|&d| d != embeddings.dim) {
        return Err(ApiError::bad_request(format!(
            "dimensions {dimensions}: {} gives {}-dimensional vectors only",
            body.model, embeddings.dim
        )));
    }
    let data: Vec<Value> = embeddings
        .rows()
        .enumerate()
        .map(|(index, row)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(row)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    let tokens = embeddings.prompt_tokens;
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": embeddings.model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    })))
}

/// The generation parameters both completion endpoints take.
#[derive(Debug, Deserialize)]
struct Sampling {
    model: String,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    /// Extensions that vLLM and llama.cpp's server also take (openai SDKs send them with
    /// `extra_body`): the sampler's other knobs, at their neutral values when absent.
    /// vLLM's -1 (and 0) is "off".
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    repetition_penalty: Option<f32>,
    /// `null` is false, as OpenAI takes it.
    #[serde(default, deserialize_with = "null_is_false")]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    /// Chat: `true` for each token's logprob (with `top_logprobs` alternatives);
    /// completions: the number of alternatives (OpenAI's legacy form).
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(default)]
    top_logprobs: Option<u32>,
    /// `{"type": "text" | "json_object" | "json_schema", "json_schema": {"schema": ...}}`.
    #[serde(default)]
    response_format: Option<Value>,
    /// vLLM's extensions: a regular expression, or a grammar (Lark), the output must match.
    #[serde(default)]
    guided_regex: Option<String>,
    #[serde(default)]
    guided_grammar: Option<String>,
    /// Chat: `[{"type": "function", "function": {...}}]`, `tool_choice`, `parallel_tool_calls`.
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    /// OpenAI's deprecated forms of tools: refused, naming the replacement.
    #[serde(default)]
    functions: Option<Value>,
    #[serde(default)]
    function_call: Option<Value>,
}

fn null_is_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

impl Sampling {
    /// What `logprobs`/`top_logprobs` ask for, as the protocol's alternatives count.
    fn logprobs(&self, shape: Shape) -> Result<Option<u32>, ApiError> {
        match (shape, &self.logprobs) {
            (Shape::Chat, None | Some(Value::Null) | Some(Value::Bool(false))) => match self.top_logprobs {
                Some(k) if k > 0 => Err(ApiError::bad_request("top_logprobs needs logprobs: true")),
                _ => Ok(None),
            },
            (Shape::Chat, Some(Value::Bool(true))) => Ok(Some(self.top_logprobs.unwrap_or(0))),
            (Shape::Chat, Some(_)) => Err(ApiError::bad_request("logprobs must be true or false")),
            (Shape::Text, None | Some(Value::Null)) => Ok(None),
            (Shape::Text, Some(value)) => match value.as_u64().and_then(|k| u32::try_from(k).ok()) {
                Some(k) => Ok(Some(k)),
                None => Err(ApiError::bad_request("logprobs must be a number of alternatives (0 to 20)")),
            },
        }
    }

    /// The constraint `response_format` (or vLLM's `guided_regex`/`guided_grammar`) asks for.
    fn constraint(&self) -> Result<Option<Constraint>, ApiError> {
        let format = match &self.response_format {
            None | Some(Value::Null) => None,
            Some(format) => match format.get("type").and_then(Value::as_str) {
                Some("text") => None,
                Some("json_object") => Some(Constraint::JsonObject),
                Some("json_schema") => match format.get("json_schema").and_then(|s| s.get("schema")) {
                    Some(schema) if schema.is_object() || schema.is_boolean() => {
                        Some(Constraint::JsonSchema(schema.to_string()))
                    }
                    _ => return Err(ApiError::bad_request("response_format json_schema needs json_schema.schema")),
                },
                _ => {
                    return Err(ApiError::bad_request(
                        "response_format.type must be \"text\", \"json_object\" or \"json_schema\"",
                    ))
                }
            },
        };
        let guided = match (&self.guided_regex, &self.guided_grammar) {
            (Some(regex), None) => Some(Constraint::Regex(regex.clone())),
            (None, Some(grammar)) => Some(Constraint::Lark(grammar.clone())),
            (None, None) => None,
            (Some(_), Some(_)) => return Err(ApiError::bad_request("guided_regex and guided_grammar: one at a time")),
        };
        match (format, guided) {
            (Some(_), Some(_)) => Err(ApiError::bad_request("response_format and guided_*: one constraint at a time")),
            (format, guided) => Ok(format.or(guided)),
        }
    }

    fn params(&self, max_tokens_limit: u32, shape: Shape) -> Result<GenerateParams, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad_request("n must be 1: one choice per request"));
        }
        for (name, value) in
            [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)]
        {
            if value.is_some_and(|v| v != 0.0) {
                return Err(ApiError::bad_request(format!("{name} is not supported (0 or absent)")));
            }
        }
        let stop = match &self.stop {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.as_bytes().to_vec()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(|s| s.as_bytes().to_vec()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::bad_request("stop must be a string or an array of strings"))?,
            Some(_) => return Err(ApiError::bad_request("stop must be a string or an array of strings")),
        };
        if self.functions.is_some() || self.function_call.is_some() {
            return Err(ApiError::bad_request("functions and function_call are deprecated: use tools and tool_choice"));
        }
        let tools = tools::tools(self.tools.as_ref())?;
        if matches!(shape, Shape::Text) && !tools.is_empty() {
            return Err(ApiError::bad_request("tools need /v1/chat/completions (the chat template shows them)"));
        }
        Ok(GenerateParams {
            tools,
            tool_choice: tools::tool_choice(self.tool_choice.as_ref())?,
            parallel_tool_calls: self.parallel_tool_calls.unwrap_or(true),
            // Absent (as SDKs leave it): until the model stops, within the daemon's limit.
            max_tokens: self.max_completion_tokens.or(self.max_tokens).unwrap_or(max_tokens_limit),
            // OpenAI's defaults.
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed,
            stop,
            top_k: self.top_k.map_or(0, |k| u32::try_from(k.max(0)).unwrap_or(u32::MAX)),
            min_p: self.min_p.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            logprobs: self.logprobs(shape)?,
            constraint: self.constraint()?,
        })
    }

    fn request(&self, conn: &Conn, input: PromptInput, shape: Shape) -> Result<Request, ApiError> {
        let params = self.params(conn.caller.daemon.config.limits.max_tokens, shape)?;
        let initial_credit = if self.stream { call::STREAM_WINDOW } else { params.max_tokens };
        Ok(Request::Generate(GenerateRequest {
            model: ModelRef::Name(self.model.clone()),
            input,
            params,
            initial_credit,
            priority: Priority::Interactive,
            deadline_ms: None,
        }))
    }
}

#[derive(Debug, Deserialize)]
struct ChatBody {
    messages: Vec<ChatMessageBody>,
    #[serde(flatten)]
    sampling: Sampling,
}

#[derive(Debug, Deserialize)]
struct ChatMessageBody {
    role: String,
    #[serde(default)]
    content: Value,
    /// An assistant message's calls; a `tool` message's `tool_call_id` (and `name`).
    #[serde(default)]
    tool_calls: Option<Value>,
    #[serde(default)]
    tool_call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

fn chat_input(messages: &[ChatMessageBody]) -> Result<PromptInput, ApiError> {
    let mut out = Vec::with_capacity(messages.len());
    for (index, message) in messages.iter().enumerate() {
        let content = match &message.content {
            Value::String(text) => text.clone(),
            Value::Null => String::new(),
            Value::Array(parts) => {
                let mut text = String::new();
                for part in parts {
                    match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(piece)) => text.push_str(piece),
                        _ => {
                            return Err(ApiError::bad_request(format!(
                                "messages[{index}]: only text content parts are supported"
                            )))
                        }
                    }
                }
                text
            }
            _ => return Err(ApiError::bad_request(format!("messages[{index}].content must be a string or parts"))),
        };
        out.push(ChatMessage {
            role: message.role.clone(),
            content,
            tool_calls: tools::message_calls(message.tool_calls.as_ref(), index)?,
            tool_call_id: message.tool_call_id.clone(),
            name: message.name.clone(),
        });
    }
    Ok(PromptInput::Chat(out))
}

async fn chat_completions(State(conn): State<Conn>, body: Bytes) -> Result<Response, ApiError> {
    let body: ChatBody = call::parse(&body)?;
    let request = body.sampling.request(&conn, chat_input(&body.messages)?, Shape::Chat)?;
    complete(conn, body.sampling, request, Shape::Chat).await
}

#[derive(Debug, Deserialize)]
struct CompletionBody {
    prompt: Value,
    #[serde(flatten)]
    sampling: Sampling,
}

async fn completions(State(conn): State<Conn>, body: Bytes) -> Result<Response, ApiError> {
    let body: CompletionBody = call::parse(&body)?;
    let prompt = match &body.prompt {
        Value::String(text) => text.clone(),
        Value::Array(items) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_owned()
        }
        Value::Array(_) => return Err(ApiError::bad_request("prompt: one string per request")),
        _ => return Err(ApiError::bad_request("prompt must be a string")),
    };
    let request = body.sampling.request(&conn, PromptInput::Raw(prompt), Shape::Text)?;
    complete(conn, body.sampling, request, Shape::Text).await
}

/// Which completion object is answered.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Chat,
    Text,
}

impl Shape {
    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Shape::Chat, false) => "chat.completion",
            (Shape::Chat, true) => "chat.completion.chunk",
            (Shape::Text, _) => "text_completion",
        }
    }

    /// One choice; `logprobs`: each token's, with the characters of output sent before its
    /// text (completions' `text_offset`); `calls`: the tool calls of a whole chat message
    /// (its content is then `null` when it has no text, as OpenAI sends it).
    fn choice(
        self,
        text: &str,
        finish: Option<&str>,
        chunk: bool,
        logprobs: &[(usize, TokenLogprobs)],
        calls: &[ToolCall],
    ) -> Value {
        let logprobs = if logprobs.is_empty() { Value::Null } else { self.logprobs(logprobs) };
        match (self, chunk) {
            (Shape::Chat, false) => {
                let mut message = json!({ "role": "assistant", "content": text });
                if !calls.is_empty() {
                    if text.is_empty() {
                        message["content"] = Value::Null;
                    }
                    message["tool_calls"] = calls.iter().map(|c| tools::openai_call(c, None)).collect();
                }
                json!({ "index": 0, "message": message, "finish_reason": finish, "logprobs": logprobs })
            }
            (Shape::Chat, true) => {
                json!({ "index": 0, "delta": { "content": text }, "finish_reason": finish, "logprobs": logprobs })
            }
            (Shape::Text, _) => json!({ "index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs }),
        }
    }

    /// OpenAI's logprobs object for these tokens: chat's `content` list (each token with
    /// its UTF-8 bytes and alternatives), or completions' parallel lists (`text_offset`:
    /// where the output text stood when the token came; the detokenizer may hold text back
    /// or, at the start, drop a leading space, so tokens need not concatenate to the text).
    fn logprobs(self, tokens: &[(usize, TokenLogprobs)]) -> Value {
        let bytes = |text: &str| text.as_bytes().to_vec();
        match self {
            Shape::Chat => {
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|(_, t)| {
                        let top: Vec<Value> = t
                            .top
                            .iter()
                            .map(|a| json!({ "token": a.text, "logprob": a.logprob, "bytes": bytes(&a.text) }))
                            .collect();
                        json!({ "token": t.text, "logprob": t.logprob, "bytes": bytes(&t.text), "top_logprobs": top })
                    })
                    .collect();
                json!({ "content": content, "refusal": null })
            }
            Shape::Text => {
                let text_offset: Vec<usize> = tokens.iter().map(|(at, _)| *at).collect();
                let top: Vec<Value> = tokens
                    .iter()
                    .map(|(_, t)| {
                        let map: serde_json::Map<String, Value> =
                            t.top.iter().map(|a| (a.text.clone(), json!(a.logprob))).collect();
                        Value::Object(map)
                    })
                    .collect();
                json!({
                    "tokens": tokens.iter().map(|(_, t)| t.text.clone()).collect::<Vec<_>>(),
                    "token_logprobs": tokens.iter().map(|(_, t)| t.logprob).collect::<Vec<_>>(),
                    "top_logprobs": top,
                    "text_offset": text_offset,
                })
            }
        }
    }
}

fn finish_reason(summary: &GenerationSummary) -> &'static str {
    match summary.finish_reason {
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        _ => "stop",
    }
}

/// A tool call as OpenAI streams it: a delta naming the call (its id, and `arguments: ""`)
/// and a delta with the arguments.
fn call_deltas(call: &ToolCall, index: usize) -> [Value; 2] {
    let head = json!({ "index": index, "id": call.id, "type": "function", "function": { "name": call.name, "arguments": "" } });
    let arguments = json!({ "index": index, "function": { "arguments": call.arguments } });
    [head, arguments].map(
        |delta| json!([{ "index": 0, "delta": { "tool_calls": [delta] }, "finish_reason": null, "logprobs": null }]),
    )
}

fn usage(summary: &GenerationSummary) -> Value {
    json!({
        "prompt_tokens": summary.prompt_tokens,
        "completion_tokens": summary.completion_tokens,
        "total_tokens": summary.prompt_tokens + summary.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": summary.cached_prompt_tokens },
    })
}

async fn complete(conn: Conn, sampling: Sampling, request: Request, shape: Shape) -> Result<Response, ApiError> {
    let id = format!("mlxd-{}-{}", conn.caller.id, conn.next_id());
    let (model, created) = (sampling.model.clone(), now());
    if !sampling.stream {
        let mut text = String::new();
        let mut logprobs = Vec::new();
        let mut calls = Vec::new();
        let answer = call::run(&conn, request, |event| match event {
            Event::Token { text: piece, logprobs: token_logprobs, .. } => {
                if let Some(token_logprobs) = token_logprobs {
                    logprobs.push((text.chars().count(), token_logprobs));
                }
                text.push_str(&piece);
            }
            Event::ToolCall(call) => calls.push(call),
            Event::LoadProgress(_) => {}
        })
        .await?;
        let CoreResponse::Generated(summary) = answer else {
            return Err(ApiError(WireError::internal("a generation answered something else")));
        };
        return Ok(Json(json!({
            "id": id,
            "object": shape.object(false),
            "created": created,
            "model": model,
            "choices": [shape.choice(&text, Some(finish_reason(&summary)), false, &logprobs, &calls)],
            "usage": usage(&summary),
        }))
        .into_response());
    }
    let mut running = call::start(&conn, request)?;
    running.started().await?;
    let include_usage = sampling.stream_options.is_some_and(|o| o.include_usage);
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut chunk =
            json!({ "id": id, "object": shape.object(true), "created": created, "model": model, "choices": choices });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        SseEvent::default().data(chunk.to_string())
    };
    Ok(Sse::new(sse_stream(running, shape, include_usage, chunk)).into_response())
}

/// The SSE events of a running generation: a role chunk (chat), a chunk per token, the
/// finishing chunk, the usage chunk if asked for, then `[DONE]`; load progress of a cold
/// model as comments while it waits. An error after the
/// stream began is sent as an `error` object, as OpenAI does. Credit is granted back as
/// each token is sent on, so no more than the window is ever buffered.
fn sse_stream(
    running: call::Running,
    shape: Shape,
    include_usage: bool,
    chunk: impl Fn(Value, Option<Value>) -> SseEvent + Send + 'static,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
    enum Step {
        Start,
        Tokens,
        Done,
    }
    // The state: the request, where the stream is, the chunk maker, characters sent so far
    // and tool calls sent so far.
    stream::unfold((running, Step::Start, chunk, (0usize, 0usize)), move |(mut running, step, chunk, (sent, calls))| async move {
        match step {
            Step::Start if matches!(shape, Shape::Chat) => {
                let role = json!([{ "index": 0, "delta": { "role": "assistant", "content": "" }, "finish_reason": null }]);
                let event = chunk(role, None);
                Some((vec![Ok(event)], (running, Step::Tokens, chunk, (sent, calls))))
            }
            Step::Start | Step::Tokens => match running.next().await {
                // The tokens that spelled a tool call have no text: nothing to send.
                Some(Item::Event(Event::Token { text, logprobs: None, .. })) if text.is_empty() => {
                    Some((Vec::new(), (running, Step::Tokens, chunk, (sent, calls))))
                }
                Some(Item::Event(Event::Token { text, logprobs, .. })) => {
                    let logprobs: Vec<(usize, TokenLogprobs)> = logprobs.into_iter().map(|l| (sent, l)).collect();
                    let event = chunk(json!([shape.choice(&text, None, true, &logprobs, &[])]), None);
                    let sent = sent + text.chars().count();
                    Some((vec![Ok(event)], (running, Step::Tokens, chunk, (sent, calls))))
                }
                Some(Item::Event(Event::ToolCall(call))) => {
                    let events = call_deltas(&call, calls).into_iter().map(|delta| Ok(chunk(delta, None))).collect();
                    Some((events, (running, Step::Tokens, chunk, (sent, calls + 1))))
                }
                // A cold model loading: SSE comments (clients ignore them, and the stream
                // does not look stalled to a proxy or a timeout).
                Some(Item::Event(Event::LoadProgress(p))) => {
                    let comment = format!("loading {}: {:?} {}/{}", p.model, p.stage, p.done, p.total);
                    Some((vec![Ok(SseEvent::default().comment(comment))], (running, Step::Tokens, chunk, (sent, calls))))
                }
                Some(Item::Done(answer)) => {
                    let events = match *answer {
                        Ok(CoreResponse::Generated(summary)) => {
                            let finish = json!([shape.choice("", Some(finish_reason(&summary)), true, &[], &[])]);
                            let mut events = vec![Ok(chunk(finish, None))];
                            if include_usage {
                                events.push(Ok(chunk(json!([]), Some(usage(&summary)))));
                            }
                            events.push(Ok(SseEvent::default().data("[DONE]")));
                            events
                        }
                        other => {
                            let error = match other {
                                Err(error) => error,
                                Ok(_) => WireError::internal("a generation answered something else"),
                            };
                            let body = json!({ "error": { "message": error.message, "type": "server_error", "code": error.code.as_str() } });
                            vec![Ok(SseEvent::default().data(body.to_string())), Ok(SseEvent::default().data("[DONE]"))]
                        }
                    };
                    Some((events, (running, Step::Done, chunk, (sent, calls))))
                }
                None => None,
            },
            Step::Done => None,
        }
    })
    .flat_map(stream::iter)
}
