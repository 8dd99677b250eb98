"""What the sync and the async client share: building requests from friendly arguments,
reading answers into friendly results, the handshake's checks, and a stream's credit
bookkeeping. No I/O here."""

from __future__ import annotations

import array
import dataclasses
import os
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
)

from . import _codec
from ._exc import ProtocolError
from .errors import DaemonError, VersionMismatchError, from_wire
from .protocol import (
    NO_PARAMETERS,
    ByLease,
    ByName,
    Chat,
    ChatMessage,
    Constraint,
    DetokenizeRequest,
    EmbedRequest,
    Embeddings,
    GenerateParams,
    GenerateRequest,
    GenerationSummary,
    Hello,
    JsonObject,
    JsonSchema,
    Lark,
    ListModelsRequest,
    LoadProgress,
    ModelRef,
    PingRequest,
    Priority,
    PromptInput,
    Raw,
    Regex,
    RequestBody,
    RerankRequest,
    ResponseBody,
    ServerMessage,
    StatusRequest,
    Token,
    TokenizeRequest,
    TokenLogprobs,
    Tool,
    ToolCall,
    ToolChoice,
    ToolChoiceAuto,
    ToolChoiceFunction,
    ToolChoiceNone,
    ToolChoiceRequired,
    Welcome,
    encode_client,
)

if TYPE_CHECKING:
    import numpy
    import numpy.typing
    from typing_extensions import TypeAlias

    FloatMatrix: TypeAlias = numpy.typing.NDArray[numpy.float32]

T = TypeVar("T")

#: Credit a generation stream keeps granted ahead of what its reader has taken.
DEFAULT_WINDOW = 32

#: One chat message: a :class:`ChatMessage`, a ``{"role": ..., "content": ...}`` mapping
#: (also with ``tool_calls``, ``tool_call_id`` and ``name``, as OpenAI writes them), or a
#: ``(role, content)`` pair.
MessageLike = Union[ChatMessage, Mapping[str, Any], Tuple[str, str]]
#: A raw prompt (used as is) or chat messages (rendered with the model's chat template).
PromptLike = Union[str, Sequence[MessageLike]]
#: Called with each load progress event of a lease or load.
ProgressCallback = Callable[[LoadProgress], None]
#: A stop string, as text or as its UTF-8 bytes.
StopLike = Union[str, bytes]
#: A tool: a :class:`Tool`, or a mapping in OpenAI's shape (``{"type": "function",
#: "function": {"name", "description", "parameters"}}``) or flat (``{"name", "description",
#: "parameters"}``); ``parameters`` a JSON schema, as a mapping or its JSON text.
ToolLike = Union[Tool, Mapping[str, Any]]
#: A tool choice: ``"auto"``, ``"none"``, ``"required"``, a function by name in OpenAI's
#: shape (``{"type": "function", "function": {"name": ...}}``) or as ``{"name": ...}``, or
#: a :data:`ToolChoice` variant.
ToolChoiceLike = Union[str, Mapping[str, Any], ToolChoice]
#: What a generation stream yields: text, or (since v7) a tool call the model made.
StreamItem = Union[Token, ToolCall]
#: What a stream is typed to yield: :class:`Token` when the generation has no tools (it
#: then makes no calls), else :data:`StreamItem`.
ItemT = TypeVar("ItemT", bound=StreamItem, covariant=True)


class HasLease:
    """Anything that names a lease of this session (a leased model)."""

    lease_id: int


ModelLike = Union[str, HasLease]


def model_ref(model: ModelLike) -> ModelRef:
    if isinstance(model, str):
        return ByName(model)
    if isinstance(model, HasLease):
        return ByLease(model.lease_id)
    raise TypeError(f"a model is a name or a leased model, not {model!r}")


def _optional_str(value: Any, what: str) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{what} is a str, not {value!r}")


def _str(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"{what} is a str, not {value!r}")


def _function_of(item: Mapping[str, Any], what: str) -> Mapping[str, Any]:
    """The function of an OpenAI-shaped ``{"type": "function", "function": {...}}``
    mapping; the mapping itself when it is flat."""
    if "function" not in item:
        return item
    kind = item.get("type", "function")
    if kind != "function":
        raise ValueError(f"{what} of type {kind!r}: only \"function\" is known")
    function = item["function"]
    if not isinstance(function, Mapping):
        raise TypeError(f"the function of {what} is a mapping, not {function!r}")
    return function


def _sequence(value: Any, what: str) -> Sequence[Any]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise TypeError(f"{what} is a list, not {value!r}")
    items: Sequence[Any] = value
    return items


def tool_call(call: Union[ToolCall, Mapping[str, Any]]) -> ToolCall:
    """A call of an assistant message: a :class:`ToolCall`, or a mapping in OpenAI's shape
    (``{"id", "type": "function", "function": {"name", "arguments"}}``) or flat (``{"id",
    "name", "arguments"}``); ``arguments`` a JSON object, as a mapping or its text."""
    if isinstance(call, ToolCall):
        return call
    if not isinstance(call, Mapping):
        raise TypeError(f"a tool call is a mlxd.ToolCall or a mapping, not {call!r}")
    function = _function_of(call, "a tool call")
    call_id = _str(call.get("id", ""), "a tool call's id")
    arguments = function.get("arguments", "{}")
    if not isinstance(arguments, (str, Mapping)):
        raise TypeError(f"a tool call's arguments are a mapping or its JSON text, not {arguments!r}")
    return ToolCall(call_id, _str(function.get("name"), "a tool call's name"), arguments)


def chat_message(message: MessageLike) -> ChatMessage:
    if isinstance(message, ChatMessage):
        return message
    if isinstance(message, tuple):
        role, content = message
        return ChatMessage(str(role), str(content))
    if isinstance(message, Mapping):
        calls = [tool_call(call) for call in _sequence(message.get("tool_calls") or [], "a message's tool_calls")]
        text = message.get("content")
        if text is None and "content" not in message and not calls:
            raise TypeError(
                f"a chat message has a content (an assistant message with tool calls may leave it out): {message!r}"
            )
        return ChatMessage(
            str(message["role"]),
            "" if text is None else str(text),
            calls,
            _optional_str(message.get("tool_call_id"), "a message's tool_call_id"),
            _optional_str(message.get("name"), "a message's name"),
        )
    raise TypeError(f"a chat message is a ChatMessage, a mapping or a (role, content) pair, not {message!r}")


def tool(item: ToolLike) -> Tool:
    if isinstance(item, Tool):
        return item
    if not isinstance(item, Mapping):
        raise TypeError(f"a tool is a mlxd.Tool or a mapping, not {item!r}")
    function = _function_of(item, "a tool")
    description = function.get("description") or ""
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, (str, Mapping)):
        raise TypeError(f"a tool's parameters are a JSON schema (a mapping or its text), not {parameters!r}")
    return Tool(
        _str(function.get("name"), "a tool's name"),
        _str(description, "a tool's description"),
        NO_PARAMETERS if parameters is None else parameters,
    )


_TOOL_CHOICE_NAMES: Mapping[str, ToolChoice] = {
    "auto": ToolChoiceAuto(),
    "none": ToolChoiceNone(),
    "required": ToolChoiceRequired(),
}


def tool_choice_of(choice: ToolChoiceLike) -> ToolChoice:
    if isinstance(choice, (ToolChoiceAuto, ToolChoiceNone, ToolChoiceRequired, ToolChoiceFunction)):
        return choice
    if isinstance(choice, str):
        found = _TOOL_CHOICE_NAMES.get(choice)
        if found is None:
            raise ValueError(f'tool_choice is "auto", "none", "required" or a function, not {choice!r}')
        return found
    if isinstance(choice, Mapping):
        function = _function_of(choice, "tool_choice")
        return ToolChoiceFunction(_str(function.get("name"), "tool_choice's function name"))
    raise TypeError(
        'tool_choice is "auto", "none", "required" or {"type": "function", "function": {"name": ...}}, '
        f"not {choice!r}"
    )


def prompt_input(prompt: PromptLike) -> PromptInput:
    if isinstance(prompt, str):
        return Raw(prompt)
    return Chat([chat_message(message) for message in prompt])


def texts_list(texts: Union[str, Sequence[str]]) -> List[str]:
    if isinstance(texts, str):
        return [texts]
    return list(texts)


def embed_request(
    model: ModelLike,
    texts: Union[str, Sequence[str]],
    normalize: bool,
    priority: Priority,
    deadline_ms: Optional[int],
    prompt: Optional[str] = None,
) -> EmbedRequest:
    return EmbedRequest(model_ref(model), texts_list(texts), normalize, Priority(priority), deadline_ms, prompt)


def rerank_request(
    model: ModelLike,
    query: str,
    documents: Union[str, Sequence[str]],
    top_n: Optional[int],
    priority: Priority,
    deadline_ms: Optional[int],
) -> RerankRequest:
    return RerankRequest(model_ref(model), query, texts_list(documents), top_n, Priority(priority), deadline_ms)


#: The classes of :data:`Constraint` (the codec writes these exactly, not subclasses).
CONSTRAINTS = (JsonSchema, JsonObject, Regex, Lark)


def generate_request(
    model: ModelLike,
    prompt: PromptLike,
    *,
    max_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    min_p: float,
    repetition_penalty: float,
    seed: Optional[int],
    stop: Sequence[StopLike],
    priority: Priority,
    deadline_ms: Optional[int],
    window: int,
    logprobs: Optional[int] = None,
    constraint: Optional[Constraint] = None,
    tools: Optional[Sequence[ToolLike]] = None,
    tool_choice: ToolChoiceLike = "auto",
    parallel_tool_calls: bool = True,
) -> GenerateRequest:
    if window < 1:
        raise ValueError("window must be at least 1: a stream without credit never produces a token")
    if constraint is not None and type(constraint) not in CONSTRAINTS:
        raise TypeError(
            "a constraint is mlxd.JsonSchema(schema), mlxd.JsonObject(), mlxd.Regex(pattern) or "
            f"mlxd.Lark(grammar), not {constraint!r}"
        )
    if not isinstance(parallel_tool_calls, bool):
        raise TypeError(f"parallel_tool_calls is a bool, not {parallel_tool_calls!r}")
    tool_list = [tool(item) for item in _sequence(() if tools is None else tools, "tools")]
    if isinstance(stop, (str, bytes)):
        stop = [stop]
    params = GenerateParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
        stop=[s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in stop],
        logprobs=logprobs,
        constraint=constraint,
        tools=tool_list,
        tool_choice=tool_choice_of(tool_choice),
        parallel_tool_calls=parallel_tool_calls,
    )
    return GenerateRequest(model_ref(model), prompt_input(prompt), params, window, Priority(priority), deadline_ms)


#: Requests a Busy refusal of which is retried (they change nothing at the daemon).
IDEMPOTENT = (
    EmbedRequest,
    RerankRequest,
    TokenizeRequest,
    DetokenizeRequest,
    StatusRequest,
    PingRequest,
    ListModelsRequest,
)


def is_idempotent(body: RequestBody) -> bool:
    return isinstance(body, IDEMPOTENT)


def expect(response: ResponseBody, cls: Type[T]) -> T:
    """The answer as the type the request calls for."""
    if not isinstance(response, cls):
        raise ProtocolError(f"expected {cls.__name__}, the daemon answered {type(response).__name__}")
    return response


def clamp_max_frame_len(max_frame_len: int) -> int:
    """The largest frame a client accepts, in [64 KiB, 64 MiB] as the daemon clamps what
    the Hello asks for: less could not hold the daemon's answers, more is never sent."""
    return max(_codec.HANDSHAKE_MAX_FRAME_LEN, min(int(max_frame_len), _codec.ABSOLUTE_MAX_FRAME_LEN))


def hello_body(client_name: str, max_frame_len: int, protocol_version: int) -> bytes:
    hello = Hello(protocol_version, client_name, os.getpid() & 0xFFFFFFFF, max_frame_len)
    return _codec.frame(encode_client(hello))


def welcome_from(message: ServerMessage, endpoint: str, protocol_version: int) -> Welcome:
    """The Welcome in the daemon's first answer, or the error it sent instead."""
    from .protocol import Fatal

    if isinstance(message, Fatal):
        error = from_wire(message.error, fatal=True)
        if isinstance(error, VersionMismatchError):
            raise VersionMismatchError(
                f"{error.message}. This client (mlxd for Python) speaks protocol version {protocol_version}: "
                f"use a client from the same mlxd release as the daemon at {endpoint}",
                fatal=True,
            )
        raise error
    if not isinstance(message, Welcome):
        raise ProtocolError(f"expected Welcome from {endpoint}, got {type(message).__name__}")
    if message.protocol_version != protocol_version:
        raise VersionMismatchError(
            f"the daemon at {endpoint} speaks protocol version {message.protocol_version}, this client "
            f"{protocol_version}; use a client from the same mlxd release as the daemon",
            fatal=True,
        )
    return message


def raise_error(message: ServerMessage) -> DaemonError:
    """The exception for an Error or Fatal frame."""
    from .protocol import Error, Fatal

    if isinstance(message, Error):
        return from_wire(message.error)
    if isinstance(message, Fatal):
        return from_wire(message.error, fatal=True)
    raise ProtocolError(f"{type(message).__name__} is not an error")


def embeddings_result(embeddings: Embeddings, numpy: bool) -> Any:
    """The vectors as a list of lists, or a (count, dim) float32 numpy array."""
    if numpy:
        try:
            import numpy as np
        except ImportError as err:
            raise ImportError(f"numpy=True needs numpy (pip install numpy): {err}") from err

        vectors = embeddings.vectors
        if isinstance(vectors, array.array) and vectors.typecode == "f" and len(vectors):
            flat = np.frombuffer(vectors, dtype=np.float32)  # no copy
        else:
            flat = np.asarray(vectors, dtype=np.float32)
        return flat.reshape(embeddings.count, embeddings.dim)
    return embeddings.rows()


@dataclasses.dataclass
class Completion:
    """A whole generation: its text, its token ids, and how it ended; with ``logprobs=k``
    also each token's :class:`TokenLogprobs` (one per id in ``tokens``; empty without);
    with tools, the :class:`ToolCall` s the model made, in order (``finish_reason``
    :attr:`FinishReason.ToolCalls` once it stopped after them)."""

    text: str
    tokens: List[int]
    summary: GenerationSummary
    logprobs: List[TokenLogprobs] = dataclasses.field(default_factory=list)
    tool_calls: List[ToolCall] = dataclasses.field(default_factory=list)


def completion_of(pieces: Sequence[StreamItem], summary: Optional[GenerationSummary]) -> Completion:
    """The :class:`Completion` of what a stream yielded and its summary."""
    if summary is None:
        raise ProtocolError("the stream ended without a summary")
    texts = [piece for piece in pieces if isinstance(piece, Token)]
    tokens = [piece.token for piece in texts if piece.token is not None]
    logprobs = [piece.logprobs for piece in texts if piece.logprobs is not None]
    calls = [piece for piece in pieces if isinstance(piece, ToolCall)]
    return Completion("".join(piece.text for piece in texts), tokens, summary, logprobs, calls)


class CreditWindow:
    """A stream's credit bookkeeping: the daemon may send ``window`` events ahead; each
    event the reader takes is given back, in grants of half a window, so at most
    ``window`` events are ever in flight or buffered."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.taken_since_grant = 0

    def took_one(self) -> int:
        """Counts one event taken by the reader; the credit to grant now (0: none yet)."""
        self.taken_since_grant += 1
        if self.taken_since_grant >= max(1, self.window // 2):
            grant, self.taken_since_grant = self.taken_since_grant, 0
            return grant
        return 0

