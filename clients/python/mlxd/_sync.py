"""The blocking client: :class:`Client`, leased :class:`Model` handles and
:class:`GenerationStream`.

No background thread: whichever call needs a frame reads the connection and routes every
frame it reads to the request it belongs to (one reader at a time), so one client can be
used from several threads, and a stream that is not being read simply stops at the
daemon once its credit is spent.
"""

from __future__ import annotations

import collections
import io
import itertools
import os
import socket
import subprocess
import threading
import time
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    Iterator,
    List,
    Literal,
    Optional,
    Sequence,
    Type,
    TypeVar,
    Union,
    cast,
    overload,
)

from . import _base, _codec, _connect
from ._base import (
    DEFAULT_WINDOW,
    Completion,
    HasLease,
    ItemT,
    ModelLike,
    ProgressCallback,
    PromptLike,
    StopLike,
    StreamItem,
    ToolChoiceLike,
    ToolLike,
)
from ._codec import DEFAULT_MAX_FRAME_LEN, HANDSHAKE_MAX_FRAME_LEN, PREFIX_LEN
from ._connect import RetryPolicy
from ._exc import MlxdError, ProtocolError
from .errors import (
    BusyError,
    ConnectionClosedError,
    ConnectTimeoutError,
    DaemonError,
    FallbackError,
    NoDaemonError,
)
from .protocol import (
    PROTOCOL_VERSION,
    Cancel,
    ClientMessage,
    Constraint,
    Credit,
    DaemonStatus,
    DetokenizeRequest,
    Embeddings,
    Error,
    Event,
    Fatal,
    GenerationSummary,
    LeaseInfo,
    LeaseRequest,
    Limits,
    ListModelsRequest,
    Loaded,
    LoadProgress,
    LoadRequest,
    MappedWeights,
    Metrics,
    MetricsRequest,
    ModelInfo,
    Models,
    PingRequest,
    Pong,
    Priority,
    ReleaseRequest,
    Released,
    Request,
    RequestBody,
    Reranked,
    Response,
    ResponseBody,
    ServerMessage,
    StatusRequest,
    Text,
    Token,
    TokenizeRequest,
    Tokens,
    ToolCallEvent,
    UnloadRequest,
    Unloaded,
    Weights,
    WeightsRequest,
    Welcome,
    decode_server,
    encode_client,
)

if TYPE_CHECKING:
    from ._base import FloatMatrix

T = TypeVar("T")

#: What a socket raises at its timeout (TimeoutError since Python 3.10); named here because
#: Client's ``socket`` parameter hides the module.
_SocketTimeout = socket.timeout

#: The inbox's size: most frames fit whole, often several in one read.
_INBOX_SIZE = 64 * 1024


# -- Transports ---------------------------------------------------------------------------


class _SocketIO:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._peeked = bytearray(1)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def wait(self) -> None:
        """Blocks until there is something to read or the end, taking nothing: a signal
        handler that raises (Ctrl-C) here loses no byte."""
        self.sock.recv_into(self._peeked, 1, socket.MSG_PEEK)

    def read_into(self, view: memoryview) -> int:
        """Reads what there is into ``view`` (after :meth:`wait`: without blocking); 0 at the end."""
        return self.sock.recv_into(view)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class _PipeIO:
    """A private ``mlxd stdio``: frames to its stdin, from its stdout."""

    def __init__(self, process: "subprocess.Popen[bytes]") -> None:
        self.process = process
        assert process.stdin is not None and process.stdout is not None
        self.stdin = process.stdin
        self.stdout = cast(io.BufferedReader, process.stdout)

    def send(self, data: bytes) -> None:
        self.stdin.write(data)
        self.stdin.flush()

    def wait(self) -> None:
        """As :meth:`_SocketIO.wait`: what comes stays in the reader's buffer."""
        self.stdout.peek(1)

    def read_into(self, view: memoryview) -> int:
        # read1, not readinto1: given more room than its buffer holds, readinto1 reads the
        # pipe again even after it has copied what was buffered, and blocks.
        data = self.stdout.read1(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        # It exits when its stdin closes; a stuck one is killed.
        try:
            self.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.stdout.close()


_IO = Union[_SocketIO, _PipeIO]


def _open(
    path: Optional[str],
    fallback: bool,
    mlxd_binary: Optional[str],
    trusted_uids: Sequence[int],
    connect_timeout: Optional[float],
) -> "tuple[_IO, str]":
    """The transport to the daemon (or a private ``mlxd stdio``) and its name."""
    path = _connect.resolve_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(connect_timeout)
    try:
        sock.connect(path)
    except socket.timeout as err:  # a backlog that stays full
        sock.close()
        raise ConnectTimeoutError(f"{path} did not accept the connection within {connect_timeout:g} s") from err
    except OSError as err:
        sock.close()
        if not (fallback and _connect.is_no_daemon(err)):
            raise NoDaemonError(f"no daemon at {path} ({err.strerror or err})") from err
        binary = _connect.find_mlxd(mlxd_binary)
        _connect.say_fallback(path, err)
        argv, env = _connect.fallback_command(binary)
        try:
            process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        except OSError as spawn_err:
            raise FallbackError(f"cannot start `{binary} stdio` as a fallback: {spawn_err}") from spawn_err
        return _PipeIO(process), "stdio"
    try:
        # Before the Hello: whoever listens must be us, root or trusted.
        _connect.check_server(path, sock, trusted_uids)
    except BaseException:
        sock.close()
        raise
    return _SocketIO(sock), path


# -- The connection ------------------------------------------------------------------------


class _Connection:
    """Frames over one transport; routes each frame from the daemon to its request."""

    def __init__(self, io: _IO, endpoint: str) -> None:
        self.io = io
        self.endpoint = endpoint
        self.max_in = HANDSHAKE_MAX_FRAME_LEN
        self.max_out = HANDSHAKE_MAX_FRAME_LEN
        self._cond = threading.Condition(threading.Lock())
        self._write_lock = threading.Lock()
        self._routes: Dict[int, Deque[ServerMessage]] = {}
        self._reading = False
        # Bytes read from the daemon and not yet taken as frames: [_head, _tail) of _inbox.
        # They outlive a reader interrupted while it waits (Ctrl-C), for the next reader.
        self._inbox = bytearray(_INBOX_SIZE)
        self._head = 0
        self._tail = 0
        self._waiting = False
        self._error: Optional[MlxdError] = None
        self._ids = itertools.count(1)
        # Streams dropped unfinished (from __del__, which must not take a lock): cancelled
        # and forgotten by the next call that sends or reads.
        self._abandoned: Deque[int] = collections.deque()

    # Writing.

    def send(self, message: ClientMessage) -> None:
        body = encode_client(message)
        if len(body) > self.max_out:
            raise _codec.FrameTooLargeError(
                f"request of {len(body)} bytes exceeds the daemon's max_frame_len of {self.max_out}; send less at once"
            )
        with self._write_lock:
            if self._error is not None:
                raise self._error
            try:
                self.io.send(self._abandoned_cancels() + _codec.frame(body))
            except OSError as err:
                raise self._fail(ConnectionClosedError(f"the connection to {self.endpoint} broke: {err}")) from err
            except BaseException:
                # Interrupted (Ctrl-C) while the socket was full: part of the frame may be
                # gone and the rest cannot follow it in step, so the session cannot go on.
                self._fail(ConnectionClosedError("the connection was interrupted while sending a frame"))
                raise

    def abandon(self, request_id: int) -> None:
        """Cancels and forgets a request soon, without blocking (safe in ``__del__``)."""
        self._abandoned.append(request_id)

    def _flush_abandoned(self) -> None:
        """Sends the Cancels of abandoned requests, if the writer is free now."""
        if self._abandoned and self._write_lock.acquire(blocking=False):
            try:
                if self._error is None:
                    self.io.send(self._abandoned_cancels())
            except OSError:
                pass  # the reader will find the connection broken
            finally:
                self._write_lock.release()

    def _abandoned_cancels(self) -> bytes:
        frames = []
        while self._abandoned:
            request_id = self._abandoned.popleft()
            with self._cond:
                self._routes.pop(request_id, None)
            frames.append(_codec.frame(encode_client(Cancel(request_id))))
        return b"".join(frames)

    def try_send(self, message: ClientMessage) -> None:
        """Sends a control frame if the connection still stands."""
        try:
            self.send(message)
        except MlxdError:
            pass

    # Reading.

    def read_message(self) -> ServerMessage:
        """One frame from the daemon (the caller is the only reader)."""
        return self._read(None)

    def _read(self, deliver: Optional[Callable[[ServerMessage], None]]) -> ServerMessage:
        """Reads one frame and hands it to ``deliver`` before taking it off the inbox.

        Interrupted while it waits for bytes (a signal handler that raises: Ctrl-C), the
        bytes of the frame read so far stay for the next reader and the session goes on.
        Interrupted anywhere else, what became of the frame is unknown: the connection
        fails, as it does for bad bytes."""
        self._waiting = False
        try:
            end = self._whole_frame()
            message = decode_server(memoryview(self._inbox)[self._head + PREFIX_LEN : end].tobytes())
            if deliver is not None:
                deliver(message)
            self._take(end)
            return message
        except EOFError as eof:
            if eof.args and eof.args[0]:
                raise self._fail(ProtocolError(f"{self.endpoint} closed the connection in the middle of a frame"))
            raise self._fail(ConnectionClosedError(f"the daemon at {self.endpoint} closed the connection"))
        except ProtocolError as err:
            raise self._fail(err)
        except OSError as err:
            raise self._fail(ConnectionClosedError(f"reading from {self.endpoint} failed: {err}")) from err
        except BaseException:
            if not self._waiting:
                self._fail(ConnectionClosedError("the connection was interrupted while taking a frame"))
            raise

    def _whole_frame(self) -> int:
        """Reads until the inbox holds a whole frame from ``_head``; returns its end."""
        while True:
            have = self._tail - self._head
            need = PREFIX_LEN
            if have >= PREFIX_LEN:
                need += _codec.body_length(bytes(self._inbox[self._head : self._head + PREFIX_LEN]), self.max_in)
                if have >= need:
                    return self._head + need
            if self._head + need > len(self._inbox):
                self._make_room(need)
            self._waiting = True
            self.io.wait()
            self._waiting = False
            count = self.io.read_into(memoryview(self._inbox)[self._tail :])
            if count == 0:
                raise EOFError(have)
            self._tail += count

    def _make_room(self, need: int) -> None:
        """Moves the bytes not yet taken to the front of an inbox of at least ``need`` bytes."""
        have = self._tail - self._head
        if need > len(self._inbox):
            inbox = bytearray(need)
            inbox[:have] = self._inbox[self._head : self._tail]
            self._inbox = inbox
        else:
            self._inbox[:have] = self._inbox[self._head : self._tail]
        self._head, self._tail = 0, have

    def _take(self, end: int) -> None:
        self._head = end
        if self._head == self._tail:
            self._head = self._tail = 0
            if len(self._inbox) > _INBOX_SIZE:  # after a large frame
                self._inbox = bytearray(_INBOX_SIZE)

    def _fail(self, error: MlxdError) -> MlxdError:
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()
        try:
            self.io.close()
        except OSError:
            pass
        return self._error

    def open_route(self) -> int:
        with self._cond:
            if self._error is not None:
                raise self._error
            request_id = next(self._ids)
            self._routes[request_id] = collections.deque()
            return request_id

    def start(self, body: RequestBody) -> int:
        request_id = self.open_route()
        try:
            self.send(Request(request_id, body))
        except BaseException as err:
            self.forget(request_id)
            if not isinstance(err, MlxdError):
                # Interrupted: the request may have gone out (a Cancel for an id the
                # daemon does not know is ignored).
                self.try_send(Cancel(request_id))
            raise
        return request_id

    def forget(self, request_id: int) -> None:
        with self._cond:
            self._routes.pop(request_id, None)

    def buffered(self, request_id: int) -> int:
        """Token events received for the request and not yet taken."""
        with self._cond:
            return _tokens_in(self._routes.get(request_id, ()))

    def next_for(self, request_id: int) -> ServerMessage:
        """The next frame of request ``request_id``, reading the connection as needed."""
        self._flush_abandoned()
        while True:
            with self._cond:
                while True:
                    queue = self._routes.get(request_id)
                    if queue is None:
                        raise ProtocolError(f"request {request_id} is not in flight")
                    if queue:
                        return queue.popleft()
                    if self._error is not None:
                        raise self._error
                    if not self._reading:
                        self._reading = True
                        break
                    self._cond.wait()
            try:
                self._read(self._route)
            finally:
                with self._cond:
                    self._reading = False
                    self._cond.notify_all()

    def _route(self, message: ServerMessage) -> None:
        with self._cond:
            if isinstance(message, (Response, Error, Event)):
                queue = self._routes.get(message.id)
                if queue is not None:  # else: a request nobody waits for any more
                    queue.append(message)
            elif isinstance(message, Fatal):
                self._error = _base.raise_error(message)
                self._cond.notify_all()
            self._cond.notify_all()

    def close(self) -> None:
        self._fail(ConnectionClosedError("the client was closed"))


def _tokens_in(frames: Iterable[ServerMessage]) -> int:
    return sum(1 for frame in frames if isinstance(frame, Event) and isinstance(frame.event, Token))


# -- The client ------------------------------------------------------------------------------


class Client:
    """A blocking connection to mlxd.

    ``socket``: the socket path [default: ``$MLXD_SOCKET``, ``$XDG_RUNTIME_DIR/mlxd/mlxd.sock``,
    ``/tmp/mlxd-$UID/mlxd.sock``, the system service's socket, as the Rust client decides].
    ``fallback``: start a private ``mlxd stdio`` when no daemon answers [default: on, unless
    ``$MLXD_NO_FALLBACK`` is set]; it says so on stderr. ``mlxd_binary``: the ``mlxd`` it
    starts [default: ``$MLXD_BIN``, then ``mlxd`` on PATH]. ``trusted_uids``: users besides
    this one and root whose daemon may serve the socket [default: ``$MLXD_TRUSTED_UIDS``].
    ``max_frame_len``: the largest frame taken from the daemon, clamped to [64 KiB, 64 MiB]
    as the daemon clamps it [default: 16 MiB]. ``retry``: how Busy refusals of idempotent
    requests are retried (a fatal one, which ends the session, is not). ``protocol_version``
    is for tests of version handling only.

    Usable from several threads. Close it (or use ``with``) to end the session; the daemon
    then releases every lease it holds, as it does when the process exits.
    """

    def __init__(
        self,
        socket: Optional[Union[str, "os.PathLike[str]"]] = None,
        *,
        fallback: Optional[bool] = None,
        mlxd_binary: Optional[str] = None,
        client_name: Optional[str] = None,
        max_frame_len: int = DEFAULT_MAX_FRAME_LEN,
        retry: RetryPolicy = RetryPolicy(),
        trusted_uids: Optional[Sequence[int]] = None,
        connect_timeout: Optional[float] = 10.0,
        protocol_version: int = PROTOCOL_VERSION,
    ) -> None:
        self.retry = retry
        max_frame_len = _base.clamp_max_frame_len(max_frame_len)
        io, endpoint = _open(
            os.fspath(socket) if socket is not None else None,
            _connect.fallback_from_env() if fallback is None else fallback,
            mlxd_binary,
            _connect.trusted_uids_from_env() if trusted_uids is None else list(trusted_uids),
            connect_timeout,
        )
        #: The socket path, or "stdio" for a private ``mlxd stdio``.
        self.endpoint = endpoint
        self._connection = _Connection(io, endpoint)
        try:
            self.welcome: Welcome = self._handshake(
                client_name or _connect.client_name_default(), max_frame_len, protocol_version
            )
        except ConnectionClosedError as err:
            self._connection.close()
            if isinstance(err.__cause__, _SocketTimeout):
                raise ConnectTimeoutError(
                    f"the daemon at {endpoint} did not answer the Hello within {connect_timeout:g} s"
                ) from err
            raise
        except BaseException:
            self._connection.close()
            raise
        if isinstance(io, _SocketIO):
            io.sock.settimeout(None)
        self._connection.max_in = max_frame_len
        self._connection.max_out = self.welcome.limits.max_frame_len

    def _handshake(self, client_name: str, max_frame_len: int, protocol_version: int) -> Welcome:
        connection = self._connection
        hello = _base.hello_body(client_name, max_frame_len, protocol_version)
        try:
            connection.io.send(hello)
        except OSError as err:
            # A daemon that refuses the peer answers before reading the Hello and closes:
            # its refusal may still be there to read, and says more than the broken pipe.
            try:
                answer = connection.read_message()
            except MlxdError:
                raise ConnectionClosedError(f"the daemon at {self.endpoint} closed the connection: {err}") from err
            _base.welcome_from(answer, self.endpoint, protocol_version)
            raise ConnectionClosedError(f"the daemon at {self.endpoint} closed the connection: {err}") from err
        return _base.welcome_from(connection.read_message(), self.endpoint, protocol_version)

    # Lifetime.

    def close(self) -> None:
        """Ends the session (the daemon releases its leases); a private ``mlxd stdio`` exits."""
        self._connection.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def limits(self) -> Limits:
        """The limits in force for this session (from the Welcome)."""
        return self.welcome.limits

    # The core: a request and its answer.

    def call(
        self, body: RequestBody, *, on_event: Optional[Any] = None, retry: Optional[bool] = None
    ) -> ResponseBody:
        """Sends one request and waits for its final answer, raising the daemon's error as
        a :class:`DaemonError` subclass. Busy refusals of idempotent requests are retried
        as :attr:`retry` says (``retry=False`` turns that off for this call). Stream
        events go to ``on_event``."""
        attempts = self.retry.max_retries if (retry is not False and _base.is_idempotent(body)) else 0
        for _ in range(attempts):
            try:
                return self._call_once(body, on_event)
            except BusyError as busy:
                if busy.fatal:  # the session is over: no retry can be admitted
                    raise
                time.sleep(self.retry.wait(busy.retry_after))
        return self._call_once(body, on_event)

    def _call_once(self, body: RequestBody, on_event: Optional[Any]) -> ResponseBody:
        connection = self._connection
        request_id = connection.start(body)
        done = False
        try:
            while True:
                message = connection.next_for(request_id)
                if isinstance(message, Response):
                    done = True
                    return message.body
                if isinstance(message, Error):
                    done = True
                    raise _base.raise_error(message)
                if isinstance(message, Event) and on_event is not None:
                    on_event(message.event)
        finally:
            connection.forget(request_id)
            if not done:  # interrupted: stop the request at the daemon
                connection.try_send(Cancel(request_id))

    def _expect(self, body: RequestBody, cls: Type[T], on_event: Optional[Any] = None) -> T:
        return _base.expect(self.call(body, on_event=on_event), cls)

    # Daemon-wide requests.

    def ping(self) -> float:
        """Round trip to the daemon, in seconds."""
        started = time.perf_counter()
        self._expect(PingRequest(), Pong)
        return time.perf_counter() - started

    def status(self) -> DaemonStatus:
        return self._expect(StatusRequest(), DaemonStatus)

    def models(self) -> List[ModelInfo]:
        return self._expect(ListModelsRequest(), Models).models

    def metrics(self) -> str:
        """The daemon's Prometheus metrics, as OpenMetrics text."""
        return self._expect(MetricsRequest(), Metrics).text

    def weights(self) -> List[MappedWeights]:
        return self._expect(WeightsRequest(), Weights).weights

    def load(self, model: str, *, progress: Optional[ProgressCallback] = None) -> ModelInfo:
        """Loads ``model`` without leasing it; ``progress`` gets each load progress event."""
        return self._expect(LoadRequest(model), Loaded, _progress_events(progress)).model

    def unload(self, model: str, *, force: bool = False) -> ModelInfo:
        """Unloads ``model`` (an operator action); a leased model needs ``force``."""
        return self._expect(UnloadRequest(model, force), Unloaded).model

    def lease(
        self, model: str, *, progress: Optional[ProgressCallback] = None, keep_alive_ms: Optional[int] = None
    ) -> "Model":
        """Leases ``model``, loading it if needed. Use ``with client.lease(name) as model:``
        to release it at the end of the block (or call :meth:`Model.release`)."""
        info = self._expect(LeaseRequest(model, keep_alive_ms), LeaseInfo, _progress_events(progress))
        return Model(self, info)

    # Model requests (by name, or by a leased Model).

    @overload
    def embed(
        self,
        model: ModelLike,
        texts: Union[str, Sequence[str]],
        *,
        normalize: bool = ...,
        priority: Priority = ...,
        deadline_ms: Optional[int] = ...,
        prompt: Optional[str] = ...,
        numpy: Literal[False] = ...,
    ) -> List[List[float]]: ...

    @overload
    def embed(
        self,
        model: ModelLike,
        texts: Union[str, Sequence[str]],
        *,
        normalize: bool = ...,
        priority: Priority = ...,
        deadline_ms: Optional[int] = ...,
        prompt: Optional[str] = ...,
        numpy: Literal[True],
    ) -> "FloatMatrix": ...

    def embed(
        self,
        model: ModelLike,
        texts: Union[str, Sequence[str]],
        *,
        normalize: bool = True,
        priority: Priority = Priority.Interactive,
        deadline_ms: Optional[int] = None,
        prompt: Optional[str] = None,
        numpy: bool = False,
    ) -> Any:
        """Embeds ``texts`` (a str is one text): a list of vectors (lists of floats), or
        with ``numpy=True`` a float32 array of shape (len(texts), dim). ``prompt`` names
        one of the model's prompts (``ModelInfo.prompts``, e.g. ``"query"``) to put before
        each text; None uses the model's default prompt, ``""`` none."""
        result = self.embeddings(
            model, texts, normalize=normalize, priority=priority, deadline_ms=deadline_ms, prompt=prompt
        )
        return _base.embeddings_result(result, numpy)

    def embeddings(
        self,
        model: ModelLike,
        texts: Union[str, Sequence[str]],
        *,
        normalize: bool = True,
        priority: Priority = Priority.Interactive,
        deadline_ms: Optional[int] = None,
        prompt: Optional[str] = None,
    ) -> Embeddings:
        """Like :meth:`embed`, with the whole answer (count, dim, prompt_tokens)."""
        request = _base.embed_request(model, texts, normalize, priority, deadline_ms, prompt)
        return self._expect(request, Embeddings)

    def rerank(
        self,
        model: ModelLike,
        query: str,
        documents: Union[str, Sequence[str]],
        top_n: Optional[int] = None,
        *,
        priority: Priority = Priority.Interactive,
        deadline_ms: Optional[int] = None,
    ) -> Reranked:
        """Scores ``documents`` against ``query`` with a reranking model: ``results``
        (:class:`RerankResult`: ``index`` into ``documents``, ``score`` in [0, 1]) best
        first, all of them or the best ``top_n``; with ``model`` and ``prompt_tokens``."""
        request = _base.rerank_request(model, query, documents, top_n, priority, deadline_ms)
        return self._expect(request, Reranked)

    def tokenize(self, model: ModelLike, text: str, *, add_special_tokens: bool = True) -> List[int]:
        return self._expect(TokenizeRequest(_base.model_ref(model), text, add_special_tokens), Tokens).tokens

    def detokenize(self, model: ModelLike, tokens: Sequence[int]) -> str:
        return self._expect(DetokenizeRequest(_base.model_ref(model), list(tokens)), Text).text

    @overload
    def generate(
        self,
        model: ModelLike,
        prompt: PromptLike,
        *,
        max_tokens: int = ...,
        temperature: float = ...,
        top_p: float = ...,
        top_k: int = ...,
        min_p: float = ...,
        repetition_penalty: float = ...,
        seed: Optional[int] = ...,
        stop: Sequence[StopLike] = ...,
        priority: Priority = ...,
        deadline_ms: Optional[int] = ...,
        window: int = ...,
        logprobs: Optional[int] = ...,
        constraint: Optional[Constraint] = ...,
        tools: None = ...,
        tool_choice: ToolChoiceLike = ...,
        parallel_tool_calls: bool = ...,
    ) -> "GenerationStream[Token]": ...

    @overload
    def generate(
        self,
        model: ModelLike,
        prompt: PromptLike,
        *,
        max_tokens: int = ...,
        temperature: float = ...,
        top_p: float = ...,
        top_k: int = ...,
        min_p: float = ...,
        repetition_penalty: float = ...,
        seed: Optional[int] = ...,
        stop: Sequence[StopLike] = ...,
        priority: Priority = ...,
        deadline_ms: Optional[int] = ...,
        window: int = ...,
        logprobs: Optional[int] = ...,
        constraint: Optional[Constraint] = ...,
        tools: Optional[Sequence[ToolLike]],
        tool_choice: ToolChoiceLike = ...,
        parallel_tool_calls: bool = ...,
    ) -> "GenerationStream[StreamItem]": ...

    def generate(
        self,
        model: ModelLike,
        prompt: PromptLike,
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: Optional[int] = None,
        stop: Sequence[StopLike] = (),
        priority: Priority = Priority.Interactive,
        deadline_ms: Optional[int] = None,
        window: int = DEFAULT_WINDOW,
        logprobs: Optional[int] = None,
        constraint: Optional[Constraint] = None,
        tools: Optional[Sequence[ToolLike]] = None,
        tool_choice: ToolChoiceLike = "auto",
        parallel_tool_calls: bool = True,
    ) -> "GenerationStream[StreamItem]":
        """Starts a generation and returns its stream of :class:`Token` s. ``prompt`` is a
        raw prompt (str, used as is) or chat messages (rendered with the model's chat
        template). ``temperature=0`` is greedy. ``window``: events the daemon may send
        ahead of the reader (credit is granted back as tokens are read). ``logprobs=k``
        (0 to 20): each token comes with its log probability and the ``k`` most likely
        alternatives (:attr:`Token.logprobs`); None (the default): none, at no cost.
        ``constraint``: what the output must be (structured output): ``JsonSchema(schema)``
        (a dict, or its JSON text), ``JsonObject()``, ``Regex(pattern)`` (matched as a
        whole) or ``Lark(grammar)``; the stream ends Stop once the output is complete. One
        the daemon cannot compile is a :class:`BadRequestError`. ``tools`` (chat messages
        only): functions the model may call, each a :class:`Tool` or a mapping (OpenAI's
        ``{"type": "function", "function": {...}}`` or flat ``{"name", "description",
        "parameters"}``); the stream then yields a :class:`ToolCall` for each call the
        model makes and ends ``ToolCalls`` after them. ``tool_choice``: ``"auto"`` (the
        model decides), ``"none"``, ``"required"`` or a function (``{"type": "function",
        "function": {"name": ...}}`` or ``{"name": ...}``), the last two enforced with a
        constraint; ``parallel_tool_calls``: with ``"required"``, more than one call may
        be made. A tool, call or choice of the wrong type is a TypeError, nothing sent."""
        request = _base.generate_request(
            model,
            prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            stop=stop,
            priority=priority,
            deadline_ms=deadline_ms,
            window=window,
            logprobs=logprobs,
            constraint=constraint,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
        )
        request_id = self._connection.start(request)
        return GenerationStream(self._connection, request_id, window)

    def chat(
        self,
        model: ModelLike,
        messages: PromptLike,
        *,
        logprobs: Optional[int] = None,
        constraint: Optional[Constraint] = None,
        tools: Optional[Sequence[ToolLike]] = None,
        tool_choice: ToolChoiceLike = "auto",
        parallel_tool_calls: bool = True,
        **params: Any,
    ) -> Completion:
        """Generates a whole answer to ``messages`` (chat messages, or a raw prompt) and
        returns it with its summary (and with ``logprobs=k``, each token's log
        probabilities, and with ``tools=`` the calls the model made). Takes the
        parameters of :meth:`generate` (``constraint=`` and ``tools=`` too)."""
        with self.generate(
            model,
            messages,
            logprobs=logprobs,
            constraint=constraint,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            **params,
        ) as stream:
            return stream.complete()


def _progress_events(progress: Optional[ProgressCallback]) -> Optional[Any]:
    if progress is None:
        return None

    def on_event(event: object) -> None:
        if isinstance(event, LoadProgress):
            progress(event)

    return on_event


class Model(HasLease):
    """A lease on a model: keeps it loaded while held; valid only on its own client.
    Released by :meth:`release`, at the end of a ``with`` block, or when the client's
    connection ends (the process exits)."""

    def __init__(self, client: Client, leased: LeaseInfo) -> None:
        self.client = client
        self.lease_id = leased.lease
        #: The model as it was when the lease was granted.
        self.info = leased.model
        self.released = False

    @property
    def name(self) -> str:
        return self.info.name

    def __repr__(self) -> str:
        return f"<mlxd.Model {self.name!r} lease={self.lease_id}{' released' if self.released else ''}>"

    def release(self) -> None:
        """Releases the lease (again: nothing)."""
        if self.released:
            return
        self.released = True
        self.client._expect(ReleaseRequest(self.lease_id), Released)

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Any) -> None:
        try:
            self.release()
        except (ConnectionClosedError, DaemonError):
            if exc is None:
                raise

    @overload
    def embed(
        self,
        texts: Union[str, Sequence[str]],
        *,
        normalize: bool = ...,
        priority: Priority = ...,
        deadline_ms: Optional[int] = ...,
        prompt: Optional[str] = ...,
        numpy: Literal[False] = ...,
    ) -> List[List[float]]: ...

    @overload
    def embed(
        self,
        texts: Union[str, Sequence[str]],
        *,
        normalize: bool = ...,
        priority: Priority = ...,
        deadline_ms: Optional[int] = ...,
        prompt: Optional[str] = ...,
        numpy: Literal[True],
    ) -> "FloatMatrix": ...

    def embed(
        self,
        texts: Union[str, Sequence[str]],
        *,
        normalize: bool = True,
        priority: Priority = Priority.Interactive,
        deadline_ms: Optional[int] = None,
        prompt: Optional[str] = None,
        numpy: bool = False,
    ) -> Any:
        """See :meth:`Client.embed`."""
        result = self.client.embeddings(
            self, texts, normalize=normalize, priority=priority, deadline_ms=deadline_ms, prompt=prompt
        )
        return _base.embeddings_result(result, numpy)

    def embeddings(self, texts: Union[str, Sequence[str]], **options: Any) -> Embeddings:
        return self.client.embeddings(self, texts, **options)

    def rerank(
        self,
        query: str,
        documents: Union[str, Sequence[str]],
        top_n: Optional[int] = None,
        *,
        priority: Priority = Priority.Interactive,
        deadline_ms: Optional[int] = None,
    ) -> Reranked:
        """See :meth:`Client.rerank`."""
        return self.client.rerank(self, query, documents, top_n, priority=priority, deadline_ms=deadline_ms)

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> List[int]:
        return self.client.tokenize(self, text, add_special_tokens=add_special_tokens)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.client.detokenize(self, tokens)

    @overload
    def generate(
        self,
        prompt: PromptLike,
        *,
        logprobs: Optional[int] = ...,
        constraint: Optional[Constraint] = ...,
        tools: None = ...,
        tool_choice: ToolChoiceLike = ...,
        parallel_tool_calls: bool = ...,
        **params: Any,
    ) -> "GenerationStream[Token]": ...

    @overload
    def generate(
        self,
        prompt: PromptLike,
        *,
        logprobs: Optional[int] = ...,
        constraint: Optional[Constraint] = ...,
        tools: Optional[Sequence[ToolLike]],
        tool_choice: ToolChoiceLike = ...,
        parallel_tool_calls: bool = ...,
        **params: Any,
    ) -> "GenerationStream[StreamItem]": ...

    def generate(
        self,
        prompt: PromptLike,
        *,
        logprobs: Optional[int] = None,
        constraint: Optional[Constraint] = None,
        tools: Optional[Sequence[ToolLike]] = None,
        tool_choice: ToolChoiceLike = "auto",
        parallel_tool_calls: bool = True,
        **params: Any,
    ) -> "GenerationStream[StreamItem]":
        """See :meth:`Client.generate`."""
        return self.client.generate(
            self,
            prompt,
            logprobs=logprobs,
            constraint=constraint,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            **params,
        )

    def chat(
        self,
        messages: PromptLike,
        *,
        logprobs: Optional[int] = None,
        constraint: Optional[Constraint] = None,
        tools: Optional[Sequence[ToolLike]] = None,
        tool_choice: ToolChoiceLike = "auto",
        parallel_tool_calls: bool = True,
        **params: Any,
    ) -> Completion:
        """See :meth:`Client.chat`."""
        return self.client.chat(
            self,
            messages,
            logprobs=logprobs,
            constraint=constraint,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            **params,
        )


class GenerationStream(Iterator[ItemT]):
    """A running generation: iterate it for :class:`Token` s as they come, and (with
    ``tools=``) the :class:`ToolCall` s the model makes, each right after the token that
    completed it. Credit is granted back as tokens are taken, so a reader that stops also
    stops its stream (and only its stream) at the daemon, with at most ``window`` tokens
    waiting (tool calls cost no credit).

    After the iteration, :attr:`summary` says how it ended. :meth:`cancel` stops it (the
    tokens already sent still come, then the summary with ``finish_reason`` Cancelled);
    leaving a ``with`` block cancels an unfinished stream and waits for its end.
    """

    def __init__(self, connection: _Connection, request_id: int, window: int) -> None:
        self._connection = connection
        self.request_id = request_id
        self._credit = _base.CreditWindow(window)
        #: How the generation ended; set once the iteration is over.
        self.summary: Optional[GenerationSummary] = None
        self.finished = False
        self._cancelled = False

    def __iter__(self) -> "GenerationStream[ItemT]":
        return self

    def __next__(self) -> ItemT:
        if self.finished:
            raise StopIteration
        connection = self._connection
        try:
            while True:
                message = connection.next_for(self.request_id)
                if isinstance(message, Event):
                    event = message.event
                    if isinstance(event, ToolCallEvent):
                        return cast(ItemT, event.call)  # costs no credit
                    if not isinstance(event, Token):
                        continue  # load progress
                    grant = self._credit.took_one()
                    if grant and not self._cancelled:
                        connection.try_send(Credit(self.request_id, grant))
                    return cast(ItemT, event)
                if isinstance(message, Response):
                    self._end()
                    self.summary = _base.expect(message.body, GenerationSummary)
                    raise StopIteration
                if isinstance(message, Error):
                    self._end()
                    raise _base.raise_error(message)
        except BaseException:
            if not self.finished:
                # Interrupted while it waited (Ctrl-C) or the connection failed: the stream
                # ends here, so it ends at the daemon too (a dead connection sends nothing),
                # not after the stream pause limit.
                self._end()
                connection.try_send(Cancel(self.request_id))
            raise

    def _end(self) -> None:
        self.finished = True
        self._connection.forget(self.request_id)

    def __del__(self) -> None:
        # Dropped before its end: stop it at the daemon (with the next frame sent).
        if not getattr(self, "finished", True):
            self._connection.abandon(self.request_id)

    @property
    def buffered(self) -> int:
        """Tokens received for this stream and not yet read (at most the window)."""
        return self._connection.buffered(self.request_id)

    def cancel(self) -> None:
        """Asks the daemon to stop; keep iterating for the rest and the summary."""
        if not self.finished and not self._cancelled:
            self._connection.try_send(Cancel(self.request_id))
            self._cancelled = True  # once sent: interrupted before, close() sends it again

    def close(self) -> None:
        """Cancels an unfinished stream and waits for its end (discarding its tokens)."""
        if self.finished:
            return
        self.cancel()
        try:
            for _ in self:
                pass
        except MlxdError:
            pass

    def __enter__(self) -> "GenerationStream[ItemT]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def complete(self) -> Completion:
        """Reads the rest of the stream: its text, token ids, log probabilities (if asked
        for), tool calls and summary."""
        pieces = list(self)
        return _base.completion_of(pieces, self.summary)

    def text(self) -> str:
        """Reads the rest of the stream and returns its text."""
        return self.complete().text


__all__ = ["Client", "GenerationStream", "Model"]
