/**
 * mlxd-client: the Node client of mlxd (protocol v7, `proto/PROTOCOL.md`).
 *
 * # Layout
 *
 * - `types.ts` — the wire types, one per message of the protocol.
 * - `wire.ts` — bincode primitives: a strict `Reader`, a `Writer`.
 * - `codec.ts` — encode/decode of every message (both directions, for the conformance tests).
 * - `frame.ts` — length-prefixed frames; the length is checked before a body is buffered.
 * - `paths.ts` — where the socket is, and whether to trust who made it.
 * - `transport.ts` — a Unix socket, or a private `mlxd stdio` child.
 * - `client.ts` — `connect()`, the handshake, request routing, Busy retries, typed requests.
 * - `requests.ts` — embed / rerank / tokenize / detokenize, shared by the client and leases.
 * - `lease.ts` — `Lease`, released by `close()` or `await using`.
 * - `generate.ts` — `Generation`: tokens as an `AsyncIterable`, with credit granted as read.
 * - `errors.ts` — `MlxdError` and its subclasses.
 *
 * @module
 */

export { Client, connect, DEFAULT_RETRY, NO_RETRY, jitter, retryPolicy } from "./client.js";
export type { ConnectOptions, Endpoint, RequestOptions, RetryPolicy } from "./client.js";
export { Lease } from "./lease.js";
export type { LeaseOptions } from "./lease.js";
export { Generation, DEFAULT_PARAMS, DEFAULT_WINDOW, MAX_WINDOW } from "./generate.js";
export type {
  ChatMessageInput,
  Completion,
  ConstraintInput,
  GenerateInput,
  GenerateOptions,
  GenerateParamsInput,
  GenerationItem,
  Token,
  ToolCallInput,
  ToolCallItem,
  ToolChoiceInput,
  ToolInput,
} from "./generate.js";
export type { EmbedOptions, EmbedResult, RerankOptions, TokenizeOptions } from "./requests.js";
export * from "./errors.js";
export * from "./types.js";
export { decodeClientMessage, decodeServerMessage, encodeClientMessage, encodeServerMessage } from "./codec.js";
export {
  ABSOLUTE_MAX_FRAME_LEN,
  DEFAULT_MAX_FRAME_LEN,
  FrameDecoder,
  HANDSHAKE_MAX_FRAME_LEN,
  PREFIX_LEN,
  encodeFrame,
} from "./frame.js";
export {
  SOCKET_ENV,
  SYSTEM_SOCKET_PATH,
  TRUSTED_UIDS_ENV,
  checkServer,
  defaultSocketPath,
  realFileSystem,
  resolveSocketPath,
} from "./paths.js";
export type { FileInfo, FileSystem, PassedOver, SocketChoice, TrustedSocket } from "./paths.js";
export { Reader, Writer } from "./wire.js";
