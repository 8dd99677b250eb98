"""Both clients against a scripted fake daemon (harness.FakeDaemon), for what the real one
cannot be made to do on cue: a Fatal in the middle of a session, the Hello's frame limit as
sent, a frame that arrives in pieces around a Ctrl-C, a daemon that never answers the
Hello, the exact requests rerank, embedding prompts, logprobs=, constraint=, tools= and
tool_choice= send (and a Busy rerank retried), chat messages with tool calls as sent, Token
events with and without logprobs and ToolCall events (which cost no credit) surfaced, tool
arguments of the wrong shape refused with nothing sent; and the blocking client's reading of
frames split anywhere (on a socketpair)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import tempfile
import threading
import time
from random import Random
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

import mlxd
from harness import WEATHER_SCHEMA, FakeDaemon, FakeSession, frame_of, interrupted_after
from mlxd import _sync, protocol


@pytest.fixture
def fakes() -> Iterator[List[FakeDaemon]]:
    """Fake daemons started by the test, closed (and their scripts' failures raised) at its end."""
    started: List[FakeDaemon] = []
    yield started
    for fake in started:
        fake.close()


def fake_daemon(fakes: List[FakeDaemon], script: Callable[[FakeSession], None]) -> FakeDaemon:
    fakes.append(FakeDaemon(script))
    return fakes[-1]


class CountingRetry(mlxd.RetryPolicy):
    """Retries at once, counting the waits."""

    waits: List[Optional[float]]

    def wait(self, retry_after: Optional[float]) -> float:
        self.waits.append(retry_after)
        return 0.0


def counting_retry() -> CountingRetry:
    policy = CountingRetry(max_retries=5, max_wait=1.0)
    object.__setattr__(policy, "waits", [])
    return policy


BUSY = protocol.WireError(protocol.ErrorCode.Busy, "this session is over its limits", 1000)


def fatal_busy_on_first_request(session: FakeSession) -> None:
    request = session.receive()
    assert isinstance(request, protocol.Request) and isinstance(request.body, protocol.PingRequest)
    session.send(protocol.Fatal(BUSY))
    session.wait_for_the_end()


def test_a_fatal_busy_is_not_retried(fakes: List[FakeDaemon]) -> None:
    fake = fake_daemon(fakes, fatal_busy_on_first_request)
    retry = counting_retry()
    with mlxd.Client(fake.socket, fallback=False, retry=retry) as client:
        with pytest.raises(mlxd.BusyError) as refused:
            client.ping()
    assert refused.value.fatal
    assert retry.waits == [], "the session is over: retrying it only waits"

    fake = fake_daemon(fakes, fatal_busy_on_first_request)
    retry = counting_retry()

    async def over_async() -> None:
        async with mlxd.AsyncClient(fake.socket, fallback=False, retry=retry) as client:
            with pytest.raises(mlxd.BusyError) as refused:
                await client.ping()
            assert refused.value.fatal

    asyncio.run(over_async())
    assert retry.waits == []


def test_max_frame_len_is_clamped_as_the_daemon_clamps_it(fakes: List[FakeDaemon]) -> None:
    for asked, sent in [(1, 64 * 1024), (1 << 40, 64 << 20), (1 << 20, 1 << 20)]:
        fake = fake_daemon(fakes, FakeSession.wait_for_the_end)
        mlxd.Client(fake.socket, fallback=False, max_frame_len=asked).close()
        assert fake.hello is not None and fake.hello.max_frame_len == sent

        fake = fake_daemon(fakes, FakeSession.wait_for_the_end)

        async def over_async() -> None:
            client = mlxd.AsyncClient(fake.socket, fallback=False, max_frame_len=asked)
            await (await client.connect()).close()

        asyncio.run(over_async())
        assert fake.hello is not None and fake.hello.max_frame_len == sent


def in_pieces(message: protocol.ServerMessage, *cuts: int) -> List[bytes]:
    data = frame_of(message)
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


PONG_IN_PIECES = [in_pieces(protocol.Response(1, protocol.Pong()), *cuts) for cuts in [(), (2,), (4, 5), (6,)]]


@pytest.mark.parametrize("pieces", PONG_IN_PIECES, ids=["nothing", "half-prefix", "prefix+1", "whole-prefix"])
def test_an_interrupted_read_keeps_the_partial_frame_and_the_session(
    fakes: List[FakeDaemon], pieces: List[bytes]
) -> None:
    """Ctrl-C while a call waits for its answer: the call is cancelled at the daemon, the
    bytes of the frame read so far are kept, and the session goes on."""
    first, rest = pieces[0], b"".join(pieces[1:])

    def script(session: FakeSession) -> None:
        assert session.receive() == protocol.Request(1, protocol.PingRequest())
        if len(pieces) > 1:
            session.send_bytes(first)  # then nothing until the client is interrupted
        assert session.receive() == protocol.Cancel(1)
        session.send_bytes(rest if len(pieces) > 1 else first)  # the answer nobody waits for now
        assert session.receive() == protocol.Request(2, protocol.PingRequest())
        session.send(protocol.Response(2, protocol.Pong()))
        session.wait_for_the_end()

    fake = fake_daemon(fakes, script)
    with mlxd.Client(fake.socket, fallback=False) as client:
        with interrupted_after(0.2), pytest.raises(KeyboardInterrupt):
            client.ping()
        assert client.ping() >= 0


def test_an_interrupted_stream_is_cancelled_and_the_session_goes_on(fakes: List[FakeDaemon]) -> None:
    token = in_pieces(protocol.Event(1, protocol.Token("hi", 7)), 9)

    def script(session: FakeSession) -> None:
        request = session.receive()
        assert isinstance(request, protocol.Request) and isinstance(request.body, protocol.GenerateRequest)
        session.send(protocol.Event(1, protocol.Token("Hello", 5)))
        session.send_bytes(token[0])
        assert session.receive() == protocol.Cancel(1)
        session.send_bytes(token[1])
        assert session.receive() == protocol.Request(2, protocol.PingRequest())
        session.send(protocol.Response(2, protocol.Pong()))
        session.wait_for_the_end()

    fake = fake_daemon(fakes, script)
    with mlxd.Client(fake.socket, fallback=False) as client:
        stream = client.generate("fake", "Hi", window=4)
        assert next(stream).text == "Hello"
        with interrupted_after(0.2), pytest.raises(KeyboardInterrupt):
            next(stream)
        assert stream.finished
        stream.close()  # nothing more to do
        assert client.ping() >= 0


def test_a_daemon_that_never_answers_times_out_as_a_connect_error() -> None:
    directory = tempfile.mkdtemp(prefix="mlxd-mute-", dir="/tmp")
    path = os.path.join(directory, "s.sock")
    mute = socket.socket(socket.AF_UNIX)
    try:
        mute.bind(path)
        mute.listen(4)  # connections wait in the backlog: never accepted, never answered
        started = time.monotonic()
        with pytest.raises(mlxd.ConnectTimeoutError) as timed_out:
            mlxd.Client(path, fallback=False, connect_timeout=0.3)
        assert isinstance(timed_out.value, mlxd.ConnectError) and isinstance(timed_out.value, TimeoutError)
        assert path in str(timed_out.value)

        async def over_async() -> None:
            with pytest.raises(mlxd.ConnectTimeoutError) as timed_out:
                await mlxd.AsyncClient(path, fallback=False, connect_timeout=0.3).connect()
            assert isinstance(timed_out.value, asyncio.TimeoutError)
            assert path in str(timed_out.value)

        asyncio.run(over_async())
        assert time.monotonic() - started < 5
    finally:
        mute.close()
        os.unlink(path)
        os.rmdir(directory)


def test_frames_of_any_size_in_any_pieces_come_out_whole() -> None:
    """The blocking client's inbox: frames larger than it, several in one read, split
    anywhere, prefix included."""
    random = Random(17)
    messages: List[protocol.ServerMessage] = [
        protocol.Response(i, protocol.Text("x" * size))
        for i, size in enumerate([0, 1, 70_000, 10, 65_530, 3, 300_000, 5, 65_536, 2], start=1)
    ]
    data = b"".join(frame_of(message) for message in messages)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        connection = _sync._Connection(_sync._SocketIO(ours), "socketpair")
        connection.max_in = 1 << 20

        def send_in_pieces() -> None:
            at = 0
            while at < len(data):
                piece = random.choice([1, 2, 3, 7, 4096, 70_000])
                theirs.sendall(data[at : at + piece])
                at += piece

        sender = threading.Thread(target=send_in_pieces)
        sender.start()
        try:
            assert [connection.read_message() for _ in messages] == messages
        finally:
            sender.join(10)


def model_info(
    name: str, kind: protocol.ModelKind, prompts: List[str], default: Optional[str], tools: bool = False
) -> protocol.ModelInfo:
    return protocol.ModelInfo(
        name=name,
        kind=kind,
        state=protocol.ModelState.Ready,
        source="/models/" + name,
        leases=1,
        in_flight=0,
        queue_depth=0,
        queue_capacity=64,
        resident_bytes=1 << 20,
        dim=0,
        max_seq_len=512,
        idle_ms=None,
        keep_alive_left_ms=None,
        backend="cpu",
        worker_pid=4242,
        last_error=None,
        sched=protocol.SchedStats(0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0),
        prompts=prompts,
        default_prompt=default,
        estimated_bytes=3 << 20,
        tools=tools,
    )


RERANK = protocol.RerankRequest(protocol.ByName("r"), "q", ["a", "b", "c"], 2, protocol.Priority.Batch, 500)
RERANKED = protocol.Reranked("r", [protocol.RerankResult(2, 0.75), protocol.RerankResult(0, 0.25)], 12)


def rerank_and_prompts(session: FakeSession) -> None:
    """What both clients must send for rerank (by name, then by lease) and embed with a
    prompt, answered as the daemon would; the first rerank is refused Busy once."""
    assert session.receive() == protocol.Request(1, RERANK)
    session.send(protocol.Error(1, BUSY))
    assert session.receive() == protocol.Request(2, RERANK), "a Busy rerank is retried as is"
    session.send(protocol.Response(2, RERANKED))

    assert session.receive() == protocol.Request(3, protocol.LeaseRequest("r"))
    session.send(protocol.Response(3, protocol.LeaseInfo(7, model_info("r", protocol.ModelKind.Rerank, [], None))))
    leased = protocol.RerankRequest(protocol.ByLease(7), "q", ["only"])
    assert session.receive() == protocol.Request(4, leased)
    session.send(protocol.Response(4, protocol.Reranked("r", [protocol.RerankResult(0, 0.5)], 3)))
    assert session.receive() == protocol.Request(5, protocol.ReleaseRequest(7))
    session.send(protocol.Response(5, protocol.Released()))

    vector = protocol.Embeddings("e", 1, 2, protocol.f32_array([1.0, 0.0]), 3)
    for request_id, prompt in [(6, "query"), (7, ""), (8, None)]:
        expected = protocol.EmbedRequest(protocol.ByName("e"), ["x"], prompt=prompt)
        assert session.receive() == protocol.Request(request_id, expected)
        session.send(protocol.Response(request_id, vector))
    assert session.receive() == protocol.Request(9, protocol.LeaseRequest("e"))
    info = model_info("e", protocol.ModelKind.Embedding, ["document", "query"], "query")
    session.send(protocol.Response(9, protocol.LeaseInfo(8, info)))
    by_lease = protocol.EmbedRequest(protocol.ByLease(8), ["x"], False, prompt="document")
    assert session.receive() == protocol.Request(10, by_lease)
    session.send(protocol.Response(10, vector))
    session.wait_for_the_end()


def test_rerank_and_embedding_prompts_are_sent_and_answered(fakes: List[FakeDaemon]) -> None:
    fake = fake_daemon(fakes, rerank_and_prompts)
    retry = counting_retry()
    with mlxd.Client(fake.socket, fallback=False, retry=retry) as client:
        answer = client.rerank("r", "q", ["a", "b", "c"], 2, priority=mlxd.Priority.Batch, deadline_ms=500)
        assert answer == RERANKED and isinstance(answer, mlxd.Reranked)
        assert [(r.index, r.score) for r in answer.results] == [(2, 0.75), (0, 0.25)]
        assert answer.prompt_tokens == 12 and answer.model == "r"
        assert retry.waits == [1.0]
        with client.lease("r") as reranker:
            assert reranker.info.kind == mlxd.ModelKind.Rerank
            assert reranker.rerank("q", ["only"]).results == [mlxd.RerankResult(0, 0.5)]
        assert client.embed("e", ["x"], prompt="query") == [[1.0, 0.0]]
        assert client.embeddings("e", ["x"], prompt="").prompt_tokens == 3
        assert client.embed("e", ["x"]) == [[1.0, 0.0]]
        embedder = client.lease("e")
        assert (embedder.info.prompts, embedder.info.default_prompt) == (["document", "query"], "query")
        assert embedder.info.estimated_bytes == 3 << 20 and not embedder.info.tools
        assert embedder.embed("x", normalize=False, prompt="document") == [[1.0, 0.0]]

    fake = fake_daemon(fakes, rerank_and_prompts)
    retry = counting_retry()

    async def over_async() -> None:
        async with mlxd.AsyncClient(fake.socket, fallback=False, retry=retry) as client:
            answer = await client.rerank("r", "q", ["a", "b", "c"], 2, priority=mlxd.Priority.Batch, deadline_ms=500)
            assert answer == RERANKED
            async with client.lease("r") as reranker:
                assert (await reranker.rerank("q", ["only"])).results == [mlxd.RerankResult(0, 0.5)]
            assert await client.embed("e", ["x"], prompt="query") == [[1.0, 0.0]]
            assert (await client.embeddings("e", ["x"], prompt="")).prompt_tokens == 3
            assert await client.embed("e", ["x"]) == [[1.0, 0.0]]
            embedder = await client.lease("e")
            assert await embedder.embed("x", normalize=False, prompt="document") == [[1.0, 0.0]]

    asyncio.run(asyncio.wait_for(over_async(), 30))
    assert retry.waits == [1.0]


PARIS = protocol.TokenLogprobs(
    " Paris",
    -0.015625,
    [protocol.TopLogprob(7042, " Paris", -0.015625), protocol.TopLogprob(17, "\ufffd", -4.5)],
)
ALONE = protocol.TokenLogprobs("!", 0.0, [])
SUMMARY = protocol.GenerationSummary(protocol.FinishReason.Length, 3, 2, 10.0, 20.0, 0)


def logprobs_session(session: FakeSession) -> None:
    """What both clients must send for ``logprobs=`` (by name, by lease, and left out), and
    the Token events with and without logprobs they must surface."""
    asked = protocol.GenerateParams(max_tokens=2, temperature=0.0, logprobs=3)
    expected = protocol.GenerateRequest(protocol.ByName("g"), protocol.Raw("Hi"), asked, 32)
    assert session.receive() == protocol.Request(1, expected)
    session.send(protocol.Event(1, protocol.Token(" Paris", 7042, PARIS)))
    session.send(protocol.Event(1, protocol.Token("é", None)))  # the end-of-stream flush: none
    session.send(protocol.Response(1, SUMMARY))

    plain = protocol.GenerateParams(max_tokens=2, temperature=0.0)
    chat = protocol.Chat([protocol.ChatMessage("user", "Hi")])
    expected = protocol.GenerateRequest(protocol.ByName("g"), chat, plain, 32)
    assert session.receive() == protocol.Request(2, expected)
    session.send(protocol.Event(2, protocol.Token("Hello", 5)))
    session.send(protocol.Response(2, SUMMARY))

    assert session.receive() == protocol.Request(3, protocol.LeaseRequest("g"))
    info = model_info("g", protocol.ModelKind.Generation, [], None)
    session.send(protocol.Response(3, protocol.LeaseInfo(9, info)))
    alternatives_off = protocol.GenerateParams(max_tokens=1, temperature=0.0, logprobs=0)
    expected = protocol.GenerateRequest(protocol.ByLease(9), protocol.Raw("Hi"), alternatives_off, 32)
    assert session.receive() == protocol.Request(4, expected)
    session.send(protocol.Event(4, protocol.Token("!", 0, ALONE)))
    session.send(protocol.Response(4, SUMMARY))
    assert session.receive() == protocol.Request(5, protocol.ReleaseRequest(9))
    session.send(protocol.Response(5, protocol.Released()))
    session.wait_for_the_end()


def test_logprobs_are_asked_for_and_surfaced(fakes: List[FakeDaemon]) -> None:
    fake = fake_daemon(fakes, logprobs_session)
    with mlxd.Client(fake.socket, fallback=False) as client:
        tokens = list(client.generate("g", "Hi", max_tokens=2, temperature=0, logprobs=3))
        assert [token.text for token in tokens] == [" Paris", "é"]
        first = tokens[0].logprobs
        assert isinstance(first, mlxd.TokenLogprobs) and first == PARIS
        assert (first.text, first.logprob) == (" Paris", -0.015625)
        alternatives = [(top.token, top.text, top.logprob) for top in first.top]
        assert alternatives == [(7042, " Paris", -0.015625), (17, "\ufffd", -4.5)]
        assert isinstance(first.top[0], mlxd.TopLogprob)
        assert tokens[1].logprobs is None
        answer = client.chat("g", [("user", "Hi")], max_tokens=2, temperature=0)
        assert answer.text == "Hello" and answer.tokens == [5] and answer.logprobs == []
        with client.lease("g") as model:
            answer = model.chat("Hi", max_tokens=1, temperature=0, logprobs=0)
            assert answer.text == "!" and answer.logprobs == [ALONE] and answer.summary == SUMMARY

    fake = fake_daemon(fakes, logprobs_session)

    async def over_async() -> None:
        async with mlxd.AsyncClient(fake.socket, fallback=False) as client:
            stream = await client.generate("g", "Hi", max_tokens=2, temperature=0, logprobs=3)
            tokens = [token async for token in stream]
            assert [token.logprobs for token in tokens] == [PARIS, None]
            answer = await client.chat("g", [("user", "Hi")], max_tokens=2, temperature=0)
            assert answer.text == "Hello" and answer.logprobs == []
            async with client.lease("g") as model:
                first = [token async for token in await model.generate("Hi", max_tokens=1, temperature=0, logprobs=0)]
                assert [token.logprobs for token in first] == [ALONE]

    asyncio.run(asyncio.wait_for(over_async(), 30))


SCHEMA = {"type": "object", "properties": {"answer": {"type": "boolean"}}, "required": ["answer"]}
SCHEMA_TEXT = '{"type":"object","properties":{"answer":{"type":"boolean"}},"required":["answer"]}'
SCHEMA_AS_GIVEN = '{ "type": "array",  "items": {"type": "integer"} }'
YES_NO = 'start: "yes" | "no"'
STOPPED = protocol.GenerationSummary(protocol.FinishReason.Stop, 3, 4, 10.0, 20.0, 0)


def constrained(
    session: FakeSession,
    request_id: int,
    model: protocol.ModelRef,
    prompt: protocol.PromptInput,
    constraint: protocol.Constraint,
    answer: str,
) -> bytes:
    """Receives the generation ``constraint=`` must send, answers ``answer``; the body as sent."""
    params = protocol.GenerateParams(max_tokens=8, temperature=0.0, constraint=constraint)
    expected = protocol.GenerateRequest(model, prompt, params, 32)
    assert session.receive() == protocol.Request(request_id, expected)
    session.send(protocol.Event(request_id, protocol.Token(answer, 42)))
    session.send(protocol.Response(request_id, STOPPED))
    return session.last_body


def constraint_session(session: FakeSession) -> None:
    """What both clients must send for each kind of ``constraint=`` (by name and by lease,
    generate and chat): each variant reaches the wire, a dict schema as its JSON text and a
    str schema as is."""
    by_name, raw, chat = protocol.ByName("g"), protocol.Raw("Hi"), protocol.Chat([protocol.ChatMessage("user", "Hi")])
    body = constrained(session, 1, by_name, raw, protocol.JsonSchema(SCHEMA_TEXT), '{"answer":true}')
    # Option Some, Constraint tag 0 (JsonSchema), the text's length, the text.
    text = SCHEMA_TEXT.encode()
    assert bytes([1, 0, len(text)]) + text in body
    assert json.loads(text) == SCHEMA
    body = constrained(session, 2, by_name, chat, protocol.JsonSchema(SCHEMA_AS_GIVEN), "[1]")
    assert SCHEMA_AS_GIVEN.encode() in body
    body = constrained(session, 3, by_name, raw, protocol.JsonObject(), "{}")
    # Some(JsonObject) (tag 1, nothing more); then no tools, ToolChoice Auto, parallel
    # calls true (the params' v7 tail), credit 32, Interactive, no deadline.
    assert body.endswith(b"\x01\x01" + b"\x00\x00\x01" + b"\x20\x00\x00")
    assert session.receive() == protocol.Request(4, protocol.LeaseRequest("g"))
    info = model_info("g", protocol.ModelKind.Generation, [], None)
    session.send(protocol.Response(4, protocol.LeaseInfo(9, info)))
    by_lease = protocol.ByLease(9)
    constrained(session, 5, by_lease, raw, protocol.Regex(r"\d{3}-\d{4}"), "555-0199")
    constrained(session, 6, by_lease, chat, protocol.Lark(YES_NO), "yes")
    assert session.receive() == protocol.Request(7, protocol.ReleaseRequest(9))
    session.send(protocol.Response(7, protocol.Released()))
    session.wait_for_the_end()


def test_constraints_reach_the_wire(fakes: List[FakeDaemon]) -> None:
    assert mlxd.JsonSchema(SCHEMA) == mlxd.JsonSchema(SCHEMA_TEXT), "a dict is sent as its JSON text"
    assert mlxd.JsonSchema(SCHEMA_AS_GIVEN).schema == SCHEMA_AS_GIVEN
    with pytest.raises(TypeError):
        mlxd.JsonSchema(42)  # type: ignore[arg-type]
    as_given, phone, yes_no = mlxd.JsonSchema(SCHEMA_AS_GIVEN), mlxd.Regex(r"\d{3}-\d{4}"), mlxd.Lark(YES_NO)
    fake = fake_daemon(fakes, constraint_session)
    with mlxd.Client(fake.socket, fallback=False) as client:
        stream = client.generate("g", "Hi", max_tokens=8, temperature=0, constraint=mlxd.JsonSchema(SCHEMA))
        assert json.loads(stream.text()) == {"answer": True}
        assert stream.summary == STOPPED
        with pytest.raises(TypeError, match="constraint"):
            client.generate("g", "Hi", max_tokens=8, temperature=0, constraint="json")  # type: ignore[call-overload]
        assert client.chat("g", [("user", "Hi")], max_tokens=8, temperature=0, constraint=as_given).text == "[1]"
        assert client.chat("g", "Hi", max_tokens=8, temperature=0, constraint=mlxd.JsonObject()).text == "{}"
        with client.lease("g") as model:
            assert model.generate("Hi", max_tokens=8, temperature=0, constraint=phone).text() == "555-0199"
            answer = model.chat([("user", "Hi")], max_tokens=8, temperature=0, constraint=yes_no)
            assert answer.text == "yes" and answer.summary.finish_reason == mlxd.FinishReason.Stop

    fake = fake_daemon(fakes, constraint_session)

    async def over_async() -> None:
        async with mlxd.AsyncClient(fake.socket, fallback=False) as client:
            stream = await client.generate("g", "Hi", max_tokens=8, temperature=0, constraint=mlxd.JsonSchema(SCHEMA))
            assert json.loads(await stream.text()) == {"answer": True}
            with pytest.raises(TypeError, match="constraint"):
                await client.generate("g", "Hi", constraint=mlxd.Regex)  # type: ignore[call-overload]
            answer = await client.chat("g", [("user", "Hi")], max_tokens=8, temperature=0, constraint=as_given)
            assert answer.text == "[1]"
            answer = await client.chat("g", "Hi", max_tokens=8, temperature=0, constraint=mlxd.JsonObject())
            assert answer.text == "{}"
            async with client.lease("g") as model:
                stream = await model.generate("Hi", max_tokens=8, temperature=0, constraint=phone)
                assert await stream.text() == "555-0199"
                answer = await model.chat([("user", "Hi")], max_tokens=8, temperature=0, constraint=yes_no)
                assert answer.text == "yes"

    asyncio.run(asyncio.wait_for(over_async(), 30))


WEATHER = WEATHER_SCHEMA
WEATHER_TEXT = (
    '{"type":"object","properties":{"city":{"type":"string","enum":["Paris","Oslo"]},'
    '"unit":{"type":"string","enum":["celsius","fahrenheit"]}},"required":["city","unit"],'
    '"additionalProperties":false}'
)
OSLO = protocol.ToolCall("call_1", "get_weather", '{"city":"Oslo","unit":"celsius"}')
PARIS_CALL = protocol.ToolCall("call_2", "get_weather", '{"city":"Paris","unit":"celsius"}')
PARIS_F = protocol.ToolCall("call_3", "get_weather", '{"city":"Paris","unit":"fahrenheit"}')
#: PARIS_F as given: the arguments as a dict.
PARIS_F_GIVEN = [mlxd.ToolCall("call_3", "get_weather", {"city": "Paris", "unit": "fahrenheit"})]
CALLED = protocol.GenerationSummary(protocol.FinishReason.ToolCalls, 30, 3, 10.0, 20.0, 0)
#: A conversation with tool calls in each form chat messages may take (OpenAI's, with the
#: arguments as a dict and with content None; flat; a ChatMessage) ...
HISTORY: List[mlxd._base.MessageLike] = [
    {"role": "system", "content": "Be brief."},
    ("user", "Weather in Oslo and Paris?"),
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}},
            },
            {"id": "call_2", "name": "get_weather", "arguments": '{"city":"Paris","unit":"celsius"}'},
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": '{"celsius": -3}'},
    mlxd.ChatMessage("assistant", "", PARIS_F_GIVEN),
    {"role": "tool", "tool_call_id": "call_3", "content": '{"fahrenheit": 50}'},
]
#: ... and what it must be on the wire.
HISTORY_SENT = protocol.Chat(
    [
        protocol.ChatMessage("system", "Be brief."),
        protocol.ChatMessage("user", "Weather in Oslo and Paris?"),
        protocol.ChatMessage("assistant", "", [OSLO, PARIS_CALL]),
        protocol.ChatMessage("tool", '{"celsius": -3}', [], "call_1", "get_weather"),
        protocol.ChatMessage("assistant", "", [PARIS_F]),
        protocol.ChatMessage("tool", '{"fahrenheit": 50}', [], "call_3", None),
    ]
)
TOOLS: List[mlxd._base.ToolLike] = [
    mlxd.Tool("get_weather", "The weather in a city now.", WEATHER),
    {
        "type": "function",
        "function": {"name": "get_time", "description": "The time in a city.", "parameters": '{"type":"object"}'},
    },
]
TOOLS_SENT = [
    protocol.Tool("get_weather", "The weather in a city now.", WEATHER_TEXT),
    protocol.Tool("get_time", "The time in a city.", '{"type":"object"}'),
]
WEATHER_ONLY: List[mlxd._base.ToolLike] = [{"name": "get_weather", "parameters": WEATHER}, {"name": "now"}]
WEATHER_ONLY_SENT = [
    protocol.Tool("get_weather", "", WEATHER_TEXT),
    protocol.Tool("now", "", '{"type":"object","properties":{}}'),
]
HI = protocol.Chat([protocol.ChatMessage("user", "Hi")])


def tools_session(session: FakeSession) -> None:
    """What both clients must send for ``tools=``, ``tool_choice=`` (each variant, from each
    form it may take) and chat messages with tool calls, by name and by lease; and the
    ToolCall events they must surface, each costing no credit."""
    params = protocol.GenerateParams(
        max_tokens=64, temperature=0.0, tools=TOOLS_SENT, tool_choice=protocol.ToolChoiceFunction("get_weather")
    )
    expected = protocol.GenerateRequest(protocol.ByName("g"), HISTORY_SENT, params, 2)
    assert session.receive() == protocol.Request(1, expected)
    session.send(protocol.Event(1, protocol.Token("Checking.", 5)))
    session.send(protocol.Event(1, protocol.Token("", 6)))
    session.send(protocol.Event(1, protocol.ToolCallEvent(OSLO)))
    session.send(protocol.Event(1, protocol.Token("", 7)))
    session.send(protocol.Event(1, protocol.ToolCallEvent(PARIS_CALL)))
    session.send(protocol.Response(1, CALLED))
    # Window 2: one event of credit back per token read (three), none for the calls.
    for _ in range(3):
        assert session.receive() == protocol.Credit(1, 1)

    params = protocol.GenerateParams(
        max_tokens=64,
        temperature=0.0,
        tools=WEATHER_ONLY_SENT,
        tool_choice=protocol.ToolChoiceRequired(),
        parallel_tool_calls=False,
    )
    assert session.receive() == protocol.Request(2, protocol.GenerateRequest(protocol.ByName("g"), HI, params, 32))
    # The schemas as JSON text (tool "now": no description, no parameters), ToolChoice
    # Required (tag 2), parallel calls false; credit 32, Interactive, no deadline.
    now = b"\x03now" + b"\x00" + b"\x21" + b'{"type":"object","properties":{}}'
    assert session.last_body.endswith(WEATHER_TEXT.encode() + now + b"\x02\x00" + b"\x20\x00\x00")
    session.send(protocol.Event(2, protocol.Token("", 8)))
    session.send(protocol.Event(2, protocol.ToolCallEvent(OSLO)))
    session.send(protocol.Response(2, CALLED))

    assert session.receive() == protocol.Request(3, protocol.LeaseRequest("g"))
    info = model_info("g", protocol.ModelKind.Generation, [], None, tools=True)
    session.send(protocol.Response(3, protocol.LeaseInfo(9, info)))
    params = protocol.GenerateParams(max_tokens=8, temperature=0.0, tools=WEATHER_ONLY_SENT)  # Auto
    assert session.receive() == protocol.Request(4, protocol.GenerateRequest(protocol.ByLease(9), HI, params, 32))
    session.send(protocol.Event(4, protocol.Token("", 8)))
    session.send(protocol.Event(4, protocol.ToolCallEvent(PARIS_F)))
    session.send(protocol.Response(4, CALLED))
    params = protocol.GenerateParams(
        max_tokens=8, temperature=0.0, tools=WEATHER_ONLY_SENT, tool_choice=protocol.ToolChoiceNone()
    )
    assert session.receive() == protocol.Request(5, protocol.GenerateRequest(protocol.ByLease(9), HI, params, 32))
    session.send(protocol.Event(5, protocol.Token("Mild.", 9)))
    session.send(protocol.Response(5, STOPPED))
    assert session.receive() == protocol.Request(6, protocol.ReleaseRequest(9))
    session.send(protocol.Response(6, protocol.Released()))
    session.wait_for_the_end()


def check_first_stream(items: List[mlxd.StreamItem], summary: Optional[mlxd.GenerationSummary]) -> None:
    """What the first generation of :func:`tools_session` yields: the tokens and the calls
    in order, the calls as :class:`mlxd.ToolCall`, the stream ending ToolCalls."""
    assert items == [protocol.Token("Checking.", 5), protocol.Token("", 6), OSLO, protocol.Token("", 7), PARIS_CALL]
    call = items[2]
    assert isinstance(call, mlxd.ToolCall) and (call.id, call.name) == ("call_1", "get_weather")
    assert call.parse_arguments() == {"city": "Oslo", "unit": "celsius"}
    assert summary is not None and summary.finish_reason == mlxd.FinishReason.ToolCalls


def test_tools_and_tool_calls_reach_the_wire_and_come_back(fakes: List[FakeDaemon]) -> None:
    weather_by_name = {"type": "function", "function": {"name": "get_weather"}}
    fake = fake_daemon(fakes, tools_session)
    with mlxd.Client(fake.socket, fallback=False) as client:
        stream = client.generate(
            "g", HISTORY, max_tokens=64, temperature=0, window=2, tools=TOOLS, tool_choice=weather_by_name
        )
        check_first_stream(list(stream), stream.summary)
        answer = client.chat(
            "g",
            [("user", "Hi")],
            max_tokens=64,
            temperature=0,
            tools=WEATHER_ONLY,
            tool_choice="required",
            parallel_tool_calls=False,
        )
        assert (answer.text, answer.tokens, answer.tool_calls, answer.summary) == ("", [8], [OSLO], CALLED)
        with client.lease("g") as model:
            assert model.info.tools is True
            items = list(model.generate([("user", "Hi")], max_tokens=8, temperature=0, tools=WEATHER_ONLY))
            assert items == [protocol.Token("", 8), PARIS_F]
            answer = model.chat([("user", "Hi")], max_tokens=8, temperature=0, tools=WEATHER_ONLY, tool_choice="none")
            assert (answer.text, answer.tool_calls) == ("Mild.", [])
            assert answer.summary.finish_reason == mlxd.FinishReason.Stop

    fake = fake_daemon(fakes, tools_session)

    async def over_async() -> None:
        async with mlxd.AsyncClient(fake.socket, fallback=False) as client:
            stream = await client.generate(
                "g", HISTORY, max_tokens=64, temperature=0, window=2, tools=TOOLS, tool_choice=weather_by_name
            )
            check_first_stream([item async for item in stream], stream.summary)
            answer = await client.chat(
                "g",
                [("user", "Hi")],
                max_tokens=64,
                temperature=0,
                tools=WEATHER_ONLY,
                tool_choice=mlxd.ToolChoiceRequired(),
                parallel_tool_calls=False,
            )
            assert (answer.text, answer.tool_calls, answer.summary) == ("", [OSLO], CALLED)
            async with client.lease("g") as model:
                assert model.info.tools is True
                stream = await model.generate([("user", "Hi")], max_tokens=8, temperature=0, tools=WEATHER_ONLY)
                assert [item async for item in stream] == [protocol.Token("", 8), PARIS_F]
                answer = await model.chat(
                    [("user", "Hi")], max_tokens=8, temperature=0, tools=WEATHER_ONLY, tool_choice="none"
                )
                assert (answer.text, answer.tool_calls) == ("Mild.", [])

    asyncio.run(asyncio.wait_for(over_async(), 30))


def ping_only(session: FakeSession) -> None:
    """Nothing but a Ping may come (request 1: no request was even given an id before)."""
    assert session.receive() == protocol.Request(1, protocol.PingRequest())
    session.send(protocol.Response(1, protocol.Pong()))
    session.wait_for_the_end()


def test_tool_arguments_of_the_wrong_shape_are_refused_with_nothing_sent(fakes: List[FakeDaemon]) -> None:
    hi = [("user", "Hi")]
    weather = [{"name": "get_weather", "parameters": WEATHER}]
    wrong: List[Tuple[type, Dict[str, Any]]] = [
        (TypeError, {"tools": "get_weather"}),  # a str, not a list
        (TypeError, {"tools": {"name": "get_weather"}}),  # one tool, not a list
        (TypeError, {"tools": [42]}),
        (TypeError, {"tools": [{"description": "no name"}]}),
        (ValueError, {"tools": [{"type": "retrieval", "function": {"name": "f"}}]}),
        (TypeError, {"tools": [{"name": "f", "parameters": 42}]}),
        (ValueError, {"tools": weather, "tool_choice": "sometimes"}),
        (TypeError, {"tools": weather, "tool_choice": 42}),
        (TypeError, {"tools": weather, "tool_choice": {"type": "function", "function": {}}}),
        (TypeError, {"tools": weather, "parallel_tool_calls": "yes"}),
    ]
    wrong_messages: List[Any] = [
        [{"role": "assistant", "content": "", "tool_calls": "call_1"}],
        [{"role": "assistant", "content": "", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": 42}}]}],
        [{"role": "assistant", "content": "", "tool_calls": [{"id": 7, "name": "f", "arguments": "{}"}]}],
        [{"role": "tool", "content": "{}", "tool_call_id": 7}],
        [{"role": "user"}],  # no content and no calls
    ]
    fake = fake_daemon(fakes, ping_only)
    with mlxd.Client(fake.socket, fallback=False) as client:
        for error, options in wrong:
            with pytest.raises(error):
                client.chat("g", hi, **options)
        for messages in wrong_messages:
            with pytest.raises(TypeError):
                client.generate("g", messages, tools=weather)
        client.ping()
    with pytest.raises(TypeError):
        mlxd.Tool("f", parameters=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mlxd.ToolCall("c", "f", ["Oslo"])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        mlxd.ToolCall("c", "f", "[1]").parse_arguments()
    assert mlxd.Tool("f").parameters == '{"type":"object","properties":{}}'
    assert mlxd.ToolCall("c", "f", {"x": "é"}) == mlxd.ToolCall("c", "f", '{"x":"é"}')
    # tool_choice as OpenAI writes a function, the short form, and the variants themselves.
    choose = mlxd._base.tool_choice_of
    openai_function = {"type": "function", "function": {"name": "f"}}
    assert choose({"name": "f"}) == choose(openai_function) == mlxd.ToolChoiceFunction("f")
    assert [choose(name) for name in ("auto", "none", "required")] == [
        mlxd.ToolChoiceAuto(),
        mlxd.ToolChoiceNone(),
        mlxd.ToolChoiceRequired(),
    ]
    assert choose(mlxd.ToolChoiceNone()) == mlxd.ToolChoiceNone()

    fake = fake_daemon(fakes, ping_only)

    async def over_async() -> None:
        async with mlxd.AsyncClient(fake.socket, fallback=False) as client:
            for error, options in wrong:
                with pytest.raises(error):
                    await client.chat("g", hi, **options)
            await client.ping()

    asyncio.run(asyncio.wait_for(over_async(), 30))
