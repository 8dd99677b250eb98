"""The blocking client against the real daemon (one shared by the session unless a test
needs other settings): embeddings against sentence-transformers, named embedding prompts
and reranking on the fixture models, greedy generation against mlxctl, logprobs, structured
output, tool calls (on a tiny tool model), cancel, credit, leases, Busy, typed errors, the
README and the benchmark."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import pytest

import mlxd
from harness import (
    ASCII_PHONE_PATTERN,
    BAD_SCHEMA,
    PACKAGE_DIR,
    PHONE_PATTERN,
    PHONE_PROMPT,
    SKY_PROMPT,
    SKY_SCHEMA,
    WEATHER_QUESTION,
    WEATHER_TOOL,
    Daemon,
    check_greedy_logprobs,
    check_phone_answer,
    check_sky_answer,
    check_weather_call,
    child_env,
    cosine,
    eventually,
    fixture_model,
    interrupted_after,
    mlxctl_bin,
    model_named,
    run,
    weather_answered,
)


def test_minilm_matches_sentence_transformers(client: mlxd.Client, minilm_reference: List[Dict[str, Any]]) -> None:
    texts = [item["text"] for item in minilm_reference]
    with client.lease("minilm") as minilm:
        assert minilm.info.dim == 384
        vectors = minilm.embed(texts)
        assert len(vectors) == len(texts) == 24
        for item, vector in zip(minilm_reference, vectors):
            similarity = cosine(vector, item["embedding"])
            assert similarity >= 0.999, f"cosine {similarity:.6f} for {item['text'][:40]!r}"

        np = pytest.importorskip("numpy")
        matrix = minilm.embed(texts[:3], numpy=True)
        assert matrix.shape == (3, 384) and matrix.dtype == np.float32
        assert np.allclose(matrix, np.array(vectors[:3], dtype=np.float32), atol=1e-5)
        whole = minilm.embeddings(texts[0])
        assert (whole.count, whole.dim, whole.model) == (1, 384, "minilm") and whole.prompt_tokens > 0
    # By name, without a lease, the same vector.
    (single,) = client.embed("minilm", [texts[0]])
    assert cosine(single, minilm_reference[0]["embedding"]) >= 0.999


def max_difference(a: Sequence[float], b: Sequence[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b))


def test_named_embedding_prompts(client: mlxd.Client) -> None:
    info = fixture_model(client, "st-bert-mean")
    assert info.kind == mlxd.ModelKind.Embedding
    assert "query" in info.prompts and info.prompts == sorted(info.prompts)
    assert info.estimated_bytes > 0
    text = "How long do giant pandas live?"
    with client.lease("st-bert-mean") as st:
        assert st.info.prompts == info.prompts and st.info.default_prompt == info.default_prompt
        (plain,) = st.embed([text], prompt="")
        (query,) = st.embed([text], prompt="query")
        (spelled_out,) = st.embed(["query: " + text], prompt="")
        (default,) = st.embed(text)
        (named_default,) = st.embed(text, prompt=info.default_prompt or "")
    # "query" puts "query: " before the text: the same vector as that text without a prompt.
    assert max_difference(query, spelled_out) <= 1e-5
    assert max_difference(query, plain) > 1e-3, "the prompt changed nothing"
    # No prompt named: the model's default (none if it has none).
    assert max_difference(default, named_default) <= 1e-5
    # By name too; an unknown prompt is refused, naming the model's prompts.
    (by_name,) = client.embed("st-bert-mean", [text], prompt="query")
    assert max_difference(by_name, query) <= 1e-5
    with pytest.raises(mlxd.BadRequestError) as refused:
        client.embed("st-bert-mean", [text], prompt="no-such-prompt")
    for name in info.prompts:
        assert f'"{name}"' in refused.value.message, refused.value.message


def test_rerank_scores_every_document_best_first(client: mlxd.Client) -> None:
    info = fixture_model(client, "rerank-bert")
    assert info.kind == mlxd.ModelKind.Rerank
    query = "What is the capital of France?"
    documents = [
        "Paris is the capital and largest city of France.",
        "The giant panda is a bear species endemic to China.",
        "Berlin is the capital of Germany.",
        "France is a country in Western Europe.",
        "bananas",
    ]
    whole = client.rerank("rerank-bert", query, documents)
    assert whole.model == "rerank-bert" and whole.prompt_tokens > 0
    assert sorted(result.index for result in whole.results) == list(range(len(documents)))
    scores = [result.score for result in whole.results]
    assert all(0.0 <= score <= 1.0 for score in scores), scores
    assert scores == sorted(scores, reverse=True), "not best first"

    # top_n cuts to the best (by lease here); each document keeps its score.
    by_index = {result.index: result.score for result in whole.results}
    with client.lease("rerank-bert") as reranker:
        assert reranker.info.kind == mlxd.ModelKind.Rerank
        top = reranker.rerank(query, documents, top_n=2)
    assert len(top.results) == 2 and top.model == "rerank-bert"
    for result in top.results:
        assert abs(result.score - by_index[result.index]) <= 1e-5
    assert min(result.score for result in top.results) >= scores[2] - 1e-5

    # Each kind of model serves only its own requests.
    with pytest.raises(mlxd.BadRequestError):
        client.rerank("st-bert-mean", query, documents)
    with pytest.raises(mlxd.BadRequestError):
        client.rerank("minilm", query, documents)
    with pytest.raises(mlxd.BadRequestError):
        client.embed("rerank-bert", documents)


def mlxctl_generate(daemon: Daemon, prompt: str, *extra: str) -> List[Dict[str, Any]]:
    argv = [str(mlxctl_bin()), "--socket", daemon.socket, "--no-fallback", "--json", "generate"]
    result = run([*argv, "-m", "smollm2", "--temperature", "0", "--max-tokens", "12", *extra, prompt])
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("raw", [False, True], ids=["chat", "raw"])
def test_greedy_generation_equals_mlxctl(daemon: Daemon, client: mlxd.Client, raw: bool) -> None:
    prompt = "Name three colours of the rainbow."
    lines = mlxctl_generate(daemon, prompt, *(["--raw"] if raw else []))
    expected_tokens = [line["token"] for line in lines if "token" in line and line["token"] is not None]
    expected_text = "".join(line["text"] for line in lines if "text" in line)

    messages: Any = prompt if raw else [("user", prompt)]
    answer = client.chat("smollm2", messages, temperature=0, max_tokens=12)
    assert answer.tokens == expected_tokens
    assert answer.text == expected_text
    assert answer.summary.completion_tokens == len(expected_tokens)
    assert answer.summary.finish_reason.name.lower() == lines[-1]["finish_reason"]


def test_greedy_logprobs(client: mlxd.Client) -> None:
    prompt = [("user", "Name three colours of the rainbow.")]
    with client.generate("smollm2", prompt, temperature=0, max_tokens=4, logprobs=3) as stream:
        with_logprobs = list(stream)
    with client.generate("smollm2", prompt, temperature=0, max_tokens=4) as stream:
        without = list(stream)
    check_greedy_logprobs(with_logprobs, without, 3)

    # The whole-answer helpers keep them, one per token id.
    with client.lease("smollm2") as smollm2:
        answer = smollm2.chat(prompt, temperature=0, max_tokens=4, logprobs=3)
    assert answer.tokens == [token.token for token in with_logprobs if token.token is not None]
    assert [logprobs.top[0].token for logprobs in answer.logprobs] == answer.tokens
    assert client.chat("smollm2", prompt, temperature=0, max_tokens=4).logprobs == []

    with pytest.raises(mlxd.BadRequestError):
        client.chat("smollm2", prompt, max_tokens=4, logprobs=21)  # more than 20 alternatives


def test_structured_output(client: mlxd.Client) -> None:
    schema = mlxd.JsonSchema(SKY_SCHEMA)
    check_sky_answer(client.chat("smollm2", SKY_PROMPT, temperature=0, max_tokens=60, constraint=schema))
    with client.lease("smollm2") as smollm2:
        phone = mlxd.Regex(PHONE_PATTERN)
        with smollm2.generate(PHONE_PROMPT, temperature=0, max_tokens=60, constraint=phone) as stream:
            check_phone_answer(stream.complete())
        ascii_digits = mlxd.Regex(ASCII_PHONE_PATTERN)
        answer = smollm2.chat(PHONE_PROMPT, temperature=0, max_tokens=60, constraint=ascii_digits)
        check_phone_answer(answer, ASCII_PHONE_PATTERN)
        assert answer.text.isascii(), answer.text
    with pytest.raises(mlxd.BadRequestError, match="frob"):
        client.chat("smollm2", "x", max_tokens=4, constraint=mlxd.JsonSchema(BAD_SCHEMA))


def test_tool_calls(client: mlxd.Client, tools_model: str) -> None:
    # ModelInfo.tools: the tool model's template takes tools, smollm2's does not.
    models = client.models()
    assert (model_named(models, tools_model).tools, model_named(models, "smollm2").tools) == (True, False)
    # tool_choice naming the function: one call, its arguments valid against the schema.
    weather = {"type": "function", "function": {"name": "get_weather"}}
    first = client.chat(
        tools_model, WEATHER_QUESTION, tools=[WEATHER_TOOL], tool_choice=weather, temperature=0, max_tokens=64
    )
    call = check_weather_call(first)
    # The call and the tool's answer sent back: a longer prompt, rendered and answered.
    second = client.chat(tools_model, weather_answered(call), tools=[WEATHER_TOOL], temperature=0, max_tokens=4)
    assert second.summary.completion_tokens >= 1
    assert second.summary.prompt_tokens > first.summary.prompt_tokens, (first.summary, second.summary)


def test_cancel_mid_stream(daemon: Daemon, client: mlxd.Client) -> None:
    stream = client.generate("smollm2", "Once upon a time", temperature=0, max_tokens=200)
    received = [next(stream), next(stream), next(stream)]
    stream.cancel()
    received += list(stream)  # what was already sent, then the end
    assert stream.summary is not None
    assert stream.summary.finish_reason == mlxd.FinishReason.Cancelled
    assert 3 <= len(received) < 200
    assert stream.summary.completion_tokens >= len([t for t in received if t.token is not None])
    # The stream gave its slot back.
    assert eventually(lambda: model_named(client.models(), "smollm2").sched.running == 0)

    # A stream dropped unread is cancelled too (with the client's next frame).
    dropped = client.generate("smollm2", "Once upon a time", temperature=0, max_tokens=200, window=2)
    assert eventually(lambda: model_named(client.models(), "smollm2").sched.running == 1, within=30)
    del dropped
    assert eventually(lambda: model_named(client.models(), "smollm2").sched.running == 0)


def test_a_slow_reader_holds_exactly_its_credit(client: mlxd.Client) -> None:
    window = 4
    with client.generate("smollm2", "Count: one, two, three,", temperature=0, max_tokens=16, window=window) as stream:
        # Nothing is read: the daemon sends the window and pauses the stream.
        def received_window() -> bool:
            client.ping()  # reads whatever the daemon sent before the Pong
            return stream.buffered >= window

        assert eventually(received_window, within=30)
        time.sleep(1.0)
        client.ping()
        assert stream.buffered == window, "the daemon sent more than the credit granted"
        smollm2 = model_named(client.status().models, "smollm2")
        assert smollm2.sched.running == 1 and smollm2.in_flight >= 1, "a paused stream keeps its slot"

        tokens = []
        for token in stream:
            tokens.append(token)
            assert stream.buffered <= window
        assert stream.summary is not None
        assert stream.summary.finish_reason == mlxd.FinishReason.Length
        assert len(tokens) == stream.summary.completion_tokens == 16


def test_a_lease_ends_with_its_process(daemon: Daemon, client: mlxd.Client) -> None:
    def leases() -> int:
        return model_named(client.models(), "minilm").leases

    before = leases()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, mlxd; c = mlxd.Client(sys.argv[1], fallback=False); m = c.lease('minilm');"
            " print('leased', m.lease_id, flush=True); sys.stdin.read()",
            daemon.socket,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().startswith("leased"), "the child could not lease"
        assert leases() == before + 1
        holder.kill()  # no release, no close: only the end of the process
        holder.wait(10)
        assert eventually(lambda: leases() == before), f"{leases()} leases after the holder died"
    finally:
        holder.kill()
        holder.wait()


def test_busy_is_typed_and_retried(start_daemon: Callable[..., Daemon]) -> None:
    small = start_daemon("--queue-capacity", "1")
    with small.client() as holder, small.client() as impatient:
        # A fresh daemon: loading reports progress.
        progress: List[mlxd.LoadProgress] = []
        loaded = holder.load("smollm2", progress=progress.append)
        assert loaded.state == mlxd.ModelState.Ready
        assert progress and {event.model for event in progress} == {"smollm2"}
        assert mlxd.LoadStage.Weights in {event.stage for event in progress}

        # A stream that is not read keeps the model's only place.
        blocker = holder.generate("smollm2", "Hello", temperature=0, max_tokens=64, window=1)

        def paused() -> bool:
            holder.ping()
            return blocker.buffered == 1

        assert eventually(paused, within=60)
        with pytest.raises(mlxd.BusyError) as refused:
            impatient.tokenize("smollm2", "hi")
        assert refused.value.code == mlxd.ErrorCode.Busy
        assert refused.value.retry_after is not None and refused.value.retry_after > 0

        # With retries, the same request waits out the blocker (closed from another thread):
        # every 50 ms for up to a minute, however slow the machine.
        patient = small.client(retry=EveryFiftyMs(max_retries=1200))
        closer = threading.Timer(0.5, blocker.close)
        started = time.monotonic()
        closer.start()
        try:
            assert patient.tokenize("smollm2", "hi")
        finally:
            closer.join()
            patient.close()
        assert time.monotonic() - started >= 0.4
        assert model_named(impatient.models(), "smollm2").sched.busy >= 2


class EveryFiftyMs(mlxd.RetryPolicy):
    """Retries after 50 ms whatever the daemon suggests (it may say 1 ms)."""

    def wait(self, retry_after: Optional[float]) -> float:
        return 0.05


def test_an_interrupted_call_leaves_the_session_and_its_leases(one_stream: Callable[[], Daemon]) -> None:
    """Ctrl-C in a REPL while a call waits: that call is cancelled at the daemon, the
    session and its leases stay."""
    with one_stream().client() as client, client.lease("smollm2") as smollm2:
        # A stream that is not read holds the only decoding slot: a generation behind it
        # waits, and the daemon sends nothing until it is interrupted.
        blocker = smollm2.generate("Hello", temperature=0, max_tokens=64, window=1)

        def paused() -> bool:
            client.ping()
            return blocker.buffered == 1

        assert eventually(paused, within=60)
        with interrupted_after(0.3), pytest.raises(KeyboardInterrupt):
            smollm2.chat("Hi", temperature=0, max_tokens=4)

        def sched() -> mlxd.protocol.SchedStats:
            return model_named(client.models(), "smollm2").sched

        # The interrupted generation left the queue; the session, its lease and its stream go on.
        assert eventually(lambda: sched().queued == 0)
        assert model_named(client.models(), "smollm2").leases == 1
        assert next(blocker).token is not None and next(blocker).token is not None
        blocker.close()
        assert smollm2.chat("Hi", temperature=0, max_tokens=4).summary.completion_tokens >= 1
        assert eventually(lambda: sched().running == 0)


def test_requests_and_streams_fail_promptly_when_the_daemon_dies(one_stream: Callable[[], Daemon]) -> None:
    doomed = one_stream()
    client = doomed.client()
    # A stream in the middle, holding the only slot; another thread's generation waits behind it.
    stream = client.generate("smollm2", "Once upon a time", temperature=0, max_tokens=1000, window=4)
    next(stream)
    outcomes: Dict[str, BaseException] = {}

    def waiting_chat() -> None:
        try:
            client.chat("smollm2", "Hi", max_tokens=4)
        except BaseException as err:  # checked below
            outcomes["sync"] = err

    # And an asyncio client, its stream waiting too, in a loop of its own.
    async_started = threading.Event()

    async def async_stream() -> None:
        async with mlxd.AsyncClient(doomed.socket, fallback=False) as async_client:
            waiting = await async_client.generate("smollm2", "Hi", max_tokens=4)
            async_started.set()
            try:
                await asyncio.wait_for(waiting.complete(), 30)
            except BaseException as err:  # checked below
                outcomes["async"] = err

    threads = [
        threading.Thread(target=waiting_chat),
        threading.Thread(target=lambda: asyncio.run(async_stream())),
    ]
    for thread in threads:
        thread.start()
    try:
        assert async_started.wait(30)
        assert eventually(lambda: model_named(client.models(), "smollm2").sched.queued == 2, within=30)

        doomed.process.kill()
        died = time.monotonic()
        with pytest.raises(mlxd.ConnectionClosedError):
            for _ in stream:
                pass
        for thread in threads:
            thread.join(10)
        assert time.monotonic() - died < 5
        assert isinstance(outcomes.get("sync"), mlxd.ConnectionClosedError), outcomes
        assert isinstance(outcomes.get("async"), mlxd.ConnectionClosedError), outcomes
        with pytest.raises(mlxd.ConnectionClosedError):
            client.ping()
    finally:
        client.close()
        for thread in threads:
            thread.join(10)


def test_bad_input_gets_typed_errors(client: mlxd.Client) -> None:
    with pytest.raises(mlxd.NotFoundError):
        client.embed("no-such-model", ["x"])
    with pytest.raises(mlxd.BadRequestError, match="temperature"):
        client.chat("smollm2", "x", temperature=-1.0, max_tokens=4)
    with pytest.raises(mlxd.TooLargeError, match="max_tokens"):
        client.chat("smollm2", "x", max_tokens=client.limits.max_tokens + 1)
    with pytest.raises(mlxd.BadRequestError, match="embedding"):
        client.embed("smollm2", ["x"])
    with pytest.raises(mlxd.TooLargeError):
        client.embed("minilm", ["x"] * (client.limits.max_texts_per_embed + 1))
    minilm = client.lease("minilm")
    minilm.release()
    with pytest.raises(mlxd.InvalidLeaseError):
        minilm.embed(["x"])
    # Refused here, before anything is sent; the session goes on.
    with pytest.raises(mlxd.EncodeError):
        client.chat("smollm2", "x", max_tokens=1 << 40)
    with pytest.raises(ValueError):
        client.generate("smollm2", "x", window=0)
    assert client.ping() >= 0


def test_tokenize_detokenize_and_daemon_requests(client: mlxd.Client) -> None:
    with client.lease("smollm2") as smollm2:
        ids = smollm2.tokenize("Hello, world")
        assert ids and all(isinstance(i, int) for i in ids)
        assert smollm2.detokenize(ids).endswith("Hello, world")
    status = client.status()
    assert status.protocol_version == mlxd.PROTOCOL_VERSION and status.sessions >= 1
    assert {m.name for m in client.models()} >= {"minilm", "smollm2"}
    assert client.metrics().rstrip().endswith("# EOF")
    assert all(w.bytes > 0 for w in client.weights())
    progress: List[mlxd.LoadProgress] = []
    assert client.load("minilm", progress=progress.append).state == mlxd.ModelState.Ready


def test_readme_quick_start_runs_as_written(daemon: Daemon) -> None:
    readme = (PACKAGE_DIR / "README.md").read_text()
    match = re.search(r"## Quick start\s+```python\n(.*?)```", readme, re.S)
    assert match, "README has a Quick start code block"
    code = match.group(1)
    assert len(code.strip().splitlines()) <= 10
    result = run([sys.executable, "-c", code], env=child_env(MLXD_SOCKET=daemon.socket, MLXD_NO_FALLBACK="1"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("2 384\n")
    assert re.search(r"\[(Stop|Length), \d+ tokens\]$", result.stdout.strip())


def test_benchmark_prints_one_json_line(daemon: Daemon) -> None:
    script = str(PACKAGE_DIR / "bench_embed.py")
    result = run(
        [sys.executable, script, "--socket", daemon.socket, "--model", "minilm", "--n", "20"], env=child_env()
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    report = json.loads(line)
    assert report["client"] == "python" and report["n"] == 20
    assert 0 < report["p50_us"] <= report["p90_us"]


def test_one_client_from_many_threads(client: mlxd.Client) -> None:
    with client.lease("minilm") as minilm:
        errors: List[BaseException] = []
        results: Dict[int, List[List[float]]] = {}

        def work(i: int) -> None:
            try:
                results[i] = minilm.embed([f"thread {i}"])
                client.ping()
            except BaseException as err:  # reported below
                errors.append(err)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        with client.generate("smollm2", "Hi", temperature=0, max_tokens=4) as stream:
            assert len(list(stream)) >= 1
        for thread in threads:
            thread.join(30)
        assert not errors and len(results) == 8

