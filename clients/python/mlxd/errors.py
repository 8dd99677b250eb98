"""What can go wrong: the daemon's typed refusals (one class per :class:`ErrorCode`), and
what can fail on the way to the daemon.

::

    MlxdError
    ├── DaemonError            the daemon answered with a WireError (.code, .message, .retry_after)
    │   ├── BadRequestError, NotFoundError, BusyError, ... (one per ErrorCode)
    ├── ConnectError           no session could be opened
    │   ├── NoDaemonError      nothing listens at the socket and the fallback is off
    │   ├── UntrustedServerError  the socket is served by another user
    │   ├── FallbackError      `mlxd stdio` could not be started
    │   └── ConnectTimeoutError  no session within connect_timeout (also a TimeoutError)
    ├── ConnectionClosedError  the connection ended (the daemon went away, or close())
    └── ProtocolError          bad bytes on the connection
        ├── DecodeError, FrameTooLargeError, EncodeError (EncodeError is also a ValueError)
"""

from __future__ import annotations

import asyncio
import sys
from typing import Dict, Optional, Type

from ._codec import DecodeError, EncodeError, FrameTooLargeError
from ._exc import MlxdError, ProtocolError
from .protocol import ErrorCode, WireError


class DaemonError(MlxdError):
    """The daemon refused or failed a request (or, with ``fatal``, the whole session).

    ``code`` is the machine-readable :class:`ErrorCode`, ``message`` the daemon's words and
    ``retry_after`` the seconds after which a retry is likely to be admitted (Busy,
    Loading, a failed model's circuit), or None.
    """

    code: ErrorCode = ErrorCode.Internal

    def __init__(
        self,
        message: str,
        *,
        code: Optional[ErrorCode] = None,
        retry_after: Optional[float] = None,
        fatal: bool = False,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.retry_after = retry_after
        #: The daemon ended the whole session with this error (`Fatal`), not one request.
        self.fatal = fatal

    def __str__(self) -> str:
        hint = f" (retry after {self.retry_after:g} s)" if self.retry_after is not None else ""
        return f"{_names[self.code]}: {self.message}{hint}"

    @property
    def wire(self) -> WireError:
        """The error as it travelled."""
        retry_ms = None if self.retry_after is None else round(self.retry_after * 1000)
        return WireError(self.code, self.message, retry_ms)


class BadRequestError(DaemonError):
    """Malformed request, or a parameter out of range."""

    code = ErrorCode.BadRequest


class NotFoundError(DaemonError):
    """Unknown model."""

    code = ErrorCode.NotFound


class BusyError(DaemonError):
    """The model's queue, or the session's in-flight or stream limit, is full."""

    code = ErrorCode.Busy


class LoadingError(DaemonError):
    code = ErrorCode.Loading


class WorkerFailedError(DaemonError):
    """The model's worker failed while handling the request."""

    code = ErrorCode.WorkerFailed


class RequestCancelledError(DaemonError):
    """The request was cancelled (``ErrorCode.Cancelled``; not asyncio's CancelledError)."""

    code = ErrorCode.Cancelled


class UnauthorizedError(DaemonError):
    code = ErrorCode.Unauthorized


class TooLargeError(DaemonError):
    """A frame, text, batch, prompt or count over a limit named in the message."""

    code = ErrorCode.TooLarge


class ShutdownError(DaemonError):
    code = ErrorCode.Shutdown


class InternalError(DaemonError):
    code = ErrorCode.Internal


class VersionMismatchError(DaemonError):
    """The daemon speaks another protocol version than this package."""

    code = ErrorCode.VersionMismatch


class NotImplementedByDaemonError(DaemonError):
    """``ErrorCode.NotImplemented``: defined in the protocol, not served by this daemon."""

    code = ErrorCode.NotImplemented


class InvalidLeaseError(DaemonError):
    """The lease is not held by this session (released, or another connection's)."""

    code = ErrorCode.InvalidLease


class RequestTimeoutError(DaemonError):
    """``ErrorCode.Timeout``: a deadline or the stream pause limit passed."""

    code = ErrorCode.Timeout


class OutOfMemoryError(DaemonError):
    code = ErrorCode.OutOfMemory


class UnsupportedError(DaemonError):
    """The model cannot serve the request as asked (e.g. chat without a chat template)."""

    code = ErrorCode.Unsupported


ERROR_CLASSES: Dict[ErrorCode, Type[DaemonError]] = {
    cls.code: cls
    for cls in (
        BadRequestError,
        NotFoundError,
        BusyError,
        LoadingError,
        WorkerFailedError,
        RequestCancelledError,
        UnauthorizedError,
        TooLargeError,
        ShutdownError,
        InternalError,
        VersionMismatchError,
        NotImplementedByDaemonError,
        InvalidLeaseError,
        RequestTimeoutError,
        OutOfMemoryError,
        UnsupportedError,
    )
}

_names = {
    code: "".join("_" + c.lower() if c.isupper() else c for c in code.name).lstrip("_") for code in ErrorCode
}


def from_wire(error: WireError, *, fatal: bool = False) -> DaemonError:
    """The exception for a WireError the daemon sent."""
    retry_after = None if error.retry_after_ms is None else error.retry_after_ms / 1000
    cls = ERROR_CLASSES.get(error.code, DaemonError)
    return cls(error.message, code=error.code, retry_after=retry_after, fatal=fatal)


class ConnectError(MlxdError):
    """No session could be opened."""


class NoDaemonError(ConnectError):
    """No daemon answers at the socket, and the stdio fallback is off."""


class UntrustedServerError(ConnectError):
    """The socket is served by a user other than this process's, root or a trusted uid.
    Nothing was sent to it."""


class FallbackError(ConnectError):
    """The fallback ``mlxd stdio`` could not be started."""


# Also a TimeoutError (and asyncio.TimeoutError, a class of its own before Python 3.11), so
# that code that caught the timeout of a connect keeps catching it.
if sys.version_info >= (3, 11):

    class ConnectTimeoutError(ConnectError, TimeoutError):
        """No session within ``connect_timeout``: the socket did not accept the
        connection, or the daemon did not answer the Hello."""

else:

    class ConnectTimeoutError(ConnectError, TimeoutError, asyncio.TimeoutError):
        """No session within ``connect_timeout``: the socket did not accept the
        connection, or the daemon did not answer the Hello."""


class ConnectionClosedError(MlxdError):
    """The connection ended before the answer came."""


__all__ = [
    "BadRequestError",
    "BusyError",
    "ConnectError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "DaemonError",
    "DecodeError",
    "EncodeError",
    "ERROR_CLASSES",
    "FallbackError",
    "FrameTooLargeError",
    "InternalError",
    "InvalidLeaseError",
    "LoadingError",
    "MlxdError",
    "NoDaemonError",
    "NotFoundError",
    "NotImplementedByDaemonError",
    "OutOfMemoryError",
    "ProtocolError",
    "RequestCancelledError",
    "RequestTimeoutError",
    "ShutdownError",
    "TooLargeError",
    "UnauthorizedError",
    "UnsupportedError",
    "UntrustedServerError",
    "VersionMismatchError",
    "WorkerFailedError",
    "from_wire",
]
