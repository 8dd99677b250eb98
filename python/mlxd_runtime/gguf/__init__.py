"""GGUF → MLX model directory, for `mlxd import`.

`convert(path, out_dir, dtype)` reads the GGUF header and tensor table itself (reader.py),
maps the tensors one by one from the file (numpy views of a memory map), and streams them
into model.safetensors, so memory holds one converted tensor (in row chunks), not the model:

- architectures (architectures.py): llama (Llama 1-3, Mistral), qwen2, qwen3, gemma2,
  gemma3 (text), phi3, written as mlx-lm's llama, qwen2, qwen3, gemma2, gemma3_text, phi3;
- tensor types (quants.py): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K and Q5_K are repacked exactly
  into MLX's affine quantization (group size 32, 4/5/8 bits, float16 scales and biases;
  float32 for the token embedding, see _plan); Q2_K, Q3_K and Q6_K (sub-blocks of 16, which
  MLX cannot group) are dequantized to float16 (a Gemma 3 embedding to bfloat16); F32, F16
  and BF16 are kept as they are. Bits can differ per tensor: config.json's
  `quantization` names the modules that differ from the most common width.
  `dtype` float16/float32/bfloat16 dequantizes everything to that type instead.
- tokenizer (tokenizer.py): tokenizer.json/tokenizer_config.json rebuilt from the metadata,
  chat template included.

The result is loaded (lazily) with mlx-lm before it is published, so a file whose tensors do
not fit mlx-lm's model is refused, naming what does not fit, instead of failing at serve time.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from . import quants
from .architectures import SUPPORTED_ARCHITECTURES, Entry, model_config
from .reader import GGML_TYPES, GGUFFile, UnsupportedModel
from .tokenizer import stop_token_ids, tokenizer_files

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "SUPPORTED_TENSOR_TYPES",
    "UnsupportedModel",
    "check_tensor_types",
    "convert",
    "tensor_types",
]

GROUP_SIZE = quants.GROUP_SIZE
KEPT_QUANTIZED = tuple(quants.KEPT_QUANTIZED)
SUPPORTED_TENSOR_TYPES = (
    ", ".join(quants.SUPPORTED)
    + " (Q4_0/Q4_1/Q4_K stay 4-bit, Q5_0/Q5_1/Q5_K 5-bit, Q8_0 8-bit; Q2_K, Q3_K, Q6_K become float16)"
)
GGML_TYPE_NAMES = {type_id: spec[0] for type_id, spec in GGML_TYPES.items()}
_ROW_CHUNK_ELEMENTS = 1 << 22  # rows converted at a time: ~16 MB of float32


def tensor_types(path: str | os.PathLike) -> dict[str, str]:
    """Tensor name → GGML type name, from the GGUF header. Refuses a file that is not GGUF,
    or whose header is corrupt or whose tensors run past the end of the file or overlap."""
    with GGUFFile(path) as gguf:
        return {name: info.type_name for name, info in gguf.tensors.items()}


def _check_types(gguf: GGUFFile) -> dict[str, str]:
    types = {name: info.type_name for name, info in gguf.tensors.items()}
    for name, type_name in types.items():
        if type_name not in quants.SUPPORTED:
            raise UnsupportedModel(
                f"tensor {name!r} in {gguf.path} has type {type_name}, which mlxd cannot import "
                f"(supported GGUF tensor types: {SUPPORTED_TENSOR_TYPES})"
            )
    return types


def check_tensor_types(path: str | os.PathLike) -> dict[str, str]:
    """Refuses, naming the tensor and its type, a file with a tensor type mlxd cannot import."""
    with GGUFFile(path) as gguf:
        return _check_types(gguf)


class _Output:
    """One tensor of model.safetensors: its name, safetensors dtype, shape, byte offset."""

    def __init__(self, name: str, dtype: str, shape: tuple[int, ...]):
        self.name, self.dtype, self.shape = name, dtype, tuple(int(d) for d in shape)
        itemsize = {"F32": 4, "F16": 2, "BF16": 2, "U32": 4}[dtype]
        self.row_bytes = itemsize * (self.shape[-1] if self.shape else 1)
        self.nbytes = self.row_bytes * int(np.prod(self.shape[:-1], dtype=np.int64)) if self.shape else itemsize
        self.offset = 0


_FLOAT_NAMES = {"float16": "F16", "float32": "F32", "bfloat16": "BF16"}


def _plan(entry: Entry, dtype: str | None, model_type: str) -> tuple[int, str]:
    """(bits, dtype) for one tensor: bits > 0 means MLX-quantized with scales and biases of
    that dtype; bits 0 means a float tensor of that dtype.

    The token embedding decides the dtype of the residual stream in mlx-lm's models (the
    rest follows from it and the float32 norms), and mlx-lm's Gemma 3 keeps a float16
    residual stream clipped to float16's range, which Gemma's large activations do not
    survive. So a quantized embedding gets float32 scales (llama.cpp too computes
    activations in float32), and Gemma 3's embedding is never float16: bfloat16 instead."""
    type_name = entry.info.type_name
    embedding = entry.module == "model.embed_tokens"
    if dtype is not None:
        return 0, _FLOAT_NAMES[dtype]
    if (
        type_name in quants.KEPT_QUANTIZED
        and entry.suffix == "weight"
        and len(entry.info.shape) == 2
        and entry.add == 0
    ):
        return quants.KEPT_QUANTIZED[type_name], "F32" if embedding else "F16"
    if entry.add != 0:
        return 0, "F32"
    float_type = type_name if type_name in quants.FLOATS else "F16"
    if embedding and model_type == "gemma3_text" and float_type == "F16":
        float_type = "BF16"
    return 0, float_type


def _encode(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F32":
        return values.astype("<f4", copy=False)
    if dtype == "F16":
        return values.astype("<f2")
    return quants.to_bfloat16_bits(values)


def _write_tensor(handle, data_start: int, gguf: GGUFFile, entry: Entry, bits: int, outputs: list[_Output]) -> None:
    info = entry.info
    source = gguf.data(info)
    rows = source.shape[0]
    cols = info.shape[-1] if info.shape else 1
    step = max(1, _ROW_CHUNK_ELEMENTS // cols)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        raw = source[entry.row_order[start:stop]] if entry.row_order is not None else source[start:stop]
        if bits:
            q, scales, biases = quants.unpack(info.type_name, raw)
            scale_type = "<f2" if outputs[1].dtype == "F16" else "<f4"
            scales, biases = scales.astype(scale_type), biases.astype(scale_type)
            if not (np.isfinite(scales).all() and np.isfinite(biases).all()):
                raise UnsupportedModel(f"tensor {info.name!r} has scales beyond float16's range")
            parts = (quants.pack(q, bits), scales, biases)
        else:
            if info.type_name == "BF16" and outputs[0].dtype == "BF16" and not entry.add:
                values = np.ascontiguousarray(raw)  # bfloat16 bits, copied as they are
                parts = (values,)
            else:
                values = quants.dequantize(info.type_name, raw)
                if entry.add:
                    values = values + np.float32(entry.add)
                parts = (_encode(values, outputs[0].dtype),)
        for output, part in zip(outputs, parts):
            handle.seek(data_start + output.offset + start * output.row_bytes)
            handle.write(np.ascontiguousarray(part).tobytes())
    del source


def _write_safetensors(path: Path, gguf: GGUFFile, work: list[tuple[Entry, int, list[_Output]]]) -> None:
    """model.safetensors, written tensor by tensor (its header first: the shapes are known)."""
    header: dict = {"__metadata__": {"format": "mlx"}}
    offset = 0
    for _, _, outputs in work:
        for output in outputs:
            output.offset = offset
            header[output.name] = {
                "dtype": output.dtype,
                "shape": list(output.shape),
                "data_offsets": [offset, offset + output.nbytes],
            }
            offset += output.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        data_start = handle.tell()
        handle.truncate(data_start + offset)
        for entry, bits, outputs in work:
            _write_tensor(handle, data_start, gguf, entry, bits, outputs)
        handle.flush()
        os.fsync(handle.fileno())


def _check_loads(model_dir: Path) -> None:
    """Loads the written model with mlx-lm (lazily: nothing is read), so names, shapes and
    the config are checked by the code that will serve it."""
    from mlx_lm.utils import load_model

    try:
        load_model(model_dir, lazy=True)
    except Exception as err:  # mlx-lm raises ValueError/KeyError/TypeError with its own wording
        message = " ".join(str(err).split())
        raise UnsupportedModel(f"the converted model does not load in mlx-lm: {message}") from err


def convert(gguf_path: str, out_dir: str, dtype: str | None = None) -> dict:
    """Writes an mlx-lm model directory for `gguf_path` into `out_dir` (which must not
    exist). `dtype` None keeps the GGUF quantization where MLX has it; "float16",
    "float32" or "bfloat16" dequantize everything. Returns a summary dict. Writes into a
    temporary sibling and renames at the end, so a failure never leaves a half-written
    model behind."""
    if dtype not in (None, "float16", "float32", "bfloat16"):
        raise ValueError(f"dtype must be float16, float32 or bfloat16, not {dtype!r}")
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    with GGUFFile(gguf_path) as gguf:
        types = _check_types(gguf)
        config, entries = model_config(gguf)
        stops = stop_token_ids(gguf.metadata)
        if stops:
            config["bos_token_id"] = gguf.metadata.get("tokenizer.ggml.bos_token_id")
            config["eos_token_id"] = stops[0] if len(stops) == 1 else stops
            if config["bos_token_id"] is None:
                del config["bos_token_id"]
        tokenizer, tokenizer_config = tokenizer_files(gguf.metadata, config["max_position_embeddings"])

        work = []
        bits_of: dict[str, int] = {}
        for entry in entries:
            bits, float_type = _plan(entry, dtype, config["model_type"])
            shape = entry.info.shape
            if bits:
                bits_of[entry.module] = bits
                outputs = [
                    _Output(f"{entry.module}.weight", "U32", (shape[0], shape[1] * bits // 32)),
                    _Output(f"{entry.module}.scales", float_type, (shape[0], shape[1] // GROUP_SIZE)),
                    _Output(f"{entry.module}.biases", float_type, (shape[0], shape[1] // GROUP_SIZE)),
                ]
            else:
                outputs = [_Output(entry.name, float_type, shape)]
            work.append((entry, bits, outputs))
        if bits_of:
            common = Counter(bits_of.values()).most_common(1)[0][0]
            quantization: dict = {"group_size": GROUP_SIZE, "bits": common}
            for module, bits in sorted(bits_of.items()):
                if bits != common:
                    quantization[module] = {"group_size": GROUP_SIZE, "bits": bits}
            config["quantization"] = quantization

        out.parent.mkdir(parents=True, exist_ok=True)
        # Named after this process, so `mlxd store gc` can tell a live import from a dead one.
        staging = out.parent / f".{out.name.lstrip('.')}.staging-{os.getpid()}"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        try:
            _write_safetensors(staging / "model.safetensors", gguf, work)
            (staging / "config.json").write_text(json.dumps(config, indent=2))
            (staging / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
            (staging / "tokenizer_config.json").write_text(
                json.dumps(tokenizer_config, indent=2, ensure_ascii=False)
            )
            _check_loads(staging)
            for file in staging.iterdir():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
            os.rename(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return {
        "architecture": config["model_type"],
        "gguf_architecture": gguf.metadata.get("general.architecture"),
        "tensors": sum(len(outputs) for _, _, outputs in work),
        "quantization": config.get("quantization"),
        "dtype": dtype or "quantized",
        "layers": config["num_hidden_layers"],
        "vocab_size": config["vocab_size"],
        "tensor_types": dict(Counter(types.values())),
    }
