"""Python client for mlxd, the local model daemon: embeddings, reranking, generation
streams and model leases over the daemon's Unix socket (or a private ``mlxd stdio``).

# Layout

- :mod:`mlxd._sync`: :class:`Client`, :class:`Model` (a lease), :class:`GenerationStream`.
- :mod:`mlxd._async`: :class:`AsyncClient`, :class:`AsyncModel`, :class:`AsyncGenerationStream`.
- :mod:`mlxd._base`: what both share: request building, answers, credit bookkeeping.
- :mod:`mlxd._connect`: socket path, server credentials check, stdio fallback, retries.
- :mod:`mlxd.protocol`: the wire types (dataclasses), encode/decode of frame bodies;
  also the generation constraints :class:`JsonSchema`, :class:`JsonObject`,
  :class:`Regex` and :class:`Lark` (structured output, ``constraint=``), and the tool
  types :class:`Tool`, :class:`ToolCall` and the :data:`ToolChoice` variants (``tools=``).
- :mod:`mlxd._codec`: bincode (standard configuration) and framing, by hand.
- :mod:`mlxd.errors`: the exceptions, one per daemon ErrorCode.

::

    import mlxd

    with mlxd.Client() as client, client.lease("minilm") as minilm:
        vectors = minilm.embed(["hello world"])
"""

from ._async import AsyncClient, AsyncGenerationStream, AsyncModel
from ._base import Completion, StreamItem
from ._connect import NO_RETRIES, RetryPolicy
from ._sync import Client, GenerationStream, Model
from .errors import (
    BadRequestError,
    BusyError,
    ConnectError,
    ConnectTimeoutError,
    ConnectionClosedError,
    DaemonError,
    DecodeError,
    EncodeError,
    FallbackError,
    FrameTooLargeError,
    InternalError,
    InvalidLeaseError,
    LoadingError,
    MlxdError,
    NoDaemonError,
    NotFoundError,
    NotImplementedByDaemonError,
    OutOfMemoryError,
    ProtocolError,
    RequestCancelledError,
    RequestTimeoutError,
    ShutdownError,
    TooLargeError,
    UnauthorizedError,
    UnsupportedError,
    UntrustedServerError,
    VersionMismatchError,
    WorkerFailedError,
)
from .protocol import (
    PROTOCOL_VERSION,
    ChatMessage,
    Constraint,
    DaemonStatus,
    Embeddings,
    ErrorCode,
    FinishReason,
    GenerationSummary,
    JsonObject,
    JsonSchema,
    Lark,
    LoadProgress,
    LoadStage,
    ModelInfo,
    ModelKind,
    ModelState,
    Priority,
    Regex,
    Reranked,
    RerankResult,
    Token,
    TokenLogprobs,
    Tool,
    ToolCall,
    ToolChoice,
    ToolChoiceAuto,
    ToolChoiceFunction,
    ToolChoiceNone,
    ToolChoiceRequired,
    TopLogprob,
)

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "AsyncClient",
    "AsyncGenerationStream",
    "AsyncModel",
    "BadRequestError",
    "BusyError",
    "ChatMessage",
    "Client",
    "Completion",
    "ConnectError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "Constraint",
    "DaemonError",
    "DaemonStatus",
    "DecodeError",
    "Embeddings",
    "EncodeError",
    "ErrorCode",
    "FallbackError",
    "FinishReason",
    "FrameTooLargeError",
    "GenerationStream",
    "GenerationSummary",
    "InternalError",
    "InvalidLeaseError",
    "JsonObject",
    "JsonSchema",
    "Lark",
    "LoadProgress",
    "LoadStage",
    "LoadingError",
    "MlxdError",
    "Model",
    "ModelInfo",
    "ModelKind",
    "ModelState",
    "NO_RETRIES",
    "NoDaemonError",
    "NotFoundError",
    "NotImplementedByDaemonError",
    "OutOfMemoryError",
    "Priority",
    "ProtocolError",
    "Regex",
    "RequestCancelledError",
    "RequestTimeoutError",
    "RerankResult",
    "Reranked",
    "RetryPolicy",
    "ShutdownError",
    "StreamItem",
    "Token",
    "TokenLogprobs",
    "Tool",
    "ToolCall",
    "ToolChoice",
    "ToolChoiceAuto",
    "ToolChoiceFunction",
    "ToolChoiceNone",
    "ToolChoiceRequired",
    "TooLargeError",
    "TopLogprob",
    "UnauthorizedError",
    "UnsupportedError",
    "UntrustedServerError",
    "VersionMismatchError",
    "WorkerFailedError",
]
