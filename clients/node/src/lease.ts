/**
 * Leases: a model kept loaded for this session, valid only on the connection that took
 * it. `close()` (or `await using`) releases it; the daemon also releases every lease of a
 * session when the connection ends, however it ends (the process exiting included).
 *
 * @module
 */

import type { Client, RequestOptions } from "./client.js";
import { expectType } from "./client.js";
import { ConnectionClosedError } from "./errors.js";
import { Generation, type ChatMessageInput, type GenerateInput, type GenerateOptions, type GenerateParamsInput } from "./generate.js";
import * as requests from "./requests.js";
import type { LoadProgress, ModelInfo, ModelRef, Reranked, U64 } from "./types.js";

export interface LeaseOptions {
  /** Load progress while the model loads. */
  onProgress?: (progress: LoadProgress) => void;
  /**
   * How long the model stays loaded after the lease ends (an operator action: others get
   * `UnauthorizedError`): 0 = unload when idle, < 0 = never by keep-alive [default: the model's].
   */
  keepAliveMs?: number | bigint;
  signal?: AbortSignal;
}

export class Lease {
  /** The lease handle (meaningful on this connection only). */
  readonly id: U64;
  /** The model as it was when the lease was granted. */
  readonly info: ModelInfo;
  readonly client: Client;
  #ref: ModelRef;
  #closing: Promise<void> | undefined;

  /** Made by `client.lease(model)`; not meant to be called directly. */
  constructor(client: Client, id: U64, info: ModelInfo) {
    this.client = client;
    this.id = id;
    this.info = info;
    this.#ref = { type: "Lease", value: id };
  }

  /** The model's name. */
  get model(): string {
    return this.info.name;
  }

  /** Whether `close()` has been called. */
  get closed(): boolean {
    return this.#closing !== undefined;
  }

  /** Embeds `texts`: one vector per text (L2-normalised unless `normalize: false`; `prompt`: a named prompt of the model). */
  embed(texts: string[], options: requests.EmbedOptions = {}): Promise<Float32Array[]> {
    return requests.embed(this.client, this.#ref, texts, options);
  }

  /** Like {@link Lease.embed}, with the whole answer (`rows`, row-major `vectors`, `prompt_tokens`). */
  embedDetailed(texts: string[], options: requests.EmbedOptions = {}): Promise<requests.EmbedResult> {
    return requests.embedDetailed(this.client, this.#ref, texts, options);
  }

  /** Scores `documents` against `query` (a reranking model): results best first, at most `topN`. */
  rerank(query: string, documents: string[], options: requests.RerankOptions = {}): Promise<Reranked> {
    return requests.rerank(this.client, this.#ref, query, documents, options);
  }

  /** Generates from a raw prompt (a string) or chat messages. */
  generate(input: GenerateInput, params: GenerateParamsInput = {}, options: GenerateOptions = {}): Generation {
    return new Generation(this.client, this.#ref, input, params, options);
  }

  /** Generates an answer to `messages`, rendered with the model's chat template. */
  chat(messages: ChatMessageInput[], params: GenerateParamsInput = {}, options: GenerateOptions = {}): Generation {
    return this.generate(messages, params, options);
  }

  tokenize(text: string, options: requests.TokenizeOptions = {}): Promise<number[]> {
    return requests.tokenize(this.client, this.#ref, text, options);
  }

  detokenize(tokens: number[], options: RequestOptions = {}): Promise<string> {
    return requests.detokenize(this.client, this.#ref, tokens, options);
  }

  /**
   * Releases the lease and waits for the daemon to confirm. Idempotent. On a closed
   * connection it resolves at once: the daemon released the lease with the session.
   */
  close(): Promise<void> {
    if (!this.#closing) {
      this.client._forgetLease(this);
      this.#closing = this.client
        .request({ type: "Release", lease: this.id })
        .then((response) => void expectType(response, "Released"))
        .catch((err: unknown) => {
          // However the session ended (close(), EOF, a Fatal), the lease ended with it.
          if (!(err instanceof ConnectionClosedError) && !this.client.closed) throw err;
        });
    }
    return this.#closing;
  }
}

const asyncDispose = (Symbol as { asyncDispose?: symbol }).asyncDispose;
if (asyncDispose) {
  Object.defineProperty(Lease.prototype, asyncDispose, {
    value: function (this: Lease) {
      return this.close();
    },
    writable: true,
    configurable: true,
  });
}
export interface Lease {
  /** `await using lease = await client.lease("minilm")` releases it at the end of the scope. */
  [Symbol.asyncDispose](): Promise<void>;
}
