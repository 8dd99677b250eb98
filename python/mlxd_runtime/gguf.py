"""GGUF → MLX model directory, for `mlxd import`.

`mx.load(path, return_metadata=True)` reads GGUF tensors; Q4_0, Q4_1 and Q8_0 come back in
MLX's quantized layout (packed uint32 weight, float16 scales and biases, group size 32),
and the bits can differ per tensor (SmolLM2's Q4_1 file has 8-bit embeddings beside 4-bit
layers). This module renames tensors to mlx-lm's llama names, writes config.json with a
per-layer quantization map (or dequantizes to float16/float32 on request), and rebuilds a
Hugging Face tokenizer.json from the GGUF tokenizer metadata.

GGUF llama q/k weights are stored permuted for llama.cpp's interleaved rotary embedding,
so the config sets ``rope_traditional: true`` instead of un-permuting them.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import mlx.core as mx

SUPPORTED_ARCHITECTURES = ("llama",)
GGML_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
}
# MLX reads Q4_0/Q4_1/Q8_0 into its own quantized layout, F32/F16 as they are, and
# dequantizes BF16 and the K-quants to float16; everything else it cannot read.
KEPT_QUANTIZED = ("Q4_0", "Q4_1", "Q8_0")
DEQUANTIZED_BY_MLX = ("BF16", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
SUPPORTED_TENSOR_TYPES = ", ".join(("F32", "F16") + KEPT_QUANTIZED + DEQUANTIZED_BY_MLX) + " (BF16 and K-quants become float16)"
SUPPORTED_TOKENIZERS = ("gpt2",)
# GGUF `tokenizer.ggml.pre` names → the pre-tokenizer of the original HF tokenizer.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
PRE_TOKENIZERS = {
    "gpt2": _BYTE_LEVEL,
    "default": _BYTE_LEVEL,
    "smollm": {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL],
    },
}

GROUP_SIZE = 32  # every GGUF block quantization MLX reads uses blocks of 32

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


class UnsupportedModel(ValueError):
    """The GGUF file uses an architecture, tensor type or tokenizer this importer does not handle."""


def _scalar(meta: dict, key: str, default=None):
    value = meta.get(key, default)
    if isinstance(value, mx.array):
        value = value.item()
    return value


def _list(meta: dict, key: str) -> list:
    value = meta.get(key)
    if value is None:
        return []
    if isinstance(value, mx.array):
        return value.tolist()
    return list(value)


def _mlx_name(name: str) -> str:
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|scales|biases)", name)
    if match:
        layer, part, suffix = match.groups()
        if part not in _LAYER_NAMES:
            raise UnsupportedModel(f"unexpected tensor {name!r} in a llama GGUF")
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{suffix}"
    base, _, suffix = name.rpartition(".")
    if base not in _TOP_NAMES:
        raise UnsupportedModel(f"unexpected tensor {name!r} in a llama GGUF")
    return f"{_TOP_NAMES[base]}.{suffix}"


# (bytes per block, elements per block) of the GGML types whose layout is fixed.
_BLOCKS = {
    0: (4, 1), 1: (2, 1), 30: (2, 1), 2: (18, 32), 3: (20, 32), 6: (22, 32), 7: (24, 32),
    8: (34, 32), 9: (36, 32), 10: (84, 256), 11: (110, 256), 12: (144, 256), 13: (176, 256),
    14: (210, 256), 15: (292, 256),
}


def tensor_types(path: str | os.PathLike) -> dict[str, str]:
    """Tensor name → GGML type name, from the GGUF header, read without loading tensors.
    Refuses a header whose tensors run past the end of the file or overlap."""
    import struct

    with open(path, "rb") as f:
        def take(fmt: str):
            size = struct.calcsize(fmt)
            data = f.read(size)
            if len(data) != size:
                raise UnsupportedModel(f"{path}: truncated GGUF header")
            return struct.unpack(fmt, data)

        def string() -> str:
            (length,) = take("<Q")
            if length > 1 << 24:
                raise UnsupportedModel(f"{path}: GGUF string of {length} bytes; the header is corrupt")
            return f.read(length).decode("utf-8", errors="replace")

        scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

        def skip_value(kind: int) -> None:
            if kind == 8:
                string()
            elif kind == 9:
                item_kind, count = take("<IQ")
                if item_kind in scalar:
                    f.seek(struct.calcsize(scalar[item_kind]) * count, 1)
                else:
                    for _ in range(count):
                        skip_value(item_kind)
            elif kind in scalar:
                take(scalar[kind])
            else:
                raise UnsupportedModel(f"{path}: unknown GGUF metadata type {kind}")

        magic = f.read(4)
        if magic != b"GGUF":
            raise UnsupportedModel(f"{path} is not a GGUF file")
        (version,) = take("<I")
        if version not in (2, 3):
            raise UnsupportedModel(f"{path}: GGUF version {version} is not supported (supported: 2, 3)")
        n_tensors, n_kv = take("<QQ")
        if n_tensors > 1 << 20 or n_kv > 1 << 20:
            raise UnsupportedModel(f"{path}: GGUF header claims {n_tensors} tensors and {n_kv} keys; it is corrupt")
        alignment = 32
        for _ in range(n_kv):
            key = string()
            (kind,) = take("<I")
            if key == "general.alignment" and kind == 4:
                (alignment,) = take("<I")
            else:
                skip_value(kind)
        types = {}
        ranges = []
        for _ in range(n_tensors):
            name = string()
            (n_dims,) = take("<I")
            if n_dims > 8:
                raise UnsupportedModel(f"{path}: tensor {name!r} claims {n_dims} dimensions; the header is corrupt")
            dims = take(f"<{n_dims}Q")
            ggml_type, offset = take("<IQ")
            types[name] = GGML_TYPE_NAMES.get(ggml_type, f"type {ggml_type}")
            if ggml_type in _BLOCKS:
                block_bytes, block_elems = _BLOCKS[ggml_type]
                elements = 1
                for d in dims:
                    elements *= d
                ranges.append((offset, offset + elements // block_elems * block_bytes, name))
        data_start = (f.tell() + alignment - 1) // alignment * alignment
        file_size = os.fstat(f.fileno()).st_size
        ranges.sort()
        for index, (begin, end, name) in enumerate(ranges):
            if data_start + end > file_size:
                raise UnsupportedModel(
                    f"{path}: tensor {name!r} (bytes {begin}..{end} of the data) runs past the end of the file"
                )
            if index and begin < ranges[index - 1][1]:
                raise UnsupportedModel(f"{path}: tensors {ranges[index - 1][2]!r} and {name!r} overlap")
        return types


def check_tensor_types(path: str | os.PathLike) -> dict[str, str]:
    """Refuses, naming the tensor and its type, a file with a tensor MLX cannot read."""
    types = tensor_types(path)
    readable = ("F32", "F16") + KEPT_QUANTIZED + DEQUANTIZED_BY_MLX
    for name, type_name in types.items():
        if type_name not in readable:
            raise UnsupportedModel(
                f"tensor {name!r} in {path} has type {type_name}, which mlxd cannot import "
                f"(supported GGUF tensor types: {SUPPORTED_TENSOR_TYPES})"
            )
    return types


def read(path: str | os.PathLike) -> tuple[dict, dict]:
    """Reads tensors and metadata, turning MLX's errors into ones that say what is supported."""
    try:
        return mx.load(str(path), return_metadata=True)
    except Exception as err:  # MLX raises ValueError/RuntimeError with its own wording
        message = str(err)
        if "type" in message.lower() or "quant" in message.lower() or "support" in message.lower():
            raise UnsupportedModel(
                f"{path}: {message} (supported GGUF tensor types: {SUPPORTED_TENSOR_TYPES})"
            ) from err
        raise


def model_config(meta: dict, weights: dict) -> dict:
    arch = _scalar(meta, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModel(
            f"GGUF architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    hidden = int(_scalar(meta, "llama.embedding_length"))
    heads = int(_scalar(meta, "llama.attention.head_count"))
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(_scalar(meta, "llama.block_count")),
        "intermediate_size": int(_scalar(meta, "llama.feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_scalar(meta, "llama.attention.head_count_kv", heads)),
        "head_dim": int(_scalar(meta, "llama.rope.dimension_count", hidden // heads)),
        "rms_norm_eps": float(_scalar(meta, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(_scalar(meta, "llama.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_scalar(meta, "llama.context_length", 2048)),
        "vocab_size": int(_scalar(meta, "llama.vocab_size", len(_list(meta, "tokenizer.ggml.tokens")))),
        "rope_traditional": True,
        "tie_word_embeddings": "output.weight" not in weights,
        "attention_bias": False,
        "mlp_bias": False,
    }
    for key, name in (("bos_token_id", "tokenizer.ggml.bos_token_id"), ("eos_token_id", "tokenizer.ggml.eos_token_id")):
        value = _scalar(meta, name)
        if value is not None:
            config[key] = int(value)
    return config


def tokenizer_files(meta: dict) -> tuple[dict, dict]:
    """tokenizer.json and tokenizer_config.json rebuilt from GGUF tokenizer metadata."""
    kind = _scalar(meta, "tokenizer.ggml.model")
    if kind not in SUPPORTED_TOKENIZERS:
        raise UnsupportedModel(
            f"GGUF tokenizer model {kind!r} is not supported (supported: {', '.join(SUPPORTED_TOKENIZERS)})"
        )
    pre = _scalar(meta, "tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise UnsupportedModel(
            f"GGUF pre-tokenizer {pre!r} is not supported (supported: {', '.join(sorted(PRE_TOKENIZERS))})"
        )
    tokens = _list(meta, "tokenizer.ggml.tokens")
    merges = _list(meta, "tokenizer.ggml.merges")
    types = _list(meta, "tokenizer.ggml.token_type") or [1] * len(tokens)
    # GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    added = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": types[i] == 3,
        }
        for i, tok in enumerate(tokens)
        if types[i] in (3, 4)
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZERS[pre],
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "merges": merges,
        },
    }

    def token(key: str):
        index = _scalar(meta, key)
        return tokens[int(index)] if index is not None and int(index) < len(tokens) else None

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": int(_scalar(meta, "llama.context_length", 2048)),
        "add_bos_token": bool(_scalar(meta, "tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(_scalar(meta, "tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
    }
    for field, key in (
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ):
        value = token(key)
        if value is not None:
            config[field] = value
    template = _scalar(meta, "tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    return tokenizer, config


def convert(gguf_path: str, out_dir: str, dtype: str | None = None) -> dict:
    """Writes an mlx-lm model directory for `gguf_path` into `out_dir` (which must not
    exist). `dtype` None keeps the GGUF quantization; "float16"/"float32" dequantize.
    Returns a summary dict. Writes into a temporary sibling and renames at the end, so a
    failure never leaves a half-written model behind."""
    if dtype not in (None, "float16", "float32", "bfloat16"):
        raise ValueError(f"dtype must be float16, float32 or bfloat16, not {dtype!r}")
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    check_tensor_types(gguf_path)
    weights, meta = read(gguf_path)
    config = model_config(meta, weights)
    tokenizer, tokenizer_config = tokenizer_files(meta)

    renamed = {_mlx_name(name): tensor for name, tensor in weights.items()}
    quantized_modules = sorted(name[: -len(".scales")] for name in renamed if name.endswith(".scales"))
    bits_of = {}
    for module in quantized_modules:
        packed, scales = renamed[f"{module}.weight"], renamed[f"{module}.scales"]
        bits_of[module] = packed.shape[-1] * 32 // (scales.shape[-1] * GROUP_SIZE)
    if dtype is None:
        if bits_of:
            common = Counter(bits_of.values()).most_common(1)[0][0]
            quantization: dict = {"group_size": GROUP_SIZE, "bits": common}
            for module, bits in bits_of.items():
                if bits != common:
                    quantization[module] = {"group_size": GROUP_SIZE, "bits": bits}
            config["quantization"] = quantization
        final = renamed
    else:
        target = getattr(mx, dtype)
        final = {}
        for name, tensor in renamed.items():
            module = name.rsplit(".", 1)[0]
            if module in bits_of:
                if name.endswith(".weight"):
                    final[name] = mx.dequantize(
                        tensor,
                        renamed[f"{module}.scales"],
                        renamed[f"{module}.biases"],
                        group_size=GROUP_SIZE,
                        bits=bits_of[module],
                    ).astype(target)
            else:
                final[name] = tensor.astype(target)
    for tensor in final.values():
        mx.eval(tensor)

    out.parent.mkdir(parents=True, exist_ok=True)
    # Named after this process, so `mlxd store gc` can tell a live import from a dead one.
    staging = out.parent / f".{out.name.lstrip('.')}.staging-{os.getpid()}"
    if staging.exists():
        import shutil

        shutil.rmtree(staging)
    staging.mkdir()
    try:
        mx.save_safetensors(str(staging / "model.safetensors"), final, metadata={"format": "mlx"})
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        (staging / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
        (staging / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))
        for file in staging.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        os.rename(staging, out)
    except BaseException:
        for file in staging.glob("*"):
            file.unlink()
        staging.rmdir()
        raise
    return {
        "architecture": config["model_type"],
        "tensors": len(final),
        "quantization": config.get("quantization"),
        "dtype": dtype or "quantized",
        "layers": config["num_hidden_layers"],
        "vocab_size": config["vocab_size"],
    }
