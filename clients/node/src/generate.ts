/**
 * Generation streams: tokens arrive as the daemon produces them, and credit is granted as
 * the caller reads them, so a reader that stops also stops its stream (and only its
 * stream) at the daemon. At most one window of tokens is ever buffered here.
 *
 * @module
 */

import type { Client } from "./client.js";
import { InvalidArgumentError, ProtocolError } from "./errors.js";
import type {
  ChatMessage,
  Constraint,
  GenerateParams,
  GenerationSummary,
  LoadProgress,
  ModelRef,
  Priority,
  PromptInput,
  Response,
  TokenLogprobs,
  Tool,
  ToolCall,
  ToolChoice,
  U64,
} from "./types.js";

/** Credit kept granted ahead of what the caller has read [default window]. */
export const DEFAULT_WINDOW = 32;
/** The daemon passes larger grants on over time; a window beyond this buys nothing. */
export const MAX_WINDOW = 4096;

/** A raw prompt (used as is) or chat messages (rendered with the model's chat template). */
export type GenerateInput = string | ChatMessageInput[];

/**
 * A chat message. `role` goes to the model's chat template as is: "system", "user",
 * "assistant", or "tool" for a tool's answer. OpenAI's spellings `tool_calls` and
 * `tool_call_id` are taken too (one spelling per message).
 */
export interface ChatMessageInput {
  role: string;
  /** The text; an assistant message with `toolCalls` may leave it out (or null): "". */
  content?: string | null;
  /** An assistant message's tool calls, sent back as the model made them (since v7). */
  toolCalls?: ToolCallInput[];
  tool_calls?: ToolCallInput[];
  /** A "tool" message: the id of the call it answers (since v7). */
  toolCallId?: string | null;
  tool_call_id?: string | null;
  /** A "tool" message: the name of the function that answered (since v7). */
  name?: string | null;
}

/**
 * A tool call in a message (since v7): as {@link Completion.toolCalls} gives it (or the
 * stream's {@link ToolCallItem}, as is), or in OpenAI's shape. `arguments` is a JSON object's text (sent as is) or an object (sent as
 * `JSON.stringify` writes it).
 */
export type ToolCallInput =
  | { id: string; name: string; arguments: string | object }
  | { id: string; type?: "function"; function: { name: string; arguments: string | object } };

/**
 * A function the model may call (since v7): `parameters` is the JSON schema of its
 * arguments (an object schema), an object (sent as `JSON.stringify` writes it) or its JSON
 * text (sent as is). OpenAI's `{ type: "function", function: { ... } }` is taken too.
 */
export type ToolInput =
  | { name: string; description?: string; parameters: object | string }
  | { type?: "function"; function: { name: string; description?: string; parameters: object | string } };

/**
 * Whether the model may call a tool [default: "auto", the model decides]: "none" (the
 * tools are not shown to it), "required" (at least one call; one unless
 * `parallelToolCalls`) or `{ function: name }` (a call of that function). "required" and a
 * function are enforced with a constraint, so the arguments are valid against the schema.
 * OpenAI's `{ type: "function", function: { name } }` is taken too.
 */
export type ToolChoiceInput =
  | "auto"
  | "none"
  | "required"
  | { function: string }
  | { type?: "function"; function: { name: string } };

/** Sampling parameters; omitted ones take the protocol's defaults (those of the Rust client). */
export interface GenerateParamsInput {
  /** 1..=limits.max_tokens [default: 256]. */
  max_tokens?: number;
  /** 0 = greedy [default: 0.7]. */
  temperature?: number;
  /** (0, 1] [default: 1]. */
  top_p?: number;
  /** 0 = off [default: 0]. */
  top_k?: number;
  /** [0, 1], 0 = off [default: 0]. */
  min_p?: number;
  /** > 0, 1 = off [default: 1]. */
  repetition_penalty?: number;
  /** Makes sampling repeatable. */
  seed?: U64 | null;
  /** Up to 16 stop strings (text or UTF-8 bytes); the stop string itself is not sent. */
  stop?: Array<string | Uint8Array>;
  /**
   * Each token's log probability and the `logprobs` most likely alternatives, 0..=20
   * (more: `BadRequestError`); see {@link Token.logprobs} [default: null, none, no cost].
   */
  logprobs?: number | null;
  /**
   * What the output must be (structured output), enforced token by token: see
   * {@link ConstraintInput} [default: null, free text].
   */
  constraint?: ConstraintInput | null;
  /**
   * Functions the model may call (chat input only, at most 128): its calls come as
   * {@link ToolCallItem}s in the stream and in {@link Completion.toolCalls}, and a stream
   * that made calls ends "ToolCalls" [default: none]. Not with a `constraint`.
   */
  tools?: ToolInput[];
  /** See {@link ToolChoiceInput} [default: "auto"]; also spelt `tool_choice`. */
  toolChoice?: ToolChoiceInput | null;
  tool_choice?: ToolChoiceInput | null;
  /** With "required", whether more than one call may be made [default: true]; also spelt `parallel_tool_calls`. */
  parallelToolCalls?: boolean | null;
  parallel_tool_calls?: boolean | null;
}

/**
 * A constraint on a generation's output (protocol v6), one key of:
 * - `jsonSchema`: one JSON value valid against this JSON schema — an object (sent as
 *   `JSON.stringify` writes it) or the schema's JSON text (sent as is);
 * - `jsonObject: true`: any JSON object;
 * - `regex`: text the regular expression matches as a whole;
 * - `lark`: text a Lark grammar derives from its `start` rule.
 *
 * The stream ends "Stop" once the output is complete, "Length" if `max_tokens` comes first.
 * A constraint the daemon cannot compile is a `BadRequestError` naming the problem.
 */
export type ConstraintInput =
  | { jsonSchema: object | string }
  | { jsonObject: true }
  | { regex: string }
  | { lark: string };

export const DEFAULT_PARAMS: Readonly<Omit<GenerateParams, "stop">> = Object.freeze({
  max_tokens: 256,
  temperature: 0.7,
  top_p: 1,
  top_k: 0,
  min_p: 0,
  repetition_penalty: 1,
  seed: null,
  logprobs: null,
  constraint: null,
  tools: Object.freeze([]) as readonly Tool[] as Tool[],
  tool_choice: Object.freeze({ type: "Auto" }) as ToolChoice,
  parallel_tool_calls: true,
});

export interface GenerateOptions {
  /** Aborting cancels the stream at the daemon; reading it then throws the signal's reason. */
  signal?: AbortSignal;
  /** Tokens granted ahead of reading, 1..=4096 [default: 32]. */
  window?: number;
  /** [default: "Interactive"] */
  priority?: Priority;
  /** Refused with `RequestTimeoutError` if still queued this long after arrival. */
  deadlineMs?: U64;
  /** Load progress, when generating by name with a model that is not loaded yet. */
  onProgress?: (progress: LoadProgress) => void;
}

/** One piece of generated text. `token` is null for text flushed at the end of the stream. */
export interface Token {
  type: "token";
  /** Empty for the tokens that spell a tool call (the call follows them as a {@link ToolCallItem}). */
  text: string;
  token: number | null;
  /**
   * With `logprobs: k` in the params: the token's log probability and the k most likely
   * tokens at its step, best first; else null (and always null when `token` is null).
   */
  logprobs: TokenLogprobs | null;
}

/**
 * A call the model made of one of the request's tools (since v7), in the stream right after
 * the token that completed it. `arguments` is a JSON object's text. Costs no credit.
 */
export interface ToolCallItem extends ToolCall {
  type: "toolCall";
}

/** What a {@link Generation} yields: tokens and, with tools, tool calls, in order. */
export type GenerationItem = Token | ToolCallItem;

const utf8 = new TextEncoder();

/** The whole answer of a stream: see {@link Generation.complete}. */
export interface Completion {
  /** The text of every token not read before `complete()`. */
  text: string;
  /** Their token ids (the end-of-stream flush, which has none, left out). */
  tokens: number[];
  /** With `logprobs: k` in the params, each token's log probabilities (one per id in `tokens`); else empty. */
  logprobs: TokenLogprobs[];
  /** The tool calls among them, in order (`{ id, name, arguments }`); send them back in the assistant message. */
  toolCalls: ToolCall[];
  summary: GenerationSummary;
}

/**
 * A running generation: an `AsyncIterable` of {@link Token}s (and, with tools,
 * {@link ToolCallItem}s, told apart by `type`), read once. Credit is granted as tokens are
 * read (tool calls cost none). `summary` resolves with the final {@link GenerationSummary} (also
 * after a cancel: `finish_reason` "Cancelled") or rejects with the stream's error.
 *
 * Reading `summary` lets the stream run to its end even if nobody reads the tokens: from
 * then on credit is granted as tokens arrive, and they are buffered here (at most the
 * request's `max_tokens`) for whoever iterates later. `complete()` and `text()` read the
 * whole stream.
 *
 * Concurrent `next()` calls are served in call order, each with the next token.
 *
 * Breaking out of a `for await` loop cancels the stream; so does `cancel()` (the loop then
 * ends) and the `signal` (the loop then throws the signal's reason).
 */
export class Generation implements AsyncIterable<GenerationItem> {
  #summary: Promise<GenerationSummary>;
  #client: Client;
  #id = -1;
  #window: number;
  #grantAt: number;
  #queue: GenerationItem[] = [];
  #readSinceGrant = 0;
  /** Credit follows arrival rather than reading (set once `summary` is read). */
  #unbounded = false;
  #state: "running" | "done" | "failed" = "running";
  #error: unknown;
  #errorThrown = false;
  /** cancel(), return() or an abort: the caller wants no more tokens. */
  #stopped = false;
  #abortReason: unknown;
  #abortPending = false;
  /** Callers of next() waiting for a token or the end, in call order. */
  #waiters: Array<() => void> = [];
  #resolveSummary!: (summary: GenerationSummary) => void;
  #rejectSummary!: (error: unknown) => void;
  #signal: AbortSignal | undefined;
  #onAbort = () => this.#abort();

  /** Started by `client.generate()`, `client.chat()` or a lease's; not meant to be called directly. */
  constructor(client: Client, model: ModelRef, input: GenerateInput, params: GenerateParamsInput, options: GenerateOptions) {
    this.#client = client;
    this.#summary = new Promise<GenerationSummary>((resolve, reject) => {
      this.#resolveSummary = resolve;
      this.#rejectSummary = reject;
    });
    // Nobody has to await the summary: its rejection is also thrown by the iteration.
    this.#summary.catch(() => {});
    this.#window = options.window ?? DEFAULT_WINDOW;
    this.#grantAt = Math.max(1, Math.floor(this.#window / 2));
    this.#signal = options.signal;
    try {
      if (!Number.isInteger(this.#window) || this.#window < 1 || this.#window > MAX_WINDOW) {
        throw new InvalidArgumentError(`window must be an integer in 1..=${MAX_WINDOW}, got ${this.#window}`);
      }
      if (this.#signal?.aborted) {
        this.#fail(this.#signal.reason);
        return;
      }
      this.#id = client._open(
        {
          type: "Generate",
          model,
          input: promptInput(input),
          params: generateParams(params),
          initial_credit: this.#window,
          priority: options.priority ?? "Interactive",
          deadline_ms: options.deadlineMs ?? null,
        },
        {
          event: (event) => {
            if (event.type === "Token") {
              if (!this.#stopped) {
                this.#queue.push({ type: "token", text: event.text, token: event.token, logprobs: event.logprobs ?? null });
                if (this.#unbounded) this.#credit(1);
              }
              this.#notify();
            } else if (event.type === "ToolCall") {
              // No credit: the daemon sends a call without spending any.
              if (!this.#stopped) this.#queue.push({ type: "toolCall", id: event.id, name: event.name, arguments: event.arguments });
              this.#notify();
            } else {
              const { type: _, ...progress } = event;
              options.onProgress?.(progress);
            }
          },
          done: (response) => this.#done(response),
          fail: (error) => this.#fail(error),
        },
      );
      this.#signal?.addEventListener("abort", this.#onAbort, { once: true });
    } catch (err) {
      this.#fail(err);
    }
  }

  /**
   * Resolves when the daemon ends the stream, with its {@link GenerationSummary}; rejects
   * with the stream's error. Reading it lets the stream finish without a reader: credit is
   * then granted as tokens arrive, and unread tokens stay buffered for a later iteration.
   */
  get summary(): Promise<GenerationSummary> {
    if (!this.#unbounded && this.#state === "running" && !this.#stopped) {
      this.#unbounded = true;
      // Tokens received but not read yet: grant their credit now.
      this.#credit(this.#queue.filter((item) => item.type === "token").length);
    }
    return this.#summary;
  }

  /** The request id of the stream on its connection (-1 if it was never sent). */
  get requestId(): number {
    return this.#id;
  }

  /** Tokens (and tool calls) received and not read yet (tokens: at most the window, unless `summary` was read). */
  get buffered(): number {
    return this.#queue.length;
  }

  /** Whether the daemon has ended the stream. */
  get finished(): boolean {
    return this.#state !== "running";
  }

  /** Stops the stream at the daemon; iteration ends, `summary` says "Cancelled". */
  cancel(): void {
    this.#stopped = true;
    this.#queue.length = 0;
    if (this.#state === "running" && this.#id >= 0) this.#client._control({ type: "Cancel", id: this.#id });
    this.#notify();
  }

  /** Reads the rest of the stream and returns its text. */
  async text(): Promise<string> {
    return (await this.complete()).text;
  }

  /**
   * Reads the rest of the stream: its text, token ids, log probabilities (if asked for),
   * tool calls and summary (as Python's `Generation.complete()`). Rejects with the
   * stream's error.
   */
  async complete(): Promise<Completion> {
    let text = "";
    const tokens: number[] = [];
    const logprobs: TokenLogprobs[] = [];
    const toolCalls: ToolCall[] = [];
    for await (const item of this) {
      if (item.type === "toolCall") {
        toolCalls.push({ id: item.id, name: item.name, arguments: item.arguments });
        continue;
      }
      text += item.text;
      if (item.token !== null) tokens.push(item.token);
      if (item.logprobs !== null) logprobs.push(item.logprobs);
    }
    return { text, tokens, logprobs, toolCalls, summary: await this.#summary };
  }

  [Symbol.asyncIterator](): AsyncIterator<GenerationItem> {
    return {
      next: () => this.#next(),
      return: async () => {
        if (this.#state === "running") this.cancel();
        this.#stopped = true;
        return { done: true, value: undefined };
      },
    };
  }

  async #next(): Promise<IteratorResult<GenerationItem>> {
    for (;;) {
      if (this.#abortPending) {
        this.#abortPending = false;
        throw this.#abortReason;
      }
      if (this.#stopped) return { done: true, value: undefined };
      const item = this.#queue.shift();
      if (item !== undefined) {
        if (item.type === "token") this.#read();
        return { done: false, value: item };
      }
      if (this.#state === "done") return { done: true, value: undefined };
      if (this.#state === "failed") {
        if (this.#errorThrown) return { done: true, value: undefined };
        this.#errorThrown = true;
        throw this.#error;
      }
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
  }

  /** A token was read: top the window up once half of it has been read. */
  #read(): void {
    // Once unbounded, credit was granted when the token arrived.
    if (!this.#unbounded) this.#credit(1);
  }

  /** `events` more tokens are owed credit: grant them once they make half a window. */
  #credit(events: number): void {
    this.#readSinceGrant += events;
    if (this.#state === "running" && this.#readSinceGrant > 0 && this.#readSinceGrant >= this.#grantAt) {
      this.#client._control({ type: "Credit", id: this.#id, events: this.#readSinceGrant });
      this.#readSinceGrant = 0;
    }
  }

  #abort(): void {
    if (this.#state !== "running" || this.#stopped) return;
    this.#abortReason = this.#signal?.reason;
    this.#abortPending = true;
    this.cancel();
  }

  /** Wakes every waiting next(), in call order; each takes an item or waits again. */
  #notify(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) wake();
  }

  #done(response: Response): void {
    if (response.type !== "Generated") {
      this.#fail(new ProtocolError(`expected Generated from the daemon, got ${response.type}`));
      return;
    }
    const { type: _, ...summary } = response;
    this.#state = "done";
    this.#signal?.removeEventListener("abort", this.#onAbort);
    this.#resolveSummary(summary);
    this.#notify();
  }

  #fail(error: unknown): void {
    this.#state = "failed";
    this.#error = error;
    this.#signal?.removeEventListener("abort", this.#onAbort);
    this.#rejectSummary(error);
    this.#notify();
  }
}

function promptInput(input: GenerateInput): PromptInput {
  if (typeof input === "string") return { type: "Raw", value: input };
  if (Array.isArray(input)) return { type: "Chat", value: input.map((message, i) => chatMessageOf(message, `messages[${i}]`)) };
  throw new InvalidArgumentError("generate: the prompt must be a string or an array of chat messages");
}

/** A field spelt the client's way (camelCase) or the protocol's and OpenAI's (snake_case), not both. */
function either<T>(object: object, camel: string, snake: string, where: string): T | undefined {
  const fields = object as Record<string, unknown>;
  const [a, b] = [fields[camel], fields[snake]];
  if (a !== undefined && b !== undefined) throw new InvalidArgumentError(`generate: ${where} has both ${camel} and ${snake}`);
  return (a ?? b) as T | undefined;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** `value` as JSON text: a string as is, an object as `JSON.stringify` writes it. */
function jsonText(value: unknown, where: string, expected: string): string {
  if (typeof value === "string") return value;
  if (isObject(value)) {
    try {
      return JSON.stringify(value);
    } catch (error) {
      throw new InvalidArgumentError(`generate: ${where} cannot be written as JSON: ${String(error)}`);
    }
  }
  throw new InvalidArgumentError(`generate: ${where} must be ${expected}`);
}

function optionalString(value: unknown, where: string): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== "string") throw new InvalidArgumentError(`generate: ${where} must be a string`);
  return value;
}

/** The wire `ChatMessage` of a {@link ChatMessageInput}, checked. */
function chatMessageOf(input: ChatMessageInput, where: string): ChatMessage {
  if (!isObject(input)) throw new InvalidArgumentError(`generate: ${where} must be an object`);
  if (typeof input.role !== "string") throw new InvalidArgumentError(`generate: ${where}.role must be a string`);
  const calls = either<unknown>(input, "toolCalls", "tool_calls", where) ?? [];
  if (!Array.isArray(calls)) throw new InvalidArgumentError(`generate: ${where}.toolCalls must be an array`);
  const tool_calls = calls.map((call, i) => toolCallOf(call, `${where}.toolCalls[${i}]`));
  let content = input.content;
  if ((content === undefined || content === null) && tool_calls.length > 0) content = "";
  if (typeof content !== "string") throw new InvalidArgumentError(`generate: ${where}.content must be a string`);
  return {
    role: input.role,
    content,
    tool_calls,
    tool_call_id: optionalString(either(input, "toolCallId", "tool_call_id", where), `${where}.toolCallId`),
    name: optionalString(input.name, `${where}.name`),
  };
}

/** A {@link ToolCallInput}, flat or OpenAI's, as the wire `ToolCall`. */
function toolCallOf(input: unknown, where: string): ToolCall {
  if (!isObject(input)) throw new InvalidArgumentError(`generate: ${where} must be an object`);
  const call = functionOf(input, where);
  if (typeof input.id !== "string") throw new InvalidArgumentError(`generate: ${where}.id must be a string`);
  if (typeof call.name !== "string") throw new InvalidArgumentError(`generate: ${where}.name must be a string`);
  return { id: input.id, name: call.name, arguments: jsonText(call.arguments, `${where}.arguments`, "a JSON object or its text") };
}

/**
 * The function of OpenAI's `{ type: "function", function }`, or the object itself (whose
 * `type`, as a streamed call's "toolCall", is then not looked at).
 */
function functionOf(input: Record<string, unknown>, where: string): Record<string, unknown> {
  if (input.function === undefined) return input;
  if (input.type !== undefined && input.type !== "function") {
    throw new InvalidArgumentError(`generate: ${where}.type must be "function", not ${JSON.stringify(input.type)}`);
  }
  if (!isObject(input.function)) throw new InvalidArgumentError(`generate: ${where}.function must be an object`);
  return input.function;
}

/** The wire `Tool` of a {@link ToolInput}, checked. */
function toolOf(input: unknown, where: string): Tool {
  if (!isObject(input)) throw new InvalidArgumentError(`generate: ${where} must be an object`);
  const tool = functionOf(input, where);
  if (typeof tool.name !== "string") throw new InvalidArgumentError(`generate: ${where}.name must be a string`);
  const description = optionalString(tool.description, `${where}.description`) ?? "";
  const parameters = jsonText(tool.parameters, `${where}.parameters`, "a JSON schema (an object or its JSON text)");
  return { name: tool.name, description, parameters };
}

const TOOL_CHOICES: Readonly<Record<string, ToolChoice>> = {
  auto: { type: "Auto" },
  none: { type: "None" },
  required: { type: "Required" },
};

/** The wire `ToolChoice` of a {@link ToolChoiceInput}, checked. */
function toolChoiceOf(input: unknown): ToolChoice {
  if (input === undefined || input === null) return { type: "Auto" };
  if (typeof input === "string" && Object.hasOwn(TOOL_CHOICES, input)) return { ...TOOL_CHOICES[input] };
  if (isObject(input) && (input.type === undefined || input.type === "function")) {
    const name = isObject(input.function) ? input.function.name : input.function;
    if (typeof name === "string") return { type: "Function", value: name };
  }
  const got = typeof input === "string" ? JSON.stringify(input) : isObject(input) ? `{ ${Object.keys(input).join(", ")} }` : String(input);
  throw new InvalidArgumentError(`generate: toolChoice is "auto", "none", "required" or { function: name }, not ${got}`);
}

function generateParams(params: GenerateParamsInput): GenerateParams {
  if (params === null || typeof params !== "object") throw new InvalidArgumentError("generate: params must be an object");
  const stop = (params.stop ?? []).map((s) => {
    if (typeof s === "string") return utf8.encode(s);
    if (s instanceof Uint8Array) return s;
    throw new InvalidArgumentError("generate: each stop string must be a string or a Uint8Array");
  });
  return {
    max_tokens: params.max_tokens ?? DEFAULT_PARAMS.max_tokens,
    temperature: params.temperature ?? DEFAULT_PARAMS.temperature,
    top_p: params.top_p ?? DEFAULT_PARAMS.top_p,
    top_k: params.top_k ?? DEFAULT_PARAMS.top_k,
    min_p: params.min_p ?? DEFAULT_PARAMS.min_p,
    repetition_penalty: params.repetition_penalty ?? DEFAULT_PARAMS.repetition_penalty,
    seed: params.seed ?? null,
    stop,
    logprobs: params.logprobs ?? null,
    constraint: constraintOf(params.constraint),
    ...toolParams(params),
  };
}

/** `tools`, `tool_choice` and `parallel_tool_calls`, checked. */
function toolParams(params: GenerateParamsInput): Pick<GenerateParams, "tools" | "tool_choice" | "parallel_tool_calls"> {
  const tools = params.tools ?? [];
  if (!Array.isArray(tools)) throw new InvalidArgumentError("generate: tools must be an array");
  const parallel = either<unknown>(params, "parallelToolCalls", "parallel_tool_calls", "params") ?? DEFAULT_PARAMS.parallel_tool_calls;
  if (typeof parallel !== "boolean") throw new InvalidArgumentError("generate: parallelToolCalls must be a boolean");
  return {
    tools: tools.map((tool, i) => toolOf(tool, `tools[${i}]`)),
    tool_choice: toolChoiceOf(either(params, "toolChoice", "tool_choice", "params")),
    parallel_tool_calls: parallel,
  };
}

const CONSTRAINT_KEYS: readonly string[] = ["jsonSchema", "jsonObject", "regex", "lark"];

/** The wire `Constraint` of a {@link ConstraintInput}, checked: one key, of the right type. */
function constraintOf(input: ConstraintInput | null | undefined): Constraint | null {
  if (input === null || input === undefined) return null;
  const fields: Record<string, unknown> = typeof input === "object" ? { ...input } : {};
  const keys = Object.keys(fields).filter((key) => fields[key] !== undefined);
  const [key] = keys;
  if (keys.length !== 1 || !CONSTRAINT_KEYS.includes(key)) {
    const got = typeof input === "object" ? `{ ${keys.join(", ")} }` : JSON.stringify(input);
    throw new InvalidArgumentError(`generate: a constraint has exactly one of ${CONSTRAINT_KEYS.join(", ")}, not ${got}`);
  }
  const value = fields[key];
  if (key === "jsonObject") {
    if (value !== true) throw new InvalidArgumentError("generate: constraint.jsonObject must be true");
    return { type: "JsonObject" };
  }
  if (key === "jsonSchema" && value !== null && typeof value === "object") {
    try {
      return { type: "JsonSchema", value: JSON.stringify(value) };
    } catch (error) {
      throw new InvalidArgumentError(`generate: constraint.jsonSchema cannot be written as JSON: ${String(error)}`);
    }
  }
  if (typeof value !== "string") {
    const expected = key === "jsonSchema" ? "an object or its JSON text" : "a string";
    throw new InvalidArgumentError(`generate: constraint.${key} must be ${expected}`);
  }
  return { type: key === "jsonSchema" ? "JsonSchema" : key === "regex" ? "Regex" : "Lark", value };
}
