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
        piece, token, finish = stream.step()
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
            piece, token, done_a = a.step()
            out_a = (out_a[0] + piece, out_a[1] + ([token] if token >= 0 else []))
        if not done_b:
            piece, token, done_b = b.step()
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
