/**
 * Encoders and decoders for every message of protocol v7, both directions (the client
 * only sends `ClientMessage` and reads `ServerMessage`; the other two halves let the
 * conformance tests check every vector both ways). Fields are written in the order of
 * PROTOCOL.md §5; a variant's wire tag is its index in the lists of `types.ts`.
 *
 * @module
 */

import { InvalidArgumentError } from "./errors.js";
import { Reader, Writer } from "./wire.js";
import {
  CLIENT_MESSAGE_TYPES,
  CONSTRAINT_TYPES,
  ERROR_CODES,
  EVENT_TYPES,
  FINISH_REASONS,
  LOAD_STAGES,
  MODEL_KINDS,
  MODEL_STATES,
  PRIORITIES,
  REQUEST_TYPES,
  RESPONSE_TYPES,
  SERVER_MESSAGE_TYPES,
  TOOL_CHOICE_TYPES,
  type ChatMessage,
  type ClientMessage,
  type Constraint,
  type DaemonStatus,
  type EmbedRequest,
  type Embeddings,
  type Event,
  type GenerateParams,
  type GenerateRequest,
  type GenerationSummary,
  type Hello,
  type LeaseInfo,
  type LeaseRequest,
  type Limits,
  type LoadProgress,
  type MappedWeights,
  type ModelInfo,
  type ModelRef,
  type PromptInput,
  type Request,
  type RerankRequest,
  type Reranked,
  type Response,
  type SchedStats,
  type ServerMessage,
  type TokenLogprobs,
  type Tool,
  type ToolCall,
  type ToolChoice,
  type Welcome,
  type WireError,
} from "./types.js";

// ---------------------------------------------------------------------------------------
// Public entry points

/** The body of one client frame (no length prefix). */
export function encodeClientMessage(message: ClientMessage): Uint8Array {
  const writer = new Writer();
  writeClientMessage(writer, message);
  return writer.bytes();
}

/** The body of one daemon frame (no length prefix); used by tests and tools. */
export function encodeServerMessage(message: ServerMessage): Uint8Array {
  const writer = new Writer();
  writeServerMessage(writer, message);
  return writer.bytes();
}

/** Decodes one whole daemon frame body; throws `ProtocolError` if it is not exactly one message. */
export function decodeServerMessage(body: Uint8Array): ServerMessage {
  const reader = new Reader(body);
  const message = readServerMessage(reader);
  reader.end();
  return message;
}

/** Decodes one whole client frame body (what the daemon reads); used by tests and tools. */
export function decodeClientMessage(body: Uint8Array): ClientMessage {
  const reader = new Reader(body);
  const message = readClientMessage(reader);
  reader.end();
  return message;
}

/** Appends a client message to `w` (the framing writes its length prefix first). */
export function writeClientMessage(w: Writer, message: ClientMessage): void {
  switch (message.type) {
    case "Hello":
      w.tag(0);
      writeHello(w, message);
      return;
    case "Request":
      w.tag(1);
      w.u64(message.id, "Request.id");
      writeRequest(w, message.body);
      return;
    case "Cancel":
      w.tag(2);
      w.u64(message.id, "Cancel.id");
      return;
    case "Credit":
      w.tag(3);
      w.u64(message.id, "Credit.id");
      w.u32(message.events, "Credit.events");
      return;
    default:
      return unknownType("ClientMessage", message);
  }
}

function unknownType(what: string, value: unknown): never {
  const type = (value as { type?: unknown } | null)?.type;
  throw new InvalidArgumentError(`${what}: unknown type ${JSON.stringify(type)}`);
}

function tagOf<N extends string>(names: readonly N[], name: N, what: string): number {
  const index = names.indexOf(name);
  if (index < 0) throw new InvalidArgumentError(`${what}: unknown value ${JSON.stringify(name)}`);
  return index;
}

// ---------------------------------------------------------------------------------------
// Client → daemon

function writeHello(w: Writer, hello: Hello): void {
  w.u32(hello.protocol_version, "Hello.protocol_version");
  w.string(hello.client_name, "Hello.client_name");
  w.u32(hello.pid, "Hello.pid");
  w.u32(hello.max_frame_len, "Hello.max_frame_len");
}

function readHello(r: Reader): Hello {
  return {
    protocol_version: r.u32("Hello.protocol_version"),
    client_name: r.string("Hello.client_name"),
    pid: r.u32("Hello.pid"),
    max_frame_len: r.u32("Hello.max_frame_len"),
  };
}

function readClientMessage(r: Reader): ClientMessage {
  const type = r.tag(CLIENT_MESSAGE_TYPES, "ClientMessage");
  switch (type) {
    case "Hello":
      return { type, ...readHello(r) };
    case "Request":
      return { type, id: r.u64("Request.id"), body: readRequest(r) };
    case "Cancel":
      return { type, id: r.u64("Cancel.id") };
    case "Credit":
      return { type, id: r.u64("Credit.id"), events: r.u32("Credit.events") };
  }
}

function writeRequest(w: Writer, body: Request): void {
  if (body === null || typeof body !== "object") throw new InvalidArgumentError("Request: expected an object");
  w.tag(tagOf(REQUEST_TYPES, body.type, "Request.type"));
  switch (body.type) {
    case "Ping":
    case "Status":
    case "ListModels":
    case "Weights":
    case "Metrics":
      return;
    case "Lease":
      writeLeaseRequest(w, body);
      return;
    case "Release":
      w.u64(body.lease, "Release.lease");
      return;
    case "Embed":
      writeEmbedRequest(w, body);
      return;
    case "Generate":
      writeGenerateRequest(w, body);
      return;
    case "Tokenize":
      writeModelRef(w, body.model);
      w.string(body.text, "Tokenize.text");
      w.bool(body.add_special_tokens, "Tokenize.add_special_tokens");
      return;
    case "Detokenize":
      writeModelRef(w, body.model);
      w.seq(body.tokens, "Detokenize.tokens", (token) => w.u32(token, "Detokenize.tokens[]"));
      return;
    case "Load":
      w.string(body.model, "Load.model");
      return;
    case "Unload":
      w.string(body.model, "Unload.model");
      w.bool(body.force, "Unload.force");
      return;
    case "Rerank":
      writeRerankRequest(w, body);
      return;
    default:
      return unknownType("Request", body);
  }
}

function readRequest(r: Reader): Request {
  const type = r.tag(REQUEST_TYPES, "Request");
  switch (type) {
    case "Ping":
    case "Status":
    case "ListModels":
    case "Weights":
    case "Metrics":
      return { type };
    case "Lease":
      return { type, ...readLeaseRequest(r) };
    case "Release":
      return { type, lease: r.u64("Release.lease") };
    case "Embed":
      return { type, ...readEmbedRequest(r) };
    case "Generate":
      return { type, ...readGenerateRequest(r) };
    case "Tokenize":
      return {
        type,
        model: readModelRef(r),
        text: r.string("Tokenize.text"),
        add_special_tokens: r.bool("Tokenize.add_special_tokens"),
      };
    case "Detokenize":
      return { type, model: readModelRef(r), tokens: r.seq("Detokenize.tokens", () => r.u32("Detokenize.tokens[]")) };
    case "Load":
      return { type, model: r.string("Load.model") };
    case "Unload":
      return { type, model: r.string("Unload.model"), force: r.bool("Unload.force") };
    case "Rerank":
      return { type, ...readRerankRequest(r) };
  }
}

function writeModelRef(w: Writer, model: ModelRef): void {
  if (model?.type === "Name") {
    w.tag(0);
    w.string(model.value, "ModelRef.Name");
  } else if (model?.type === "Lease") {
    w.tag(1);
    w.u64(model.value, "ModelRef.Lease");
  } else {
    unknownType("ModelRef", model);
  }
}

function readModelRef(r: Reader): ModelRef {
  const type = r.tag(["Name", "Lease"] as const, "ModelRef");
  return type === "Name" ? { type, value: r.string("ModelRef.Name") } : { type, value: r.u64("ModelRef.Lease") };
}

function writeLeaseRequest(w: Writer, lease: LeaseRequest): void {
  w.string(lease.model, "Lease.model");
  w.option(lease.keep_alive_ms, (ms) => w.i64(ms, "Lease.keep_alive_ms"));
}

function readLeaseRequest(r: Reader): LeaseRequest {
  return {
    model: r.string("Lease.model"),
    keep_alive_ms: r.option("Lease.keep_alive_ms", () => r.i64("Lease.keep_alive_ms")),
  };
}

function writeEmbedRequest(w: Writer, embed: EmbedRequest): void {
  writeModelRef(w, embed.model);
  w.seq(embed.texts, "Embed.texts", (text) => w.string(text, "Embed.texts[]"));
  w.bool(embed.normalize, "Embed.normalize");
  w.tag(tagOf(PRIORITIES, embed.priority, "Embed.priority"));
  w.option(embed.deadline_ms, (ms) => w.u64(ms, "Embed.deadline_ms"));
  w.option(embed.prompt, (prompt) => w.string(prompt, "Embed.prompt"));
}

function readEmbedRequest(r: Reader): EmbedRequest {
  return {
    model: readModelRef(r),
    texts: r.seq("Embed.texts", () => r.string("Embed.texts[]")),
    normalize: r.bool("Embed.normalize"),
    priority: r.tag(PRIORITIES, "Embed.priority"),
    deadline_ms: r.option("Embed.deadline_ms", () => r.u64("Embed.deadline_ms")),
    prompt: r.option("Embed.prompt", () => r.string("Embed.prompt")),
  };
}

function writeRerankRequest(w: Writer, rerank: RerankRequest): void {
  writeModelRef(w, rerank.model);
  w.string(rerank.query, "Rerank.query");
  w.seq(rerank.documents, "Rerank.documents", (document) => w.string(document, "Rerank.documents[]"));
  w.option(rerank.top_n, (n) => w.u32(n, "Rerank.top_n"));
  w.tag(tagOf(PRIORITIES, rerank.priority, "Rerank.priority"));
  w.option(rerank.deadline_ms, (ms) => w.u64(ms, "Rerank.deadline_ms"));
}

function readRerankRequest(r: Reader): RerankRequest {
  return {
    model: readModelRef(r),
    query: r.string("Rerank.query"),
    documents: r.seq("Rerank.documents", () => r.string("Rerank.documents[]")),
    top_n: r.option("Rerank.top_n", () => r.u32("Rerank.top_n")),
    priority: r.tag(PRIORITIES, "Rerank.priority"),
    deadline_ms: r.option("Rerank.deadline_ms", () => r.u64("Rerank.deadline_ms")),
  };
}

function writeGenerateRequest(w: Writer, generate: GenerateRequest): void {
  writeModelRef(w, generate.model);
  writePromptInput(w, generate.input);
  writeGenerateParams(w, generate.params);
  w.u32(generate.initial_credit, "Generate.initial_credit");
  w.tag(tagOf(PRIORITIES, generate.priority, "Generate.priority"));
  w.option(generate.deadline_ms, (ms) => w.u64(ms, "Generate.deadline_ms"));
}

function readGenerateRequest(r: Reader): GenerateRequest {
  return {
    model: readModelRef(r),
    input: readPromptInput(r),
    params: readGenerateParams(r),
    initial_credit: r.u32("Generate.initial_credit"),
    priority: r.tag(PRIORITIES, "Generate.priority"),
    deadline_ms: r.option("Generate.deadline_ms", () => r.u64("Generate.deadline_ms")),
  };
}

function writePromptInput(w: Writer, input: PromptInput): void {
  if (input?.type === "Raw") {
    w.tag(0);
    w.string(input.value, "PromptInput.Raw");
  } else if (input?.type === "Chat") {
    w.tag(1);
    w.seq(input.value, "PromptInput.Chat", (message) => writeChatMessage(w, message));
  } else {
    unknownType("PromptInput", input);
  }
}

function readPromptInput(r: Reader): PromptInput {
  const type = r.tag(["Raw", "Chat"] as const, "PromptInput");
  return type === "Raw"
    ? { type, value: r.string("PromptInput.Raw") }
    : { type, value: r.seq("PromptInput.Chat", () => readChatMessage(r)) };
}

function writeChatMessage(w: Writer, message: ChatMessage): void {
  if (message === null || typeof message !== "object") throw new InvalidArgumentError("ChatMessage: expected an object");
  w.string(message.role, "ChatMessage.role");
  w.string(message.content, "ChatMessage.content");
  w.seq(message.tool_calls, "ChatMessage.tool_calls", (call) => writeToolCall(w, call, "ChatMessage.tool_calls[]"));
  w.option(message.tool_call_id, (id) => w.string(id, "ChatMessage.tool_call_id"));
  w.option(message.name, (name) => w.string(name, "ChatMessage.name"));
}

function readChatMessage(r: Reader): ChatMessage {
  return {
    role: r.string("ChatMessage.role"),
    content: r.string("ChatMessage.content"),
    tool_calls: r.seq("ChatMessage.tool_calls", () => readToolCall(r)),
    tool_call_id: r.option("ChatMessage.tool_call_id", () => r.string("ChatMessage.tool_call_id")),
    name: r.option("ChatMessage.name", () => r.string("ChatMessage.name")),
  };
}

function writeToolCall(w: Writer, call: ToolCall, what: string): void {
  if (call === null || typeof call !== "object") throw new InvalidArgumentError(`${what}: expected an object`);
  w.string(call.id, `${what}.id`);
  w.string(call.name, `${what}.name`);
  w.string(call.arguments, `${what}.arguments`);
}

function readToolCall(r: Reader): ToolCall {
  return { id: r.string("ToolCall.id"), name: r.string("ToolCall.name"), arguments: r.string("ToolCall.arguments") };
}

function writeTool(w: Writer, tool: Tool): void {
  if (tool === null || typeof tool !== "object") throw new InvalidArgumentError("tools[]: expected an object");
  w.string(tool.name, "tools[].name");
  w.string(tool.description, "tools[].description");
  w.string(tool.parameters, "tools[].parameters");
}

function readTool(r: Reader): Tool {
  return { name: r.string("Tool.name"), description: r.string("Tool.description"), parameters: r.string("Tool.parameters") };
}

function writeToolChoice(w: Writer, choice: ToolChoice): void {
  if (choice === null || typeof choice !== "object") throw new InvalidArgumentError("ToolChoice: expected an object");
  w.tag(tagOf(TOOL_CHOICE_TYPES, choice.type, "ToolChoice"));
  if (choice.type === "Function") w.string(choice.value, "ToolChoice.Function");
}

function readToolChoice(r: Reader): ToolChoice {
  const type = r.tag(TOOL_CHOICE_TYPES, "ToolChoice");
  return type === "Function" ? { type, value: r.string("ToolChoice.Function") } : { type };
}

function writeGenerateParams(w: Writer, params: GenerateParams): void {
  w.u32(params.max_tokens, "max_tokens");
  w.f32(params.temperature, "temperature");
  w.f32(params.top_p, "top_p");
  w.u32(params.top_k, "top_k");
  w.f32(params.min_p, "min_p");
  w.f32(params.repetition_penalty, "repetition_penalty");
  w.option(params.seed, (seed) => w.u64(seed, "seed"));
  w.seq(params.stop, "stop", (stop) => {
    if (!(stop instanceof Uint8Array)) throw new InvalidArgumentError("stop[]: expected a Uint8Array");
    w.byteString(stop);
  });
  w.option(params.logprobs, (k) => w.u32(k, "logprobs"));
  w.option(params.constraint, (constraint) => writeConstraint(w, constraint));
  w.seq(params.tools, "tools", (tool) => writeTool(w, tool));
  writeToolChoice(w, params.tool_choice);
  w.bool(params.parallel_tool_calls, "parallel_tool_calls");
}

function readGenerateParams(r: Reader): GenerateParams {
  return {
    max_tokens: r.u32("max_tokens"),
    temperature: r.f32("temperature"),
    top_p: r.f32("top_p"),
    top_k: r.u32("top_k"),
    min_p: r.f32("min_p"),
    repetition_penalty: r.f32("repetition_penalty"),
    seed: r.option("seed", () => r.u64("seed")),
    stop: r.seq("stop", () => r.byteString("stop[]")),
    logprobs: r.option("logprobs", () => r.u32("logprobs")),
    constraint: r.option("constraint", () => readConstraint(r)),
    tools: r.seq("tools", () => readTool(r)),
    tool_choice: readToolChoice(r),
    parallel_tool_calls: r.bool("parallel_tool_calls"),
  };
}

function writeConstraint(w: Writer, constraint: Constraint): void {
  if (constraint === null || typeof constraint !== "object") throw new InvalidArgumentError("Constraint: expected an object");
  w.tag(tagOf(CONSTRAINT_TYPES, constraint.type, "Constraint"));
  if (constraint.type !== "JsonObject") w.string(constraint.value, `Constraint.${constraint.type}`);
}

function readConstraint(r: Reader): Constraint {
  const type = r.tag(CONSTRAINT_TYPES, "Constraint");
  return type === "JsonObject" ? { type } : { type, value: r.string(`Constraint.${type}`) };
}

// ---------------------------------------------------------------------------------------
// Daemon → client

function readServerMessage(r: Reader): ServerMessage {
  const type = r.tag(SERVER_MESSAGE_TYPES, "ServerMessage");
  switch (type) {
    case "Welcome":
      return { type, ...readWelcome(r) };
    case "Response":
      return { type, id: r.u64("Response.id"), body: readResponse(r) };
    case "Event":
      return { type, id: r.u64("Event.id"), event: readEvent(r) };
    case "Error":
      return { type, id: r.u64("Error.id"), error: readWireError(r) };
    case "Fatal":
      return { type, ...readWireError(r) };
  }
}

function writeServerMessage(w: Writer, message: ServerMessage): void {
  w.tag(tagOf(SERVER_MESSAGE_TYPES, message.type, "ServerMessage.type"));
  switch (message.type) {
    case "Welcome":
      writeWelcome(w, message);
      return;
    case "Response":
      w.u64(message.id, "Response.id");
      writeResponse(w, message.body);
      return;
    case "Event":
      w.u64(message.id, "Event.id");
      writeEvent(w, message.event);
      return;
    case "Error":
      w.u64(message.id, "Error.id");
      writeWireError(w, message.error);
      return;
    case "Fatal":
      writeWireError(w, message);
      return;
  }
}

function readWelcome(r: Reader): Welcome {
  return {
    protocol_version: r.u32("Welcome.protocol_version"),
    daemon_version: r.string("Welcome.daemon_version"),
    session_id: r.u64("Welcome.session_id"),
    limits: readLimits(r),
  };
}

function writeWelcome(w: Writer, welcome: Welcome): void {
  w.u32(welcome.protocol_version, "protocol_version");
  w.string(welcome.daemon_version, "daemon_version");
  w.u64(welcome.session_id, "session_id");
  const limits = welcome.limits;
  w.u32(limits.max_frame_len, "max_frame_len");
  w.u32(limits.max_texts_per_embed, "max_texts_per_embed");
  w.u32(limits.max_text_bytes, "max_text_bytes");
  w.u32(limits.max_in_flight, "max_in_flight");
  w.u32(limits.max_leases, "max_leases");
  w.u32(limits.max_tokens, "max_tokens");
}

function readLimits(r: Reader): Limits {
  return {
    max_frame_len: r.u32("Limits.max_frame_len"),
    max_texts_per_embed: r.u32("Limits.max_texts_per_embed"),
    max_text_bytes: r.u32("Limits.max_text_bytes"),
    max_in_flight: r.u32("Limits.max_in_flight"),
    max_leases: r.u32("Limits.max_leases"),
    max_tokens: r.u32("Limits.max_tokens"),
  };
}

function readResponse(r: Reader): Response {
  const type = r.tag(RESPONSE_TYPES, "Response");
  switch (type) {
    case "Pong":
    case "Released":
      return { type };
    case "Status":
      return { type, ...readDaemonStatus(r) };
    case "Models":
      return { type, value: r.seq("Models", () => readModelInfo(r)) };
    case "Leased":
      return { type, ...readLeaseInfo(r) };
    case "Embeddings":
      return { type, ...readEmbeddings(r) };
    case "Generated":
      return { type, ...readGenerationSummary(r) };
    case "Tokens":
      return { type, value: r.seq("Tokens", () => r.u32("Tokens[]")) };
    case "Text":
      return { type, value: r.string("Text") };
    case "Loaded":
    case "Unloaded":
      return { type, ...readModelInfo(r) };
    case "Weights":
      return { type, value: r.seq("Weights", () => readMappedWeights(r)) };
    case "Metrics":
      return { type, value: r.string("Metrics") };
    case "Reranked":
      return { type, ...readReranked(r) };
  }
}

function writeResponse(w: Writer, body: Response): void {
  w.tag(tagOf(RESPONSE_TYPES, body.type, "Response.type"));
  switch (body.type) {
    case "Pong":
    case "Released":
      return;
    case "Status":
      writeDaemonStatus(w, body);
      return;
    case "Models":
      w.seq(body.value, "Models", (model) => writeModelInfo(w, model));
      return;
    case "Leased":
      w.u64(body.lease, "Leased.lease");
      writeModelInfo(w, body.model);
      return;
    case "Embeddings":
      writeEmbeddings(w, body);
      return;
    case "Generated":
      writeGenerationSummary(w, body);
      return;
    case "Tokens":
      w.seq(body.value, "Tokens", (token) => w.u32(token, "Tokens[]"));
      return;
    case "Text":
      w.string(body.value, "Text");
      return;
    case "Loaded":
    case "Unloaded":
      writeModelInfo(w, body);
      return;
    case "Weights":
      w.seq(body.value, "Weights", (weights) => writeMappedWeights(w, weights));
      return;
    case "Metrics":
      w.string(body.value, "Metrics");
      return;
    case "Reranked":
      writeReranked(w, body);
      return;
  }
}

function readReranked(r: Reader): Reranked {
  return {
    model: r.string("Reranked.model"),
    results: r.seq("Reranked.results", () => ({
      index: r.u32("RerankResult.index"),
      score: r.f32("RerankResult.score"),
    })),
    prompt_tokens: r.u64("Reranked.prompt_tokens"),
  };
}

function writeReranked(w: Writer, reranked: Reranked): void {
  w.string(reranked.model, "model");
  w.seq(reranked.results, "results", (result) => {
    w.u32(result.index, "results[].index");
    w.f32(result.score, "results[].score");
  });
  w.u64(reranked.prompt_tokens, "prompt_tokens");
}

function readMappedWeights(r: Reader): MappedWeights {
  return {
    path: r.string("MappedWeights.path"),
    bytes: r.u64("MappedWeights.bytes"),
    tensors: r.u32("MappedWeights.tensors"),
    aligned: r.bool("MappedWeights.aligned"),
    models: r.seq("MappedWeights.models", () => r.string("MappedWeights.models[]")),
  };
}

function writeMappedWeights(w: Writer, weights: MappedWeights): void {
  w.string(weights.path, "path");
  w.u64(weights.bytes, "bytes");
  w.u32(weights.tensors, "tensors");
  w.bool(weights.aligned, "aligned");
  w.seq(weights.models, "models", (model) => w.string(model, "models[]"));
}

function readEvent(r: Reader): Event {
  const type = r.tag(EVENT_TYPES, "Event");
  if (type === "Token") {
    return {
      type,
      text: r.string("Token.text"),
      token: r.option("Token.token", () => r.u32("Token.token")),
      logprobs: r.option("Token.logprobs", () => readTokenLogprobs(r)),
    };
  }
  if (type === "ToolCall") return { type, ...readToolCall(r) };
  return { type, ...readLoadProgress(r) };
}

function writeEvent(w: Writer, event: Event): void {
  w.tag(tagOf(EVENT_TYPES, event.type, "Event.type"));
  if (event.type === "Token") {
    w.string(event.text, "Token.text");
    w.option(event.token, (token) => w.u32(token, "Token.token"));
    w.option(event.logprobs, (logprobs) => writeTokenLogprobs(w, logprobs));
  } else if (event.type === "ToolCall") {
    writeToolCall(w, event, "ToolCall");
  } else {
    w.string(event.model, "LoadProgress.model");
    w.tag(tagOf(LOAD_STAGES, event.stage, "LoadProgress.stage"));
    w.u64(event.done, "LoadProgress.done");
    w.u64(event.total, "LoadProgress.total");
  }
}

function readTokenLogprobs(r: Reader): TokenLogprobs {
  return {
    text: r.string("TokenLogprobs.text"),
    logprob: r.f32("TokenLogprobs.logprob"),
    top: r.seq("TokenLogprobs.top", () => ({
      token: r.u32("TopLogprob.token"),
      text: r.string("TopLogprob.text"),
      logprob: r.f32("TopLogprob.logprob"),
    })),
  };
}

function writeTokenLogprobs(w: Writer, logprobs: TokenLogprobs): void {
  if (logprobs === null || typeof logprobs !== "object") throw new InvalidArgumentError("Token.logprobs: expected an object");
  w.string(logprobs.text, "logprobs.text");
  w.f32(logprobs.logprob, "logprobs.logprob");
  w.seq(logprobs.top, "logprobs.top", (top) => {
    w.u32(top.token, "top[].token");
    w.string(top.text, "top[].text");
    w.f32(top.logprob, "top[].logprob");
  });
}

function readLoadProgress(r: Reader): LoadProgress {
  return {
    model: r.string("LoadProgress.model"),
    stage: r.tag(LOAD_STAGES, "LoadProgress.stage"),
    done: r.u64("LoadProgress.done"),
    total: r.u64("LoadProgress.total"),
  };
}

function readEmbeddings(r: Reader): Embeddings {
  return {
    model: r.string("Embeddings.model"),
    count: r.u32("Embeddings.count"),
    dim: r.u32("Embeddings.dim"),
    vectors: r.f32Array("Embeddings.vectors"),
    prompt_tokens: r.u64("Embeddings.prompt_tokens"),
  };
}

function writeEmbeddings(w: Writer, embeddings: Embeddings): void {
  w.string(embeddings.model, "model");
  w.u32(embeddings.count, "count");
  w.u32(embeddings.dim, "dim");
  w.u64(embeddings.vectors.length, "vectors.length");
  for (const value of embeddings.vectors) w.f32(value, "vectors[]");
  w.u64(embeddings.prompt_tokens, "prompt_tokens");
}

function readGenerationSummary(r: Reader): GenerationSummary {
  return {
    finish_reason: r.tag(FINISH_REASONS, "GenerationSummary.finish_reason"),
    prompt_tokens: r.u32("GenerationSummary.prompt_tokens"),
    completion_tokens: r.u32("GenerationSummary.completion_tokens"),
    prompt_tokens_per_s: r.f32("GenerationSummary.prompt_tokens_per_s"),
    generation_tokens_per_s: r.f32("GenerationSummary.generation_tokens_per_s"),
    cached_prompt_tokens: r.u32("GenerationSummary.cached_prompt_tokens"),
  };
}

function writeGenerationSummary(w: Writer, summary: GenerationSummary): void {
  w.tag(tagOf(FINISH_REASONS, summary.finish_reason, "finish_reason"));
  w.u32(summary.prompt_tokens, "prompt_tokens");
  w.u32(summary.completion_tokens, "completion_tokens");
  w.f32(summary.prompt_tokens_per_s, "prompt_tokens_per_s");
  w.f32(summary.generation_tokens_per_s, "generation_tokens_per_s");
  w.u32(summary.cached_prompt_tokens, "cached_prompt_tokens");
}

function readLeaseInfo(r: Reader): LeaseInfo {
  return { lease: r.u64("LeaseInfo.lease"), model: readModelInfo(r) };
}

function readModelInfo(r: Reader): ModelInfo {
  return {
    name: r.string("ModelInfo.name"),
    kind: r.tag(MODEL_KINDS, "ModelInfo.kind"),
    state: r.tag(MODEL_STATES, "ModelInfo.state"),
    source: r.string("ModelInfo.source"),
    leases: r.u32("ModelInfo.leases"),
    in_flight: r.u32("ModelInfo.in_flight"),
    queue_depth: r.u32("ModelInfo.queue_depth"),
    queue_capacity: r.u32("ModelInfo.queue_capacity"),
    resident_bytes: r.u64("ModelInfo.resident_bytes"),
    dim: r.u32("ModelInfo.dim"),
    max_seq_len: r.u32("ModelInfo.max_seq_len"),
    idle_ms: r.option("ModelInfo.idle_ms", () => r.u64("ModelInfo.idle_ms")),
    keep_alive_left_ms: r.option("ModelInfo.keep_alive_left_ms", () => r.u64("ModelInfo.keep_alive_left_ms")),
    backend: r.string("ModelInfo.backend"),
    worker_pid: r.option("ModelInfo.worker_pid", () => r.u32("ModelInfo.worker_pid")),
    last_error: r.option("ModelInfo.last_error", () => r.string("ModelInfo.last_error")),
    sched: readSchedStats(r),
    prompts: r.seq("ModelInfo.prompts", () => r.string("ModelInfo.prompts[]")),
    default_prompt: r.option("ModelInfo.default_prompt", () => r.string("ModelInfo.default_prompt")),
    estimated_bytes: r.u64("ModelInfo.estimated_bytes"),
    tools: r.bool("ModelInfo.tools"),
  };
}

function writeModelInfo(w: Writer, model: ModelInfo): void {
  w.string(model.name, "name");
  w.tag(tagOf(MODEL_KINDS, model.kind, "kind"));
  w.tag(tagOf(MODEL_STATES, model.state, "state"));
  w.string(model.source, "source");
  w.u32(model.leases, "leases");
  w.u32(model.in_flight, "in_flight");
  w.u32(model.queue_depth, "queue_depth");
  w.u32(model.queue_capacity, "queue_capacity");
  w.u64(model.resident_bytes, "resident_bytes");
  w.u32(model.dim, "dim");
  w.u32(model.max_seq_len, "max_seq_len");
  w.option(model.idle_ms, (ms) => w.u64(ms, "idle_ms"));
  w.option(model.keep_alive_left_ms, (ms) => w.u64(ms, "keep_alive_left_ms"));
  w.string(model.backend, "backend");
  w.option(model.worker_pid, (pid) => w.u32(pid, "worker_pid"));
  w.option(model.last_error, (error) => w.string(error, "last_error"));
  writeSchedStats(w, model.sched);
  w.seq(model.prompts, "prompts", (prompt) => w.string(prompt, "prompts[]"));
  w.option(model.default_prompt, (prompt) => w.string(prompt, "default_prompt"));
  w.u64(model.estimated_bytes, "estimated_bytes");
  w.bool(model.tools, "tools");
}

function readSchedStats(r: Reader): SchedStats {
  return {
    queued: r.u32("SchedStats.queued"),
    running: r.u32("SchedStats.running"),
    slots: r.u32("SchedStats.slots"),
    admitted: r.u64("SchedStats.admitted"),
    busy: r.u64("SchedStats.busy"),
    shed: r.u64("SchedStats.shed"),
    timeouts: r.u64("SchedStats.timeouts"),
    single_stream: r.u64("SchedStats.single_stream"),
    batches: r.u64("SchedStats.batches"),
    batched_requests: r.u64("SchedStats.batched_requests"),
    service_us: r.u64("SchedStats.service_us"),
  };
}

function writeSchedStats(w: Writer, sched: SchedStats): void {
  w.u32(sched.queued, "queued");
  w.u32(sched.running, "running");
  w.u32(sched.slots, "slots");
  w.u64(sched.admitted, "admitted");
  w.u64(sched.busy, "busy");
  w.u64(sched.shed, "shed");
  w.u64(sched.timeouts, "timeouts");
  w.u64(sched.single_stream, "single_stream");
  w.u64(sched.batches, "batches");
  w.u64(sched.batched_requests, "batched_requests");
  w.u64(sched.service_us, "service_us");
}

function readDaemonStatus(r: Reader): DaemonStatus {
  return {
    daemon_version: r.string("DaemonStatus.daemon_version"),
    protocol_version: r.u32("DaemonStatus.protocol_version"),
    pid: r.u32("DaemonStatus.pid"),
    uptime_ms: r.u64("DaemonStatus.uptime_ms"),
    endpoint: r.string("DaemonStatus.endpoint"),
    sessions: r.u32("DaemonStatus.sessions"),
    models: r.seq("DaemonStatus.models", () => readModelInfo(r)),
  };
}

function writeDaemonStatus(w: Writer, status: DaemonStatus): void {
  w.string(status.daemon_version, "daemon_version");
  w.u32(status.protocol_version, "protocol_version");
  w.u32(status.pid, "pid");
  w.u64(status.uptime_ms, "uptime_ms");
  w.string(status.endpoint, "endpoint");
  w.u32(status.sessions, "sessions");
  w.seq(status.models, "models", (model) => writeModelInfo(w, model));
}

function readWireError(r: Reader): WireError {
  return {
    code: r.tag(ERROR_CODES, "WireError.code"),
    message: r.string("WireError.message"),
    retry_after_ms: r.option("WireError.retry_after_ms", () => r.u64("WireError.retry_after_ms")),
  };
}

function writeWireError(w: Writer, error: WireError): void {
  w.tag(tagOf(ERROR_CODES, error.code, "code"));
  w.string(error.message, "message");
  w.option(error.retry_after_ms, (ms) => w.u64(ms, "retry_after_ms"));
}
