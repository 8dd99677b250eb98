"""The asyncio client: :class:`AsyncClient`, leased :class:`AsyncModel` handles and
:class:`AsyncGenerationStream`.

A reader task routes every frame from the daemon to the queue of the request it belongs
to; requests from many tasks share one connection. The same requests, answers and
credit rules as the blocking client (:mod:`mlxd._sync`).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import socket
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Deque,
    Dict,
    Generator,
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
    EventBody,
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
    Released,
    ReleaseRequest,
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
    Unloaded,
    UnloadRequest,
    Weights,
    WeightsRequest,
    Welcome,
    decode_server,
    encode_client,
)

if TYPE_CHECKING:
    from ._base import FloatMatrix

T = TypeVar("T")

#: StreamReader buffer limit (frames may be larger; it only bounds read-ahead).
_READ_LIMIT = 1 << 20

class _Route:
    """The frames of one request, as they arrive."""

    def __init__(self) -> None:
        self.frames: Deque[ServerMessage] = collections.deque()
        self.arrived = asyncio.Event()

    def put(self, frame: ServerMessage) -> None:
        self.frames.append(frame)
        self.arrived.set()


class _AsyncConnection:
    """Frames over one transport; a reader task routes each to its request's queue."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        endpoint: str,
        process: Optional[asyncio.subprocess.Process],
    ) -> None:
        self.reader, self.writer, self.endpoint, self.process = reader, writer, endpoint, process
        self.max_in = HANDSHAKE_MAX_FRAME_LEN
        self.max_out = HANDSHAKE_MAX_FRAME_LEN
        self._routes: Dict[int, _Route] = {}
        self._write_lock = asyncio.Lock()
        self._error: Optional[MlxdError] = None
        self._ids = itertools.count(1)
        self._reader_task: Optional["asyncio.Task[None]"] = None

    async def read_message(self) -> ServerMessage:
        try:
            prefix = await self.reader.readexactly(PREFIX_LEN)
            body = await self.reader.readexactly(_codec.body_length(prefix, self.max_in))
            return decode_server(body)
        except asyncio.IncompleteReadError as eof:
            if eof.partial:
                raise self._fail(ProtocolError(f"{self.endpoint} closed the connection in the middle of a frame"))
            raise self._fail(ConnectionClosedError(f"the daemon at {self.endpoint} closed the connection"))
        except ProtocolError as err:
            raise self._fail(err)
        except OSError as err:
            raise self._fail(ConnectionClosedError(f"reading from {self.endpoint} failed: {err}")) from err

    def start_reader(self) -> None:
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        try:
            while True:
                message = await self.read_message()
                if isinstance(message, (Response, Error, Event)):
                    route = self._routes.get(message.id)
                    if route is not None:  # else: a request nobody waits for any more
                        route.put(message)
                elif isinstance(message, Fatal):
                    self._fail(_base.raise_error(message))
                    return
        except MlxdError:
            return  # _fail told every waiting request
        except asyncio.CancelledError:
            self._fail(ConnectionClosedError("the client was closed"))
            raise

    def _fail(self, error: MlxdError) -> MlxdError:
        if self._error is None:
            self._error = error
            for route in self._routes.values():
                route.arrived.set()
            self.writer.close()
        return self._error

    async def send(self, message: ClientMessage) -> None:
        body = encode_client(message)
        if len(body) > self.max_out:
            raise _codec.FrameTooLargeError(
                f"request of {len(body)} bytes exceeds the daemon's max_frame_len of {self.max_out}; send less at once"
            )
        async with self._write_lock:
            if self._error is not None:
                raise self._error
            try:
                self.writer.write(_codec.frame(body))
                await self.writer.drain()
            except OSError as err:
                raise self._fail(ConnectionClosedError(f"the connection to {self.endpoint} broke: {err}")) from err

    async def try_send(self, message: ClientMessage) -> None:
        try:
            await self.send(message)
        except MlxdError:
            pass

    def try_send_soon(self, message: ClientMessage) -> None:
        """Queues a control frame without waiting (e.g. a Cancel from a finalizer)."""
        if self._error is None and not self.writer.is_closing():
            self.writer.write(_codec.frame(encode_client(message)))

    async def start(self, body: RequestBody) -> int:
        if self._error is not None:
            raise self._error
        request_id = next(self._ids)
        self._routes[request_id] = _Route()
        try:
            await self.send(Request(request_id, body))
        except BaseException as err:
            self.forget(request_id)
            if not isinstance(err, MlxdError):
                # Cancelled while sending: the request may have gone out (a Cancel for an
                # id the daemon does not know is ignored).
                self.try_send_soon(Cancel(request_id))
            raise
        return request_id

    async def next_for(self, request_id: int) -> ServerMessage:
        route = self._routes.get(request_id)
        if route is None:
            raise ProtocolError(f"request {request_id} is not in flight")
        while not route.frames:
            if self._error is not None:
                raise self._error
            route.arrived.clear()
            await route.arrived.wait()
        return route.frames.popleft()

    def forget(self, request_id: int) -> None:
        self._routes.pop(request_id, None)

    def buffered(self, request_id: int) -> int:
        """Token events received for the request and not yet taken."""
        route = self._routes.get(request_id)
        if route is None:
            return 0
        return sum(1 for frame in route.frames if isinstance(frame, Event) and isinstance(frame.event, Token))

    async def close(self) -> None:
        self._fail(ConnectionClosedError("the client was closed"))
        if self._reader_task is not None:
            self._reader_task.cancel()
            try:
                await self._reader_task
            except (asyncio.CancelledError, MlxdError):
                pass
        try:
            await self.writer.wait_closed()
        except OSError:
            pass
        if self.process is not None:
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()


async def _open(
    path: Optional[str],
    fallback: bool,
    mlxd_binary: Optional[str],
    trusted_uids: Sequence[int],
    connect_timeout: Optional[float],
) -> _AsyncConnection:
    path = _connect.resolve_socket(path)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, path), connect_timeout)
    except asyncio.TimeoutError as err:  # first: since Python 3.11 also an OSError
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
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, limit=_READ_LIMIT
            )
        except OSError as spawn_err:
            raise FallbackError(f"cannot start `{binary} stdio` as a fallback: {spawn_err}") from spawn_err
        assert process.stdout is not None and process.stdin is not None
        return _AsyncConnection(process.stdout, process.stdin, "stdio", process)
    except BaseException:
        sock.close()
        raise
    try:
        # Before the Hello: whoever listens must be us, root or trusted.
        _connect.check_server(path, sock, trusted_uids)
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_READ_LIMIT)
    except BaseException:
        sock.close()
        raise
    return _AsyncConnection(reader, writer, path, None)


class AsyncClient:
    """An asyncio connection to mlxd; the options are those of :class:`mlxd.Client`.

    Connects on first use, on ``await client.connect()``, or in ``async with``. Usable
    from many tasks at once. ``await client.close()`` ends the session (the daemon then
    releases every lease it holds).
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
        self._socket = os.fspath(socket) if socket is not None else None
        self._fallback = _connect.fallback_from_env() if fallback is None else fallback
        self._mlxd_binary = mlxd_binary
        self._client_name = client_name or _connect.client_name_default()
        self._max_frame_len = _base.clamp_max_frame_len(max_frame_len)
        self._trusted_uids = _connect.trusted_uids_from_env() if trusted_uids is None else list(trusted_uids)
        self._connect_timeout = connect_timeout
        self._protocol_version = protocol_version
        self._connection: Optional[_AsyncConnection] = None
        self._connecting: Optional[asyncio.Lock] = None
        self._welcome: Optional[Welcome] = None

    async def connect(self) -> "AsyncClient":
        """Opens the session now (again: nothing)."""
        await self._connected()
        return self

    async def _connected(self) -> _AsyncConnection:
        if self._connection is not None:
            return self._connection
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._connection is None:
                connection = await _open(
                    self._socket, self._fallback, self._mlxd_binary, self._trusted_uids, self._connect_timeout
                )
                try:
                    self._welcome = await asyncio.wait_for(self._handshake(connection), self._connect_timeout)
                except asyncio.TimeoutError as err:
                    await connection.close()
                    raise ConnectTimeoutError(
                        f"the daemon at {connection.endpoint} did not answer the Hello "
                        f"within {self._connect_timeout:g} s"
                    ) from err
                except BaseException:
                    await connection.close()
                    raise
                connection.max_in = self._max_frame_len
                connection.max_out = self._welcome.limits.max_frame_len
                connection.start_reader()
                self._connection = connection
        return self._connection

    async def _handshake(self, connection: _AsyncConnection) -> Welcome:
        hello = _base.hello_body(self._client_name, self._max_frame_len, self._protocol_version)
        try:
            connection.writer.write(hello)
            await connection.writer.drain()
        except OSError as err:
            try:
                answer = await connection.read_message()
            except MlxdError:
                raise ConnectionClosedError(f"the daemon at {connection.endpoint} closed the connection: {err}") from err
            _base.welcome_from(answer, connection.endpoint, self._protocol_version)
            raise ConnectionClosedError(f"the daemon at {connection.endpoint} closed the connection: {err}") from err
        return _base.welcome_from(await connection.read_message(), connection.endpoint, self._protocol_version)

    @property
    def welcome(self) -> Welcome:
        if self._welcome is None:
            raise ConnectionClosedError("not connected yet: await client.connect() first")
        return self._welcome

    @property
    def limits(self) -> Limits:
        return self.welcome.limits

    @property
    def endpoint(self) -> Optional[str]:
        """The socket path, "stdio", or None before connecting."""
        return self._connection.endpoint if self._connection is not None else None

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def __aenter__(self) -> "AsyncClient":
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # The core.

    async def call(
        self,
        body: RequestBody,
        *,
        on_event: Optional[Callable[[EventBody], None]] = None,
        retry: Optional[bool] = None,
    ) -> ResponseBody:
        """Sends one request and waits for its final answer; see :meth:`mlxd.Client.call`."""
        attempts = self.retry.max_retries if (retry is not False and _base.is_idempotent(body)) else 0
        for _ in range(attempts):
            try:
                return await self._call_once(body, on_event)
            except BusyError as busy:
                if busy.fatal:  # the session is over: no retry can be admitted
                    raise
                await asyncio.sleep(self.retry.wait(busy.retry_after))
        return await self._call_once(body, on_event)

    async def _call_once(self, body: RequestBody, on_event: Optional[Callable[[EventBody], None]]) -> ResponseBody:
        connection = await self._connected()
        request_id = await connection.start(body)
        done = False
        try:
            while True:
                message = await connection.next_for(request_id)
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
            if not done:  # cancelled or failed: stop the request at the daemon
                connection.try_send_soon(Cancel(request_id))

    async def _expect(
        self, body: RequestBody, cls: Type[T], on_event: Optional[Callable[[EventBody], None]] = None
    ) -> T:
        return _base.expect(await self.call(body, on_event=on_event), cls)

    # Daemon-wide requests.

    async def ping(self) -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._expect(PingRequest(), Pong)
        return loop.time() - started

    async def status(self) -> DaemonStatus:
        return await self._expect(StatusRequest(), DaemonStatus)

    async def models(self) -> List[ModelInfo]:
        return (await self._expect(ListModelsRequest(), Models)).models

    async def metrics(self) -> str:
        return (await self._expect(MetricsRequest(), Metrics)).text

    async def weights(self) -> List[MappedWeights]:
        return (await self._expect(WeightsRequest(), Weights)).weights

    async def load(self, model: str, *, progress: Optional[ProgressCallback] = None) -> ModelInfo:
        return (await self._expect(LoadRequest(model), Loaded, _progress_events(progress))).model

    async def unload(self, model: str, *, force: bool = False) -> ModelInfo:
        return (await self._expect(UnloadRequest(model, force), Unloaded)).model

    def lease(
        self, model: str, *, progress: Optional[ProgressCallback] = None, keep_alive_ms: Optional[int] = None
    ) -> "_Leasing":
        """Leases ``model``: ``m = await client.lease(name)``, or
        ``async with client.lease(name) as m:`` to release it at the end of the block."""

        async def acquire() -> AsyncModel:
            request = LeaseRequest(model, keep_alive_ms)
            info = await self._expect(request, LeaseInfo, _progress_events(progress))
            return AsyncModel(self, info)

        return _Leasing(acquire)

    @overload
    async def embed(
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
    async def embed(
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

    async def embed(
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
        """See :meth:`mlxd.Client.embed`."""
        result = await self.embeddings(
            model, texts, normalize=normalize, priority=priority, deadline_ms=deadline_ms, prompt=prompt
        )
        return _base.embeddings_result(result, numpy)

    async def embeddings(
        self,
        model: ModelLike,
        texts: Union[str, Sequence[str]],
        *,
        normalize: bool = True,
        priority: Priority = Priority.Interactive,
        deadline_ms: Optional[int] = None,
        prompt: Optional[str] = None,
    ) -> Embeddings:
        request = _base.embed_request(model, texts, normalize, priority, deadline_ms, prompt)
        return await self._expect(request, Embeddings)

    async def rerank(
        self,
        model: ModelLike,
        query: str,
        documents: Union[str, Sequence[str]],
        top_n: Optional[int] = None,
        *,
        priority: Priority = Priority.Interactive,
        deadline_ms: Optional[int] = None,
    ) -> Reranked:
        """See :meth:`mlxd.Client.rerank`."""
        request = _base.rerank_request(model, query, documents, top_n, priority, deadline_ms)
        return await self._expect(request, Reranked)

    async def tokenize(self, model: ModelLike, text: str, *, add_special_tokens: bool = True) -> List[int]:
        request = TokenizeRequest(_base.model_ref(model), text, add_special_tokens)
        return (await self._expect(request, Tokens)).tokens

    async def detokenize(self, model: ModelLike, tokens: Sequence[int]) -> str:
        return (await self._expect(DetokenizeRequest(_base.model_ref(model), list(tokens)), Text)).text

    @overload
    async def generate(
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
    ) -> "AsyncGenerationStream[Token]": ...

    @overload
    async def generate(
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
    ) -> "AsyncGenerationStream[StreamItem]": ...

    async def generate(
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
    ) -> "AsyncGenerationStream[StreamItem]":
        """Starts a generation: ``async for token in await client.generate(...)``. See
        :meth:`mlxd.Client.generate` for the parameters."""
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
        connection = await self._connected()
        request_id = await connection.start(request)
        return AsyncGenerationStream(connection, request_id, window)

    async def chat(
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
        """The whole answer to ``messages``; see :meth:`mlxd.Client.chat`."""
        async with await self.generate(
            model,
            messages,
            logprobs=logprobs,
            constraint=constraint,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            **params,
        ) as stream:
            return await stream.complete()


def _progress_events(progress: Optional[ProgressCallback]) -> Optional[Callable[[EventBody], None]]:
    if progress is None:
        return None

    def on_event(event: EventBody) -> None:
        if isinstance(event, LoadProgress):
            progress(event)

    return on_event


class _Leasing:
    """The lease being taken: await it for the model, or use it in ``async with``."""

    def __init__(self, acquire: Callable[[], Awaitable["AsyncModel"]]) -> None:
        self._acquire = acquire
        self._model: Optional[AsyncModel] = None

    def __await__(self) -> Generator[Any, None, "AsyncModel"]:
        return self._acquire().__await__()

    async def __aenter__(self) -> "AsyncModel":
        self._model = await self._acquire()
        return self._model

    async def __aexit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Any) -> None:
        if self._model is not None:
            await self._model.__aexit__(exc_type, exc, tb)


class AsyncModel(HasLease):
    """A lease on a model (see :class:`mlxd.Model`), for :class:`AsyncClient`."""

    def __init__(self, client: AsyncClient, leased: LeaseInfo) -> None:
        self.client = client
        self.lease_id = leased.lease
        self.info = leased.model
        self.released = False

    @property
    def name(self) -> str:
        return self.info.name

    def __repr__(self) -> str:
        return f"<mlxd.AsyncModel {self.name!r} lease={self.lease_id}{' released' if self.released else ''}>"

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        await self.client._expect(ReleaseRequest(self.lease_id), Released)

    async def __aenter__(self) -> "AsyncModel":
        return self

    async def __aexit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Any) -> None:
        try:
            await self.release()
        except (ConnectionClosedError, DaemonError):
            if exc is None:
                raise

    @overload
    async def embed(
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
    async def embed(
        self,
        texts: Union[str, Sequence[str]],
        *,
        normalize: bool = ...,
        priority: Priority = ...,
        deadline_ms: Optional[int] = ...,
        prompt: Optional[str] = ...,
        numpy: Literal[True],
    ) -> "FloatMatrix": ...

    async def embed(
        self,
        texts: Union[str, Sequence[str]],
        *,
        normalize: bool = True,
        priority: Priority = Priority.Interactive,
        deadline_ms: Optional[int] = None,
        prompt: Optional[str] = None,
        numpy: bool = False,
    ) -> Any:
        result = await self.client.embeddings(
            self, texts, normalize=normalize, priority=priority, deadline_ms=deadline_ms, prompt=prompt
        )
        return _base.embeddings_result(result, numpy)

    async def embeddings(self, texts: Union[str, Sequence[str]], **options: Any) -> Embeddings:
        return await self.client.embeddings(self, texts, **options)

    async def rerank(
        self,
        query: str,
        documents: Union[str, Sequence[str]],
        top_n: Optional[int] = None,
        *,
        priority: Priority = Priority.Interactive,
        deadline_ms: Optional[int] = None,
    ) -> Reranked:
        """See :meth:`mlxd.Client.rerank`."""
        return await self.client.rerank(self, query, documents, top_n, priority=priority, deadline_ms=deadline_ms)

    async def tokenize(self, text: str, *, add_special_tokens: bool = True) -> List[int]:
        return await self.client.tokenize(self, text, add_special_tokens=add_special_tokens)

    async def detokenize(self, tokens: Sequence[int]) -> str:
        return await self.client.detokenize(self, tokens)

    @overload
    async def generate(
        self,
        prompt: PromptLike,
        *,
        logprobs: Optional[int] = ...,
        constraint: Optional[Constraint] = ...,
        tools: None = ...,
        tool_choice: ToolChoiceLike = ...,
        parallel_tool_calls: bool = ...,
        **params: Any,
    ) -> "AsyncGenerationStream[Token]": ...

    @overload
    async def generate(
        self,
        prompt: PromptLike,
        *,
        logprobs: Optional[int] = ...,
        constraint: Optional[Constraint] = ...,
        tools: Optional[Sequence[ToolLike]],
        tool_choice: ToolChoiceLike = ...,
        parallel_tool_calls: bool = ...,
        **params: Any,
    ) -> "AsyncGenerationStream[StreamItem]": ...

    async def generate(
        self,
        prompt: PromptLike,
        *,
        logprobs: Optional[int] = None,
        constraint: Optional[Constraint] = None,
        tools: Optional[Sequence[ToolLike]] = None,
        tool_choice: ToolChoiceLike = "auto",
        parallel_tool_calls: bool = True,
        **params: Any,
    ) -> "AsyncGenerationStream[StreamItem]":
        return await self.client.generate(
            self,
            prompt,
            logprobs=logprobs,
            constraint=constraint,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            **params,
        )

    async def chat(
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
        return await self.client.chat(
            self,
            messages,
            logprobs=logprobs,
            constraint=constraint,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            **params,
        )


class AsyncGenerationStream(AsyncIterator[ItemT]):
    """A running generation (see :class:`mlxd.GenerationStream`): ``async for`` its
    tokens (and the :class:`ToolCall` s the model makes, in order); credit is granted back
    as tokens are taken; :attr:`summary` after the end."""

    def __init__(self, connection: _AsyncConnection, request_id: int, window: int) -> None:
        self._connection = connection
        self.request_id = request_id
        self._credit = _base.CreditWindow(window)
        self.summary: Optional[GenerationSummary] = None
        self.finished = False
        self._cancelled = False

    def __aiter__(self) -> "AsyncGenerationStream[ItemT]":
        return self

    async def __anext__(self) -> ItemT:
        if self.finished:
            raise StopAsyncIteration
        connection = self._connection
        try:
            while True:
                message = await connection.next_for(self.request_id)
                if isinstance(message, Event):
                    event = message.event
                    if isinstance(event, ToolCallEvent):
                        return cast(ItemT, event.call)  # costs no credit
                    if not isinstance(event, Token):
                        continue  # load progress
                    grant = self._credit.took_one()
                    if grant and not self._cancelled:
                        await connection.try_send(Credit(self.request_id, grant))
                    return cast(ItemT, event)
                if isinstance(message, Response):
                    self._end()
                    self.summary = _base.expect(message.body, GenerationSummary)
                    raise StopAsyncIteration
                if isinstance(message, Error):
                    self._end()
                    raise _base.raise_error(message)
        except BaseException:
            if not self.finished:
                # The task was cancelled (task.cancel(), a wait_for timeout) or the
                # connection failed: the stream ends here, so it ends at the daemon too
                # (a dead connection sends nothing), not after the stream pause limit.
                connection.try_send_soon(Cancel(self.request_id))
                self._end()
            raise

    def _end(self) -> None:
        if not self.finished:
            self.finished = True
            self._connection.forget(self.request_id)

    def __del__(self) -> None:
        # Dropped before its end: stop it at the daemon.
        if not getattr(self, "finished", True):
            self.finished = True
            self._connection.forget(self.request_id)
            try:
                self._connection.try_send_soon(Cancel(self.request_id))
            except Exception:  # a closed loop or transport: the session ends anyway
                pass

    @property
    def buffered(self) -> int:
        """Tokens received for this stream and not yet read (at most the window)."""
        return self._connection.buffered(self.request_id)

    async def cancel(self) -> None:
        """Asks the daemon to stop; keep iterating for the rest and the summary."""
        if not self.finished and not self._cancelled:
            # Queued at once, with no await a task cancellation could interrupt before it
            # is sent (aclose() would then wait out a stream the daemon never stops).
            self._connection.try_send_soon(Cancel(self.request_id))
            self._cancelled = True

    async def aclose(self) -> None:
        """Cancels an unfinished stream and waits for its end (discarding its tokens)."""
        if self.finished:
            return
        await self.cancel()
        try:
            async for _ in self:
                pass
        except MlxdError:
            pass

    async def __aenter__(self) -> "AsyncGenerationStream[ItemT]":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def complete(self) -> Completion:
        """Reads the rest of the stream: its text, token ids, log probabilities (if asked
        for), tool calls and summary."""
        pieces = [piece async for piece in self]
        return _base.completion_of(pieces, self.summary)

    async def text(self) -> str:
        return (await self.complete()).text


__all__ = ["AsyncClient", "AsyncGenerationStream", "AsyncModel"]
