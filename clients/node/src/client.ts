/**
 * The connection: find the daemon (or start a private `mlxd stdio`), check who serves the
 * socket, say Hello, then multiplex requests over one transport. Every request registers
 * its handlers under its id; frames from the daemon are routed to them.
 *
 * The connection keeps Node's event loop alive only while a request is in flight, so a
 * script that forgets `close()` still exits (and the daemon releases its leases when the
 * socket closes).
 *
 * @module
 */

import { basename } from "node:path";

import { decodeServerMessage } from "./codec.js";
import {
  BusyError,
  ConnectionClosedError,
  InvalidArgumentError,
  MlxdError,
  NoDaemonError,
  ProtocolError,
  UntrustedServerError,
  VersionMismatchError,
  fromWire,
} from "./errors.js";
import { ABSOLUTE_MAX_FRAME_LEN, DEFAULT_MAX_FRAME_LEN, FrameDecoder, HANDSHAKE_MAX_FRAME_LEN, encodeFrame } from "./frame.js";
import { Generation, type ChatMessageInput, type GenerateInput, type GenerateOptions, type GenerateParamsInput } from "./generate.js";
import { Lease, type LeaseOptions } from "./lease.js";
import { checkServer, currentUid, resolveSocketPath, trustedUidsFromEnv, type TrustedSocket } from "./paths.js";
import * as requests from "./requests.js";
import { connectSocket, StdioTransport, type SocketTransport, type Transport } from "./transport.js";
import {
  PROTOCOL_VERSION,
  type ClientMessage,
  type DaemonStatus,
  type Event,
  type LoadProgress,
  type MappedWeights,
  type ModelInfo,
  type Request,
  type Reranked,
  type Response,
  type ServerMessage,
  type Welcome,
} from "./types.js";

/** How `Busy` refusals of idempotent requests are retried. */
export interface RetryPolicy {
  /** Retries after the first refusal (default 3). */
  maxRetries: number;
  /** Longest single wait, whatever the daemon suggests (default 2000 ms). */
  maxWaitMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = Object.freeze({ maxRetries: 3, maxWaitMs: 2000 });
/** No retries: every `Busy` reaches the caller. */
export const NO_RETRY: RetryPolicy = Object.freeze({ maxRetries: 0, maxWaitMs: 0 });

/**
 * The policy for a `retry` option: `false` → {@link NO_RETRY}; `undefined`/`true` →
 * {@link DEFAULT_RETRY}; an object → each field given (not `undefined`) or its default.
 * Each field must be a non-negative safe integer, else {@link InvalidArgumentError}.
 */
export function retryPolicy(option: Partial<RetryPolicy> | boolean | undefined): RetryPolicy {
  if (option === false) return NO_RETRY;
  if (option === undefined || option === true) return DEFAULT_RETRY;
  if (option === null || typeof option !== "object") {
    throw new InvalidArgumentError(`retry must be false or { maxRetries, maxWaitMs }, got ${String(option)}`);
  }
  const policy = {
    maxRetries: option.maxRetries ?? DEFAULT_RETRY.maxRetries,
    maxWaitMs: option.maxWaitMs ?? DEFAULT_RETRY.maxWaitMs,
  };
  for (const [field, value] of Object.entries(policy)) {
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
      throw new InvalidArgumentError(`retry.${field} must be a non-negative integer, got ${String(value)}`);
    }
  }
  return Object.freeze(policy);
}

export interface ConnectOptions {
  /** Socket path [default: `$MLXD_SOCKET`, then the per-user and system defaults]. */
  socket?: string;
  /**
   * Start a private `mlxd stdio` child when no daemon answers [default: true, unless
   * `$MLXD_NO_FALLBACK` is set to anything but "" or "0"]. It says so on stderr.
   */
  fallback?: boolean;
  /** The `mlxd` binary for the fallback [default: `$MLXD_BIN`, else `mlxd` on PATH]. */
  mlxdBinary?: string;
  /** Shown in the daemon's logs [default: the script's file name]. */
  clientName?: string;
  /** Largest frame accepted from the daemon, clamped to [64 KiB, 64 MiB] [default: 16 MiB]. */
  maxFrameLen?: number;
  /**
   * Retries of idempotent requests refused with `Busy` [default: 3 retries, ≤ 2 s each];
   * `false` for none. A field left out (or `undefined`) takes its default; each must be
   * a non-negative integer ({@link InvalidArgumentError} otherwise, before connecting).
   */
  retry?: Partial<RetryPolicy> | boolean;
  /** Uids besides this user's and root's whose daemon is trusted [default: `$MLXD_TRUSTED_UIDS`]. */
  trustedUids?: number[];
  /** How long to wait for the daemon's Welcome [default: 30 000 ms]. */
  handshakeTimeoutMs?: number;
  /** Where notices (fallback, passed-over sockets) go [default: stderr]. */
  log?: (line: string) => void;
  /** The protocol version put in the Hello [default: 3]. For tests of version handling. */
  protocolVersion?: number;
}

/** What the client is connected to. */
export type Endpoint = { type: "socket"; path: string } | { type: "stdio"; pid: number | undefined };

/** Options of any single request. */
export interface RequestOptions {
  /** Aborting sends `Cancel` and rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Stream events of the request (load progress), as they come. */
  onEvent?: (event: Event) => void;
  /** Retry `Busy` per the client's policy if the request is idempotent [default: true]. */
  retry?: boolean;
}

/** Handlers of one request in flight. @internal */
export interface RequestHandlers {
  event(event: Event): void;
  done(response: Response): void;
  fail(error: MlxdError): void;
}

/** Requests safe to send twice: retried after `Busy` (the same set as the Rust client). */
const IDEMPOTENT = new Set<Request["type"]>(["Embed", "Rerank", "Tokenize", "Detokenize", "Status", "Ping", "ListModels"]);

/** Connects to mlxd (see {@link ConnectOptions}). */
export function connect(options: ConnectOptions = {}): Promise<Client> {
  return Client.connect(options);
}

/** A session with mlxd. Usable by many concurrent callers; requests are multiplexed. */
export class Client {
  /** The daemon's Welcome: its version, session id and limits. */
  readonly welcome: Welcome;
  readonly endpoint: Endpoint;

  #transport: Transport;
  #decoder: FrameDecoder;
  #pending = new Map<number, RequestHandlers>();
  #nextId = 1;
  #closedBy: MlxdError | undefined;
  #closing: Promise<void> | undefined;
  #retry: RetryPolicy;
  #leases = new FinalizationRegistry<number | bigint>((lease) => this.#releaseLeaked(lease));

  private constructor(transport: Transport, decoder: FrameDecoder, welcome: Welcome, endpoint: Endpoint, retry: RetryPolicy) {
    this.#transport = transport;
    this.#decoder = decoder;
    this.welcome = welcome;
    this.endpoint = endpoint;
    this.#retry = retry;
    transport.onData = (chunk) => this.#receive(chunk);
    transport.onEnd = (error) =>
      this.#shutdown(
        new ConnectionClosedError(
          error ? `connection to mlxd lost: ${error.message}` : "the daemon closed the connection",
          error,
        ),
      );
    this.#updateRef();
  }

  /** Connects (see {@link connect}). */
  static async connect(options: ConnectOptions = {}): Promise<Client> {
    const retry = retryPolicy(options.retry);
    const log = options.log ?? ((line: string) => process.stderr.write(line + "\n"));
    const trustedUids = options.trustedUids ?? trustedUidsFromEnv(process.env, log);
    const fallback = options.fallback ?? ["", "0", undefined].includes(process.env.MLXD_NO_FALLBACK);
    let path = options.socket;
    if (path === undefined) {
      const choice = resolveSocketPath();
      for (const passed of choice.passedOver) {
        log(
          `mlxd-client: passed over ${passed.path}: its directory belongs to uid ${passed.directoryOwner}, ` +
            "not to you or root, so it is not used (set MLXD_SOCKET to use it anyway)",
        );
      }
      path = choice.path;
    }

    let transport: Transport;
    let endpoint: Endpoint;
    try {
      // Before connecting: whoever could have put a socket at this path must not get our
      // texts. An untrusted server is never a reason to fall back: it is an attack to
      // report. (A path that cannot be seen throws its errno error, as connect would.)
      const uid = currentUid();
      const checked = checkServer(path, trustedUids, uid);
      const socket = await connectSocket(path);
      try {
        // The same socket file as the one checked, or someone swapped it meanwhile.
        let again: TrustedSocket;
        try {
          again = checkServer(path, trustedUids, uid);
        } catch (err) {
          if (err instanceof MlxdError) throw err;
          throw new UntrustedServerError(path, -1, `it changed while connecting (${(err as Error).message})`);
        }
        if (again.dev !== checked.dev || again.ino !== checked.ino) {
          throw new UntrustedServerError(path, -1, "the socket file was replaced while connecting");
        }
      } catch (err) {
        socket.destroy();
        throw err;
      }
      transport = socket;
      endpoint = { type: "socket", path };
    } catch (err) {
      if (err instanceof MlxdError) throw err;
      const code = (err as NodeJS.ErrnoException).code;
      const noDaemon = code === "ENOENT" || code === "ECONNREFUSED";
      if (!fallback || !noDaemon) {
        const detail = noDaemon ? "; the stdio fallback is off" : "";
        throw new NoDaemonError(path, err, detail);
      }
      const binary = options.mlxdBinary ?? (process.env.MLXD_BIN || "mlxd");
      log(
        `mlxd-client: no daemon at ${path} (${(err as Error).message}); fell back to a private \`mlxd stdio\` ` +
          "(models load for this process only; start `mlxd serve` to share them)",
      );
      const env = { ...process.env };
      // The child shares our stderr: keep it to warnings unless asked.
      if (env.MLXD_LOG === undefined) env.MLXD_LOG = "warn";
      const stdio = new StdioTransport(binary, env);
      transport = stdio;
      endpoint = { type: "stdio", pid: stdio.pid };
    }
    return Client.#handshake(transport, endpoint, options, retry);
  }

  static async #handshake(transport: Transport, endpoint: Endpoint, options: ConnectOptions, retry: RetryPolicy): Promise<Client> {
    const maxFrameLen = Math.min(
      Math.max(options.maxFrameLen ?? DEFAULT_MAX_FRAME_LEN, HANDSHAKE_MAX_FRAME_LEN),
      ABSOLUTE_MAX_FRAME_LEN,
    );
    const version = options.protocolVersion ?? PROTOCOL_VERSION;
    const decoder = new FrameDecoder(HANDSHAKE_MAX_FRAME_LEN);
    // Frames that arrived with the Welcome (none are expected) are routed once connected.
    let leftover: Uint8Array[] = [];
    const first = new Promise<ServerMessage>((resolve, reject) => {
      const timeoutMs = options.handshakeTimeoutMs ?? 30_000;
      const timer = setTimeout(
        () => reject(new ConnectionClosedError(`no answer to the Hello within ${timeoutMs} ms`)),
        timeoutMs,
      );
      const settle = (action: () => void) => {
        clearTimeout(timer);
        transport.onData = () => {};
        transport.onEnd = () => {};
        action();
      };
      transport.onData = (chunk) => {
        try {
          const bodies = decoder.push(chunk);
          if (bodies.length > 0) {
            const message = decodeServerMessage(bodies[0]!);
            leftover = bodies.slice(1);
            settle(() => resolve(message));
          }
        } catch (err) {
          settle(() => reject(err));
        }
      };
      transport.onEnd = (error) =>
        settle(() =>
          reject(
            error instanceof MlxdError
              ? error
              : new ConnectionClosedError(
                  `the daemon closed the connection during the handshake${error ? `: ${error.message}` : ""}`,
                  error,
                ),
          ),
        );
    });
    let message: ServerMessage;
    try {
      // A daemon that refuses this peer answers before reading the Hello and closes; the
      // refusal is still read below, and says more than a broken pipe.
      const hello: ClientMessage = {
        type: "Hello",
        protocol_version: version,
        client_name: options.clientName ?? defaultClientName(),
        pid: process.pid,
        max_frame_len: maxFrameLen,
      };
      transport.write(encodeFrame(hello, HANDSHAKE_MAX_FRAME_LEN));
      message = await first;
    } catch (err) {
      await transport.close().catch(() => {});
      throw err;
    }
    if (message.type === "Welcome") {
      if (message.protocol_version !== version) {
        await transport.close().catch(() => {});
        throw new VersionMismatchError(
          "VersionMismatch",
          `the daemon (mlxd ${message.daemon_version}) speaks protocol ${message.protocol_version}; ` +
            `this client (mlxd-client for Node) speaks protocol ${version}`,
          { fatal: true },
        );
      }
      decoder.maxLen = maxFrameLen;
      const client = new Client(transport, decoder, message, endpoint, retry);
      for (const body of leftover) client.#receiveBody(body);
      return client;
    }
    await transport.close().catch(() => {});
    if (message.type === "Fatal") {
      const hint =
        message.code === "VersionMismatch"
          ? ` (this client, mlxd-client for Node, speaks protocol ${version}; use a client and daemon of the same protocol version)`
          : "";
      throw fromWire(
        { ...message, message: `mlxd refused the session: ${message.message}${hint}` },
        true,
      );
    }
    throw new ProtocolError(`expected Welcome from the daemon, got ${message.type}`);
  }

  /** Whether the session has ended (closed by either side). */
  get closed(): boolean {
    return this.#closedBy !== undefined;
  }

  /** Requests in flight. */
  get inFlight(): number {
    return this.#pending.size;
  }

  // ------------------------------------------------------------------------------------
  // Typed requests

  async ping(options: RequestOptions = {}): Promise<void> {
    expectType(await this.request({ type: "Ping" }, options), "Pong");
  }

  async status(options: RequestOptions = {}): Promise<DaemonStatus> {
    const { type: _, ...status } = expectType(await this.request({ type: "Status" }, options), "Status");
    return status;
  }

  /** The models the daemon can serve. */
  async models(options: RequestOptions = {}): Promise<ModelInfo[]> {
    return expectType(await this.request({ type: "ListModels" }, options), "Models").value;
  }

  async weights(options: RequestOptions = {}): Promise<MappedWeights[]> {
    return expectType(await this.request({ type: "Weights" }, options), "Weights").value;
  }

  /** The daemon's Prometheus metrics (OpenMetrics text). */
  async metrics(options: RequestOptions = {}): Promise<string> {
    return expectType(await this.request({ type: "Metrics" }, options), "Metrics").value;
  }

  /** Leases `model` (loading it if needed); release it with `lease.close()`. */
  async lease(model: string, options: LeaseOptions = {}): Promise<Lease> {
    const response = await this.request(
      { type: "Lease", model, keep_alive_ms: options.keepAliveMs ?? null },
      { signal: options.signal, onEvent: progressHandler(options.onProgress) },
    );
    const leased = expectType(response, "Leased");
    const lease = new Lease(this, leased.lease, leased.model);
    this.#leases.register(lease, leased.lease, lease);
    return lease;
  }

  /** Loads `model` without leasing it; `onProgress` sees the load's stages. */
  async load(model: string, options: { onProgress?: (progress: LoadProgress) => void; signal?: AbortSignal } = {}): Promise<ModelInfo> {
    const response = await this.request(
      { type: "Load", model },
      { signal: options.signal, onEvent: progressHandler(options.onProgress) },
    );
    const { type: _, ...info } = expectType(response, "Loaded");
    return info;
  }

  /** Unloads `model`; a leased model is refused unless `force` (an operator action). */
  async unload(model: string, options: { force?: boolean; signal?: AbortSignal } = {}): Promise<ModelInfo> {
    const response = await this.request({ type: "Unload", model, force: options.force ?? false }, options);
    const { type: _, ...info } = expectType(response, "Unloaded");
    return info;
  }

  /** Embeds `texts` with the named model: one vector per text. */
  embed(model: string, texts: string[], options: requests.EmbedOptions = {}): Promise<Float32Array[]> {
    return requests.embed(this, { type: "Name", value: model }, texts, options);
  }

  /** Like {@link Client.embed}, with the whole answer (`vectors` row-major, `rows`, `prompt_tokens`). */
  embedDetailed(model: string, texts: string[], options: requests.EmbedOptions = {}): Promise<requests.EmbedResult> {
    return requests.embedDetailed(this, { type: "Name", value: model }, texts, options);
  }

  /**
   * Scores `documents` against `query` with the named reranking model: `results` best
   * first (`index` into `documents`, `score` in [0, 1]), all of them or the best `topN`.
   */
  rerank(model: string, query: string, documents: string[], options: requests.RerankOptions = {}): Promise<Reranked> {
    return requests.rerank(this, { type: "Name", value: model }, query, documents, options);
  }

  /** Generates from a raw prompt (a string) or a chat (messages); see {@link Generation}. */
  generate(model: string, input: GenerateInput, params: GenerateParamsInput = {}, options: GenerateOptions = {}): Generation {
    return new Generation(this, { type: "Name", value: model }, input, params, options);
  }

  /** Generates an answer to `messages`, rendered with the model's chat template. */
  chat(model: string, messages: ChatMessageInput[], params: GenerateParamsInput = {}, options: GenerateOptions = {}): Generation {
    return this.generate(model, messages, params, options);
  }

  tokenize(model: string, text: string, options: requests.TokenizeOptions = {}): Promise<number[]> {
    return requests.tokenize(this, { type: "Name", value: model }, text, options);
  }

  detokenize(model: string, tokens: number[], options: RequestOptions = {}): Promise<string> {
    return requests.detokenize(this, { type: "Name", value: model }, tokens, options);
  }

  // ------------------------------------------------------------------------------------
  // Requests at the protocol level

  /**
   * Sends `body` and resolves with its final `Response` (an `Error` rejects with the
   * typed error). Idempotent requests refused with `Busy` are retried per the policy.
   */
  async request(body: Request, options: RequestOptions = {}): Promise<Response> {
    let retries = options.retry !== false && IDEMPOTENT.has(body?.type) ? this.#retry.maxRetries : 0;
    for (;;) {
      try {
        return await this.#requestOnce(body, options);
      } catch (err) {
        // A fatal Busy ended the session: a retry could only fail again.
        if (!(err instanceof BusyError) || err.fatal || retries <= 0) throw err;
        retries -= 1;
        await sleep(Math.min(jitter(err.retryAfterMs ?? 10), this.#retry.maxWaitMs), options.signal);
      }
    }
  }

  #requestOnce(body: Request, options: RequestOptions): Promise<Response> {
    const signal = options.signal;
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise((resolve, reject) => {
      let settled = false;
      const onAbort = () => {
        if (settled) return;
        settled = true;
        // The request stays routed until its final frame, which is then dropped.
        this._control({ type: "Cancel", id });
        reject(signal!.reason);
      };
      const finish = () => {
        settled = true;
        signal?.removeEventListener("abort", onAbort);
      };
      const id = this._open(body, {
        event: (event) => {
          if (!settled) options.onEvent?.(event);
        },
        done: (response) => {
          if (settled) return;
          finish();
          resolve(response);
        },
        fail: (error) => {
          if (settled) return;
          finish();
          reject(error);
        },
      });
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /**
   * Registers handlers and sends the request; returns its id. Throws (nothing sent) if
   * the session is closed or the request cannot be encoded. @internal
   */
  _open(body: Request, handlers: RequestHandlers): number {
    if (this.#closedBy) throw this.#closedBy;
    const id = this.#nextId++;
    const frame = encodeFrame({ type: "Request", id, body }, this.welcome.limits.max_frame_len);
    this.#pending.set(id, handlers);
    this.#updateRef();
    this.#transport.write(frame);
    return id;
  }

  /** Sends a Cancel or Credit (no answer of its own); ignored once closed. @internal */
  _control(message: ClientMessage): void {
    if (this.#closedBy) return;
    this.#transport.write(encodeFrame(message, this.welcome.limits.max_frame_len));
  }

  /** A lease object was closed: it no longer needs releasing when collected. @internal */
  _forgetLease(lease: Lease): void {
    this.#leases.unregister(lease);
  }

  #releaseLeaked(lease: number | bigint): void {
    if (this.#closedBy) return;
    // Best effort; if it cannot be sent, the daemon releases it when the session ends.
    try {
      this._open({ type: "Release", lease }, { event() {}, done() {}, fail() {} });
    } catch {
      /* closed meanwhile */
    }
  }

  // ------------------------------------------------------------------------------------
  // Routing

  #receive(chunk: Uint8Array): void {
    if (this.#closedBy) return;
    let bodies: Uint8Array[];
    try {
      bodies = this.#decoder.push(chunk);
    } catch (err) {
      this.#fault(err);
      return;
    }
    for (const body of bodies) {
      this.#receiveBody(body);
      if (this.#closedBy) return;
    }
  }

  #receiveBody(body: Uint8Array): void {
    if (this.#closedBy) return;
    let message: ServerMessage;
    try {
      message = decodeServerMessage(body);
    } catch (err) {
      this.#fault(err);
      return;
    }
    this.#route(message);
  }

  /** The daemon broke the protocol: end the session. */
  #fault(err: unknown): void {
    const error = err instanceof MlxdError ? err : new ProtocolError(String(err));
    this.#shutdown(error);
    (this.#transport as Partial<SocketTransport>).destroy?.();
    void this.#transport.close().catch(() => {});
  }

  #route(message: ServerMessage): void {
    switch (message.type) {
      case "Response":
      case "Error": {
        const id = message.id as number;
        const handlers = this.#pending.get(id);
        if (!handlers) return; // e.g. the answer to a fire-and-forget Release
        this.#pending.delete(id);
        this.#updateRef();
        if (message.type === "Response") deliver(() => handlers.done(message.body));
        else deliver(() => handlers.fail(fromWire(message.error)));
        return;
      }
      case "Event": {
        const handlers = this.#pending.get(message.id as number);
        if (handlers) deliver(() => handlers.event(message.event));
        return;
      }
      case "Fatal":
        this.#shutdown(fromWire(message, true, "the daemon ended the session: "));
        void this.#transport.close().catch(() => {});
        return;
      case "Welcome":
        this.#fault(new ProtocolError("the daemon sent a second Welcome"));
        return;
    }
  }

  /** Ends the session once: every request in flight fails with `error`. */
  #shutdown(error: MlxdError): void {
    if (this.#closedBy) return;
    this.#closedBy = error;
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const handlers of pending) deliver(() => handlers.fail(error));
    this.#transport.setRef(false);
  }

  #updateRef(): void {
    if (!this.#closedBy) this.#transport.setRef(this.#pending.size > 0);
  }

  /**
   * Closes the session: requests in flight fail with `ConnectionClosedError`, and the
   * daemon releases this session's leases. Resolves once the transport is closed.
   */
  close(): Promise<void> {
    if (!this.#closing) {
      this.#shutdown(new ConnectionClosedError("the client closed the connection"));
      // Held until closed (a bounded wait), so code after `await close()` runs.
      this.#transport.setRef(true);
      this.#closing = this.#transport
        .close()
        .catch(() => {})
        .finally(() => this.#transport.setRef(false));
    }
    return this.#closing;
  }
}

// Symbol.asyncDispose exists from Node 18.18 / 20.4; where it does not, there is no `await using`.
const asyncDispose = (Symbol as { asyncDispose?: symbol }).asyncDispose;
if (asyncDispose) {
  Object.defineProperty(Client.prototype, asyncDispose, {
    value: function (this: Client) {
      return this.close();
    },
    writable: true,
    configurable: true,
  });
}
export interface Client {
  /** `await using client = await connect()` closes it at the end of the scope. */
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Runs a request's handler. A caller's callback that throws (say, an `onProgress`) is
 * reported as an uncaught exception, as an event listener's would be; it does not end
 * the session or keep other requests from their frames.
 */
function deliver(handler: () => void): void {
  try {
    handler();
  } catch (err) {
    queueMicrotask(() => {
      throw err;
    });
  }
}

function defaultClientName(): string {
  const script = process.argv[1];
  return script ? basename(script) : "mlxd-client-node";
}

function progressHandler(onProgress: ((progress: LoadProgress) => void) | undefined) {
  if (!onProgress) return undefined;
  return (event: Event) => {
    if (event.type === "LoadProgress") {
      const { type: _, ...progress } = event;
      onProgress(progress);
    }
  };
}

/** Narrows a response to the expected variant, or throws `ProtocolError`. @internal */
export function expectType<T extends Response["type"]>(response: Response, type: T): Extract<Response, { type: T }> {
  if (response.type !== type) throw new ProtocolError(`expected ${type} from the daemon, got ${response.type}`);
  return response as Extract<Response, { type: T }>;
}

/**
 * `waitMs` scaled by a random factor in [0.5, 1.5), so clients refused at the same moment
 * do not come back at the same moment (the Rust client's `jitter`).
 */
export function jitter(waitMs: number): number {
  const base = Math.max(1, waitMs);
  return base * (0.5 + Math.random());
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
