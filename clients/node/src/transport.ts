/**
 * Byte transports under a session: a Unix socket, or the pipes of a private `mlxd stdio`
 * child (the fallback when no daemon answers). Both deliver chunks and one end-of-stream,
 * write whole frames, and can stop holding Node's event loop open while idle.
 *
 * @module
 */

import { spawn, type ChildProcess } from "node:child_process";
import { createConnection, type Socket } from "node:net";

import { FallbackError } from "./errors.js";

export interface Transport {
  /** Called with each chunk received. */
  onData: (chunk: Uint8Array) => void;
  /** Called once when the stream ends (`error` set if it failed). */
  onEnd: (error?: Error) => void;
  write(bytes: Uint8Array): void;
  /** Ends the session (EOF to the daemon) and resolves once the transport is closed. */
  close(): Promise<void>;
  /** Whether the transport keeps Node's event loop alive. */
  setRef(on: boolean): void;
}

const noop = () => {};

/** Connects to a Unix socket; rejects with the connect error (ENOENT, ECONNREFUSED, ...). */
export function connectSocket(path: string): Promise<SocketTransport> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ path });
    const onError = (error: Error) => reject(error);
    socket.once("error", onError);
    socket.once("connect", () => {
      socket.off("error", onError);
      resolve(new SocketTransport(socket));
    });
  });
}

export class SocketTransport implements Transport {
  onData: (chunk: Uint8Array) => void = noop;
  onEnd: (error?: Error) => void = noop;
  private ended = false;
  private readonly closed: Promise<void>;

  constructor(private readonly socket: Socket) {
    socket.setNoDelay?.(true);
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    let failure: Error | undefined;
    socket.on("error", (error) => {
      failure = error;
    });
    this.closed = new Promise((resolve) => {
      socket.on("close", () => {
        this.finish(failure);
        resolve();
      });
    });
  }

  private finish(error?: Error): void {
    if (this.ended) return;
    this.ended = true;
    this.onEnd(error);
  }

  write(bytes: Uint8Array): void {
    if (!this.socket.destroyed) this.socket.write(bytes);
  }

  async close(): Promise<void> {
    this.socket.end();
    // The daemon closes its side at our EOF; do not wait on it for long.
    const timer = setTimeout(() => this.socket.destroy(), 2000);
    await this.closed;
    clearTimeout(timer);
  }

  /** Destroys the socket at once (a protocol violation by the peer). */
  destroy(): void {
    this.socket.destroy();
  }

  setRef(on: boolean): void {
    if (on) this.socket.ref();
    else this.socket.unref();
  }
}

/**
 * Starts `binary stdio` with piped stdin/stdout; its stderr (a log) is this process's.
 * A failure to start surfaces as `onEnd` with a {@link FallbackError}.
 */
export class StdioTransport implements Transport {
  onData: (chunk: Uint8Array) => void = noop;
  onEnd: (error?: Error) => void = noop;
  readonly child: ChildProcess;
  private ended = false;
  private readonly exited: Promise<void>;

  constructor(binary: string, env: NodeJS.ProcessEnv) {
    this.child = spawn(binary, ["stdio"], { stdio: ["pipe", "pipe", "inherit"], env });
    let spawnError: Error | undefined;
    // Writes to a child that exited fail with EPIPE; its exit is reported below.
    this.child.stdin?.on("error", noop);
    this.child.stdout?.on("data", (chunk: Buffer) => this.onData(chunk));
    this.exited = new Promise((resolve) => {
      this.child.on("error", (error) => {
        // Failed to start (e.g. ENOENT); there may be no "close" after this.
        spawnError = error;
        this.finish(new FallbackError(binary, error));
        resolve();
      });
      this.child.on("close", (code, signal) => {
        if (spawnError === undefined) {
          const how = signal ? `signal ${signal}` : `status ${code}`;
          this.finish(code === 0 ? undefined : new Error(`mlxd stdio exited with ${how}`));
        }
        resolve();
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  private finish(error?: Error): void {
    if (this.ended) return;
    this.ended = true;
    this.onEnd(error);
  }

  write(bytes: Uint8Array): void {
    const stdin = this.child.stdin;
    if (stdin && !stdin.destroyed && stdin.writable) stdin.write(bytes);
  }

  async close(): Promise<void> {
    // `mlxd stdio` exits when its stdin closes; kill it if it does not within 5 s.
    this.child.stdin?.end();
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 5000);
    await this.exited;
    clearTimeout(timer);
  }

  setRef(on: boolean): void {
    const handles = [this.child, this.child.stdin, this.child.stdout] as Array<{ ref?: () => void; unref?: () => void } | null>;
    for (const handle of handles) {
      if (on) handle?.ref?.();
      else handle?.unref?.();
    }
  }
}
