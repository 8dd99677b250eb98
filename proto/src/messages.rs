//! Client ↔ daemon messages, protocol version 7 ([`crate::PROTOCOL_VERSION`]; history in
//! PROTOCOL.md §7).
//!
//! Rules that keep old peers working: enum variants are only ever appended (bincode
//! encodes the variant index), struct fields are never reordered, and a change to any
//! struct's fields bumps [`crate::PROTOCOL_VERSION`]. `Hello` and `Welcome` never change.

use serde::{Deserialize, Serialize};

use crate::error::WireError;

/// Chosen by the client, unique among its in-flight requests on one connection; every
/// response and stream event for the request carries it.
pub type RequestId = u64;

/// A lease handle. Meaningful only on the session that obtained it.
pub type LeaseId = u64;

// ---------------------------------------------------------------------------------------
// Frames from the client.

/// Everything a client sends. The first frame must be `Hello`.
// Decoded once and moved to its handler; boxing the request would only add an allocation
// per frame (and `Box` is invisible on the wire anyway).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// Opens the session. Since v1; never changes shape.
    Hello(Hello),
    /// A request; answered by exactly one final frame (`Response` or `Error`) with its id,
    /// preceded for streaming requests by any number of `Event` frames. Since v1.
    Request { id: RequestId, body: Request },
    /// Asks the daemon to stop the request `id`; its final frame will be `Error` with code
    /// `Cancelled` (or its normal end if it finished first). No frame answers the Cancel itself. Since v1.
    Cancel { id: RequestId },
    /// Grants `events` more stream events to the stream `id`. No frame answers it. Since v1.
    Credit { id: RequestId, events: u32 },
}

/// The first frame of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    /// Free text for logs and status (e.g. "mlxctl", "my-indexer").
    pub client_name: String,
    /// The client's pid, for logs; the daemon reads the real one from the socket.
    pub pid: u32,
    /// Largest frame body the client accepts; the daemon never sends more.
    pub max_frame_len: u32,
}

/// A request body. Since v1 unless marked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Answered with `Response::Pong` by the supervisor, never by a worker.
    Ping,
    /// Daemon and model status; answered by the supervisor.
    Status,
    /// The model catalog; answered by the supervisor.
    ListModels,
    /// Takes a lease on a model, loading it if needed; streams `Event::LoadProgress` while
    /// loading; ends with `Response::Leased`.
    Lease(LeaseRequest),
    /// Releases a lease of this session; ends with `Response::Released`.
    Release { lease: LeaseId },
    /// Embeds texts; ends with `Response::Embeddings`.
    Embed(EmbedRequest),
    /// Generates text; streams `Event::Token` within the granted credit; ends with
    /// `Response::Generated`.
    Generate(GenerateRequest),
    /// Tokenizes a text with the model's tokenizer; ends with `Response::Tokens`.
    Tokenize { model: ModelRef, text: String, add_special_tokens: bool },
    /// Turns token ids back into text; ends with `Response::Text`.
    Detokenize {
        model: ModelRef,
        /// At most [`crate::bounds::MAX_DETOKENIZE_TOKENS`].
        #[serde(deserialize_with = "crate::bounds::tokens")]
        tokens: Vec<u32>,
    },
    /// Loads a model without leasing it; streams `Event::LoadProgress`; ends with `Response::Loaded`.
    Load { model: String },
    /// Unloads a model. Refused while it is leased unless `force`; ends with `Response::Unloaded`.
    Unload { model: String, force: bool },
    /// The weight files the daemon has mapped; answered by the supervisor. Since v1.
    Weights,
    /// The daemon's Prometheus metrics as OpenMetrics text; answered by the supervisor.
    /// Since v2 (appended).
    Metrics,
    /// Scores documents against a query with a reranking (cross-encoder) model; ends with
    /// `Response::Reranked`. Since v4 (appended).
    Rerank(RerankRequest),
}

/// Which model a request is for: by name (used for that request only) or by a lease of
/// this session (which also keeps the model loaded between requests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelRef {
    Name(String),
    Lease(LeaseId),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub model: String,
    /// How long the model stays loaded after this lease is released: `None` = the model's
    /// default, `0` = unload as soon as idle, negative = never unload by keep-alive.
    pub keep_alive_ms: Option<i64>,
}

/// Scheduling class: interactive work is served first; batch work may be shed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Priority {
    #[default]
    Interactive,
    Batch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedRequest {
    pub model: ModelRef,
    /// At most the session's `max_texts_per_embed`.
    #[serde(deserialize_with = "crate::bounds::texts")]
    pub texts: Vec<String>,
    /// L2-normalise each vector (what sentence-transformers does for MiniLM).
    pub normalize: bool,
    pub priority: Priority,
    /// Drop the request with `Timeout` if it is still queued this long after arrival.
    pub deadline_ms: Option<u64>,
    /// Which of the model's named prompts (sentence-transformers' `prompts`, e.g. "query",
    /// "document") is put before each text: `None` = the model's default prompt (none if it
    /// has no default), `Some("")` = no prompt, a name the model lacks = `BadRequest`.
    /// Since v4.
    pub prompt: Option<String>,
}

/// Scores each document's relevance to the query. Since v4.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankRequest {
    pub model: ModelRef,
    pub query: String,
    /// At most the session's `max_texts_per_embed`; each, like the query, at most
    /// `max_text_bytes`.
    #[serde(deserialize_with = "crate::bounds::texts")]
    pub documents: Vec<String>,
    /// Return only the best `top_n` (all when `None`).
    pub top_n: Option<u32>,
    pub priority: Priority,
    pub deadline_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub model: ModelRef,
    pub input: PromptInput,
    pub params: GenerateParams,
    /// Events the daemon may send before the client grants more with `Credit`.
    pub initial_credit: u32,
    pub priority: Priority,
    pub deadline_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PromptInput {
    /// Used as is.
    Raw(String),
    /// Rendered with the model's chat template, with the generation prompt appended.
    /// At most [`crate::bounds::MAX_CHAT_MESSAGES`].
    Chat(#[serde(deserialize_with = "crate::bounds::messages")] Vec<ChatMessage>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// The calls an assistant message made (empty otherwise), as the model's chat template
    /// renders them. At most [`crate::bounds::MAX_TOOLS`]. Since v7.
    #[serde(deserialize_with = "crate::bounds::tool_calls")]
    pub tool_calls: Vec<ToolCall>,
    /// A `tool` message: the id of the call it answers. Since v7.
    pub tool_call_id: Option<String>,
    /// A `tool` message: the name of the function that answered (Ollama's `tool_name`).
    /// Since v7.
    pub name: Option<String>,
}

impl ChatMessage {
    /// A message of `role` with text `content` only.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }
}

/// A function call the model made (parsed from its output), or one sent back in an
/// assistant message of the conversation. Since v7.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Unique within the conversation ("call_" and 24 characters; 9 letters and digits for
    /// a model whose template requires Mistral's ids).
    pub id: String,
    pub name: String,
    /// The arguments: a JSON object, as text.
    pub arguments: String,
}

/// A function the model may call. Since v7.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tool {
    /// 1 to 64 of `a-z A-Z 0-9 _ - .` (OpenAI's rule), unique among the request's tools.
    pub name: String,
    pub description: String,
    /// The arguments' JSON schema, as text (an object schema).
    pub parameters: String,
}

/// Whether the model may, must or must not call one of the request's tools. Since v7.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ToolChoice {
    /// The model decides: its output is parsed for calls in its template's format.
    #[default]
    Auto,
    /// No calls: the tools are not shown to the model, its output is text.
    None,
    /// At least one call (one, unless `parallel_tool_calls`), enforced by a constraint.
    Required,
    /// A call of this function, enforced by a constraint.
    Function(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateParams {
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    /// 0 = off.
    pub top_k: u32,
    /// 0 = off.
    pub min_p: f32,
    /// 1.0 = off.
    pub repetition_penalty: f32,
    pub seed: Option<u64>,
    /// Stop sequences as raw bytes: the daemon checks they are UTF-8 and answers
    /// `BadRequest` if not, rather than the frame failing to decode. At most
    /// [`crate::bounds::MAX_STOP_STRINGS`].
    #[serde(deserialize_with = "crate::bounds::stop_strings")]
    pub stop: Vec<Vec<u8>>,
    /// Log probabilities with each token: `None` = off (no cost); `Some(k)` = the chosen
    /// token's and the `k` most likely tokens' (0 to [`MAX_TOP_LOGPROBS`]). Since v5.
    pub logprobs: Option<u32>,
    /// What the output must be (the stream's tokens are masked to those that keep it
    /// possible); `None` = free text. Since v6.
    pub constraint: Option<Constraint>,
    /// Functions the model may call (chat input only): shown to it through its chat
    /// template, its output parsed for calls (`Event::ToolCall`). At most
    /// [`crate::bounds::MAX_TOOLS`]. Since v7.
    #[serde(deserialize_with = "crate::bounds::tools")]
    pub tools: Vec<Tool>,
    /// Since v7.
    pub tool_choice: ToolChoice,
    /// With `ToolChoice::Required`, whether more than one call may be made. Since v7.
    pub parallel_tool_calls: bool,
}

/// A constraint on a generation's output, enforced token by token (llguidance). The text
/// of each is at most `limits.max_text_bytes`. Since v6.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Constraint {
    /// One JSON value valid against this JSON schema (the schema as JSON text).
    JsonSchema(String),
    /// Any JSON object.
    JsonObject,
    /// Text the regular expression matches as a whole.
    Regex(String),
    /// Text the grammar derives (Lark syntax, as llguidance takes it; `start` is the rule).
    Lark(String),
}

/// Most alternatives a token's [`TokenLogprobs`] may list.
pub const MAX_TOP_LOGPROBS: u32 = 20;

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 256,
            temperature: 0.7,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: None,
            stop: Vec::new(),
            logprobs: None,
            constraint: None,
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            parallel_tool_calls: true,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Frames from the daemon.

/// Everything the daemon sends.
// Frames are built once and moved to the writer; boxing the large responses would only add
// allocations (and `Box` is invisible on the wire anyway).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// Accepts the session. Since v1; never changes shape.
    Welcome(Welcome),
    /// The final, successful answer to request `id`. Since v1.
    Response { id: RequestId, body: Response },
    /// A non-final stream event of request `id`. Since v1.
    Event { id: RequestId, event: Event },
    /// The final, failed answer to request `id`. Since v1.
    Error { id: RequestId, error: WireError },
    /// A fault of the whole session (version mismatch, bad frame, refused peer, shutdown);
    /// the daemon closes the connection after sending it. Since v1.
    Fatal(WireError),
}

/// The answer to `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u32,
    /// The daemon's package version, e.g. "0.1.0".
    pub daemon_version: String,
    pub session_id: u64,
    pub limits: Limits,
}

/// Limits in force for the session; requests over them are refused with a typed error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest frame body the daemon accepts.
    pub max_frame_len: u32,
    pub max_texts_per_embed: u32,
    pub max_text_bytes: u32,
    pub max_in_flight: u32,
    pub max_leases: u32,
    pub max_tokens: u32,
}

/// Final successful answers. Since v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Pong,
    Status(DaemonStatus),
    Models(Vec<ModelInfo>),
    Leased(LeaseInfo),
    Released,
    Embeddings(Embeddings),
    Generated(GenerationSummary),
    Tokens(Vec<u32>),
    Text(String),
    Loaded(ModelInfo),
    Unloaded(ModelInfo),
    /// Since v1.
    Weights(Vec<MappedWeights>),
    /// OpenMetrics text exposition (`application/openmetrics-text; version=1.0.0`).
    /// Since v2 (appended).
    Metrics(String),
    /// The answer to `Rerank`. Since v4 (appended).
    Reranked(Reranked),
}

/// Documents by relevance, best first (ties in document order), at most `top_n`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reranked {
    pub model: String,
    pub results: Vec<RerankResult>,
    /// Tokens of all (query, document) pairs as the model read them.
    pub prompt_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RerankResult {
    /// The document's position in the request.
    pub index: u32,
    /// The model's relevance score: the sigmoid of its logit, in [0, 1], as
    /// sentence-transformers' `CrossEncoder` gives for a one-label model.
    pub score: f32,
}

/// One weight file mapped by the daemon (once, however many models use it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappedWeights {
    pub path: String,
    pub bytes: u64,
    pub tensors: u32,
    /// Every tensor starts at a 16 KiB boundary (a worker could adopt it without a copy).
    pub aligned: bool,
    /// The loaded models that use it.
    pub models: Vec<String>,
}

/// Non-final stream events. Since v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// One generated piece of text and the token that completed it (`None` for text
    /// released at the end of the stream without a new token, e.g. a final flush), with the
    /// token's log probabilities when the request asked for them (since v5).
    Token { text: String, token: Option<u32>, logprobs: Option<TokenLogprobs> },
    /// Load progress of the model a Lease or Load is waiting for.
    LoadProgress(LoadProgress),
    /// A call the model made, parsed from its output once complete (the tokens that
    /// spelled it came as `Token` events with empty text), right after the `Token` event
    /// that completed it. Costs no credit (the token did). Since v7 (appended).
    ToolCall(ToolCall),
}

/// A generated token's log probability and the most likely alternatives at its step: the
/// log-softmax of the model's logits after the repetition penalty (if any), before
/// temperature, top-p, top-k and min-p. Since v5.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    /// The token as text on its own (a piece of a multi-byte character decodes to U+FFFD).
    pub text: String,
    pub logprob: f32,
    /// Most likely first (as many as asked, fewer only if the vocabulary is smaller).
    pub top: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: u32,
    pub text: String,
    pub logprob: f32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadProgress {
    pub model: String,
    pub stage: LoadStage,
    pub done: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadStage {
    /// The worker process is starting and importing the runtime.
    Starting,
    /// Weights are being read (`done`/`total` in bytes or tensors).
    Weights,
    /// The model is ready.
    Ready,
}

/// Row-major float32 vectors: `vectors.len() == count * dim`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embeddings {
    pub model: String,
    pub count: u32,
    pub dim: u32,
    pub vectors: Vec<f32>,
    pub prompt_tokens: u64,
}

impl Embeddings {
    /// The vectors one by one.
    pub fn rows(&self) -> impl Iterator<Item = &[f32]> {
        self.vectors.chunks(self.dim.max(1) as usize)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    Stop,
    Length,
    Cancelled,
    Error,
    /// The model stopped after making tool calls. Since v7 (appended).
    ToolCalls,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationSummary {
    pub finish_reason: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub prompt_tokens_per_s: f32,
    pub generation_tokens_per_s: f32,
    /// Prompt tokens taken from the prompt cache instead of computed (a prefix this
    /// client's user sent before; the cache is never shared across users). Since v3.
    pub cached_prompt_tokens: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub lease: LeaseId,
    pub model: ModelInfo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelKind {
    Embedding,
    Generation,
    /// A cross-encoder that scores (query, document) pairs. Since v4 (appended).
    Rerank,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelState {
    Unloaded,
    Loading,
    Ready,
    Unloading,
    /// Loading failed or the worker keeps crashing; see `last_error`.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub kind: ModelKind,
    pub state: ModelState,
    /// Where the weights come from (a directory, a store manifest).
    pub source: String,
    pub leases: u32,
    pub in_flight: u32,
    pub queue_depth: u32,
    pub queue_capacity: u32,
    pub resident_bytes: u64,
    /// Embedding dimension, 0 when not known or not an embedding model.
    pub dim: u32,
    pub max_seq_len: u32,
    /// Milliseconds since the model was last used, if it has been.
    pub idle_ms: Option<u64>,
    /// Milliseconds of keep-alive left, when an idle model is counting down.
    pub keep_alive_left_ms: Option<u64>,
    /// The backend the worker computes on ("cpu", "gpu"), once loaded.
    pub backend: String,
    pub worker_pid: Option<u32>,
    pub last_error: Option<String>,
    /// The model's scheduler: queue, slots and what happened to requests. Since v2.
    pub sched: SchedStats,
    /// Embedding models: the named prompts a request may choose (`EmbedRequest::prompt`),
    /// sorted, and the one used when a request names none. Since v4.
    pub prompts: Vec<String>,
    pub default_prompt: Option<String>,
    /// Bytes the memory budget counts for the model when loaded: its weights as served
    /// (after any conversion; float32 for the encoders mlxd runs itself) plus, for
    /// generation models, the KV cache of `max_streams` streams at the context the daemon
    /// allows each (`max_context`, at most the model's own) and the prompt cache. Since v4.
    pub estimated_bytes: u64,
    /// Generation models: whether the chat template takes tools (`GenerateParams::tools`;
    /// a model whose template does not refuses them). Since v7.
    pub tools: bool,
}

/// A model's scheduler at a glance; counters run from the daemon's start. Since v2.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedStats {
    /// Entries waiting in the queue (part of `ModelInfo::queue_depth`).
    pub queued: u32,
    /// Generation streams holding one of the model's slots.
    pub running: u32,
    /// Streams decoded together at most (generation models).
    pub slots: u32,
    pub admitted: u64,
    /// Refused with `Busy` because the queue was full.
    pub busy: u64,
    /// Batch-priority requests dropped from the queue (with `Busy`) for interactive work.
    pub shed: u64,
    /// Dropped with `Timeout`: their deadline passed while queued.
    pub timeouts: u64,
    /// Generation requests the batch path could not express, run on the single-stream path.
    pub single_stream: u64,
    /// Worker calls that served several requests together, and the requests they served.
    pub batches: u64,
    pub batched_requests: u64,
    /// Measured service time per request, in microseconds (0 = not measured yet).
    pub service_us: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub daemon_version: String,
    pub protocol_version: u32,
    pub pid: u32,
    pub uptime_ms: u64,
    /// Where the daemon listens ("stdio" in stdio mode).
    pub endpoint: String,
    pub sessions: u32,
    pub models: Vec<ModelInfo>,
}
