"""sentence-transformers embedding models against sentence-transformers' own outputs.

The models and reference.json files under fixtures/st/ are written by
tests/tools/st_fixtures.py (run by hand with sentence-transformers installed; see there).
"""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path

import numpy as np
import pytest

import mlxd_runtime
from mlxd_runtime.errors import BadRequest
from mlxd_runtime.sentence import Pooling

FIXTURES = Path(__file__).parent / "fixtures" / "st"
EMBEDDERS = ["st-bert-mean", "st-bert-cls-dense", "st-xlmr-max", "st-roberta-wmean", "st-qwen3-last", "st-distilbert-sqrt"]


@cache
def adapter(name: str):
    return mlxd_runtime.load("embedding", str(FIXTURES / name))


@cache
def reference(name: str) -> dict:
    return json.loads((FIXTURES / name / "reference.json").read_text())


def vectors(result) -> np.ndarray:
    raw, count, dim, _ = result
    return np.frombuffer(raw, dtype=np.float32).reshape(count, dim)


def assert_close(got: np.ndarray, items: list[dict]) -> None:
    want = np.array([item["embedding"] for item in items], dtype=np.float64)
    got = got.astype(np.float64)
    cosine = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    for item, c, diff in zip(items, cosine, np.abs(got - want).max(axis=1)):
        label = f"{item['prompt_name']!r} {item['text'][:40]!r}"
        assert c >= 0.999, label
        assert diff <= 1e-4, label


@pytest.mark.parametrize("name", EMBEDDERS)
def test_matches_sentence_transformers_for_each_prompt(name):
    ref = reference(name)
    model = adapter(name)
    assert model.info() == {"kind": "embedding", "dim": ref["dim"], "max_seq_len": ref["max_seq_len"], "backend": "cpu"}
    names = sorted({item["prompt_name"] for item in ref["items"]})
    assert names == [""] + sorted(ref["prompts"])
    for prompt_name in names:
        items = [item for item in ref["items"] if item["prompt_name"] == prompt_name]
        result = model.embed([item["text"] for item in items], False, [prompt_name] * len(items))
        assert result[1:3] == (len(items), ref["dim"])
        assert result[3] == [item["tokens"] for item in items], prompt_name
        assert_close(vectors(result), items)


@pytest.mark.parametrize("name", EMBEDDERS)
def test_mixed_prompts_in_one_batch(name):
    # Every (text, prompt) of the reference in one call, in an order that mixes prompt names
    # (and with include_prompt false, rows that skip different numbers of tokens) in a pass.
    ref = reference(name)
    items = ref["items"][::-1][::2] + ref["items"][::-1][1::2]
    result = adapter(name).embed([i["text"] for i in items], False, [i["prompt_name"] for i in items])
    assert result[3] == [i["tokens"] for i in items]
    assert_close(vectors(result), items)


def test_no_prompts_argument_means_no_prompt():
    ref = reference("st-xlmr-max")  # its default prompt is "query"; the daemon resolves defaults
    items = [item for item in ref["items"] if item["prompt_name"] == ""]
    assert_close(vectors(adapter("st-xlmr-max").embed([i["text"] for i in items], False)), items)


def test_decoder_padding_does_not_leak_between_rows():
    # One text a pass (no padding at all) gives what the padded batches gave.
    model = adapter("st-qwen3-last")
    items = reference("st-qwen3-last")["items"]
    budget = model.tokens_per_forward
    try:
        model.tokens_per_forward = 1
        result = model.embed([i["text"] for i in items], False, [i["prompt_name"] for i in items])
    finally:
        model.tokens_per_forward = budget
    assert_close(vectors(result), items)


def test_include_prompt_false_is_what_the_reference_needs(monkeypatch):
    # Pooling over the prompt too (what include_prompt true would do) misses the reference:
    # the match above depends on leaving the prompt out.
    model = adapter("st-roberta-wmean")
    assert not model.config.pooling.include_prompt
    items = [i for i in reference("st-roberta-wmean")["items"] if i["prompt_name"] == "instruct"]
    monkeypatch.setattr(model.config, "pooling", Pooling(model.config.pooling.modes, include_prompt=True))
    got = vectors(model.embed([i["text"] for i in items], False, ["instruct"] * len(items)))
    want = np.array([i["embedding"] for i in items])
    assert np.abs(got - want).max() > 1e-2


def test_prompt_lengths_as_sentence_transformers_counts_them():
    for name in EMBEDDERS:
        model, ref = adapter(name), reference(name)
        for item in ref["items"]:
            if item["prompt_length"] is not None:
                prompt = ref["prompts"][item["prompt_name"]]
                assert model.tokenizer.prompt_length(prompt) == item["prompt_length"], (name, prompt)


def test_unknown_prompt_name_is_refused():
    with pytest.raises(BadRequest, match=r"unknown prompt name 'passage'; this model's prompts: 'document', 'query'"):
        adapter("st-bert-mean").embed(["a", "b"], False, ["query", "passage"])
    with pytest.raises(ValueError, match="unknown prompt name 'query'; this model's prompts: none"):
        adapter("st-bert-cls-dense").embed(["a"], False, ["query"])
    with pytest.raises(ValueError, match="1 prompt names for 2 texts"):
        adapter("st-bert-mean").embed(["a", "b"], False, ["query"])


def test_normalize_module_and_flag():
    texts = ["hello world", "The quick brown fox"]
    # A Normalize module: unit vectors whatever the flag.
    plain = vectors(adapter("st-bert-mean").embed(texts, False))
    assert np.allclose(np.linalg.norm(plain, axis=1), 1.0, atol=1e-5)
    # None (Dense with tanh last): the model's own scale, unless asked.
    model = adapter("st-bert-cls-dense")
    raw = vectors(model.embed(texts, False))
    unit = vectors(model.embed(texts, True))
    assert np.all(np.abs(np.linalg.norm(raw, axis=1) - 1.0) > 0.1)
    assert np.allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)


def test_do_lower_case_of_older_layouts():
    # st-bert-cls-dense's tokenizer keeps case; sentence_bert_config.json says do_lower_case.
    model = adapter("st-bert-cls-dense")
    assert model.tokenize("The QUICK Brown fox") == model.tokenize("the quick brown fox")
    assert model.tokenize("the quick brown fox") == [2] + [model.tokenizer.backend.token_to_id(w)
                                                           for w in ("the", "quick", "brown", "fox")] + [3]


def test_empty_batch_and_tokenize():
    model = adapter("st-qwen3-last")
    assert model.embed([], False, []) == (b"", 0, 32, [])
    ids = model.tokenize("hello world")
    assert ids[-1] == 0  # <|endoftext|> appended, as Qwen3-Embedding's tokenizer does
    assert model.detokenize(ids) == "hello world"


# --- Pooling on its own: left padding and the modes the fixtures do not use -------------


def _reference_pool(mode, hidden, mask, skip):
    """sentence-transformers' Pooling._forward_padded, transcribed to numpy for one row."""
    first = int(np.argmax(mask))
    pool = mask * (np.arange(len(mask)) >= first + skip)
    if mode == "cls":
        return hidden[int(np.argmax(pool))]
    if mode == "max":
        return np.where(pool[:, None] > 0, hidden, -np.inf).max(axis=0)
    if mode in ("mean", "mean_sqrt_len_tokens"):
        n = max(pool.sum(), 1e-9)
        return (hidden * pool[:, None]).sum(axis=0) / (n if mode == "mean" else np.sqrt(n))
    if mode == "weightedmean":
        w = (np.arange(1, len(mask) + 1) - first) * pool
        return (hidden * w[:, None]).sum(axis=0) / max(w.sum(), 1e-9)
    last = len(mask) - 1 - int(np.argmax(pool[::-1]))
    return hidden[last] * pool[last]


@pytest.mark.parametrize("include_prompt", [True, False])
def test_pooling_modes_with_left_and_right_padding(include_prompt):
    import mlx.core as mx

    rng = np.random.default_rng(7)
    hidden = rng.normal(size=(4, 7, 5)).astype(np.float32)
    mask = np.array(
        [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]], dtype=np.float32
    )
    skip = [2, 1, 0, 1]
    pooling = Pooling(modes=Pooling.from_config({"pooling_mode": list(
        ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"))}, "test").modes,
        include_prompt=include_prompt)
    got = np.array(pooling(mx.array(hidden), mx.array(mask), skip))
    for row in range(4):
        want = np.concatenate([
            _reference_pool(mode, hidden[row], mask[row], 0 if include_prompt else skip[row])
            for mode in pooling.modes
        ])
        assert np.allclose(got[row], want, atol=1e-5), row


def test_pooling_config_layouts():
    assert Pooling.from_config({"pooling_mode": "lasttoken", "include_prompt": False}, "x") == Pooling(
        ("lasttoken",), False
    )
    legacy = {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True, "pooling_mode_max_tokens": False}
    assert Pooling.from_config(legacy, "x").modes == ("cls", "mean")  # sentence-transformers' order
    assert Pooling.from_config({"word_embedding_dimension": 8}, "x").modes == ("mean",)
    with pytest.raises(ValueError, match="unsupported pooling mode 'median'"):
        Pooling.from_config({"pooling_mode": ["mean", "median"]}, "x")
    with pytest.raises(ValueError, match="unsupported pooling mode 'pooling_mode_median_tokens'"):
        Pooling.from_config({"pooling_mode_median_tokens": True}, "x")


# --- Load errors ------------------------------------------------------------------------


def _copy(tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    data = edit(data) or data
    path.write_text(json.dumps(data))


def test_unsupported_pooling_mode_is_a_load_error(tmp_path):
    model = _copy(tmp_path, "st-bert-mean")
    _edit_json(model / "1_Pooling" / "config.json", lambda c: c.update(pooling_mode="median"))
    with pytest.raises(ValueError, match="1_Pooling/config.json: unsupported pooling mode 'median'"):
        mlxd_runtime.load("embedding", str(model))


def test_unsupported_module_is_a_load_error(tmp_path):
    model = _copy(tmp_path, "st-bert-cls-dense")
    _edit_json(model / "modules.json", lambda m: m.append(
        {"idx": 3, "name": "3", "path": "3_LayerNorm", "type": "sentence_transformers.models.LayerNorm"}))
    with pytest.raises(ValueError, match="unsupported sentence-transformers module 'sentence_transformers.models.LayerNorm'"):
        mlxd_runtime.load("embedding", str(model))


def test_unsupported_dense_activation_is_a_load_error(tmp_path):
    model = _copy(tmp_path, "st-bert-cls-dense")
    _edit_json(model / "2_Dense" / "config.json",
               lambda c: c.update(activation_function="torch.nn.modules.activation.Softplus"))
    with pytest.raises(ValueError, match="unsupported Dense activation 'torch.nn.modules.activation.Softplus'"):
        mlxd_runtime.load("embedding", str(model))


def test_chat_template_inputs_are_a_load_error(tmp_path):
    model = _copy(tmp_path, "st-qwen3-last")
    _edit_json(model / "sentence_bert_config.json",
               lambda c: c["modality_config"].update(message={"method": "forward", "method_output_name": "x"}))
    with pytest.raises(ValueError, match="only plain text inputs are supported"):
        mlxd_runtime.load("embedding", str(model))


def test_directories_of_other_kinds_are_refused(tmp_path):
    with pytest.raises(ValueError, match="cross-encoder .*BertForSequenceClassification.*load it as 'rerank'"):
        mlxd_runtime.load("embedding", str(FIXTURES / "rerank-bert"))
    model = _copy(tmp_path, "st-qwen3-last")
    (model / "modules.json").unlink()
    with pytest.raises(ValueError, match="no modules.json, and model_type 'qwen3' is not a BERT-family encoder"):
        mlxd_runtime.load("embedding", str(model))
    model = _copy(tmp_path, "st-bert-mean")
    _edit_json(model / "modules.json", lambda m: m[:1])
    with pytest.raises(ValueError, match="no Pooling module"):
        mlxd_runtime.load("embedding", str(model))


def test_plain_encoder_directory_is_mean_pooled_without_normalising(tmp_path):
    # No modules.json: mean pooling, the model's scale (as plain BERT directories always were).
    model = _copy(tmp_path, "st-bert-mean")
    for extra in ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json"):
        (model / extra).unlink()
    shutil.rmtree(model / "1_Pooling")
    shutil.rmtree(model / "2_Normalize")
    plain = mlxd_runtime.load("embedding", str(model))
    items = [i for i in reference("st-bert-mean")["items"] if i["prompt_name"] == ""]
    got = vectors(plain.embed([i["text"] for i in items], False))
    assert np.all(np.abs(np.linalg.norm(got, axis=1) - 1.0) > 1e-3)
    # Normalised, it is the sentence-transformers model (mean pooling + Normalize) again.
    assert_close(got / np.linalg.norm(got, axis=1, keepdims=True), items)
