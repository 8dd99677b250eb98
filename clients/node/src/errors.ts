/**
 * Everything this package throws is an {@link MlxdError}:
 *
 * - the daemon's typed refusals, one subclass per wire `ErrorCode` ({@link BusyError},
 *   {@link NotFoundError}, ...; `Timeout` and `Cancelled` are {@link RequestTimeoutError}
 *   and {@link RequestCancelledError}, also exported as `TimeoutError` and `CancelledError`),
 *   with `code` and `retryAfterMs`; `fatal` is true when the
 *   daemon ended the whole session with it (`Fatal`, e.g. a refused handshake);
 * - what can go wrong on the way to the daemon, with codes of their own:
 *   {@link NoDaemonError}, {@link UntrustedServerError}, {@link FallbackError},
 *   {@link ConnectionClosedError}, {@link ProtocolError} (the peer broke the protocol) and
 *   {@link InvalidArgumentError} (a value this client cannot encode; nothing was sent).
 *
 * @module
 */

import type { ErrorCode, U64, WireError } from "./types.js";

/** Codes of failures detected by the client itself (not sent by the daemon). */
export type LocalErrorCode = "NoDaemon" | "UntrustedServer" | "Fallback" | "Closed" | "Protocol" | "InvalidArgument";

export class MlxdError extends Error {
  /** The wire `ErrorCode`, or a {@link LocalErrorCode}. */
  readonly code: ErrorCode | LocalErrorCode;
  /** For refusals worth retrying (`Busy`, `Loading`, ...): when a retry is likely admitted. */
  readonly retryAfterMs: number | undefined;
  /** True when the daemon ended the session with this error (a `Fatal` frame). */
  readonly fatal: boolean;

  constructor(
    code: ErrorCode | LocalErrorCode,
    message: string,
    options: { retryAfterMs?: number | undefined; fatal?: boolean; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryAfterMs = options.retryAfterMs;
    this.fatal = options.fatal ?? false;
    this.name = new.target.name;
  }
}

export class BadRequestError extends MlxdError {}
export class NotFoundError extends MlxdError {}
export class BusyError extends MlxdError {}
export class LoadingError extends MlxdError {}
export class WorkerFailedError extends MlxdError {}
/**
 * The daemon refused or ended the request as cancelled (wire code `Cancelled`), which is
 * not an `AbortSignal`'s abort (that rejects with the signal's reason, an "AbortError").
 * Its `name` is "RequestCancelledError"; `CancelledError` is the same class.
 */
export class RequestCancelledError extends MlxdError {}
export class UnauthorizedError extends MlxdError {}
export class TooLargeError extends MlxdError {}
export class ShutdownError extends MlxdError {}
export class InternalError extends MlxdError {}
/** The daemon does not speak this client's protocol version (or answered with another). */
export class VersionMismatchError extends MlxdError {}
export class NotImplementedError extends MlxdError {}
export class InvalidLeaseError extends MlxdError {}
/**
 * The request's deadline passed while it was queued, or a stream stayed paused too long
 * (wire code `Timeout`). Its `name` is "RequestTimeoutError", unlike the DOMException
 * "TimeoutError" of `AbortSignal.timeout()`; `TimeoutError` is the same class.
 */
export class RequestTimeoutError extends MlxdError {}
export class OutOfMemoryError extends MlxdError {}
export class UnsupportedError extends MlxdError {}

/** No daemon answers at the socket, and the stdio fallback is off. */
export class NoDaemonError extends MlxdError {
  readonly path: string;
  constructor(path: string, cause: unknown, detail = "") {
    const reason = cause instanceof Error ? cause.message : String(cause);
    super("NoDaemon", `no daemon at ${path} (${reason})${detail}`, { cause });
    this.path = path;
  }
}

/**
 * The socket is not served by this user, root or a trusted uid (judged from the socket
 * file's owner and its directory; see README "Security"). Nothing was sent to it.
 */
export class UntrustedServerError extends MlxdError {
  readonly path: string;
  readonly ownerUid: number;
  constructor(path: string, ownerUid: number, reason: string) {
    super("UntrustedServer", `refusing to talk to ${path}: ${reason}`);
    this.path = path;
    this.ownerUid = ownerUid;
  }
}

/** The fallback `mlxd stdio` could not be started. */
export class FallbackError extends MlxdError {
  readonly binary: string;
  constructor(binary: string, cause: unknown) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    super("Fallback", `cannot start \`${binary} stdio\` as a fallback: ${reason}`, { cause });
    this.binary = binary;
  }
}

/** The connection is closed (by `close()`, by the daemon, or by a transport failure). */
export class ConnectionClosedError extends MlxdError {
  constructor(message = "connection to mlxd closed", cause?: unknown) {
    super("Closed", message, { cause });
  }
}

/** The daemon sent something this client cannot read: a bad frame, an unexpected answer. */
export class ProtocolError extends MlxdError {
  constructor(message: string) {
    super("Protocol", message);
  }
}

/** A value the client cannot encode (wrong type, out of range); nothing was sent. */
export class InvalidArgumentError extends MlxdError {
  constructor(message: string) {
    super("InvalidArgument", message);
  }
}

const BY_CODE: Record<ErrorCode, new (code: ErrorCode, message: string, options?: object) => MlxdError> = {
  BadRequest: BadRequestError,
  NotFound: NotFoundError,
  Busy: BusyError,
  Loading: LoadingError,
  WorkerFailed: WorkerFailedError,
  Cancelled: RequestCancelledError,
  Unauthorized: UnauthorizedError,
  TooLarge: TooLargeError,
  Shutdown: ShutdownError,
  Internal: InternalError,
  VersionMismatch: VersionMismatchError,
  NotImplemented: NotImplementedError,
  InvalidLease: InvalidLeaseError,
  Timeout: RequestTimeoutError,
  OutOfMemory: OutOfMemoryError,
  Unsupported: UnsupportedError,
};

/**
 * The same class as {@link RequestTimeoutError} (kept for compatibility). Prefer the new
 * name: "TimeoutError" is also the DOMException of `AbortSignal.timeout()`.
 * @deprecated Use {@link RequestTimeoutError}.
 */
export const TimeoutError = RequestTimeoutError;
export type TimeoutError = RequestTimeoutError;
/**
 * The same class as {@link RequestCancelledError} (kept for compatibility).
 * @deprecated Use {@link RequestCancelledError}.
 */
export const CancelledError = RequestCancelledError;
export type CancelledError = RequestCancelledError;

/** The typed error for a daemon's `WireError`. */
export function fromWire(error: WireError, fatal = false, prefix = ""): MlxdError {
  const ErrorClass = BY_CODE[error.code] ?? MlxdError;
  return new ErrorClass(error.code, prefix + error.message, {
    retryAfterMs: error.retry_after_ms === null ? undefined : toNumber(error.retry_after_ms),
    fatal,
  });
}

/** An error of the given wire code raised by the client itself (e.g. a frame too large to send). */
export function localError(code: ErrorCode, message: string): MlxdError {
  const ErrorClass = BY_CODE[code];
  return new ErrorClass(code, message);
}

function toNumber(value: U64): number {
  return typeof value === "bigint" ? Number(value) : value;
}
