"""Reaching the daemon: the socket path (as the Rust client chooses it), the check of
who serves it, the stdio fallback, the version handshake, and the Busy retry waits."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import tempfile
import threading
from pathlib import Path
from typing import Dict, Iterator, Optional

import pytest

import mlxd
from harness import Daemon, mlxd_bin
from mlxd import _codec, _connect, protocol

ME, SQUATTER = 7, 9
USER_SOCKET, SYSTEM_SOCKET = "/tmp/mlxd-7/mlxd.sock", "/run/mlxd/mlxd.sock"


def choose(files: Dict[str, int]) -> "tuple[str, list[tuple[str, int]]]":
    return _connect.choose_socket([USER_SOCKET, SYSTEM_SOCKET], ME, files.get)


def test_a_default_socket_in_someone_elses_directory_is_passed_over() -> None:
    # The same cases as the Rust client's `paths` tests.
    mine = {"/tmp/mlxd-7": ME, USER_SOCKET: ME}
    squatted = {"/tmp/mlxd-7": SQUATTER, USER_SOCKET: SQUATTER}
    system = {"/run/mlxd": 0, SYSTEM_SOCKET: 0}
    passed_over = [(USER_SOCKET, SQUATTER)]

    assert choose({}) == (USER_SOCKET, [])
    assert choose({**mine, **system}) == (USER_SOCKET, [])
    assert choose({"/tmp/mlxd-7": ME, **system}) == (SYSTEM_SOCKET, [])
    assert choose({"/tmp/mlxd-7": 0, USER_SOCKET: 0}) == (USER_SOCKET, [])
    assert choose({**squatted, **system}) == (SYSTEM_SOCKET, passed_over)
    assert choose(squatted) == (SYSTEM_SOCKET, passed_over)
    assert choose({"/tmp/mlxd-7": SQUATTER})[1] == passed_over
    taken = choose({**squatted, "/run/mlxd": SQUATTER, SYSTEM_SOCKET: SQUATTER})
    assert taken[0] == USER_SOCKET and len(taken[1]) == 2


def test_socket_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLXD_SOCKET", "/x/y.sock")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/7")
    assert _connect.default_socket_path(7) == "/x/y.sock"
    assert _connect.resolve_socket() == "/x/y.sock"
    assert _connect.resolve_socket("/explicit.sock") == "/explicit.sock"
    monkeypatch.delenv("MLXD_SOCKET")
    assert _connect.default_socket_path(7) == "/run/user/7/mlxd/mlxd.sock"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "run")  # relative: invalid per XDG, ignored
    assert _connect.default_socket_path(7) == "/tmp/mlxd-7/mlxd.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert _connect.default_socket_path(7) == "/tmp/mlxd-7/mlxd.sock"


def test_trusted_uids_from_the_environment(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLXD_TRUSTED_UIDS", " 998, x ,999,")
    assert _connect.trusted_uids_from_env() == [998, 999]
    assert "ignoring 'x'" in capsys.readouterr().err


def test_busy_waits_are_half_to_one_and_a_half_times_the_hint_and_spread() -> None:
    policy = mlxd.RetryPolicy()
    waits = [policy.wait(0.010) for _ in range(1000)]
    assert all(0.005 <= wait < 0.015 for wait in waits)
    assert len(set(waits)) > 900
    assert all(0.005 <= policy.wait(None) < 0.015 for _ in range(100))  # no hint: 10 ms
    assert policy.wait(60.0) == policy.max_wait == 2.0
    assert (policy.max_retries, mlxd.NO_RETRIES.max_retries) == (3, 0)
    assert _connect.jitter(0) == 0


def test_the_credit_window_is_granted_back_in_halves() -> None:
    window = mlxd._base.CreditWindow(32)
    grants = [window.took_one() for _ in range(64)]
    assert grants.count(16) == 4 and sum(grants) == 64
    one = mlxd._base.CreditWindow(1)
    assert [one.took_one() for _ in range(3)] == [1, 1, 1]


# -- The handshake -------------------------------------------------------------------------


def raw_exchange(path: str, message: protocol.ClientMessage) -> protocol.ServerMessage:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(_codec.frame(protocol.encode_client(message)))
        reader = sock.makefile("rb")
        length = _codec.body_length(reader.read(4), _codec.HANDSHAKE_MAX_FRAME_LEN)
        return protocol.decode_server(reader.read(length))


def test_a_version_mismatch_is_reported_clearly(daemon: Daemon) -> None:
    # Through the codec alone: the daemon answers Fatal(VersionMismatch) naming both versions.
    answer = raw_exchange(daemon.socket, protocol.Hello(999, "pytest", os.getpid(), 1 << 20))
    assert isinstance(answer, protocol.Fatal)
    assert answer.error.code == protocol.ErrorCode.VersionMismatch
    assert "999" in answer.error.message and f"version {protocol.PROTOCOL_VERSION}" in answer.error.message
    assert isinstance(mlxd.errors.from_wire(answer.error, fatal=True), mlxd.VersionMismatchError)

    # Through the client: a typed error that says what to do.
    with pytest.raises(mlxd.VersionMismatchError) as refused:
        mlxd.Client(daemon.socket, fallback=False, protocol_version=999)
    error = refused.value
    assert error.fatal and error.code == mlxd.ErrorCode.VersionMismatch
    assert "999" in str(error) and "same mlxd release" in str(error)

    async def async_refused() -> None:
        with pytest.raises(mlxd.VersionMismatchError):
            await mlxd.AsyncClient(daemon.socket, fallback=False, protocol_version=999).connect()

    asyncio.run(async_refused())


def test_a_session_that_breaks_the_protocol_ends_with_a_typed_error(daemon: Daemon) -> None:
    answer = raw_exchange(daemon.socket, protocol.Request(1, protocol.PingRequest()))
    assert isinstance(answer, protocol.Fatal) and answer.error.code == protocol.ErrorCode.BadRequest


# -- No daemon: the stdio fallback ------------------------------------------------------------


@pytest.fixture
def no_daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    missing = tempfile.mkdtemp(prefix="mlxd-none-", dir="/tmp")
    monkeypatch.setenv("MLXD_SOCKET", os.path.join(missing, "nothing-here.sock"))
    monkeypatch.setenv("MLXD_BIN", str(mlxd_bin()))
    monkeypatch.delenv("MLXD_NO_FALLBACK", raising=False)
    yield missing
    os.rmdir(missing)


def test_no_daemon_falls_back_to_stdio(no_daemon: str, capfd: pytest.CaptureFixture[str]) -> None:
    with mlxd.Client(client_name="fallback-test") as client:
        assert client.endpoint == "stdio"
        assert client.ping() >= 0
        status = client.status()
        assert status.endpoint == "stdio" and status.protocol_version == mlxd.PROTOCOL_VERSION
        assert {m.name for m in status.models} >= {"minilm", "smollm2"}
    assert "fell back to a private `mlxd stdio`" in capfd.readouterr().err

    async def over_async() -> None:
        async with mlxd.AsyncClient() as client:
            assert client.endpoint == "stdio"
            assert (await client.status()).endpoint == "stdio"

    asyncio.run(over_async())


def test_the_fallback_can_be_turned_off(no_daemon: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(mlxd.NoDaemonError, match="nothing-here.sock"):
        mlxd.Client(fallback=False)
    monkeypatch.setenv("MLXD_NO_FALLBACK", "1")
    with pytest.raises(mlxd.NoDaemonError):
        mlxd.Client()

    async def over_async() -> None:
        with pytest.raises(mlxd.NoDaemonError):
            await mlxd.AsyncClient().connect()

    asyncio.run(over_async())
    # An explicit parameter wins over the environment.
    monkeypatch.setenv("MLXD_BIN", "/nonexistent/mlxd")
    with pytest.raises(mlxd.FallbackError, match="/nonexistent/mlxd"):
        mlxd.Client(fallback=True)


# -- Who serves the socket -------------------------------------------------------------------


def test_the_peer_uid_is_read_unsigned() -> None:
    # struct ucred { pid_t pid; uid_t uid; gid_t gid; }: uid_t is unsigned.
    assert _connect.ucred_uid(struct.pack("iII", 4321, 3_000_000_000, 3_000_000_001)) == 3_000_000_000
    assert _connect.ucred_uid(struct.pack("iII", -1, 0, 0)) == 0
    # And from the kernel: whoever made a socketpair serves its other end.
    left, right = socket.socketpair()
    with left, right:
        assert _connect.peer_uid(left) == os.geteuid()


class ListenerAs:
    """A socket listening at ``path`` as user ``uid`` (the kernel reports the uid that
    called listen() as the server's; None: as this process), counting the bytes a client
    sends it."""

    def __init__(self, uid: Optional[int], path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        if uid is not None:
            os.seteuid(uid)
        try:
            self.sock.bind(path)
            self.sock.listen(1)
        finally:
            if uid is not None:
                os.seteuid(0)
        self.received: Optional[int] = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.sock.accept()
        connection.settimeout(2)
        got = 0
        try:
            while True:
                chunk = connection.recv(4096)
                if not chunk:
                    break
                got += len(chunk)
        except OSError:
            pass
        connection.close()
        self.received = got

    def close(self) -> None:
        """Waits for the one connection to end, then stops listening."""
        self.thread.join(5)
        self.sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to listen as another user")
def test_a_socket_served_by_another_user_is_refused_before_anything_is_sent() -> None:
    nobody = 65534
    directory = Path(tempfile.mkdtemp(prefix="mlxd-squat-", dir="/tmp"))
    os.chmod(directory, 0o777)
    try:
        squatter = ListenerAs(nobody, str(directory / "s.sock"))
        with pytest.raises(mlxd.UntrustedServerError, match=f"uid {nobody}"):
            mlxd.Client(str(directory / "s.sock"), fallback=True, trusted_uids=[])
        squatter.close()
        assert squatter.received == 0, "the client sent bytes to an untrusted server"

        # A trusted uid is talked to (this listener is no daemon: the session then fails).
        trusted = ListenerAs(nobody, str(directory / "t.sock"))
        with pytest.raises(mlxd.MlxdError) as failed:
            mlxd.Client(str(directory / "t.sock"), fallback=False, trusted_uids=[nobody], connect_timeout=0.5)
        trusted.close()
        assert not isinstance(failed.value, mlxd.UntrustedServerError)
        assert trusted.received, "a trusted server got the Hello"
    finally:
        for leftover in directory.iterdir():
            leftover.unlink()
        directory.rmdir()


def test_a_server_that_looks_foreign_is_refused_before_anything_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same check without root: the server's uid, as the kernel reports it, is made
    to look like another user's."""
    foreign = 4242 if os.geteuid() != 4242 else 4243
    monkeypatch.setattr(_connect, "peer_uid", lambda sock: foreign)
    directory = Path(tempfile.mkdtemp(prefix="mlxd-foreign-", dir="/tmp"))
    try:
        squatter = ListenerAs(None, str(directory / "s.sock"))
        with pytest.raises(mlxd.UntrustedServerError, match=f"uid {foreign}"):
            mlxd.Client(str(directory / "s.sock"), fallback=True, trusted_uids=[])
        squatter.close()
        assert squatter.received == 0, "the client sent bytes to an untrusted server"

        async_squatter = ListenerAs(None, str(directory / "a.sock"))

        async def over_async() -> None:
            with pytest.raises(mlxd.UntrustedServerError, match=f"uid {foreign}"):
                await mlxd.AsyncClient(str(directory / "a.sock"), fallback=True, trusted_uids=[]).connect()

        asyncio.run(over_async())
        async_squatter.close()
        assert async_squatter.received == 0, "the async client sent bytes to an untrusted server"

        # Trusted, it is talked to (and, being no daemon, never answers).
        trusted = ListenerAs(None, str(directory / "t.sock"))
        with pytest.raises(mlxd.ConnectTimeoutError):
            mlxd.Client(str(directory / "t.sock"), fallback=False, trusted_uids=[foreign], connect_timeout=0.3)
        trusted.close()
        assert trusted.received, "a trusted server got the Hello"
    finally:
        for leftover in directory.iterdir():
            leftover.unlink()
        directory.rmdir()
