"""Generation streams against mlx-lm itself, on the bundled SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import mlxd_runtime
from mlxd_runtime.generate import BadRequest, _held_back

QUESTION = [("user", "What is the capital of France?")]


def _store_model() -> Path | None:
    root = os.environ.get("MLXD_STORE") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "mlxd"
    )
    path = Path(root) / "models" / "smollm2"
    return path if (path / "config.json").exists() else None


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    path = _store_model()
    if path is None:  # not imported yet: convert the bundled GGUF here
        from test_gguf import _bundled
        from mlxd_runtime import gguf

        path = tmp_path_factory.mktemp("m") / "smollm2"
        gguf.convert(str(_bundled()), str(path), "float32")
    return mlxd_runtime.load("generation", str(path))


def _run(stream):
    text, tokens = "", []
    while True:
        piece, token, finish, _, _ = stream.step()
        text += piece
        if token >= 0:
            tokens.append(token)
        if finish:
            return text, tokens, finish


def test_greedy_matches_mlx_lm(generator):
    from mlx_lm import stream_generate

    prompt = generator.prompt_ids(None, QUESTION)
    expected = [
        r.token
        for r in stream_generate(generator.model, generator.tokenizer, prompt, max_tokens=24)
        if r.finish_reason != "stop"
    ]
    text, tokens, finish = _run(generator.start(None, QUESTION, {"max_tokens": 24, "temperature": 0.0}))
    assert tokens == expected
    assert "Paris" in text and finish in ("stop", "length")


def test_seeded_streams_repeat_even_interleaved(generator):
    params = {"max_tokens": 16, "temperature": 0.9, "seed": 11}
    alone = _run(generator.start("Once upon a time", None, params))
    a = generator.start("Once upon a time", None, params)
    b = generator.start("Once upon a time", None, {**params, "seed": 12})
    out_a, out_b = ("", []), ("", [])
    done_a = done_b = None
    while not (done_a and done_b):
        if not done_a:
            piece, token, done_a, _, _ = a.step()
            out_a = (out_a[0] + piece, out_a[1] + ([token] if token >= 0 else []))
        if not done_b:
            piece, token, done_b, _, _ = b.step()
            out_b = (out_b[0] + piece, out_b[1] + ([token] if token >= 0 else []))
    assert out_a[1] == alone[1], "interleaving changed a seeded stream"
    assert out_b[1] != alone[1], "a different seed gave the same tokens"


def test_stop_string_ends_the_stream_without_it(generator):
    text, _, finish = _run(generator.start(None, QUESTION, {"max_tokens": 24, "temperature": 0.0, "stop": ["Paris"]}))
    assert finish == "stop"
    assert "Paris" not in text and text.startswith("The capital of France is")


def test_held_back_suffixes():
    assert _held_back("hello Par", ["Paris"]) == 3
    assert _held_back("hello", ["Paris"]) == 0
    assert _held_back("ab", ["abc", "b"]) == 2


def test_prompt_longer_than_context_is_a_bad_request(generator):
    with pytest.raises(BadRequest, match="context"):
        generator.start("hello " * (generator.max_seq_len + 10), None, {"max_tokens": 4})


def test_length_finish_and_summary(generator):
    stream = generator.start("The", None, {"max_tokens": 3, "temperature": 0.0})
    _, tokens, finish = _run(stream)
    assert finish == "length" and len(tokens) == 3
    summary = stream.summary()
    assert summary["completion_tokens"] == 3 and summary["prompt_tokens"] >= 1


# --- the batch engine (continuous batching) -------------------------------------------

PROMPTS = [
    [("user", "What is the capital of France?")],
    [("user", "Write a haiku about rain.")],
    [("user", "List three colors.")],
    [("user", "Who wrote Hamlet?")],
]


def _drain(engine, until=None):
    """Steps the engine until it is idle (or `until()` holds): job -> (text, tokens, finish)."""
    out: dict = {}
    while engine.active() and not (until and until(out)):
        for job, piece, token, finish, _, _ in engine.step():
            text, tokens, _ = out.get(job, ("", [], None))
            out[job] = (text + piece, tokens + ([token] if token >= 0 else []), finish)
    return out


def _alone_and_batched(generator, params):
    """Each prompt's output on its own, and an engine with all of them started (job = index)."""
    alone = [_run(generator.start(None, p, params)) for p in PROMPTS]
    engine = generator.batch_engine(8)
    for job, prompt in enumerate(PROMPTS):
        engine.start(job, None, prompt, params)
    return alone, engine


def test_batched_greedy_streams_equal_each_stream_alone(generator):
    alone, engine = _alone_and_batched(generator, {"max_tokens": 20, "temperature": 0.0})
    out = _drain(engine)
    for job in range(len(PROMPTS)):
        assert out[job][1] == alone[job][1], f"stream {job} changed in the batch"
        assert out[job][0] == alone[job][0]
        assert engine.summary(job)["completion_tokens"] == len(alone[job][1])


def test_a_stream_cancelled_mid_batch_leaves_the_others_unchanged(generator):
    alone, engine = _alone_and_batched(generator, {"max_tokens": 20, "temperature": 0.0})
    out = _drain(engine, until=lambda out: len(out.get(1, ("", [], None))[1]) >= 4)
    summary = engine.cancel(1)
    assert summary["completion_tokens"] >= 4
    rest = _drain(engine)
    for job in (0, 2, 3):
        tokens = out.get(job, ("", [], None))[1] + rest[job][1]
        assert tokens == alone[job][1], f"stream {job} changed when stream 1 was cancelled"
    assert 1 not in rest


def test_paused_and_resumed_seeded_stream_gives_the_same_tokens(generator):
    sampled = {"max_tokens": 16, "temperature": 0.8, "seed": 7}
    alone = _run(generator.start(None, PROMPTS[0], sampled))[1]
    engine = generator.batch_engine(8)
    engine.start(0, None, PROMPTS[0], sampled)
    engine.start(1, None, PROMPTS[1], {"max_tokens": 40, "temperature": 0.0})
    tokens = []
    while 0 in engine.sequences:
        for job, _, token, _, _, _ in engine.step():
            if job == 0 and token >= 0:
                tokens.append(token)
                if len(tokens) in (2, 7) and 0 in engine.sequences:
                    engine.pause(0)  # its client ran out of credit ...
                    # ... so it leaves the batch: the steps below compute stream 1 alone.
                    assert engine.active() == 1
                    for _ in range(3):
                        engine.step()  # ... while the other stream goes on
                    engine.resume(0)
                    assert engine.active() == 2
    assert tokens == alone


def test_stop_strings_and_eos_in_the_batch(generator):
    engine = generator.batch_engine(8)
    engine.start(0, None, QUESTION, {"max_tokens": 24, "temperature": 0.0, "stop": ["Paris"]})
    engine.start(1, None, QUESTION, {"max_tokens": 64, "temperature": 0.0})
    out = _drain(engine)
    assert out[0][2] == "stop" and "Paris" not in out[0][0]
    assert out[0][0].startswith("The capital of France is")
    assert out[1][2] == "stop" and "Paris" in out[1][0]  # ended by end-of-sequence
    assert engine.active() == 0 and not engine.sequences


def test_prompt_cache_is_partitioned(generator):
    """A prompt cached for one partition (one client uid) is never reused by another, so
    its time to first token cannot tell another user what was sent; within a partition
    it is."""
    greedy = {"max_tokens": 4, "temperature": 0.0}
    engine = generator.batch_engine(8, 64 << 20)
    engine.start(0, None, PROMPTS[0], {**greedy, "cache_partition": 1000})
    _drain(engine)
    engine.start(1, None, PROMPTS[0], {**greedy, "cache_partition": 1001})
    engine.start(2, None, PROMPTS[0], {**greedy, "cache_partition": 1000})
    assert engine.sequences[1].cached_tokens == 0
    assert engine.sequences[2].cached_tokens == len(generator.prompt_ids(None, PROMPTS[0])) - 1
    _drain(engine)


def test_prompt_cache_reuses_a_prefix_and_changes_nothing(generator):
    greedy = {"max_tokens": 12, "temperature": 0.0}
    seeded = {"max_tokens": 12, "temperature": 0.8, "seed": 5}
    alone = {i: _run(generator.start(None, PROMPTS[i], greedy))[1] for i in (0, 1)}
    alone_seeded = _run(generator.start(None, PROMPTS[2], seeded))[1]
    engine = generator.batch_engine(8, 64 << 20)
    for job, prompt in enumerate(PROMPTS[:3]):
        engine.start(job, None, prompt, seeded if job == 2 else greedy)
    first = _drain(engine)
    assert len(engine.prompt_cache) == 3
    # The same prompts again: everything but the last prompt position comes from the cache.
    for job, prompt in enumerate(PROMPTS[:3]):
        engine.start(10 + job, None, prompt, seeded if job == 2 else greedy)
    cached = {job: engine.sequences[job].cached_tokens for job in (10, 11, 12)}
    again = _drain(engine)
    for job in (0, 1):
        assert first[job][1] == alone[job], f"stream {job} changed in the batch"
        assert cached[10 + job] == len(generator.prompt_ids(None, PROMPTS[job])) - 1
        assert again[10 + job][1] == alone[job], f"stream {job} changed with a cached prompt"
    assert again[12][1] == first[2][1] == alone_seeded, "a cached prompt changed a seeded stream"
    # A longer conversation that starts with an earlier exchange reuses it as a prefix.
    turn = PROMPTS[0] + [("assistant", first[0][0]), ("user", "And of Spain?")]
    engine.start(20, None, turn, greedy)
    assert engine.sequences[20].cached_tokens >= len(generator.prompt_ids(None, PROMPTS[0]))
    _drain(engine)
    # Off (0 bytes): nothing kept.
    engine = generator.batch_engine(8, 0)
    engine.start(0, None, PROMPTS[0], greedy)
    assert _drain(engine)[0][1] == alone[0] and engine.prompt_cache is None


def test_a_chat_prompt_without_a_chat_template_is_unsupported_not_bad(generator, monkeypatch):
    """The worker maps `Unsupported` to its own error code, so clients fall back to a raw
    prompt by code, never by reading the message."""
    from mlxd_runtime.generate import BadRequest, Unsupported

    with pytest.raises(BadRequest, match="empty"):
        generator.checked_prompt("", None)
    assert issubclass(Unsupported, BadRequest)
    import types

    monkeypatch.setattr(generator, "tokenizer", types.SimpleNamespace(chat_template=None))
    with pytest.raises(Unsupported, match="no chat template"):
        generator.prompt_ids(None, [("user", "hi")])


def _reference_logprobs(generator, prompt: list[int], tokens: list[int]):
    """log-softmax of the model's logits at each generated position, from one forward pass
    over prompt + tokens (no cache, no batching): what each token's logprob must be."""
    import mlx.core as mx

    logits = generator.model(mx.array([prompt + tokens]))[0].astype(mx.float32)
    start = len(prompt) - 1
    rows = logits[start : start + len(tokens)]
    return rows - mx.logsumexp(rows, axis=-1, keepdims=True)


@pytest.mark.parametrize("path", ["single", "batched"])
def test_logprobs_are_the_log_softmax_of_a_forward_pass_on_the_same_prefix(generator, path):
    import mlx.core as mx

    params = {"max_tokens": 6, "temperature": 0.0, "top_p": 1.0, "seed": None, "stop": [], "logprobs": 5}
    prompt = generator.checked_prompt(None, QUESTION)
    steps = []
    if path == "single":
        stream = generator.start(None, QUESTION, params)
        while True:
            _, token, finish, logprobs, _ = stream.step()
            if token >= 0:
                steps.append((token, logprobs))
            if finish:
                break
    else:
        engine = generator.batch_engine(4)
        engine.start(1, None, QUESTION, params)
        engine.start(2, None, [("user", "Say hello.")], {**params, "logprobs": None})
        done = set()
        while len(done) < 2:
            for job, _, token, finish, logprobs, _ in engine.step():
                if job == 2:
                    assert logprobs is None, "a stream that did not ask gets none"
                elif token >= 0:
                    steps.append((token, logprobs))
                if finish:
                    done.add(job)
    tokens = [token for token, _ in steps]
    reference = _reference_logprobs(generator, prompt, tokens)
    for position, (token, (text, logprob, top)) in enumerate(steps):
        row = reference[position]
        assert text == generator.tokenizer.decode([token])
        assert abs(logprob - row[token].item()) < 2e-3, (position, logprob, row[token].item())
        assert len(top) == 5
        assert [value for _, _, value in top] == sorted((value for _, _, value in top), reverse=True)
        # greedy: the chosen token is the most likely one
        assert top[0][0] == token and abs(top[0][2] - logprob) < 1e-6
        want = mx.argsort(-row)[:5].tolist()
        assert [i for i, _, _ in top][:3] == want[:3], (position, top, want)
        for i, piece, value in top:
            assert piece == generator.tokenizer.decode([i]) and abs(value - row[i].item()) < 2e-3
