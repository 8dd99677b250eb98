"""GGML blocks → MLX quantized layout / floats, checked against the gguf package (gguf-py, the
reference numpy implementation of ggml's formats) and against MLX's own dequantization."""

from __future__ import annotations

import gguf as ggufpy
import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from mlxd_runtime.gguf import quants
from mlxd_runtime.gguf.reader import GGML_TYPES

# byte offsets of the float16 scale fields in each block type
_F16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q2_K": (80, 82),
               "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def _random_blocks(type_name: str, rows: int = 6, cols: int = 512, seed: int = 0) -> np.ndarray:
    """Random bytes with finite float16 scales: every bit pattern of the quantized values and
    sub-block scales occurs, so a wrong shift or mask shows."""
    rng = np.random.default_rng(seed)
    block, size = ggufpy.GGML_QUANT_SIZES[T[type_name]]
    raw = rng.integers(0, 256, size=(rows, cols // block * size), dtype=np.uint8)
    blocks = raw.reshape(rows, -1, size)
    for offset in _F16_FIELDS[type_name]:
        values = rng.uniform(-0.05, 0.05, blocks.shape[:2]).astype(np.float16)
        blocks[..., offset : offset + 2] = values.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return raw


def test_type_table_matches_ggml():
    for type_id, (name, block, size) in GGML_TYPES.items():
        assert T(type_id).name == name
        if name != "Q8_1":  # never stored in files; gguf-py still has its old 40-byte size, ggml 36
            assert ggufpy.GGML_QUANT_SIZES[T(type_id)] == (block, size), name


@pytest.mark.parametrize("type_name", list(quants.BLOCK_BYTES))
def test_dequantize_equals_gguf_py_exactly(type_name):
    raw = _random_blocks(type_name)
    expected = ggufpy.quants.dequantize(raw, T[type_name])
    assert np.array_equal(quants.dequantize(type_name, raw), expected)


def test_float_types():
    rng = np.random.default_rng(1)
    values = (rng.standard_normal((4, 64)) * 10).astype(np.float32)
    values[0, :4] = [np.inf, -np.inf, 0.0, -0.0]
    bf16 = ggufpy.quants.quantize(values, T.BF16)
    assert np.array_equal(quants.to_bfloat16_bits(values), bf16.view(np.uint16))
    assert np.array_equal(quants.dequantize("BF16", bf16.view(np.uint16)), ggufpy.quants.dequantize(bf16, T.BF16))
    f16 = values.astype(np.float16)
    assert np.array_equal(quants.dequantize("F16", f16), f16.astype(np.float32))


@pytest.mark.parametrize("type_name", list(quants.KEPT_QUANTIZED))
def test_mlx_layout_is_exact(type_name):
    """pack/unpack give MLX arrays whose mx.dequantize is gguf-py's dequantization, bit for
    bit (scales kept in float32 here; the import stores them in float16, see below)."""
    raw = _random_blocks(type_name, seed=2)
    q, scales, biases = quants.unpack(type_name, raw)
    bits = quants.KEPT_QUANTIZED[type_name]
    assert q.max() < 2**bits and q.shape == (6, 512)
    packed = quants.pack(q, bits)
    assert packed.dtype == np.uint32 and packed.shape == (6, 512 * bits // 32)
    mlx_values = mx.dequantize(mx.array(packed), mx.array(scales), mx.array(biases), group_size=32, bits=bits)
    assert np.array_equal(np.array(mlx_values), ggufpy.quants.dequantize(raw, T[type_name]))
    # and what MLX packs itself unpacks to the same values: the bit order is MLX's
    weights, mlx_scales, mlx_biases = mx.quantize(mx.array(np.array(mlx_values)), group_size=32, bits=bits)
    mlx_q = np.round((np.array(mx.dequantize(weights, mlx_scales, mlx_biases, group_size=32, bits=bits))
                      - np.repeat(np.array(mlx_biases), 32, -1)) / np.repeat(np.array(mlx_scales), 32, -1))
    repacked = quants.pack(np.nan_to_num(mlx_q).clip(0, 2**bits - 1).astype(np.uint8), bits)
    assert np.array_equal(repacked, np.array(weights))


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_legacy_scales_are_exact_in_float16(type_name):
    """d, m, -8d, -16d and -128d are float16 values: storing MLX scales and biases as float16
    loses nothing for these types (K-quants' d*sc and dmin*m are rounded)."""
    _, scales, biases = quants.unpack(type_name, _random_blocks(type_name, seed=3))
    assert np.array_equal(scales.astype(np.float16).astype(np.float32), scales)
    assert np.array_equal(biases.astype(np.float16).astype(np.float32), biases)


def test_mlx_has_no_group_of_16():
    """Why Q2_K, Q3_K and Q6_K (scales per 16 weights) are dequantized: MLX's affine
    quantization has no group size 16. If a later MLX has one, they can be kept quantized."""
    with pytest.raises(ValueError, match="group size 16 is not supported"):
        mx.quantize(mx.zeros((8, 64)), group_size=16, bits=6)
