"""GGUF import per architecture: a tiny random model in HF layout (loaded by mlx-lm as is) and
the same weights written to GGUF the way llama.cpp's converter writes them (gguf_models.py);
the imported directory must compute what mlx-lm computes on the HF one.

Tolerances, as max |logit difference| / max |reference logit| over 24 positions:
- float weights (all F32): 1e-5. The weights are bit-identical after the import (llama's q/k
  un-permuted back, Gemma's norms shifted back by 1 in float32), so this is float32 round-off
  (measured: 0 for every architecture).
- quantized (types MLX has kept quantized, the others dequantized): the reference gets gguf-py's
  float32 dequantization of the very bytes in the file. The import stores MLX scales and biases
  in float16 (float32 for the embedding): exact for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 (d and m are
  float16 in the file), rounded for Q4_K/Q5_K (d*sc and dmin*m, relative error <= 2^-11);
  Q2_K/Q3_K/Q6_K become float16 weights (bfloat16 for a Gemma 3 embedding). So the bound is
  the effect of that rounding on this network: at most 4x the difference the reference model
  itself shows when its weights are rounded the same way (measured ratios 0.13-1.06 over
  7 variants x 3 seeds; a wrong bit or scale gives O(1) differences). The same files imported
  with --dtype float32 must match to 1e-5: that is the exact check of the block decoding
  (measured: 0).
"""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_map_with_path

import gguf_models
from gguf_models import VARIANTS, build
from mlxd_runtime import gguf

PROMPT = "Hello world, it's 12345 café"
FLOAT_TOLERANCE = 1e-5
FLOAT16_FACTOR = 4


def _load(path):
    from mlx_lm.utils import load_model

    return load_model(path)[0]


def _relative_difference(reference: mx.array, other: mx.array) -> float:
    return (mx.abs(reference - other).max() / mx.abs(reference).max()).item()


def _ids(built, length: int = 24) -> mx.array:
    rng = np.random.default_rng(7)
    prompt = built.tokenizer.encode(PROMPT)
    ids = prompt + rng.integers(0, built.config["vocab_size"], length - len(prompt)).tolist()
    return mx.array([ids], dtype=mx.int32)


def _greedy(model, prompt: list[int], count: int) -> list[int]:
    from mlx_lm.generate import generate_step

    return [int(token) for token, _ in generate_step(mx.array(prompt), model, max_tokens=count)]


def _safetensors_header(path) -> dict:
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        return json.loads(handle.read(size))


@pytest.mark.parametrize("quantized", [False, True], ids=["float", "quantized"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_imported_model_computes_what_mlx_lm_computes(tmp_path, name, quantized, record_property):
    from mlx_lm import load, stream_generate

    built = build(name, quantized, tmp_path)
    out = tmp_path / "imported"
    summary = gguf.convert(str(built.gguf_path), str(out))
    config = json.loads((out / "config.json").read_text())
    assert summary["architecture"] == config["model_type"] == built.config["model_type"]
    for key in ("head_dim", "rope_theta", "rope_scaling", "query_pre_attn_scalar", "sliding_window",
                "sliding_window_pattern", "rope_local_base_freq", "partial_rotary_factor",
                "attn_logit_softcapping", "final_logit_softcapping", "original_max_position_embeddings"):
        if key in built.config and not (key == "head_dim" and built.config["model_type"] == "phi3"):
            assert config[key] == built.config[key], key

    # every tensor kept quantized at its bits, or dequantized to float16, or kept as it was
    header = _safetensors_header(out / "model.safetensors")
    for gguf_name, type_name in built.types.items():
        hf_name = built.names[gguf_name]
        module = hf_name.rsplit(".", 1)[0]
        embedding = module == "model.embed_tokens"
        if type_name in ("Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q8_0"):
            bits = int(type_name[1])
            assert header[hf_name]["dtype"] == "U32"
            assert header[f"{module}.scales"]["dtype"] == header[f"{module}.biases"]["dtype"] == ("F32" if embedding else "F16")
            rows, cols = header[hf_name]["shape"]
            assert cols * 32 // bits == header[f"{module}.scales"]["shape"][1] * 32, gguf_name
            expected = config["quantization"].get(module, config["quantization"])["bits"]
            assert expected == bits, gguf_name
        else:
            want = {"F32": "F32", "F16": "F16", "BF16": "BF16"}.get(type_name, "F16")
            if embedding and name == "gemma3" and want == "F16":
                want = "BF16"  # mlx-lm's Gemma 3 keeps a float16 residual stream otherwise
            assert header[hf_name]["dtype"] == want, (gguf_name, type_name)
            assert hf_name.endswith(".bias") or f"{module}.scales" not in header

    reference, imported = _load(built.hf_dir), _load(out)
    ids = _ids(built)
    expected = reference(ids)
    difference = _relative_difference(expected, imported(ids))
    tolerance = FLOAT_TOLERANCE
    if quantized:
        # the same network with its weights rounded to the half type the import stores
        # (float16; bfloat16 for a Gemma 3 embedding stored as floats)
        rounded = _load(built.hf_dir)
        half = {"model.embed_tokens.weight": mx.bfloat16} if header["model.embed_tokens.weight"]["dtype"] == "BF16" else {}
        rounded.update(tree_map_with_path(
            lambda path, p: p.astype(half.get(path, mx.float16)).astype(mx.float32), rounded.parameters()
        ))
        tolerance = FLOAT16_FACTOR * _relative_difference(expected, rounded(ids))
    record_property("relative_logit_difference", difference)
    print(f"{name} {'quantized' if quantized else 'float'}: max |dlogit| / max |logit| = {difference:.2e} (bound {tolerance:.1e})")
    assert difference <= tolerance

    # Greedy generation through mlx-lm with the imported tokenizer: the prompt encodes as the
    # original tokenizer does, the tokens are the HF model's, the text is their decoding.
    model, tokenizer = load(str(out))
    prompt = built.tokenizer.encode(PROMPT)
    assert tokenizer.encode(PROMPT) == prompt
    responses = list(stream_generate(model, tokenizer, prompt, max_tokens=8))
    tokens = [r.token for r in responses]
    assert tokens == _greedy(reference, prompt, len(tokens))
    assert tokens and (len(tokens) == 8 or responses[-1].finish_reason == "stop")
    # decoding: the same text as the original tokenizer (random models pick byte-fallback
    # pieces that make invalid UTF-8, which HF's ByteFallback and sentencepiece replace
    # differently; such pieces are compared in test_gguf_tokenizers instead)
    text_tokens = built.tokenizer.plain(tokens)
    assert tokenizer.decode(text_tokens) == built.tokenizer.decode(text_tokens)


@pytest.mark.parametrize("name", ["llama3", "gemma3", "phi3"])
def test_dtype_float32_decodes_every_block_exactly(tmp_path, name):
    built = build(name, True, tmp_path)
    out = tmp_path / "f32"
    summary = gguf.convert(str(built.gguf_path), str(out), "float32")
    assert summary["dtype"] == "float32" and summary["quantization"] is None
    header = _safetensors_header(out / "model.safetensors")
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F32"}
    ids = _ids(built)
    assert _relative_difference(_load(built.hf_dir)(ids), _load(out)(ids)) <= FLOAT_TOLERANCE


@pytest.mark.parametrize("dtype,tolerance", [("float16", 5e-2), ("bfloat16", 3e-1)])
def test_dtype_half_precision(tmp_path, dtype, tolerance):
    """Every tensor in the half type; logits within that type's rounding (bfloat16 keeps 8
    bits of mantissa) through the random network, and the same greedy start."""
    built = build("qwen3", True, tmp_path)
    out = tmp_path / dtype
    gguf.convert(str(built.gguf_path), str(out), dtype)
    header = _safetensors_header(out / "model.safetensors")
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F16" if dtype == "float16" else "BF16"}
    ids = _ids(built)
    reference, imported = _load(built.hf_dir), _load(out)
    assert _relative_difference(reference(ids), imported(ids).astype(mx.float32)) <= tolerance


def test_small_row_chunks_write_the_same_file(tmp_path, monkeypatch):
    """Big tensors are converted in row chunks (memory holds one chunk, not the model); the
    chunking, with llama's row un-permutation across chunk borders, changes no byte."""
    built = build("llama3", True, tmp_path)
    gguf.convert(str(built.gguf_path), str(tmp_path / "whole"))
    import mlxd_runtime.gguf as package

    monkeypatch.setattr(package, "_ROW_CHUNK_ELEMENTS", 256 * 5)  # 5 rows of 256 at a time
    gguf.convert(str(built.gguf_path), str(tmp_path / "chunked"))
    assert (tmp_path / "whole/model.safetensors").read_bytes() == (tmp_path / "chunked/model.safetensors").read_bytes()


def test_chat_template_and_stop_tokens(tmp_path):
    from mlx_lm import load

    built = build("gemma3", False, tmp_path)
    out = tmp_path / "imported"
    gguf.convert(str(built.gguf_path), str(out))
    config = json.loads((out / "config.json").read_text())
    eot = built.tokenizer.sp.piece_to_id("<end_of_turn>")
    assert config["eos_token_id"] == [2, eot] and config["bos_token_id"] == 1
    _, tokenizer = load(str(out))
    messages = [{"role": "user", "content": "hi"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<user>hi\n<assistant>"
    assert set(tokenizer.eos_token_ids) == {2, eot}
    assert tokenizer.encode("<start_of_turn>user", add_special_tokens=False)[0] == built.tokenizer.sp.piece_to_id(
        "<start_of_turn>"
    )


# -- files mlxd must refuse, built from the same variants -------------------------------


def test_refuses_a_tensor_mlx_lm_has_no_place_for(tmp_path):
    built = build("qwen2", False, tmp_path, drop=("blk.1.attn_k.bias",))
    with pytest.raises(gguf.UnsupportedModel, match="does not load in mlx-lm.*k_proj.bias"):
        gguf.convert(str(built.gguf_path), str(tmp_path / "out"))
    assert not list(tmp_path.glob("*out*")), "nothing half-written"


def test_refuses_rope_freqs_that_are_not_llama3_scaling(tmp_path):
    factors = gguf_models._llama3_rope_factors(VARIANTS["llama3"].config)
    factors[3] *= 1.5
    built = build("llama3", False, tmp_path, drop=("rope_freqs.weight",), extra_tensors=(("rope_freqs.weight", factors),))
    with pytest.raises(gguf.UnsupportedModel, match="rope_freqs.weight does not match Llama 3 rope scaling"):
        gguf.convert(str(built.gguf_path), str(tmp_path / "out"))


def test_refuses_gemma3_softcapping_mlx_lm_lacks(tmp_path):
    built = build("gemma3", False, tmp_path, extra_metadata={"gemma3.final_logit_softcapping": 30.0})
    with pytest.raises(gguf.UnsupportedModel, match="final_logit_softcapping is set"):
        gguf.convert(str(built.gguf_path), str(tmp_path / "out"))


def test_refuses_an_unexpected_tensor(tmp_path):
    experts = np.zeros((4, 256), np.float32)
    built = build("qwen3", False, tmp_path, extra_tensors=(("blk.0.ffn_gate_inp.weight", experts),))
    with pytest.raises(gguf.UnsupportedModel, match="unexpected tensor 'blk.0.ffn_gate_inp.weight' in a qwen3 GGUF"):
        gguf.convert(str(built.gguf_path), str(tmp_path / "out"))
