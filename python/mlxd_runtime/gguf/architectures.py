"""Per-architecture mapping: GGUF metadata → mlx-lm config.json, GGUF tensor names → mlx-lm
names, and the layout changes llama.cpp's converter (convert_hf_to_gguf.py) made that have to
be undone.

- llama: q/k rows are permuted for llama.cpp's interleaved rotary embedding; they are
  un-permuted here (rows only, so it works on quantized rows too). Llama 3.1+ files carry
  `rope_freqs.weight`, the per-dimension factors of Llama 3 rope scaling, from which the
  `rope_scaling` parameters are recovered.
- gemma2/gemma3: llama.cpp adds 1 to every `*norm.weight`; mlx-lm's Gemma RMSNorm multiplies
  by (1 + weight), so 1 is subtracted back. GGUF has no query_pre_attn_scalar: llama.cpp uses
  hidden/heads for the 27B models (46 layers for Gemma 2, 62 for Gemma 3) and the head size
  otherwise, and so do we (or `attention.scale` when the file has it).
- phi3: q/k/v and gate/up stay fused (`attn_qkv`, `ffn_up` → mlx-lm's qkv_proj, gate_up_proj);
  long-context files carry `rope_factors_long/short.weight`, which become rope_scaling.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from .reader import GGUFFile, TensorInfo, UnsupportedModel

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")

_COMMON_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_norm": "post_attention_layernorm",
}
_QK_NORM = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
_GEMMA_NORMS = {
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
LAYER_NAMES = {
    "llama": _COMMON_LAYER,
    "qwen2": _COMMON_LAYER,
    "qwen3": {**_COMMON_LAYER, **_QK_NORM},
    "gemma2": {**_COMMON_LAYER, **_GEMMA_NORMS},
    "gemma3": {**_COMMON_LAYER, **_GEMMA_NORMS, **_QK_NORM},
    "phi3": {
        "attn_norm": "input_layernorm",
        "attn_qkv": "self_attn.qkv_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_up": "mlp.gate_up_proj",
        "ffn_down": "mlp.down_proj",
        "ffn_norm": "post_attention_layernorm",
    },
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# Tensors that only carry rope parameters: read into config.json, not written.
ROPE_TENSORS = {"llama": ("rope_freqs.weight",), "phi3": ("rope_factors_long.weight", "rope_factors_short.weight")}


@dataclass
class Entry:
    """One GGUF tensor, where it goes, and what is done to it on the way."""

    module: str  # mlx-lm module path, e.g. model.layers.0.self_attn.q_proj
    suffix: str  # weight / bias
    info: TensorInfo
    row_order: np.ndarray | None = None  # output row r = GGUF row row_order[r]
    add: float = 0.0  # added to every value (gemma norms: -1)

    @property
    def name(self) -> str:
        return f"{self.module}.{self.suffix}"


class _Meta:
    def __init__(self, gguf: GGUFFile, arch: str):
        self.values, self.arch, self.path = gguf.metadata, arch, gguf.path

    def get(self, key: str, default=None):
        return self.values.get(key.format(arch=self.arch), default)

    def number(self, key: str, default=None, kind=float):
        value = self.get(key, default)
        if value is None:
            raise UnsupportedModel(f"{self.path}: metadata {key.format(arch=self.arch)!r} is missing")
        if isinstance(value, list):  # per-layer values: mlx-lm's models take one
            if not value or any(v != value[0] for v in value):
                raise UnsupportedModel(
                    f"{self.path}: {key.format(arch=self.arch)!r} differs between layers ({value[:8]}...), "
                    "which mlx-lm's model for this architecture does not support"
                )
            value = value[0]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UnsupportedModel(f"{self.path}: metadata {key.format(arch=self.arch)!r} is {value!r}, not a number")
        return kind(value)


def unpermute_rows(rows: int, heads: int) -> np.ndarray:
    """The row order that undoes llama.cpp's `permute(w, n_head)` of a q/k projection:
    reshape(n_head, 2, d/2).swapaxes(1, 2) in the converter, inverted here."""
    if heads <= 0 or rows % (2 * heads):
        raise UnsupportedModel(f"cannot un-permute {rows} rows for {heads} heads")
    return np.arange(rows).reshape(heads, rows // heads // 2, 2).swapaxes(1, 2).reshape(-1)


def _llama3_rope_scaling(factors: np.ndarray, base: float, head_dim: int, original: int | None, path: str) -> dict | None:
    """rope_scaling for mlx-lm's Llama3RoPE reproducing `rope_freqs.weight`. The converter
    computes the factors from (factor, low_freq_factor, high_freq_factor, original context);
    Llama 3.1-3.3 all use low 1, high 4, original 8192, which is checked, not assumed."""
    factors = np.asarray(factors, dtype=np.float64)
    if factors.shape != (head_dim // 2,):
        raise UnsupportedModel(f"{path}: rope_freqs.weight has shape {factors.shape}, not ({head_dim // 2},)")
    if np.all(factors == 1.0):
        return None
    factor = float(factors.max())
    wavelengths = 2 * math.pi * base ** (np.arange(0, head_dim, 2) / head_dim)
    for old in dict.fromkeys(x for x in (original, 8192) if x):
        for low, high in ((1.0, 4.0),):
            smooth = (old / wavelengths - low) / (high - low)
            expected = np.where(
                wavelengths < old / high,
                1.0,
                np.where(wavelengths > old / low, factor, 1 / ((1 - smooth) / factor + smooth)),
            )
            if np.allclose(expected, factors, rtol=1e-5, atol=0):
                return {
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low,
                    "high_freq_factor": high,
                    "original_max_position_embeddings": int(old),
                }
    raise UnsupportedModel(
        f"{path}: rope_freqs.weight does not match Llama 3 rope scaling (factor {factor}, low/high frequency "
        "factors 1/4, original context 8192); mlx-lm has no rope with arbitrary per-dimension factors"
    )


def _rope_scaling(meta: _Meta) -> dict | None:
    """Linear or YaRN rope scaling from `{arch}.rope.scaling.*`."""
    kind = meta.get("{arch}.rope.scaling.type")
    factor = meta.get("{arch}.rope.scaling.factor")
    if kind in (None, "none"):
        return None
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 0:
        raise UnsupportedModel(f"{meta.path}: {kind} rope scaling without a valid factor ({factor!r})")
    if kind == "linear":
        return None if factor == 1 else {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        scaling = {"rope_type": "yarn", "factor": float(factor)}
        original = meta.get("{arch}.rope.scaling.original_context_length")
        if original:
            scaling["original_max_position_embeddings"] = int(original)
        for key, name in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            value = meta.get("{arch}.rope.scaling." + key)
            if value is not None:
                scaling[name] = float(value)
        return scaling
    raise UnsupportedModel(f"{meta.path}: rope scaling type {kind!r} is not supported (supported: linear, yarn)")


def _rows(gguf: GGUFFile, name: str) -> int:
    return gguf.tensors[name].shape[0]


def model_config(gguf: GGUFFile) -> tuple[dict, list[Entry]]:
    """config.json for mlx-lm, and the tensors to write."""
    arch = gguf.metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModel(
            f"GGUF architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    meta = _Meta(gguf, arch)
    if "token_embd.weight" not in gguf.tensors:
        raise UnsupportedModel(f"{gguf.path}: no token_embd.weight tensor")
    hidden = meta.number("{arch}.embedding_length", kind=int)
    heads = meta.number("{arch}.attention.head_count", kind=int)
    kv_heads = meta.number("{arch}.attention.head_count_kv", heads, kind=int)
    if heads <= 0 or kv_heads <= 0 or heads % kv_heads:
        raise UnsupportedModel(f"{gguf.path}: {heads} attention heads and {kv_heads} key/value heads")
    gemma = arch.startswith("gemma")
    head_dim = meta.number("{arch}.attention.key_length", hidden // heads, kind=int)
    value_dim = meta.number("{arch}.attention.value_length", head_dim, kind=int)
    if value_dim != head_dim:
        raise UnsupportedModel(f"{gguf.path}: key length {head_dim} and value length {value_dim} differ")
    layers = meta.number("{arch}.block_count", kind=int)
    context = meta.number("{arch}.context_length", 131072 if arch == "gemma3" else 4096, kind=int)
    config = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": meta.number("{arch}.feed_forward_length", kind=int),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": meta.number("{arch}.attention.layer_norm_rms_epsilon", 1e-6 if gemma else 1e-5),
        "vocab_size": _rows(gguf, "token_embd.weight"),
        "max_position_embeddings": context,
        "tie_word_embeddings": "output.weight" not in gguf.tensors,
    }
    rope_dims = meta.number("{arch}.rope.dimension_count", head_dim, kind=int)
    scale = meta.get("{arch}.attention.scale")
    if arch != "phi3" and rope_dims != head_dim:
        raise UnsupportedModel(
            f"{gguf.path}: rope over {rope_dims} of {head_dim} head dimensions; mlx-lm's {arch} rotates all of them"
        )
    if not gemma and scale is not None and not math.isclose(scale, head_dim**-0.5, rel_tol=1e-4):
        raise UnsupportedModel(f"{gguf.path}: attention scale {scale} is not 1/sqrt(head size), which mlx-lm's {arch} uses")
    if arch in ("qwen2", "phi3") and head_dim != hidden // heads:
        raise UnsupportedModel(
            f"{gguf.path}: head size {head_dim} is not hidden/heads ({hidden // heads}), which mlx-lm's {arch} assumes"
        )

    if arch == "llama":
        config.update(model_type="llama", rope_theta=meta.number("{arch}.rope.freq_base", 10000.0))
        config["attention_bias"] = "blk.0.attn_q.bias" in gguf.tensors
        config["mlp_bias"] = "blk.0.ffn_up.bias" in gguf.tensors
        scaling = _rope_scaling(meta)
        if "rope_freqs.weight" in gguf.tensors:
            from .quants import dequantize

            factors = dequantize(gguf.tensors["rope_freqs.weight"].type_name, gguf.data(gguf.tensors["rope_freqs.weight"]))
            original = meta.get("{arch}.rope.scaling.original_context_length")
            scaling = _llama3_rope_scaling(factors.reshape(-1), config["rope_theta"], head_dim, original, gguf.path)
        if scaling:
            config["rope_scaling"] = scaling
    elif arch in ("qwen2", "qwen3"):
        config.update(model_type=arch, rope_theta=meta.number("{arch}.rope.freq_base", 10000.0))
        if scaling := _rope_scaling(meta):
            config["rope_scaling"] = scaling
    elif arch == "gemma2":
        if "output.weight" in gguf.tensors:
            raise UnsupportedModel(f"{gguf.path}: a gemma2 file with its own output.weight; mlx-lm's gemma2 ties it to the embedding")
        config.update(
            model_type="gemma2",
            rope_theta=meta.number("{arch}.rope.freq_base", 10000.0),
            # llama.cpp's defaults when the keys are missing
            attn_logit_softcapping=meta.number("{arch}.attn_logit_softcapping", 50.0),
            final_logit_softcapping=meta.number("{arch}.final_logit_softcapping", 30.0),
            query_pre_attn_scalar=_query_pre_attn_scalar(meta, hidden, heads, head_dim, layers, 46),
        )
        if (window := meta.get("{arch}.attention.sliding_window")) is not None:
            config["sliding_window"] = int(window)  # mlx-lm's gemma2 attends globally everywhere
    elif arch == "gemma3":
        for key in ("{arch}.final_logit_softcapping", "{arch}.attn_logit_softcapping"):
            if meta.get(key):
                raise UnsupportedModel(f"{gguf.path}: {key.format(arch=arch)} is set; mlx-lm's gemma3 has no softcapping")
        window = meta.get("{arch}.attention.sliding_window")
        config.update(
            model_type="gemma3_text",
            rope_theta=meta.number("{arch}.rope.freq_base", 10000.0),
            rope_local_base_freq=meta.number("{arch}.rope.freq_base_swa", 10000.0),
            query_pre_attn_scalar=_query_pre_attn_scalar(meta, hidden, heads, head_dim, layers, 62),
            sliding_window=int(window) if window else context,
            sliding_window_pattern=_sliding_window_pattern(meta, layers) if window else 1,
        )
        if scaling := _rope_scaling(meta):
            config["rope_scaling"] = scaling
    elif arch == "phi3":
        if "blk.0.attn_q.weight" in gguf.tensors:
            raise UnsupportedModel(f"{gguf.path}: a phi3 file with separate attn_q/attn_k/attn_v; mlx-lm's phi3 needs them fused")
        config.update(
            model_type="phi3",
            rope_theta=meta.number("{arch}.rope.freq_base", 10000.0),
            partial_rotary_factor=rope_dims / head_dim,
            original_max_position_embeddings=meta.number(
                "{arch}.rope.scaling.original_context_length", context, kind=int
            ),
        )
        del config["head_dim"]
        if "rope_factors_long.weight" in gguf.tensors:
            config["rope_scaling"] = _longrope(gguf, meta, config, rope_dims)
        elif (scaling := _rope_scaling(meta)) is not None:
            if scaling["rope_type"] != "linear":
                raise UnsupportedModel(f"{gguf.path}: phi3 with {scaling['rope_type']} rope scaling is not supported")
            config["rope_scaling"] = {"type": "linear", "factor": scaling["factor"]}
    config["architectures"] = [
        {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
         "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM"}[arch]
    ]
    return config, _entries(gguf, arch, heads, kv_heads)


def _query_pre_attn_scalar(meta: _Meta, hidden: int, heads: int, head_dim: int, layers: int, big_layers: int) -> int | float:
    scale = meta.get("{arch}.attention.scale")
    value = 1 / scale**2 if scale else (hidden // heads if layers == big_layers else head_dim)
    # an int when it is one: transformers' Gemma configs (which mlx-lm's tokenizer loading
    # reads) refuse a float here
    return int(round(value)) if abs(value - round(value)) < 1e-3 else float(value)


def _sliding_window_pattern(meta: _Meta, layers: int) -> int:
    """Every n-th layer attends globally (mlx-lm's `sliding_window_pattern`). llama.cpp
    uses 6 for Gemma 3 when the file does not say; a per-layer list must be periodic."""
    value = meta.get("{arch}.attention.sliding_window_pattern")
    if value is None:
        return 6
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, list) and len(value) == layers:
        for period in range(1, layers + 2):
            if all(bool(v) == ((i + 1) % period != 0) for i, v in enumerate(value)):
                if period > layers:
                    break
                return period
    raise UnsupportedModel(
        f"{meta.path}: sliding-window layer pattern {value!r} is not 'every n-th layer global', "
        "which is what mlx-lm's gemma3 implements"
    )


def _longrope(gguf: GGUFFile, meta: _Meta, config: dict, rope_dims: int) -> dict:
    from .quants import dequantize

    factors = {}
    for kind in ("long", "short"):
        name = f"rope_factors_{kind}.weight"
        if name not in gguf.tensors:
            raise UnsupportedModel(f"{gguf.path}: rope_factors_long.weight without rope_factors_short.weight")
        values = dequantize(gguf.tensors[name].type_name, gguf.data(gguf.tensors[name])).reshape(-1)
        if values.shape != (rope_dims // 2,):
            raise UnsupportedModel(f"{gguf.path}: {name} has {values.size} values, not {rope_dims // 2}")
        factors[kind] = [float(v) for v in values]
    # mlx-lm's SuScaledRoPE scales attention by sqrt(1 + ln(s) / ln(original)), s = context
    # / original context; the file's attn_factor must agree.
    scale = config["max_position_embeddings"] / config["original_max_position_embeddings"]
    expected = math.sqrt(1 + math.log(scale) / math.log(config["original_max_position_embeddings"])) if scale > 1 else 1.0
    stated = meta.get("{arch}.rope.scaling.attn_factor")
    if stated is not None and not math.isclose(stated, expected, rel_tol=1e-4):
        raise UnsupportedModel(
            f"{gguf.path}: rope attention factor {stated} differs from the {expected:.6f} mlx-lm's phi3 computes"
        )
    return {"type": "longrope", "long_factor": factors["long"], "short_factor": factors["short"]}


def _entries(gguf: GGUFFile, arch: str, heads: int, kv_heads: int) -> list[Entry]:
    layer_names = LAYER_NAMES[arch]
    skip = ROPE_TENSORS.get(arch, ())
    entries = []
    for name, info in gguf.tensors.items():
        if name in skip:
            continue
        match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
        if match:
            layer, part, suffix = match.groups()
            if part not in layer_names:
                raise UnsupportedModel(
                    f"unexpected tensor {name!r} in a {arch} GGUF (expected per layer: {', '.join(sorted(layer_names))})"
                )
            module = f"model.layers.{layer}.{layer_names[part]}"
        else:
            base, _, suffix = name.rpartition(".")
            if base not in TOP_NAMES or suffix != "weight":
                raise UnsupportedModel(f"unexpected tensor {name!r} in a {arch} GGUF")
            module, part = TOP_NAMES[base], base
        entry = Entry(module, suffix, info)
        if arch == "llama" and part in ("attn_q", "attn_k"):
            entry.row_order = unpermute_rows(info.shape[0], heads if part == "attn_q" else kv_heads)
        if arch.startswith("gemma") and part.endswith("norm") and suffix == "weight":
            entry.add = -1.0
        entries.append(entry)
    return entries
