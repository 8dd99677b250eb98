"""GGML block quantizations → MLX's affine quantized layout, or → floats.

MLX's affine quantization (group size 32, 2-8 bits) stores, per group of 32 weights, a
scale s and a bias b, and weight = s * q + b with q an unsigned `bits`-bit integer packed
little-endian into uint32 words. Every GGML type whose blocks (or sub-blocks) are 32
weights with one scale and one offset maps onto it exactly:

    Q4_0  w = d * (q - 8)            → 4 bits, s = d,      b = -8 d
    Q4_1  w = d * q + m              → 4 bits, s = d,      b = m
    Q5_0  w = d * (q - 16)           → 5 bits, s = d,      b = -16 d
    Q5_1  w = d * q + m              → 5 bits, s = d,      b = m
    Q8_0  w = d * q  (q signed)      → 8 bits, s = d,      b = -128 d  (q + 128 stored)
    Q4_K  w = d*sc_j * q - dmin*m_j  → 4 bits, s = d*sc_j, b = -dmin*m_j  (8 sub-blocks of 32)
    Q5_K  same with 5-bit q          → 5 bits

Q2_K, Q3_K and Q6_K use sub-blocks of 16 weights, and MLX 0.32's smallest group is 32
(`mx.quantize` refuses group_size 16), so those are dequantized. The float formulas here
follow ggml's (and the gguf package's) dequantization; tests check them against gguf-py.
"""

from __future__ import annotations

import numpy as np

GROUP_SIZE = 32
# type name → MLX bits, for the types kept quantized
KEPT_QUANTIZED = {"Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "Q8_0": 8, "Q4_K": 4, "Q5_K": 5}
DEQUANTIZED = ("Q2_K", "Q3_K", "Q6_K")  # sub-blocks of 16: no MLX equivalent
FLOATS = ("F32", "F16", "BF16")
SUPPORTED = FLOATS + tuple(KEPT_QUANTIZED) + DEQUANTIZED
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34,
               "Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 at byte `start` of each block, as float32, shape (..., 1)."""
    return np.ascontiguousarray(blocks[..., start : start + 2]).view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """16 bytes → 32 values: the low nibbles first, then the high ones (ggml's order)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """4 bytes (a little-endian uint32) → its 32 bits, bit j for value j."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def _k_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 bytes → 8 six-bit scales and 8 six-bit mins (ggml's get_scale_min_k4)."""
    d, m, md = scales[..., 0:4], scales[..., 4:8], scales[..., 8:12]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc.astype(np.float32), mn.astype(np.float32)


def unpack(type_name: str, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of `type_name` blocks (uint8, shape (rows, row bytes)) → (q, scales, biases):
    q uint8 (rows, cols) and float32 scales and biases (rows, cols / 32), such that
    weight = scales * q + biases per group of 32 — exactly ggml's value."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, BLOCK_BYTES[type_name])
    if type_name == "Q4_0":
        d = _f16(blocks, 0)
        return _nibbles(blocks[..., 2:18]).reshape(rows, -1), d[..., 0], -8 * d[..., 0]
    if type_name == "Q4_1":
        return _nibbles(blocks[..., 4:20]).reshape(rows, -1), _f16(blocks, 0)[..., 0], _f16(blocks, 2)[..., 0]
    if type_name in ("Q5_0", "Q5_1"):
        start = 2 if type_name == "Q5_0" else 4
        q = _nibbles(blocks[..., start + 4 : start + 20]) | (_high_bits(blocks[..., start : start + 4]) << 4)
        d = _f16(blocks, 0)[..., 0]
        bias = -16 * d if type_name == "Q5_0" else _f16(blocks, 2)[..., 0]
        return q.reshape(rows, -1), d, bias
    if type_name == "Q8_0":
        d = _f16(blocks, 0)[..., 0]
        return (blocks[..., 2:34] ^ 0x80).reshape(rows, -1), d, -128 * d
    if type_name in ("Q4_K", "Q5_K"):
        d, dmin = _f16(blocks, 0), _f16(blocks, 2)
        sc, mn = _k_scales(blocks[..., 4:16])
        if type_name == "Q4_K":
            qs = blocks[..., 16:144].reshape(rows, -1, 4, 1, 32)
            q = (qs >> np.array([0, 4], np.uint8).reshape(2, 1)) & 0x0F  # (.., 4, 2, 32): sub-block 2c+s
        else:
            qs = blocks[..., 48:176].reshape(rows, -1, 4, 1, 32)
            low = (qs >> np.array([0, 4], np.uint8).reshape(2, 1)) & 0x0F
            qh = blocks[..., 16:48].reshape(rows, -1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(8, 1)
            q = low.reshape(rows, -1, 8, 32) | ((qh & 1) << 4)
        return q.reshape(rows, -1), (d * sc).reshape(rows, -1), (-(dmin * mn)).reshape(rows, -1)
    raise ValueError(f"{type_name} has no MLX affine equivalent")


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """uint8 values < 2**bits, shape (rows, cols) → MLX's packing: a little-endian bit
    stream in uint32 words, shape (rows, cols * bits / 32)."""
    rows, cols = q.shape
    if bits == 8:
        stream = q
    elif bits == 4:
        stream = q[:, 0::2] | (q[:, 1::2] << 4)
    else:  # 8 values are `bits` whole bytes: assemble them in a uint64, keep its low bytes
        groups = q.reshape(-1, 8)
        acc = np.zeros(groups.shape[0], dtype="<u8")
        for i in range(8):
            acc |= groups[:, i].astype("<u8") << np.uint64(i * bits)
        stream = acc.view(np.uint8).reshape(-1, 8)[:, :bits]
    return np.ascontiguousarray(stream, dtype=np.uint8).reshape(rows, -1).view("<u4")


def _dequantize_q2_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    scales, qs = blocks[:, 0:16], blocks[:, 16:80]
    d, dmin = _f16(blocks, 80), _f16(blocks, 82)
    dl = (d * (scales & 0x0F).astype(np.float32)).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).astype(np.float32)).reshape(n, 16, 1)
    q = (qs.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3
    return (dl * q.reshape(n, 16, 16).astype(np.float32) - ml).reshape(n, 256)


def _dequantize_q3_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    hmask, qs, scales = blocks[:, 0:32], blocks[:, 32:96], blocks[:, 96:108]
    d = _f16(blocks, 108)
    low = (scales[:, 0:8].reshape(n, 1, 8) >> np.array([0, 4], np.uint8).reshape(1, 2, 1)).reshape(n, 16)
    high = (scales[:, 8:12].reshape(n, 1, 4) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1)).reshape(n, 16)
    sc = ((low & 0x0F) | ((high & 0x03) << 4)).astype(np.int8) - np.int8(32)
    dl = (d * sc.astype(np.float32)).reshape(n, 16, 1)
    ql = (qs.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)).reshape(n, 16, 16) & 3
    qh = (hmask.reshape(n, 1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)).reshape(n, 16, 16) & 1
    q = ql.astype(np.int8) - ((qh ^ 1) << 2).astype(np.int8)  # the high bit *clear* means -4
    return (dl * q.astype(np.float32)).reshape(n, 256)


def _dequantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    ql, qh = blocks[:, 0:128], blocks[:, 128:192]
    sc = np.ascontiguousarray(blocks[:, 192:208]).view(np.int8).astype(np.float32)
    dl = (_f16(blocks, 208) * sc).reshape(n, 16, 1)
    low = (ql.reshape(n, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0x0F
    high = (qh.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 0x03
    q = (low.reshape(n, 8, 32) | (high.reshape(n, 8, 32) << 4)).astype(np.int8) - np.int8(32)
    return (dl * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, 256)


def dequantize(type_name: str, raw: np.ndarray) -> np.ndarray:
    """Rows of any supported type (as GGUFFile.data gives them) → float32 (rows, cols)."""
    if type_name == "F32":
        return raw.astype(np.float32)
    if type_name == "F16":
        return raw.astype(np.float32)
    if type_name == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    rows = raw.shape[0]
    if type_name in KEPT_QUANTIZED:
        q, scales, biases = unpack(type_name, raw)
        groups = q.reshape(rows, -1, GROUP_SIZE).astype(np.float32)
        return (scales[..., None] * groups + biases[..., None]).reshape(rows, -1)
    blocks = raw.reshape(-1, BLOCK_BYTES[type_name])
    function = {"Q2_K": _dequantize_q2_k, "Q3_K": _dequantize_q3_k, "Q6_K": _dequantize_q6_k}[type_name]
    return function(blocks).reshape(rows, -1)


def to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns (uint16), rounding to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits.astype(np.uint64) + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, ((bits >> 16) | 0x40).astype(np.uint16), rounded)
