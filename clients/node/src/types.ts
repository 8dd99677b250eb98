/**
 * The wire types of mlxd protocol version 7, one for every message in
 * `proto/src/messages.rs` and `proto/src/error.rs` (see `proto/PROTOCOL.md`, §5).
 *
 * How the Rust types map to TypeScript:
 * - Field names are the protocol's own (snake_case), so this file reads like PROTOCOL.md.
 * - An enum whose variants all carry no data (`Priority`, `ErrorCode`, `FinishReason`,
 *   `ModelKind`, `ModelState`, `LoadStage`) is a union of its variant names as strings.
 * - Any other enum is a union of objects discriminated by `type` (the variant name):
 *   a unit variant is `{ type }`; a struct variant, or a variant wrapping a struct, carries
 *   the struct's fields beside `type` (`{ type: "Lease", model, keep_alive_ms }`); a variant
 *   wrapping anything else carries it as `value` (`{ type: "Name", value: "minilm" }`).
 * - `Option<T>` is `T | null`.
 * - `u8`, `u16`, `u32` and `f32` are `number`. `u64` and `i64` are {@link U64} / {@link I64}:
 *   a `number` when it is a safe integer (|n| ≤ 2^53 − 1), a `bigint` beyond that, so no
 *   value is ever rounded; the encoder takes either.
 * - `Vec<u8>` (stop strings) is `Uint8Array`; `Embeddings.vectors` is a `Float32Array`.
 *
 * @module
 */

/** An unsigned 64-bit value: `number` when ≤ `Number.MAX_SAFE_INTEGER`, else `bigint`. */
export type U64 = number | bigint;
/** A signed 64-bit value: `number` when a safe integer, else `bigint`. */
export type I64 = number | bigint;

/** The protocol version this package speaks. */
export const PROTOCOL_VERSION = 7;

/** Most alternatives `GenerateParams.logprobs` may ask for with each token (since v5). */
export const MAX_TOP_LOGPROBS = 20;

/**
 * Most tools in one generation request, and most tool calls in one chat message (since
 * v7); more is a `TooLargeError`.
 */
export const MAX_TOOLS = 128;

// ---------------------------------------------------------------------------------------
// Client → daemon

/** The first frame of a session. Never changes shape. */
export interface Hello {
  protocol_version: number;
  client_name: string;
  pid: number;
  max_frame_len: number;
}

/** Everything a client sends (`ClientMessage`). The first frame must be a Hello. */
export type ClientMessage =
  | ({ type: "Hello" } & Hello)
  | { type: "Request"; id: U64; body: Request }
  | { type: "Cancel"; id: U64 }
  | { type: "Credit"; id: U64; events: number };

/** A request body; the comment names the final answer. */
export type Request =
  | { type: "Ping" } // Response Pong
  | { type: "Status" } // Response Status
  | { type: "ListModels" } // Response Models
  | ({ type: "Lease" } & LeaseRequest) // Event LoadProgress*, Response Leased
  | { type: "Release"; lease: U64 } // Response Released
  | ({ type: "Embed" } & EmbedRequest) // Response Embeddings
  | ({ type: "Generate" } & GenerateRequest) // Event Token* (and ToolCall*, since v7), Response Generated
  | { type: "Tokenize"; model: ModelRef; text: string; add_special_tokens: boolean } // Response Tokens
  | { type: "Detokenize"; model: ModelRef; tokens: number[] } // Response Text
  | { type: "Load"; model: string } // Event LoadProgress*, Response Loaded
  | { type: "Unload"; model: string; force: boolean } // Response Unloaded
  | { type: "Weights" } // Response Weights
  | { type: "Metrics" } // Response Metrics (appended in v2)
  | ({ type: "Rerank" } & RerankRequest); // Event LoadProgress*, Response Reranked (appended in v4)

/** Which model a request is for: by name (that request only) or by a lease of this session. */
export type ModelRef = { type: "Name"; value: string } | { type: "Lease"; value: U64 };

/** Scheduling class: interactive work is served first; batch work may be shed first. */
export type Priority = "Interactive" | "Batch";

export interface LeaseRequest {
  model: string;
  /** null = the model's default; 0 = unload as soon as idle; < 0 = never by keep-alive. */
  keep_alive_ms: I64 | null;
}

export interface EmbedRequest {
  model: ModelRef;
  texts: string[];
  normalize: boolean;
  priority: Priority;
  deadline_ms: U64 | null;
  /**
   * Which of the model's named prompts goes before each text (since v4): null = the
   * model's default prompt (none if it has none); "" = none; a name = that one of
   * `ModelInfo.prompts` (another name: `BadRequestError`).
   */
  prompt: string | null;
}

/** Scores each document's relevance to `query` with a reranking model (since v4). */
export interface RerankRequest {
  model: ModelRef;
  query: string;
  documents: string[];
  /** Only the best `top_n` (null: all). */
  top_n: number | null;
  priority: Priority;
  deadline_ms: U64 | null;
}

export interface GenerateRequest {
  model: ModelRef;
  input: PromptInput;
  params: GenerateParams;
  initial_credit: number;
  priority: Priority;
  deadline_ms: U64 | null;
}

export type PromptInput = { type: "Raw"; value: string } | { type: "Chat"; value: ChatMessage[] };

export interface ChatMessage {
  role: string;
  content: string;
  /** An assistant message's calls, as the model made them (since v7; at most {@link MAX_TOOLS}). */
  tool_calls: ToolCall[];
  /** A `tool` message: the id of the call it answers (since v7). */
  tool_call_id: string | null;
  /** A `tool` message: the name of the function that answered (since v7). */
  name: string | null;
}

/** A call of one of the request's tools (since v7): the model's, or one sent back in a message. */
export interface ToolCall {
  /** Unique within the conversation ("call_" and 24 characters, or 9 for Mistral's templates). */
  id: string;
  name: string;
  /** The arguments: a JSON object, as text. */
  arguments: string;
}

/** A function the model may call (since v7). */
export interface Tool {
  /** 1 to 64 of `a-z A-Z 0-9 _ - .`, unique among the request's tools. */
  name: string;
  description: string;
  /** The arguments' JSON schema (of an object), as text. */
  parameters: string;
}

/** Whether the model may (Auto), must not (None) or must (Required, Function) call a tool (since v7). */
export type ToolChoice =
  | { type: "Auto" } // the model decides; its output is parsed for calls
  | { type: "None" } // no calls: the tools are not shown to the model
  | { type: "Required" } // at least one call (one, unless parallel_tool_calls)
  | { type: "Function"; value: string }; // a call of this function

export interface GenerateParams {
  max_tokens: number;
  temperature: number;
  top_p: number;
  /** 0 = off. */
  top_k: number;
  /** 0 = off. */
  min_p: number;
  /** 1 = off. */
  repetition_penalty: number;
  seed: U64 | null;
  /** Stop strings as bytes (UTF-8). */
  stop: Uint8Array[];
  /**
   * Log probabilities with each token (since v5): null = off (no cost); k = each token's
   * and the k most likely tokens' (0..=20; more: `BadRequestError`).
   */
  logprobs: number | null;
  /** What the output must be (since v6): null = free text. */
  constraint: Constraint | null;
  /** Functions the model may call (since v7; chat input only, at most {@link MAX_TOOLS}). */
  tools: Tool[];
  /** Since v7: Auto when there are no tools. */
  tool_choice: ToolChoice;
  /** With `Required`, whether more than one call may be made (since v7). */
  parallel_tool_calls: boolean;
}

/**
 * A constraint on a generation's output, enforced token by token (since v6). Each text is
 * at most `limits.max_text_bytes`; one the daemon cannot compile is a `BadRequestError`.
 */
export type Constraint =
  | { type: "JsonSchema"; value: string } // one JSON value valid against this schema (its JSON text)
  | { type: "JsonObject" } // any JSON object
  | { type: "Regex"; value: string } // text the regular expression matches as a whole
  | { type: "Lark"; value: string }; // text the Lark grammar derives from its `start` rule

// ---------------------------------------------------------------------------------------
// Daemon → client

/** Everything the daemon sends (`ServerMessage`). */
export type ServerMessage =
  | ({ type: "Welcome" } & Welcome)
  | { type: "Response"; id: U64; body: Response }
  | { type: "Event"; id: U64; event: Event }
  | { type: "Error"; id: U64; error: WireError }
  | ({ type: "Fatal" } & WireError);

/** The answer to Hello. Never changes shape. */
export interface Welcome {
  protocol_version: number;
  daemon_version: string;
  session_id: U64;
  limits: Limits;
}

export interface Limits {
  max_frame_len: number;
  max_texts_per_embed: number;
  max_text_bytes: number;
  max_in_flight: number;
  max_leases: number;
  max_tokens: number;
}

/** Final successful answers. */
export type Response =
  | { type: "Pong" }
  | ({ type: "Status" } & DaemonStatus)
  | { type: "Models"; value: ModelInfo[] }
  | ({ type: "Leased" } & LeaseInfo)
  | { type: "Released" }
  | ({ type: "Embeddings" } & Embeddings)
  | ({ type: "Generated" } & GenerationSummary)
  | { type: "Tokens"; value: number[] }
  | { type: "Text"; value: string }
  | ({ type: "Loaded" } & ModelInfo)
  | ({ type: "Unloaded" } & ModelInfo)
  | { type: "Weights"; value: MappedWeights[] }
  | { type: "Metrics"; value: string }
  | ({ type: "Reranked" } & Reranked); // appended in v4

/**
 * The answer to a rerank (since v4): `results` best first (equal scores in document
 * order), at most `top_n`; `prompt_tokens` counts every (query, document) pair's tokens.
 */
export interface Reranked {
  model: string;
  results: RerankResult[];
  prompt_tokens: U64;
}

export interface RerankResult {
  /** The document's position in the request. */
  index: number;
  /** The sigmoid of the model's logit, in [0, 1]. */
  score: number;
}

export interface MappedWeights {
  path: string;
  bytes: U64;
  tensors: number;
  aligned: boolean;
  models: string[];
}

/** Non-final stream events. */
export type Event =
  // logprobs (since v5): when the request asked for them; never on a `token: null` event.
  | { type: "Token"; text: string; token: number | null; logprobs: TokenLogprobs | null }
  | ({ type: "LoadProgress" } & LoadProgress)
  // since v7: a call the model made, right after the Token event that completed it; no credit.
  | ({ type: "ToolCall" } & ToolCall);

/**
 * A generated token's log probability and the most likely tokens at its step (since v5):
 * the log-softmax of the model's logits after the repetition penalty, before temperature,
 * top-p, top-k and min-p (so a sampled token has one too).
 */
export interface TokenLogprobs {
  /** The token decoded on its own (a piece of a multi-byte character is U+FFFD). */
  text: string;
  logprob: number;
  /** The most likely tokens, best first (as many as asked; the chosen one among them if it is). */
  top: TopLogprob[];
}

export interface TopLogprob {
  token: number;
  text: string;
  logprob: number;
}

export interface LoadProgress {
  model: string;
  stage: LoadStage;
  done: U64;
  total: U64;
}

export type LoadStage = "Starting" | "Weights" | "Ready";

/** Row-major vectors: `vectors.length === count * dim`. */
export interface Embeddings {
  model: string;
  count: number;
  dim: number;
  vectors: Float32Array;
  prompt_tokens: U64;
}

/** `ToolCalls` (since v7): the stream made one or more tool calls, then stopped. */
export type FinishReason = "Stop" | "Length" | "Cancelled" | "Error" | "ToolCalls";

export interface GenerationSummary {
  finish_reason: FinishReason;
  prompt_tokens: number;
  completion_tokens: number;
  prompt_tokens_per_s: number;
  generation_tokens_per_s: number;
  /** Prompt tokens reused from the prompt cache (since v3). */
  cached_prompt_tokens: number;
}

export interface LeaseInfo {
  lease: U64;
  model: ModelInfo;
}

/** `Rerank`: a cross-encoder scoring (query, document) pairs (appended in v4). */
export type ModelKind = "Embedding" | "Generation" | "Rerank";
export type ModelState = "Unloaded" | "Loading" | "Ready" | "Unloading" | "Failed";

export interface ModelInfo {
  name: string;
  kind: ModelKind;
  state: ModelState;
  source: string;
  leases: number;
  in_flight: number;
  queue_depth: number;
  queue_capacity: number;
  resident_bytes: U64;
  dim: number;
  max_seq_len: number;
  idle_ms: U64 | null;
  keep_alive_left_ms: U64 | null;
  backend: string;
  worker_pid: number | null;
  last_error: string | null;
  sched: SchedStats;
  /** Embedding models: the named prompts an embed may choose, sorted (since v4). */
  prompts: string[];
  /** The prompt an embed gets when it names none (since v4). */
  default_prompt: string | null;
  /** Bytes the daemon's memory budget counts for the model when loaded (since v4). */
  estimated_bytes: U64;
  /** Generation models: whether the chat template takes tools (`GenerateParams.tools`; since v7). */
  tools: boolean;
}

export interface SchedStats {
  queued: number;
  running: number;
  slots: number;
  admitted: U64;
  busy: U64;
  shed: U64;
  timeouts: U64;
  single_stream: U64;
  batches: U64;
  batched_requests: U64;
  service_us: U64;
}

export interface DaemonStatus {
  daemon_version: string;
  protocol_version: number;
  pid: number;
  uptime_ms: U64;
  endpoint: string;
  sessions: number;
  models: ModelInfo[];
}

// ---------------------------------------------------------------------------------------
// Errors

export interface WireError {
  code: ErrorCode;
  message: string;
  retry_after_ms: U64 | null;
}

/** Error codes; the index in {@link ERROR_CODES} is the wire tag. */
export type ErrorCode =
  | "BadRequest"
  | "NotFound"
  | "Busy"
  | "Loading"
  | "WorkerFailed"
  | "Cancelled"
  | "Unauthorized"
  | "TooLarge"
  | "Shutdown"
  | "Internal"
  | "VersionMismatch"
  | "NotImplemented"
  | "InvalidLease"
  | "Timeout"
  | "OutOfMemory"
  | "Unsupported";

// The variant lists below are the wire tags (index = tag). Appended only.

export const ERROR_CODES: readonly ErrorCode[] = [
  "BadRequest",
  "NotFound",
  "Busy",
  "Loading",
  "WorkerFailed",
  "Cancelled",
  "Unauthorized",
  "TooLarge",
  "Shutdown",
  "Internal",
  "VersionMismatch",
  "NotImplemented",
  "InvalidLease",
  "Timeout",
  "OutOfMemory",
  "Unsupported",
];
export const PRIORITIES: readonly Priority[] = ["Interactive", "Batch"];
export const FINISH_REASONS: readonly FinishReason[] = ["Stop", "Length", "Cancelled", "Error", "ToolCalls"];
export const MODEL_KINDS: readonly ModelKind[] = ["Embedding", "Generation", "Rerank"];
export const MODEL_STATES: readonly ModelState[] = ["Unloaded", "Loading", "Ready", "Unloading", "Failed"];
export const LOAD_STAGES: readonly LoadStage[] = ["Starting", "Weights", "Ready"];
export const CLIENT_MESSAGE_TYPES: readonly ClientMessage["type"][] = ["Hello", "Request", "Cancel", "Credit"];
export const REQUEST_TYPES: readonly Request["type"][] = [
  "Ping",
  "Status",
  "ListModels",
  "Lease",
  "Release",
  "Embed",
  "Generate",
  "Tokenize",
  "Detokenize",
  "Load",
  "Unload",
  "Weights",
  "Metrics",
  "Rerank",
];
export const SERVER_MESSAGE_TYPES: readonly ServerMessage["type"][] = ["Welcome", "Response", "Event", "Error", "Fatal"];
export const RESPONSE_TYPES: readonly Response["type"][] = [
  "Pong",
  "Status",
  "Models",
  "Leased",
  "Released",
  "Embeddings",
  "Generated",
  "Tokens",
  "Text",
  "Loaded",
  "Unloaded",
  "Weights",
  "Metrics",
  "Reranked",
];
export const EVENT_TYPES: readonly Event["type"][] = ["Token", "LoadProgress", "ToolCall"];
export const CONSTRAINT_TYPES: readonly Constraint["type"][] = ["JsonSchema", "JsonObject", "Regex", "Lark"];
export const TOOL_CHOICE_TYPES: readonly ToolChoice["type"][] = ["Auto", "None", "Required", "Function"];
