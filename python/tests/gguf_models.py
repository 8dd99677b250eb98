"""Tiny random models of each supported architecture in both layouts, for the GGUF import tests.

`build(variant, quantized, directory)` makes
- an HF-layout directory mlx-lm loads (config.json + model.safetensors, float32), and
- a GGUF file holding the *same* weights, written with the gguf package's GGUFWriter the way
  llama.cpp's convert_hf_to_gguf.py writes that architecture: its tensor names (from the gguf
  package's TensorNameMap), its permutation of llama q/k rows, Gemma's +1 on norm weights,
  Phi-3's fused qkv/gate_up and rope factor tensors, Llama 3's rope_freqs, its metadata keys,
  and the tokenizer metadata of a tiny tokenizer trained here (see gguf_tokenizers.py).

With `quantized`, each weight matrix gets a GGML type (every supported type is used by some
variant). Types the gguf package can quantize (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, BF16, F16) are
quantized from random weights; for the K-quants random valid blocks are written (random quant
bits and sub-block scales, small float16 super-block scales). Either way the HF side gets
gguf-py's dequantization of the very bytes in the file, so both layouts hold the same model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import gguf as ggufpy
from gguf import GGMLQuantizationType as T
from gguf import MODEL_ARCH

import gguf_tokenizers

K_QUANTS = (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)
HIDDEN, HEADS = 256, 4  # rows of 256 so that every tensor can take a K-quant

# Each variant: the HF config (vocab_size comes from the tokenizer), the GGUF architecture,
# the tokenizer, and for the quantized build a type per weight matrix role and layer.
_BASE = {
    "hidden_size": HIDDEN,
    "num_hidden_layers": 2,
    "intermediate_size": 512,
    "num_attention_heads": HEADS,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 4096,
}


@dataclass
class Variant:
    arch: MODEL_ARCH
    config: dict
    tokenizer: str  # a gguf_tokenizers kind
    types: dict[str, list]  # GGUF role (token_embd, attn_q, ...) → type per layer (cycled)
    extra: dict = field(default_factory=dict)


VARIANTS: dict[str, Variant] = {
    # Llama 3 style: byte-level BPE (llama-bpe), GQA, Llama 3 rope scaling (rope_freqs tensor).
    "llama3": Variant(
        MODEL_ARCH.LLAMA,
        {**_BASE, "model_type": "llama", "head_dim": 64, "rope_theta": 500000.0, "tie_word_embeddings": False,
         "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192}},
        "bpe-llama3",
        {"token_embd": [T.Q6_K], "attn_q": [T.Q4_K, T.Q5_K], "attn_k": [T.Q5_K, T.Q4_K], "attn_v": [T.Q6_K, T.Q8_0],
         "attn_output": [T.Q8_0, T.Q4_K], "ffn_gate": [T.Q4_0, T.Q4_K], "ffn_up": [T.Q4_1, T.Q4_K],
         "ffn_down": [T.Q5_0, T.Q6_K], "output": [T.Q6_K]},
    ),
    # Mistral 7B / Llama 2 style: llama architecture with a SentencePiece tokenizer.
    "mistral": Variant(
        MODEL_ARCH.LLAMA,
        {**_BASE, "model_type": "llama", "rope_theta": 1000000.0, "tie_word_embeddings": False},
        "spm-llama",
        {"token_embd": [T.Q4_0], "attn_q": [T.Q5_1], "attn_k": [T.Q2_K], "attn_v": [T.Q3_K], "attn_output": [T.Q8_0],
         "ffn_gate": [T.Q5_0], "ffn_up": [T.Q4_K], "ffn_down": [T.BF16], "output": [T.F16]},
    ),
    "qwen2": Variant(
        MODEL_ARCH.QWEN2,
        {**_BASE, "model_type": "qwen2", "rope_theta": 1000000.0, "tie_word_embeddings": True},
        "bpe-qwen2",
        {"token_embd": [T.Q8_0], "attn_q": [T.Q4_K], "attn_k": [T.Q4_K, T.Q5_0], "attn_v": [T.Q6_K],
         "attn_output": [T.Q5_K], "ffn_gate": [T.Q2_K], "ffn_up": [T.Q3_K], "ffn_down": [T.Q4_1]},
    ),
    # Qwen3: q/k norms and a head size (128) that is not hidden/heads.
    "qwen3": Variant(
        MODEL_ARCH.QWEN3,
        {**_BASE, "model_type": "qwen3", "head_dim": 128, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
         "tie_word_embeddings": False},
        "bpe-qwen2",
        {"token_embd": [T.BF16], "attn_q": [T.Q5_0], "attn_k": [T.Q5_1], "attn_v": [T.Q8_0], "attn_output": [T.F16],
         "ffn_gate": [T.Q4_K], "ffn_up": [T.Q5_K], "ffn_down": [T.Q6_K], "output": [T.Q3_K]},
    ),
    "gemma2": Variant(
        MODEL_ARCH.GEMMA2,
        {**_BASE, "model_type": "gemma2", "head_dim": 64, "query_pre_attn_scalar": 64, "rms_norm_eps": 1e-6,
         "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "sliding_window": 4096, "rope_theta": 10000.0},
        "spm-gemma",
        {"token_embd": [T.Q8_0], "attn_q": [T.Q4_0], "attn_k": [T.Q4_1], "attn_v": [T.Q5_0], "attn_output": [T.Q5_1],
         "ffn_gate": [T.Q4_K], "ffn_up": [T.Q5_K], "ffn_down": [T.Q2_K]},
    ),
    # Gemma 3 text: 6 layers so that the 6th is a global layer; sliding window 4 so that the
    # 5 local layers mask; linear rope scaling (global layers only).
    "gemma3": Variant(
        MODEL_ARCH.GEMMA3,
        {**_BASE, "model_type": "gemma3_text", "num_hidden_layers": 6, "num_key_value_heads": 1, "head_dim": 64,
         "query_pre_attn_scalar": 64, "rms_norm_eps": 1e-6, "sliding_window": 4, "sliding_window_pattern": 6,
         "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "max_position_embeddings": 32768,
         "rope_scaling": {"rope_type": "linear", "factor": 8.0}},
        "spm-gemma",
        {"token_embd": [T.Q6_K], "attn_q": [T.Q3_K, T.Q4_0], "attn_k": [T.Q4_K], "attn_v": [T.Q5_K],
         "attn_output": [T.Q6_K], "ffn_gate": [T.Q8_0], "ffn_up": [T.BF16], "ffn_down": [T.F16, T.Q4_K]},
    ),
    # Phi-3.5 / Phi-4-mini style: fused qkv and gate_up, partial rotary, longrope factors.
    "phi3": Variant(
        MODEL_ARCH.PHI3,
        {**_BASE, "model_type": "phi3", "num_key_value_heads": 4, "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
         "max_position_embeddings": 131072, "original_max_position_embeddings": 4096, "tie_word_embeddings": False},
        "spm-llama",
        {"token_embd": [T.Q4_K], "attn_qkv": [T.Q5_K, T.Q4_0], "attn_output": [T.Q4_0], "ffn_up": [T.Q6_K],
         "ffn_down": [T.Q8_0], "output": [T.Q5_1]},
        {"longrope": True},
    ),
}


def permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's LlamaModel.permute (convert_hf_to_gguf.py), verbatim."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _llama3_rope_factors(config: dict) -> np.ndarray:
    """LlamaModel.generate_extra_tensors (convert_hf_to_gguf.py): Llama 3 rope_freqs."""
    scaling = config["rope_scaling"]
    base, dim = config["rope_theta"], config.get("head_dim", HIDDEN // HEADS)
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def _random_k_blocks(rng: np.random.Generator, rows: int, cols: int, qtype: T, std: float) -> np.ndarray:
    """Random valid blocks of a K-quant: random bytes, then the float16 super-block scale(s)
    set so that the weights have about `std` (varying by block)."""
    block, size = ggufpy.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, cols // block * size), dtype=np.uint8)
    blocks = raw.reshape(rows, -1, size)
    # byte offsets of the float16 d (and dmin) in each block
    fields = {T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}[qtype]
    for offset in fields:
        blocks[..., offset : offset + 2] = np.ones(blocks.shape[:2], np.float16).view(np.uint8).reshape(*blocks.shape[:2], 2)
    unit = ggufpy.quants.dequantize(raw, qtype)
    scale = std / float(unit.std())
    per_block = (scale * rng.uniform(0.5, 1.5, size=blocks.shape[:2])).astype(np.float16)
    for offset in fields:
        blocks[..., offset : offset + 2] = per_block.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return raw


def _encode(rng, values: np.ndarray | None, shape, qtype: T, std: float) -> np.ndarray:
    """GGUF bytes (or float array) of a tensor of `qtype`."""
    if qtype in K_QUANTS:
        return _random_k_blocks(rng, shape[0], shape[1], qtype, std)
    if qtype == T.F32:
        return values.astype(np.float32)
    if qtype == T.F16:
        return values.astype(np.float16)
    return ggufpy.quants.quantize(values.astype(np.float32), qtype)


def _decode(data: np.ndarray, qtype: T) -> np.ndarray:
    if qtype in (T.F32, T.F16):
        return data.astype(np.float32)
    return ggufpy.quants.dequantize(data, qtype).astype(np.float32)


@dataclass
class Built:
    hf_dir: Path
    gguf_path: Path
    config: dict
    tokenizer: "gguf_tokenizers.Reference"
    types: dict[str, str]  # GGUF tensor name → type name
    names: dict[str, str]  # GGUF tensor name → HF (= mlx-lm) name


def _hf_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of mlx-lm's model for `config` (nothing is evaluated)."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    shapes = {name: tuple(p.shape) for name, p in tree_flatten(model.parameters())}
    if config.get("tie_word_embeddings", True) or config["model_type"] == "gemma3_text":
        shapes.pop("lm_head.weight", None)
    return shapes


def build(
    name: str,
    quantized: bool,
    directory: Path,
    seed: int = 0,
    drop: tuple[str, ...] = (),
    extra_tensors: tuple = (),
    extra_metadata: dict | None = None,
) -> Built:
    """The variant `name` in both layouts under `directory`. `drop`, `extra_tensors` (name,
    float32 array) and `extra_metadata` (key → float/int/str) change the GGUF only, for
    tests of files mlxd must refuse."""
    import mlx.core as mx

    variant = VARIANTS[name]
    reference = gguf_tokenizers.reference(variant.tokenizer)
    config = {**variant.config, "vocab_size": reference.vocab_size}
    config.update(reference.special_ids)
    arch_name = ggufpy.MODEL_ARCH_NAMES[variant.arch]
    names = ggufpy.get_tensor_name_map(variant.arch, config["num_hidden_layers"])
    rng = np.random.default_rng(seed)
    gemma = arch_name.startswith("gemma")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]

    writer_tensors = []
    hf = {}
    types = {}
    hf_names = {}
    std = 0.08
    for hf_name, shape in _hf_shapes(config).items():
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert gguf_name, f"no GGUF name for {hf_name}"
        role = gguf_name.split(".")[-2] if gguf_name.startswith("blk.") else gguf_name.split(".")[0]
        layer = int(gguf_name.split(".")[1]) if gguf_name.startswith("blk.") else 0
        if len(shape) == 1:
            base = 0.0 if gemma else 1.0  # gemma's norms compute (1 + w)
            values = base + 0.1 * rng.standard_normal(shape) if hf_name.endswith("norm.weight") else 0.1 * rng.standard_normal(shape)
            qtype = T.F32
        else:
            values = std * rng.standard_normal(shape)
            qtype = T.F32
            if quantized:
                choices = variant.types[role]
                qtype = choices[layer % len(choices)]
        values = values.astype(np.float32)
        # convert_hf_to_gguf's changes to the HF tensor, and how to undo them
        undo = None
        if arch_name == "llama" and role in ("attn_q", "attn_k"):
            rows = np.arange(shape[0])
            order = permute(rows, heads, heads if role == "attn_q" else kv_heads)  # gguf row r = hf row order[r]
            values = values[order]

            def undo(x, order=order):
                out = np.empty_like(x)
                out[order] = x
                return out
        elif gemma and hf_name.endswith("norm.weight"):
            values = values + 1

            def undo(x):
                return x - 1
        data = _encode(rng, values, shape, qtype, std)
        stored = _decode(data, qtype).reshape(shape)
        hf[hf_name] = undo(stored) if undo else stored
        types[gguf_name] = qtype.name
        hf_names[gguf_name] = hf_name
        writer_tensors.append((gguf_name, data, qtype))

    if arch_name == "llama" and config.get("rope_scaling", {}).get("rope_type") == "llama3":
        writer_tensors.append(("rope_freqs.weight", _llama3_rope_factors(config), T.F32))
    if variant.extra.get("longrope"):
        rope_dims = int(config["partial_rotary_factor"] * HIDDEN) // HEADS
        long = (1.0 + rng.uniform(0, 4, rope_dims // 2)).astype(np.float32)
        short = (1.0 + rng.uniform(0, 0.5, rope_dims // 2)).astype(np.float32)
        config["rope_scaling"] = {"type": "longrope", "long_factor": long.tolist(), "short_factor": short.tolist()}
        writer_tensors.append(("rope_factors_long.weight", long, T.F32))
        writer_tensors.append(("rope_factors_short.weight", short, T.F32))

    directory.mkdir(parents=True, exist_ok=True)
    hf_dir = directory / f"{name}-hf"
    hf_dir.mkdir()
    mx.save_safetensors(str(hf_dir / "model.safetensors"), {k: mx.array(v) for k, v in hf.items()})
    (hf_dir / "config.json").write_text(json.dumps(config, indent=1))

    path = directory / f"{name}.gguf"
    writer = ggufpy.GGUFWriter(str(path), arch_name)
    _write_metadata(writer, arch_name, config, quantized)
    reference.write_metadata(writer)
    for key, value in (extra_metadata or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint32(key, value)
    writer_tensors = [t for t in writer_tensors if t[0] not in drop]
    writer_tensors += [(n, np.asarray(a, np.float32), T.F32) for n, a in extra_tensors]
    for gguf_name, data, qtype in writer_tensors:
        if qtype in (T.F32, T.F16):
            writer.add_tensor(gguf_name, data)
        else:
            writer.add_tensor(gguf_name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Built(hf_dir, path, config, reference, types, hf_names)


def _write_metadata(writer, arch: str, hp: dict, quantized: bool) -> None:
    """The model metadata convert_hf_to_gguf.py writes for these architectures."""
    writer.add_name("tiny-" + arch)
    writer.add_file_type(ggufpy.LlamaFileType.MOSTLY_Q4_K_M if quantized else ggufpy.LlamaFileType.ALL_F32)
    writer.add_block_count(hp["num_hidden_layers"])
    writer.add_context_length(hp["max_position_embeddings"])
    writer.add_embedding_length(hp["hidden_size"])
    writer.add_feed_forward_length(hp["intermediate_size"])
    writer.add_head_count(hp["num_attention_heads"])
    writer.add_head_count_kv(hp["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    if "head_dim" in hp:
        writer.add_key_length(hp["head_dim"])
        writer.add_value_length(hp["head_dim"])
    if arch in ("llama", "qwen2", "qwen3", "gemma3", "phi3"):
        writer.add_rope_freq_base(hp["rope_theta"])
    if arch == "llama":
        writer.add_vocab_size(hp["vocab_size"])
        writer.add_rope_dimension_count(hp.get("head_dim", hp["hidden_size"] // hp["num_attention_heads"]))
    elif arch == "gemma2":
        writer.add_attn_logit_softcapping(hp["attn_logit_softcapping"])
        writer.add_final_logit_softcapping(hp["final_logit_softcapping"])
        writer.add_sliding_window(hp["sliding_window"])
    elif arch == "gemma3":
        writer.add_sliding_window(hp["sliding_window"])
        writer.add_rope_scaling_type(ggufpy.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(hp["rope_scaling"]["factor"])
    elif arch == "phi3":
        rope_dims = int(hp["partial_rotary_factor"] * hp["hidden_size"]) // hp["num_attention_heads"]
        writer.add_rope_scaling_orig_ctx_len(hp["original_max_position_embeddings"])
        writer.add_rope_dimension_count(rope_dims)
        writer.add_sliding_window(0)
        scale = hp["max_position_embeddings"] / hp["original_max_position_embeddings"]
        writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(hp["original_max_position_embeddings"])))
