/**
 * Request families shared by {@link Client} (a model by name) and {@link Lease} (a model
 * by lease): the typed front of `client.request` (embed, rerank, tokenize, detokenize).
 *
 * @module
 */

import type { Client, RequestOptions } from "./client.js";
import { expectType } from "./client.js";
import { InvalidArgumentError, ProtocolError } from "./errors.js";
import type { Embeddings, ModelRef, Priority, Reranked, U64 } from "./types.js";

export interface EmbedOptions {
  /** L2-normalise each vector (what sentence-transformers does for MiniLM) [default: true]. */
  normalize?: boolean;
  /** [default: "Interactive"] */
  priority?: Priority;
  /** Refused with `RequestTimeoutError` if still queued this long after arrival. */
  deadlineMs?: U64;
  /**
   * Which of the model's named prompts (`ModelInfo.prompts`, e.g. "query", "document")
   * goes before each text: "" = none; a name the model lacks is a `BadRequestError`
   * [default: the model's `default_prompt`, none if it has none].
   */
  prompt?: string | null;
  signal?: AbortSignal;
  /** Retry `Busy` per the client's policy [default: true]. */
  retry?: boolean;
}

export interface RerankOptions {
  /** Only the best `topN` results [default: every document]. */
  topN?: number | null;
  /** [default: "Interactive"] */
  priority?: Priority;
  /** Refused with `RequestTimeoutError` if still queued this long after arrival. */
  deadlineMs?: U64;
  signal?: AbortSignal;
  /** Retry `Busy` per the client's policy [default: true]. */
  retry?: boolean;
}

/** An `Embeddings` answer with its vectors also split into rows (views, not copies). */
export interface EmbedResult extends Embeddings {
  rows: Float32Array[];
}

export interface TokenizeOptions extends RequestOptions {
  /** Add the tokenizer's special tokens (BOS, [CLS], ...) [default: true]. */
  addSpecialTokens?: boolean;
}

export async function embedDetailed(
  client: Client,
  model: ModelRef,
  texts: string[],
  options: EmbedOptions,
): Promise<EmbedResult> {
  if (!Array.isArray(texts)) throw new InvalidArgumentError("embed: texts must be an array of strings");
  const response = await client.request(
    {
      type: "Embed",
      model,
      texts,
      normalize: options.normalize ?? true,
      priority: options.priority ?? "Interactive",
      deadline_ms: options.deadlineMs ?? null,
      prompt: options.prompt ?? null,
    },
    { signal: options.signal, retry: options.retry },
  );
  const { type: _, ...embeddings } = expectType(response, "Embeddings");
  const { count, dim, vectors } = embeddings;
  if (vectors.length !== count * dim) {
    throw new ProtocolError(`the daemon sent ${vectors.length} floats for ${count} vectors of ${dim}`);
  }
  const rows: Float32Array[] = [];
  for (let i = 0; i < count; i++) rows.push(vectors.subarray(i * dim, (i + 1) * dim));
  return { ...embeddings, rows };
}

export async function embed(client: Client, model: ModelRef, texts: string[], options: EmbedOptions): Promise<Float32Array[]> {
  return (await embedDetailed(client, model, texts, options)).rows;
}

/** Scores `documents` against `query`: results best first, each an index into `documents` and a score in [0, 1]. */
export async function rerank(
  client: Client,
  model: ModelRef,
  query: string,
  documents: string[],
  options: RerankOptions,
): Promise<Reranked> {
  if (!Array.isArray(documents)) throw new InvalidArgumentError("rerank: documents must be an array of strings");
  const response = await client.request(
    {
      type: "Rerank",
      model,
      query,
      documents,
      top_n: options.topN ?? null,
      priority: options.priority ?? "Interactive",
      deadline_ms: options.deadlineMs ?? null,
    },
    { signal: options.signal, retry: options.retry },
  );
  const { type: _, ...reranked } = expectType(response, "Reranked");
  return reranked;
}

export async function tokenize(client: Client, model: ModelRef, text: string, options: TokenizeOptions): Promise<number[]> {
  const response = await client.request(
    { type: "Tokenize", model, text, add_special_tokens: options.addSpecialTokens ?? true },
    options,
  );
  return expectType(response, "Tokens").value;
}

export async function detokenize(client: Client, model: ModelRef, tokens: number[], options: RequestOptions): Promise<string> {
  const response = await client.request({ type: "Detokenize", model, tokens }, options);
  return expectType(response, "Text").value;
}
