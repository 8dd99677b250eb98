"""Test harness: the real ``mlxd serve`` on a temporary socket, shared by the whole session
(tests that need other daemon settings start their own), and where things are.

The daemon is ``$MLXD_BIN``, by default ``<repo>/target/debug/mlxd`` (what ``make test``
builds); it finds the checkout's ``.venv`` by itself, or ``$VIRTUAL_ENV``. Every daemon
started here runs in its own process group and is stopped (SIGTERM, then SIGKILL) when
its fixture ends, whatever the tests did; on Linux it is also told to die with pytest.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import pytest

import mlxd
from mlxd import _codec, protocol

PACKAGE_DIR = Path(__file__).resolve().parents[1]
REPO = PACKAGE_DIR.parents[1]
VECTORS = REPO / "proto" / "conformance" / "vectors.json"


def mlxd_bin() -> Path:
    return Path(os.environ.get("MLXD_BIN") or REPO / "target" / "debug" / "mlxd")


def mlxctl_bin() -> Path:
    return Path(os.environ.get("MLXCTL_BIN") or mlxd_bin().parent / "mlxctl")


def fixtures_dirs() -> List[Path]:
    """Where fixtures are looked for, in order: ``$MLXD_FIXTURES`` (if set), the
    checkout's tiny sentence-transformers models (``python/tests/fixtures/st``), then
    ``../shared/fixtures`` beside the checkout."""
    defaults = [REPO / "python" / "tests" / "fixtures" / "st", REPO.parent / "shared" / "fixtures"]
    given = os.environ.get("MLXD_FIXTURES")
    return [Path(given), *defaults] if given else defaults


def fixture(name: str) -> Path:
    """The first fixture file or directory ``name`` in :func:`fixtures_dirs` (the first
    place's path if there is none, so that errors name it)."""
    places = [place / name for place in fixtures_dirs()]
    return next((path for path in places if path.exists()), places[0])


#: Fixture models (directories in :func:`fixtures_dirs`) the shared daemon serves besides its
#: own, as ``--model NAME=DIR``: a sentence-transformers model with named prompts
#: ("query: " for "query") and a reranker (a cross-encoder).
FIXTURE_MODELS = ("st-bert-mean", "rerank-bert")


def fixture_model_args() -> List[str]:
    """``--model NAME=DIR`` for each fixture model there is (the tests of one that is
    missing fail, naming it: see :func:`fixture_model`)."""
    args: List[str] = []
    for name in FIXTURE_MODELS:
        if fixture(name).is_dir():
            args += ["--model", f"{name}={fixture(name)}"]
    return args


def fixture_model(client: mlxd.Client, name: str) -> mlxd.ModelInfo:
    """The daemon's entry for fixture model ``name``; fails the test if it is not served."""
    for model in client.models():
        if model.name == name:
            return model
    looked = ", ".join(str(place) for place in fixtures_dirs())
    pytest.fail(f"fixture model {name} is not served: no directory {name} in {looked} (set MLXD_FIXTURES)")


#: A tiny tool-calling model the shared daemon serves, built once per session by
#: ``tests/tools/tiny_mlx_lm.py`` (random weights, SmolLM2's tokenizer) with Qwen2.5's chat
#: template (tool calls as ``<tool_call>`` JSON, in the ChatML that tokenizer has): only a
#: call that ``tool_choice`` enforces means anything from it.
TOOLS_MODEL = "tiny-qwen-tools"
TOOLS_TEMPLATE = "Qwen-Qwen2.5-7B-Instruct.jinja"


def tools_template() -> Path:
    """The tool model's chat template: ``$MLXD_TOOL_TEMPLATE`` if set, else
    :data:`TOOLS_TEMPLATE` in the checkout's ``python/tests/fixtures/templates``."""
    given = os.environ.get("MLXD_TOOL_TEMPLATE")
    return Path(given) if given else REPO / "python" / "tests" / "fixtures" / "templates" / TOOLS_TEMPLATE


def store_model_dir(name: str) -> Path:
    """Model ``name`` in the user's model store (where ``make setup`` imports smollm2):
    ``$MLXD_STORE``, else ``$XDG_DATA_HOME/mlxd``, else ``~/.local/share/mlxd``."""
    given = os.environ.get("MLXD_STORE")
    root = Path(given) if given else Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "mlxd"
    return root / "models" / name


class ToolsModel:
    """The tiny tool model of a session: ``--model`` arguments that serve it, or (when it
    could not be built) why not; its tests then fail saying so, the others run."""

    def __init__(self, args: List[str], problem: Optional[str]) -> None:
        self.args, self.problem = args, problem

    @classmethod
    def build(cls, out: Path) -> "ToolsModel":
        template = tools_template()
        if not template.is_file():
            return cls([], f"no chat template {template} (set MLXD_TOOL_TEMPLATE)")
        tokenizer = store_model_dir("smollm2")
        argv = [sys.executable, str(REPO / "tests" / "tools" / "tiny_mlx_lm.py"), str(out)]
        argv += ["--tokenizer-from", str(tokenizer), "--chat-template", str(template)]
        try:
            built = run(argv, timeout=300)
        except subprocess.TimeoutExpired:
            return cls([], "building the tiny tool model took over 300 s")
        if built.returncode != 0:
            return cls([], f"building the tiny tool model failed (smollm2 from {tokenizer}):\n{built.stderr}")
        return cls(["--model", f"{TOOLS_MODEL}={out}"], None)


def child_env(**extra: str) -> Dict[str, str]:
    """The environment of a child Python that must import this package (installed, or not)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_DIR), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: a pytest killed hard does not leave its daemons behind.
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))


class Daemon:
    """A running ``mlxd serve`` with its own socket, log and config directory."""

    def __init__(self, *extra_args: str) -> None:
        binary = mlxd_bin()
        if not binary.is_file():
            pytest.fail(f"{binary} not built; run `make setup` (or set MLXD_BIN)")
        # Short: socket paths are limited to ~100 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="mlxd-py-", dir="/tmp"))
        self.socket = str(self.dir / "s.sock")
        self.log = self.dir / "daemon.log"
        env = dict(os.environ)
        env.update(
            MLXD_LOG="debug",
            MLXD_LOG_FORMAT="human",
            # A developer's own ~/.config/mlxd/config.toml must not change what tests see.
            XDG_CONFIG_HOME=str(self.dir),
        )
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [str(binary), "serve", "--socket", self.socket, *extra_args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(self.socket)
                return
            except OSError:
                pass
            finally:
                probe.close()
            if self.process.poll() is not None:
                pytest.fail(f"mlxd exited during start-up ({self.process.returncode}):\n{self.log_text()}")
            time.sleep(0.02)
        pytest.fail(f"mlxd did not listen within 30 s:\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def client(self, **options: Any) -> mlxd.Client:
        """A client on this daemon, fallback and Busy retries off unless asked."""
        options.setdefault("fallback", False)
        options.setdefault("retry", mlxd.NO_RETRIES)
        options.setdefault("client_name", "pytest")
        return mlxd.Client(self.socket, **options)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        # Workers are in the daemon's process group; any left go too.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def check_greedy_logprobs(with_logprobs: Sequence[mlxd.Token], without: Sequence[mlxd.Token], k: int) -> None:
    """Greedy tokens asked with ``logprobs=k``: each token with an id has its log
    probability (<= 0) and ``k`` alternatives best first, the first of them the token
    chosen; the same tokens as without logprobs, which have none."""
    chosen = [token for token in with_logprobs if token.token is not None]
    assert len(chosen) == 4
    for token in chosen:
        logprobs = token.logprobs
        assert isinstance(logprobs, mlxd.TokenLogprobs), token
        assert logprobs.logprob <= 0
        assert len(logprobs.top) == k
        assert all(isinstance(top, mlxd.TopLogprob) and top.logprob <= 0 for top in logprobs.top)
        assert [top.logprob for top in logprobs.top] == sorted((top.logprob for top in logprobs.top), reverse=True)
        assert logprobs.top[0].token == token.token
        assert logprobs.top[0].logprob == logprobs.logprob and logprobs.top[0].text == logprobs.text
    assert all(token.logprobs is None for token in with_logprobs if token.token is None)
    assert [token.token for token in without if token.token is not None] == [token.token for token in chosen]
    assert all(token.logprobs is None for token in without)


#: Structured output against smollm2 (greedy, 60 tokens at most): a JSON schema, a regex,
#: and a schema the daemon cannot compile.
SKY_PROMPT = [("user", "Is the sky blue? Answer in JSON.")]
SKY_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "boolean"}},
    "required": ["answer"],
    "additionalProperties": False,
}
PHONE_PROMPT = [("user", "A phone number?")]
PHONE_PATTERN = r"\d{3}-\d{4}"
ASCII_PHONE_PATTERN = "[0-9]{3}-[0-9]{4}"
BAD_SCHEMA = {"type": "frob"}


def check_sky_answer(answer: mlxd.Completion) -> None:
    """The answer to :data:`SKY_PROMPT` under :data:`SKY_SCHEMA`: one JSON object with a
    boolean ``answer`` and nothing else, complete (Stop)."""
    value = json.loads(answer.text)
    assert isinstance(value, dict) and list(value) == ["answer"], answer.text
    assert isinstance(value["answer"], bool), answer.text
    assert answer.summary.finish_reason == mlxd.FinishReason.Stop, answer.summary


def check_phone_answer(answer: mlxd.Completion, pattern: str = PHONE_PATTERN) -> None:
    """The answer to :data:`PHONE_PROMPT` under ``pattern``: matched as a whole, complete
    (Stop: nothing may follow). ``\\d`` is any Unicode digit both here and in the daemon's
    (Rust) regexes: greedy smollm2 writes U+1FBF8 SEGMENTED DIGIT EIGHT for it."""
    assert re.fullmatch(pattern, answer.text), answer.text
    assert answer.summary.finish_reason == mlxd.FinishReason.Stop, answer.summary


#: Tool calls against :data:`TOOLS_MODEL`: a function whose arguments the schema pins down.
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER_TOOL = mlxd.Tool("get_weather", "The weather in a city now.", WEATHER_SCHEMA)
WEATHER_QUESTION: List[Dict[str, Any]] = [{"role": "user", "content": "What is the weather in Oslo, in celsius?"}]


def check_weather_call(answer: mlxd.Completion) -> mlxd.ToolCall:
    """An answer whose ``tool_choice`` named get_weather: exactly one call of it, with
    arguments valid against :data:`WEATHER_SCHEMA` (the constraint's doing, whatever the
    weights), ending ToolCalls; the call."""
    assert len(answer.tool_calls) == 1, answer
    (call,) = answer.tool_calls
    assert isinstance(call, mlxd.ToolCall) and call.name == "get_weather" and call.id, call
    arguments = call.parse_arguments()
    assert set(arguments) == {"city", "unit"}, call.arguments
    assert arguments["city"] in ("Paris", "Oslo") and arguments["unit"] in ("celsius", "fahrenheit"), call.arguments
    assert answer.summary.finish_reason == mlxd.FinishReason.ToolCalls, answer.summary
    return call


def weather_answered(call: mlxd.ToolCall) -> List[Dict[str, Any]]:
    """:data:`WEATHER_QUESTION`, the assistant's ``call`` and the tool's answer to it."""
    made = {"role": "assistant", "content": "", "tool_calls": [call]}
    return [*WEATHER_QUESTION, made, {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": -3}'}]


def eventually(check: Callable[[], bool], within: float = 10.0, every: float = 0.05) -> bool:
    deadline = time.monotonic() + within
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)


def model_named(models: Sequence[mlxd.ModelInfo], name: str) -> mlxd.ModelInfo:
    return next(model for model in models if model.name == name)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def run(argv: Sequence[str], timeout: float = 60, env: Optional[Dict[str, str]] = None) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env)


@contextlib.contextmanager
def interrupted_after(seconds: float) -> Iterator[None]:
    """Raises KeyboardInterrupt in this (the main) thread after ``seconds``, from a signal
    handler, as Ctrl-C does; never after the block."""

    def interrupt(signum: int, frame: Optional[FrameType]) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


FAKE_LIMITS = protocol.Limits(
    max_frame_len=16 << 20,
    max_texts_per_embed=1024,
    max_text_bytes=65536,
    max_in_flight=64,
    max_leases=64,
    max_tokens=4096,
)


class FakeSession:
    """The daemon's end of one session with a :class:`FakeDaemon`."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(10)
        #: The body of the last frame :meth:`receive` read, as it came.
        self.last_body = b""

    def receive(self) -> protocol.ClientMessage:
        length = _codec.body_length(self._exactly(4), 1 << 30)
        self.last_body = self._exactly(length)
        return protocol.decode_client(self.last_body)

    def _exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise EOFError("the client closed the connection")
            data += chunk
        return data

    def send(self, message: protocol.ServerMessage) -> None:
        self.send_bytes(frame_of(message))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def wait_for_the_end(self) -> None:
        """Until the client closes; what it sends meanwhile is ignored."""
        while self.sock.recv(4096):
            pass


def frame_of(message: protocol.ServerMessage) -> bytes:
    return _codec.frame(protocol.encode_server(message))


class FakeDaemon:
    """A scripted stand-in for the daemon, for what the real one cannot be made to do on
    cue: it accepts one session on a Unix socket, answers the Hello with a Welcome, then
    runs ``script`` on a thread. :meth:`close` re-raises what went wrong in the script."""

    def __init__(self, script: Callable[[FakeSession], None]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mlxd-fake-", dir="/tmp"))
        self.socket = str(self.dir / "s.sock")
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(self.socket)
        self.listener.listen(1)
        self.hello: Optional[protocol.Hello] = None
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._serve, args=(script,), daemon=True)
        self.thread.start()

    def _serve(self, script: Callable[[FakeSession], None]) -> None:
        try:
            self.listener.settimeout(10)
            connection, _ = self.listener.accept()
            with connection:
                session = FakeSession(connection)
                hello = session.receive()
                assert isinstance(hello, protocol.Hello), hello
                self.hello = hello
                session.send(protocol.Welcome(mlxd.PROTOCOL_VERSION, "fake", 1, FAKE_LIMITS))
                script(session)
        except BaseException as err:  # re-raised by close()
            self.error = err

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        assert not self.thread.is_alive(), "the fake daemon's script did not end"
        if self.error is not None:
            raise self.error
