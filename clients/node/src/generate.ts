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
  U64,
} from "./types.js";

/** Credit kept granted ahead of what the caller has read [default window]. */
export const DEFAULT_WINDOW = 32;
/** The daemon passes larger grants on over time; a window beyond this buys nothing. */
export const MAX_WINDOW = 4096;

/** A raw prompt (used as is) or chat messages (rendered with the model's chat template). */
export type GenerateInput = string | ChatMessage[];

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
  text: string;
  token: number | null;
  /**
   * With `logprobs: k` in the params: the token's log probability and the k most likely
   * tokens at its step, best first; else null (and always null when `token` is null).
   */
  logprobs: TokenLogprobs | null;
}

const utf8 = new TextEncoder();

/** The whole answer of a stream: see {@link Generation.complete}. */
export interface Completion {
  /** The text of every token not read before `complete()`. */
  text: string;
  /** Their token ids (the end-of-stream flush, which has none, left out). */
  tokens: number[];
  /** With `logprobs: k` in the params, each token's log probabilities (one per id in `tokens`); else empty. */
  logprobs: TokenLogprobs[];
  summary: GenerationSummary;
}

/**
 * A running generation: an `AsyncIterable` of {@link Token}s, read once. Credit is granted
 * as tokens are read. `summary` resolves with the final {@link GenerationSummary} (also
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
export class Generation implements AsyncIterable<Token> {
  #summary: Promise<GenerationSummary>;
  #client: Client;
  #id = -1;
  #window: number;
  #grantAt: number;
  #queue: Token[] = [];
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
                this.#queue.push({ text: event.text, token: event.token, logprobs: event.logprobs ?? null });
                if (this.#unbounded) this.#credit(1);
              }
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
      this.#credit(this.#queue.length);
    }
    return this.#summary;
  }

  /** The request id of the stream on its connection (-1 if it was never sent). */
  get requestId(): number {
    return this.#id;
  }

  /** Tokens received and not read yet (at most the window, unless `summary` was read). */
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
   * Reads the rest of the stream: its text, token ids, log probabilities (if asked for)
   * and summary (as Python's `Generation.complete()`). Rejects with the stream's error.
   */
  async complete(): Promise<Completion> {
    let text = "";
    const tokens: number[] = [];
    const logprobs: TokenLogprobs[] = [];
    for await (const token of this) {
      text += token.text;
      if (token.token !== null) tokens.push(token.token);
      if (token.logprobs !== null) logprobs.push(token.logprobs);
    }
    return { text, tokens, logprobs, summary: await this.#summary };
  }

  [Symbol.asyncIterator](): AsyncIterator<Token> {
    return {
      next: () => this.#next(),
      return: async () => {
        if (this.#state === "running") this.cancel();
        this.#stopped = true;
        return { done: true, value: undefined };
      },
    };
  }

  async #next(): Promise<IteratorResult<Token>> {
    for (;;) {
      if (this.#abortPending) {
        this.#abortPending = false;
        throw this.#abortReason;
      }
      if (this.#stopped) return { done: true, value: undefined };
      const token = this.#queue.shift();
      if (token !== undefined) {
        this.#read();
        return { done: false, value: token };
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

  /** Wakes every waiting next(), in call order; each takes a token or waits again. */
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
  if (Array.isArray(input)) return { type: "Chat", value: input };
  throw new InvalidArgumentError("generate: the prompt must be a string or an array of chat messages");
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
