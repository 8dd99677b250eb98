"""The wire types of the mlxd protocol (version 7), as in ``proto/PROTOCOL.md``.

Structs are frozen dataclasses whose fields are in wire order; enums whose variants carry
nothing are :class:`enum.IntEnum` (value = wire tag, name = the Rust variant's name);
enums with data are a ``Union`` of classes, one per variant. A variant that is a newtype
of a struct is that struct (``Request::Embed(EmbedRequest)`` is :class:`EmbedRequest`);
one that wraps any other value is a small class with one field (``Response::Tokens`` is
:class:`Tokens`). Rust name → Python name where they differ:

- ``ClientMessage``: ``Hello`` · ``Request`` · ``Cancel`` · ``Credit``
- ``Request`` (:data:`RequestBody`): ``Ping`` → :class:`PingRequest`, ``Status`` →
  :class:`StatusRequest`, ``ListModels`` → :class:`ListModelsRequest`, ``Lease`` →
  :class:`LeaseRequest`, ``Release`` → :class:`ReleaseRequest`, ``Embed`` →
  :class:`EmbedRequest`, ``Generate`` → :class:`GenerateRequest`, ``Tokenize`` →
  :class:`TokenizeRequest`, ``Detokenize`` → :class:`DetokenizeRequest`, ``Load`` →
  :class:`LoadRequest`, ``Unload`` → :class:`UnloadRequest`, ``Weights`` →
  :class:`WeightsRequest`, ``Metrics`` → :class:`MetricsRequest`, ``Rerank`` →
  :class:`RerankRequest`
- ``ModelRef``: ``Name`` → :class:`ByName`, ``Lease`` → :class:`ByLease`
- ``PromptInput``: :class:`Raw` · :class:`Chat`
- ``Constraint`` (since v6): :class:`JsonSchema` · :class:`JsonObject` · :class:`Regex` ·
  :class:`Lark`
- ``ToolChoice`` (since v7): ``Auto`` → :class:`ToolChoiceAuto`, ``None`` →
  :class:`ToolChoiceNone`, ``Required`` → :class:`ToolChoiceRequired`, ``Function`` →
  :class:`ToolChoiceFunction`
- ``ServerMessage``: ``Welcome`` · ``Response`` · ``Event`` · ``Error`` · ``Fatal``
- ``Response`` (:data:`ResponseBody`): :class:`Pong`, ``Status`` → :class:`DaemonStatus`,
  :class:`Models`, ``Leased`` → :class:`LeaseInfo`, :class:`Released`,
  :class:`Embeddings`, ``Generated`` → :class:`GenerationSummary`, :class:`Tokens`,
  :class:`Text`, :class:`Loaded`, :class:`Unloaded`, :class:`Weights`, :class:`Metrics`,
  :class:`Reranked`
- ``Event`` (:data:`EventBody`): :class:`Token`, :class:`LoadProgress`, ``ToolCall`` →
  :class:`ToolCallEvent` (since v7; its one field is the :class:`ToolCall`)
"""

from __future__ import annotations

import array
import dataclasses
import enum
import json
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from . import _codec
from ._codec import Variant, f32, f32s, i64, u32, u64, variants

#: The protocol version this package speaks.
PROTOCOL_VERSION = 7

#: Most stream events the daemon holds for one stream at a time.
MAX_STREAM_CREDIT = 4096

#: Most alternatives ``logprobs=`` may ask for with each token (since v5).
MAX_TOP_LOGPROBS = 20

#: Most tools in one generation, and most tool calls in one chat message (since v7).
MAX_TOOLS = 128



# -- Enums without data ----------------------------------------------------------------------


class Priority(enum.IntEnum):
    """Scheduling class: interactive work is served first; batch work may be shed first."""

    Interactive = 0
    Batch = 1


class LoadStage(enum.IntEnum):
    Starting = 0
    Weights = 1
    Ready = 2


class FinishReason(enum.IntEnum):
    Stop = 0
    Length = 1
    Cancelled = 2
    Error = 3
    ToolCalls = 4  # the model stopped after making tool calls; since v7


class ModelKind(enum.IntEnum):
    Embedding = 0
    Generation = 1
    Rerank = 2  # a cross-encoder scoring (query, document) pairs; since v4


class ModelState(enum.IntEnum):
    Unloaded = 0
    Loading = 1
    Ready = 2
    Unloading = 3
    Failed = 4


class ErrorCode(enum.IntEnum):
    """What went wrong, for programs (the index is the wire tag; appended only)."""

    BadRequest = 0
    NotFound = 1
    Busy = 2
    Loading = 3
    WorkerFailed = 4
    Cancelled = 5
    Unauthorized = 6
    TooLarge = 7
    Shutdown = 8
    Internal = 9
    VersionMismatch = 10
    NotImplemented = 11
    InvalidLease = 12
    Timeout = 13
    OutOfMemory = 14
    Unsupported = 15


# -- Structs -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WireError:
    """An expected failure, carried as data: code, human message, when to retry."""

    code: ErrorCode
    message: str
    retry_after_ms: Optional[u64] = None


def _json_text(value: Union[str, Mapping[str, Any]], what: str) -> str:
    """A mapping as compact JSON text; a str as is."""
    if isinstance(value, Mapping):
        return json.dumps(dict(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if isinstance(value, str):
        return value
    raise TypeError(f"{what} is a mapping or its JSON text, not {value!r}")


# -- Tool calls (since v7) -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, init=False)
class ToolCall:
    """A function call: one the model made (a stream yields it, and
    :attr:`mlxd.Completion.tool_calls` lists them), or one an assistant message of the
    conversation made (``ChatMessage.tool_calls``). ``arguments`` is a JSON object as text;
    a mapping is written as compact JSON here. :meth:`parse_arguments` reads it back.
    Since v7."""

    id: str
    name: str
    arguments: str

    def __init__(self, id: str, name: str, arguments: Union[str, Mapping[str, Any]]) -> None:
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "arguments", _json_text(arguments, "a tool call's arguments"))

    def parse_arguments(self) -> Dict[str, Any]:
        """The arguments as a dict (:func:`json.loads`); ValueError if they are not a JSON
        object."""
        value = json.loads(self.arguments)
        if not isinstance(value, dict):
            raise ValueError(f"the arguments of tool call {self.id} are not a JSON object: {self.arguments!r}")
        return value


#: The schema of a function that takes no arguments (``Tool``'s default ``parameters``).
NO_PARAMETERS = '{"type":"object","properties":{}}'


@dataclasses.dataclass(frozen=True, init=False)
class Tool:
    """A function the model may call: ``name`` (1 to 64 of ``a-z A-Z 0-9 _ - .``, unique
    among a request's tools), what it does, and the JSON schema of its arguments (an
    object schema: a mapping, written as compact JSON here, or its JSON text as is).
    Since v7."""

    name: str
    description: str
    parameters: str

    def __init__(
        self, name: str, description: str = "", parameters: Union[str, Mapping[str, Any]] = NO_PARAMETERS
    ) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "description", description)
        object.__setattr__(self, "parameters", _json_text(parameters, "a tool's parameters (a JSON schema)"))


@dataclasses.dataclass(frozen=True)
class ToolChoiceAuto(Variant):
    """``ToolChoice::Auto``: the model decides; its output is parsed for calls."""


@dataclasses.dataclass(frozen=True)
class ToolChoiceNone(Variant):
    """``ToolChoice::None``: no calls; the tools are not shown to the model."""


@dataclasses.dataclass(frozen=True)
class ToolChoiceRequired(Variant):
    """``ToolChoice::Required``: at least one call (one unless ``parallel_tool_calls``),
    enforced with a constraint."""


@dataclasses.dataclass(frozen=True)
class ToolChoiceFunction(Variant):
    """``ToolChoice::Function``: a call of this function (one of the request's tools),
    enforced with a constraint."""

    NEWTYPE = True
    name: str


#: Whether the model may, must or must not call one of the tools (since v7).
ToolChoice = Union[ToolChoiceAuto, ToolChoiceNone, ToolChoiceRequired, ToolChoiceFunction]
variants(
    "ToolChoice",
    ("Auto", ToolChoiceAuto),
    ("None", ToolChoiceNone),
    ("Required", ToolChoiceRequired),
    ("Function", ToolChoiceFunction),
)


@dataclasses.dataclass(frozen=True)
class ChatMessage:
    """One message of a chat prompt. The daemon passes ``role`` to the model's chat
    template as is; ``system``, ``user`` and ``assistant`` are what templates know, and
    ``tool`` (an answer to a tool call) those that take tools. Since v7: ``tool_calls``,
    the calls an assistant message made (at most 128); ``tool_call_id`` and ``name``, a
    ``tool`` message's call and function."""

    role: str
    content: str
    tool_calls: list[ToolCall] = dataclasses.field(default_factory=list)  # since v7
    tool_call_id: Optional[str] = None  # since v7
    name: Optional[str] = None  # since v7


# -- Constraint (since v6) -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, init=False)
class JsonSchema(Variant):
    """``Constraint::JsonSchema``: the output is one JSON value valid against this JSON
    schema. ``schema`` is the schema's JSON text; a mapping is written as JSON here
    (``json.dumps``), a str is sent as is (the daemon refuses one that is not JSON)."""

    NEWTYPE = True
    schema: str

    def __init__(self, schema: Union[str, Mapping[str, Any]]) -> None:
        object.__setattr__(self, "schema", _json_text(schema, "a JSON schema"))


@dataclasses.dataclass(frozen=True)
class JsonObject(Variant):
    """``Constraint::JsonObject``: the output is one JSON object (any)."""


@dataclasses.dataclass(frozen=True)
class Regex(Variant):
    """``Constraint::Regex``: the output is text this regular expression matches as a
    whole (llguidance's syntax, close to Rust's ``regex``; no anchors needed)."""

    NEWTYPE = True
    pattern: str


@dataclasses.dataclass(frozen=True)
class Lark(Variant):
    """``Constraint::Lark``: the output is text this grammar derives from its ``start``
    rule (Lark syntax, as llguidance takes it)."""

    NEWTYPE = True
    grammar: str


#: What a generation's output must be (``GenerateParams.constraint``, since v6). The daemon
#: masks each step's tokens to those that keep the output possible; a constraint it cannot
#: compile (a schema that is not JSON, a bad regex) is a BadRequest.
Constraint = Union[JsonSchema, JsonObject, Regex, Lark]
variants("Constraint", ("JsonSchema", JsonSchema), ("JsonObject", JsonObject), ("Regex", Regex), ("Lark", Lark))


@dataclasses.dataclass(frozen=True)
class GenerateParams:
    """Sampling parameters. Neutral values: ``top_p`` 1.0, ``top_k`` 0, ``min_p`` 0.0,
    ``repetition_penalty`` 1.0, no seed, no stop strings; ``temperature`` 0 is greedy
    (and then the sampling filters and the seed do nothing). ``logprobs`` (since v5): None
    = off (no cost); k = each token's log probability and the k most likely alternatives
    (0 to :data:`MAX_TOP_LOGPROBS`; more is a BadRequest). ``constraint`` (since v6): None
    = free text; else what the output must be (:data:`Constraint`). ``tools`` (since v7,
    chat input only, at most :data:`MAX_TOOLS`): functions the model may call, as
    ``tool_choice`` says; ``parallel_tool_calls``: with :class:`ToolChoiceRequired`,
    whether more than one call may be made."""

    max_tokens: u32 = 256
    temperature: f32 = 0.7
    top_p: f32 = 1.0
    top_k: u32 = 0
    min_p: f32 = 0.0
    repetition_penalty: f32 = 1.0
    seed: Optional[u64] = None
    stop: list[bytes] = dataclasses.field(default_factory=list)
    logprobs: Optional[u32] = None  # since v5
    constraint: Optional[Constraint] = None  # since v6
    tools: list[Tool] = dataclasses.field(default_factory=list)  # since v7
    tool_choice: ToolChoice = ToolChoiceAuto()  # since v7
    parallel_tool_calls: bool = True  # since v7


@dataclasses.dataclass(frozen=True)
class Limits:
    """Limits in force for a session; requests over them are refused with a typed error."""

    max_frame_len: u32
    max_texts_per_embed: u32
    max_text_bytes: u32
    max_in_flight: u32
    max_leases: u32
    max_tokens: u32


@dataclasses.dataclass(frozen=True)
class SchedStats:
    """A model's scheduler at a glance; counters run from the daemon's start."""

    queued: u32
    running: u32
    slots: u32
    admitted: u64
    busy: u64
    shed: u64
    timeouts: u64
    single_stream: u64
    batches: u64
    batched_requests: u64
    service_us: u64


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: ModelKind
    state: ModelState
    source: str
    leases: u32
    in_flight: u32
    queue_depth: u32
    queue_capacity: u32
    resident_bytes: u64
    dim: u32
    max_seq_len: u32
    idle_ms: Optional[u64]
    keep_alive_left_ms: Optional[u64]
    backend: str
    worker_pid: Optional[u32]
    last_error: Optional[str]
    sched: SchedStats
    #: Embedding models: the named prompts ``embed(prompt=...)`` may choose, sorted, and
    #: the one used when a request names none (since v4).
    prompts: list[str]
    default_prompt: Optional[str]
    #: Bytes the daemon's memory budget counts for the model when loaded (since v4).
    estimated_bytes: u64
    #: Generation models: whether the chat template takes tools (``tools=``; a model whose
    #: template takes none refuses them) (since v7).
    tools: bool


@dataclasses.dataclass(frozen=True)
class MappedWeights:
    path: str
    bytes: u64
    tensors: u32
    aligned: bool
    models: list[str]


# -- ModelRef, PromptInput ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ByName(Variant):
    """``ModelRef::Name``: a model by name, for this one request."""

    NEWTYPE = True
    name: str


@dataclasses.dataclass(frozen=True)
class ByLease(Variant):
    """``ModelRef::Lease``: a model by a lease of this session."""

    NEWTYPE = True
    lease: u64


ModelRef = Union[ByName, ByLease]
variants("ModelRef", ("Name", ByName), ("Lease", ByLease))


@dataclasses.dataclass(frozen=True)
class Raw(Variant):
    """``PromptInput::Raw``: the prompt as is."""

    NEWTYPE = True
    text: str


@dataclasses.dataclass(frozen=True)
class Chat(Variant):
    """``PromptInput::Chat``: rendered with the model's chat template."""

    NEWTYPE = True
    messages: list[ChatMessage]


PromptInput = Union[Raw, Chat]
variants("PromptInput", ("Raw", Raw), ("Chat", Chat))


# -- Request bodies ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PingRequest(Variant):
    pass


@dataclasses.dataclass(frozen=True)
class StatusRequest(Variant):
    pass


@dataclasses.dataclass(frozen=True)
class ListModelsRequest(Variant):
    pass


@dataclasses.dataclass(frozen=True)
class LeaseRequest(Variant):
    """``keep_alive_ms``: None = the model's default, 0 = unload as soon as idle,
    negative = never by keep-alive (setting it is an operator action)."""

    model: str
    keep_alive_ms: Optional[i64] = None


@dataclasses.dataclass(frozen=True)
class ReleaseRequest(Variant):
    lease: u64


@dataclasses.dataclass(frozen=True)
class EmbedRequest(Variant):
    """``prompt`` (since v4): None = the model's default prompt (none if it has none),
    ``""`` = no prompt, a name = that one of the model's ``prompts`` (another: BadRequest)."""

    model: ModelRef
    texts: list[str]
    normalize: bool = True
    priority: Priority = Priority.Interactive
    deadline_ms: Optional[u64] = None
    prompt: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class RerankRequest(Variant):
    """Scores each document's relevance to ``query`` with a reranking model; ``top_n``:
    only the best that many (None: all). Since v4."""

    model: ModelRef
    query: str
    documents: list[str]
    top_n: Optional[u32] = None
    priority: Priority = Priority.Interactive
    deadline_ms: Optional[u64] = None


@dataclasses.dataclass(frozen=True)
class GenerateRequest(Variant):
    model: ModelRef
    input: PromptInput
    params: GenerateParams
    initial_credit: u32
    priority: Priority = Priority.Interactive
    deadline_ms: Optional[u64] = None


@dataclasses.dataclass(frozen=True)
class TokenizeRequest(Variant):
    model: ModelRef
    text: str
    add_special_tokens: bool = True


@dataclasses.dataclass(frozen=True)
class DetokenizeRequest(Variant):
    model: ModelRef
    tokens: list[u32]


@dataclasses.dataclass(frozen=True)
class LoadRequest(Variant):
    model: str


@dataclasses.dataclass(frozen=True)
class UnloadRequest(Variant):
    model: str
    force: bool = False


@dataclasses.dataclass(frozen=True)
class WeightsRequest(Variant):
    pass


@dataclasses.dataclass(frozen=True)
class MetricsRequest(Variant):
    pass


RequestBody = Union[
    PingRequest,
    StatusRequest,
    ListModelsRequest,
    LeaseRequest,
    ReleaseRequest,
    EmbedRequest,
    GenerateRequest,
    TokenizeRequest,
    DetokenizeRequest,
    LoadRequest,
    UnloadRequest,
    WeightsRequest,
    MetricsRequest,
    RerankRequest,
]
variants(
    "Request",
    ("Ping", PingRequest),
    ("Status", StatusRequest),
    ("ListModels", ListModelsRequest),
    ("Lease", LeaseRequest),
    ("Release", ReleaseRequest),
    ("Embed", EmbedRequest),
    ("Generate", GenerateRequest),
    ("Tokenize", TokenizeRequest),
    ("Detokenize", DetokenizeRequest),
    ("Load", LoadRequest),
    ("Unload", UnloadRequest),
    ("Weights", WeightsRequest),
    ("Metrics", MetricsRequest),
    ("Rerank", RerankRequest),
)


# -- Client messages ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Hello(Variant):
    """The first frame of a session. Never changes shape."""

    protocol_version: u32
    client_name: str
    pid: u32
    max_frame_len: u32


@dataclasses.dataclass(frozen=True)
class Request(Variant):
    id: u64
    body: RequestBody


@dataclasses.dataclass(frozen=True)
class Cancel(Variant):
    id: u64


@dataclasses.dataclass(frozen=True)
class Credit(Variant):
    id: u64
    events: u32


ClientMessage = Union[Hello, Request, Cancel, Credit]
variants("ClientMessage", ("Hello", Hello), ("Request", Request), ("Cancel", Cancel), ("Credit", Credit))


# -- Response bodies --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pong(Variant):
    pass


@dataclasses.dataclass(frozen=True)
class DaemonStatus(Variant):
    daemon_version: str
    protocol_version: u32
    pid: u32
    uptime_ms: u64
    endpoint: str
    sessions: u32
    models: list[ModelInfo]


@dataclasses.dataclass(frozen=True)
class Models(Variant):
    NEWTYPE = True
    models: list[ModelInfo]


@dataclasses.dataclass(frozen=True)
class LeaseInfo(Variant):
    lease: u64
    model: ModelInfo


@dataclasses.dataclass(frozen=True)
class Released(Variant):
    pass


@dataclasses.dataclass(frozen=True)
class Embeddings(Variant):
    """Row-major float32 vectors: vector ``i`` is ``vectors[i*dim:(i+1)*dim]``."""

    model: str
    count: u32
    dim: u32
    vectors: f32s  # an array.array("f") when decoded
    prompt_tokens: u64

    def rows(self) -> list[list[float]]:
        """The vectors one by one, as lists."""
        dim = max(self.dim, 1)
        return [list(self.vectors[i * dim : (i + 1) * dim]) for i in range(self.count)]


@dataclasses.dataclass(frozen=True)
class GenerationSummary(Variant):
    """How a generation ended, and how fast it went."""

    finish_reason: FinishReason
    prompt_tokens: u32
    completion_tokens: u32
    prompt_tokens_per_s: f32
    generation_tokens_per_s: f32
    cached_prompt_tokens: u32  # since v3


@dataclasses.dataclass(frozen=True)
class Tokens(Variant):
    NEWTYPE = True
    tokens: list[u32]


@dataclasses.dataclass(frozen=True)
class Text(Variant):
    NEWTYPE = True
    text: str


@dataclasses.dataclass(frozen=True)
class Loaded(Variant):
    NEWTYPE = True
    model: ModelInfo


@dataclasses.dataclass(frozen=True)
class Unloaded(Variant):
    NEWTYPE = True
    model: ModelInfo


@dataclasses.dataclass(frozen=True)
class Weights(Variant):
    NEWTYPE = True
    weights: list[MappedWeights]


@dataclasses.dataclass(frozen=True)
class Metrics(Variant):
    """OpenMetrics text (``application/openmetrics-text; version=1.0.0``)."""

    NEWTYPE = True
    text: str


@dataclasses.dataclass(frozen=True)
class RerankResult:
    """One document's relevance: ``index`` is its position in the request, ``score`` the
    sigmoid of the model's logit, in [0, 1]."""

    index: u32
    score: f32


@dataclasses.dataclass(frozen=True)
class Reranked(Variant):
    """The answer to a rerank: ``results`` best first (equal scores in document order),
    at most ``top_n`` of them; ``prompt_tokens`` counts every (query, document) pair's
    tokens. Since v4."""

    model: str
    results: list[RerankResult]
    prompt_tokens: u64


ResponseBody = Union[
    Pong,
    DaemonStatus,
    Models,
    LeaseInfo,
    Released,
    Embeddings,
    GenerationSummary,
    Tokens,
    Text,
    Loaded,
    Unloaded,
    Weights,
    Metrics,
    Reranked,
]
variants(
    "Response",
    ("Pong", Pong),
    ("Status", DaemonStatus),
    ("Models", Models),
    ("Leased", LeaseInfo),
    ("Released", Released),
    ("Embeddings", Embeddings),
    ("Generated", GenerationSummary),
    ("Tokens", Tokens),
    ("Text", Text),
    ("Loaded", Loaded),
    ("Unloaded", Unloaded),
    ("Weights", Weights),
    ("Metrics", Metrics),
    ("Reranked", Reranked),
)


# -- Events -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TopLogprob:
    """One of the most likely tokens at a step: its id, its text on its own, its log
    probability. Since v5."""

    token: u32
    text: str
    logprob: f32


@dataclasses.dataclass(frozen=True)
class TokenLogprobs:
    """A generated token's log probability and the most likely tokens at its step, best
    first (as many as asked; the chosen token is among them if it is one of the best).
    ``logprob`` is the log-softmax of the model's logits after the repetition penalty,
    before temperature, top-p, top-k and min-p, so a sampled token has one too; ``text``
    is the token decoded on its own (a piece of a multi-byte character is U+FFFD).
    Since v5."""

    text: str
    logprob: f32
    top: list[TopLogprob]


@dataclasses.dataclass(frozen=True)
class Token(Variant):
    """One piece of generated text and the token that completed it. ``text`` may be empty
    (held back while it could be the start of a stop string); ``token`` is None for text
    released at the end of the stream without a new token. ``logprobs`` (since v5): the
    token's :class:`TokenLogprobs` when the generation asked for them (``logprobs=k``),
    else None; never on a ``token`` None event."""

    text: str
    token: Optional[u32]
    logprobs: Optional[TokenLogprobs] = None


@dataclasses.dataclass(frozen=True)
class LoadProgress(Variant):
    model: str
    stage: LoadStage
    done: u64
    total: u64


@dataclasses.dataclass(frozen=True)
class ToolCallEvent(Variant):
    """``Event::ToolCall``: a call the model made, parsed from its output once complete,
    right after the Token event that completed it (the tokens that spelled it come as
    Token events with empty text). It costs no credit. Since v7."""

    NEWTYPE = True
    call: ToolCall


EventBody = Union[Token, LoadProgress, ToolCallEvent]
variants("Event", ("Token", Token), ("LoadProgress", LoadProgress), ("ToolCall", ToolCallEvent))


# -- Server messages ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Welcome(Variant):
    """The answer to Hello. Never changes shape."""

    protocol_version: u32
    daemon_version: str
    session_id: u64
    limits: Limits


@dataclasses.dataclass(frozen=True)
class Response(Variant):
    """The final, successful answer to request ``id``."""

    id: u64
    body: ResponseBody


@dataclasses.dataclass(frozen=True)
class Event(Variant):
    """A non-final stream event of request ``id``."""

    id: u64
    event: EventBody


@dataclasses.dataclass(frozen=True)
class Error(Variant):
    """The final, failed answer to request ``id``."""

    id: u64
    error: WireError


@dataclasses.dataclass(frozen=True)
class Fatal(Variant):
    """A fault of the whole session; the daemon closes the connection after it."""

    NEWTYPE = True
    error: WireError


ServerMessage = Union[Welcome, Response, Event, Error, Fatal]
variants(
    "ServerMessage", ("Welcome", Welcome), ("Response", Response), ("Event", Event), ("Error", Error), ("Fatal", Fatal)
)


# -- Bodies ------------------------------------------------------------------------------------


def encode_client(message: ClientMessage) -> bytes:
    """A client message as a frame body (no length prefix)."""
    return _codec.encode(message, ClientMessage)


def encode_server(message: ServerMessage) -> bytes:
    """A daemon message as a frame body (no length prefix)."""
    return _codec.encode(message, ServerMessage)


def decode_client(body: bytes) -> ClientMessage:
    """Exactly one client message from a frame body; raises :class:`mlxd.DecodeError`."""
    message: ClientMessage = _codec.decode(body, ClientMessage)
    return message


def decode_server(body: bytes) -> ServerMessage:
    """Exactly one daemon message from a frame body; raises :class:`mlxd.DecodeError`."""
    message: ServerMessage = _codec.decode(body, ServerMessage)
    return message


def f32_array(values: Sequence[float]) -> "array.array[float]":
    """``values`` as the float32 array the codec writes without a copy."""
    return array.array("f", values)
