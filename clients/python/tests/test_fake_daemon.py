"""Both clients against a scripted fake daemon (harness.FakeDaemon), for what the real one
cannot be made to do on cue: a Fatal in the middle of a session, a frame that arrives in
pieces around a Ctrl-C, a daemon that never answers the Hello."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
from typing import Callable, Iterator, List, Optional

import pytest

import mlxd
from harness import FakeDaemon, FakeSession
from mlxd import protocol


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
