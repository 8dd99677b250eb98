"""Cross-encoder rerankers against sentence-transformers' CrossEncoder.predict.

The models and reference.json files under fixtures/st/ are written by
tests/tools/st_fixtures.py (run by hand with sentence-transformers installed; see there).
"""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path

import pytest

import mlxd_runtime
from mlxd_runtime.errors import BadRequest

FIXTURES = Path(__file__).parent / "fixtures" / "st"
RERANKERS = ["rerank-bert", "rerank-xlmr", "rerank-distilbert"]


@cache
def adapter(name: str):
    return mlxd_runtime.load("rerank", str(FIXTURES / name))


@cache
def reference(name: str) -> dict:
    return json.loads((FIXTURES / name / "reference.json").read_text())


def _order(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])


@pytest.mark.parametrize("name", RERANKERS)
def test_matches_cross_encoder_predict(name):
    ref, model = reference(name), adapter(name)
    assert model.info() == {"kind": "rerank", "dim": 0, "max_seq_len": ref["max_seq_len"], "backend": "cpu"}
    queries, documents = ref["queries"], ref["documents"]
    scores, tokens = model.rerank(queries, [documents] * len(queries))
    items = ref["items"]
    assert len(scores) == len(items) == len(queries) * len(documents)
    assert tokens == [item["tokens"] for item in items]
    assert max(tokens) == ref["max_seq_len"]  # some pairs were truncated
    for got, item in zip(scores, items):
        assert abs(got - item["score"]) <= 1e-4, (item["query"], item["document"][:40])
    n = len(documents)
    for q in range(len(queries)):
        want = [item["score"] for item in items[q * n : (q + 1) * n]]
        assert _order(scores[q * n : (q + 1) * n]) == _order(want)
    logits, _ = model.logits(queries, [documents] * len(queries))
    assert max(abs(got - item["logit"]) for got, item in zip(logits, items)) <= 1e-4


def test_ragged_document_lists_and_one_pair_a_pass():
    ref, model = reference("rerank-xlmr"), adapter("rerank-xlmr")
    queries, documents = ref["queries"], ref["documents"]
    n = len(documents)
    budget = model.tokens_per_forward
    try:
        model.tokens_per_forward = 1
        scores, tokens = model.rerank(queries, [documents[3:], []])
    finally:
        model.tokens_per_forward = budget
    want = ref["items"][3:n]
    assert tokens == [item["tokens"] for item in want]
    assert all(abs(a - item["score"]) <= 1e-4 for a, item in zip(scores, want))
    scores, tokens = model.rerank([queries[1], queries[0]], [documents[:2], documents[4:]])
    want = ref["items"][n : n + 2] + ref["items"][4:5]
    assert tokens == [item["tokens"] for item in want]
    assert all(abs(a - item["score"]) <= 1e-4 for a, item in zip(scores, want))


def test_bert_pairs_carry_segment_ids(monkeypatch):
    # The BERT reranker reads the document as segment 1; without segment ids it misses the
    # reference, so the match above depends on them.
    ref, model = reference("rerank-bert"), adapter("rerank-bert")
    assert model.type_ids and not adapter("rerank-xlmr").type_ids
    monkeypatch.setattr(model, "type_ids", False)
    logits, _ = model.logits(ref["queries"], [ref["documents"]] * 2)
    assert max(abs(got - item["logit"]) for got, item in zip(logits, ref["items"])) > 1e-2


def test_requests_of_the_wrong_shape():
    model = adapter("rerank-bert")
    assert model.rerank([], []) == ([], [])
    assert model.rerank(["q"], [[]]) == ([], [])
    with pytest.raises(BadRequest, match="2 queries for 1 document lists"):
        model.rerank(["a", "b"], [["c"]])


def test_tokenize_roundtrip():
    model = adapter("rerank-bert")
    ids = model.tokenize("paris is the capital")
    assert ids[0] == 2 and ids[-1] == 3  # [CLS] ... [SEP] in the fixture's vocabulary
    assert model.detokenize(ids) == "paris is the capital"


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="a reranker is a \\*ForSequenceClassification model"):
        mlxd_runtime.load("rerank", str(FIXTURES / "st-bert-mean"))
    model = Path(shutil.copytree(FIXTURES / "rerank-bert", tmp_path / "two-labels"))
    config = json.loads((model / "config.json").read_text())
    config["id2label"] = {"0": "no", "1": "yes"}
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="a cross-encoder with 2 labels; a reranker has one"):
        mlxd_runtime.load("rerank", str(model))
