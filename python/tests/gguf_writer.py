"""A minimal GGUF v3 writer, so tests can make small files with chosen tensor types."""

from __future__ import annotations

import struct

GGUF_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 8, "Q2_K": 10, "Q4_K": 12}
# bytes per block and elements per block, for the data sizes
_BLOCK = {0: (4, 1), 1: (2, 1), 2: (18, 32), 3: (20, 32), 8: (34, 32), 10: (84, 256), 12: (144, 256)}


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack("<Q", len(data)) + data


def write_gguf(path, metadata: dict[str, object], tensors: list[tuple[str, list[int], str]]) -> None:
    """Writes `tensors` (name, shape, type name) filled with zero bytes, plus string/uint32
    metadata."""
    kv = b""
    for key, value in metadata.items():
        kv += _string(key)
        if isinstance(value, str):
            kv += struct.pack("<I", 8) + _string(value)
        else:
            kv += struct.pack("<I", 4) + struct.pack("<I", int(value))
    infos = b""
    blobs = []
    offset = 0
    for name, shape, type_name in tensors:
        ggml_type = GGUF_TYPES[type_name]
        count = 1
        for dim in shape:
            count *= dim
        block_bytes, block_elems = _BLOCK[ggml_type]
        size = count // block_elems * block_bytes
        infos += _string(name) + struct.pack("<I", len(shape))
        infos += b"".join(struct.pack("<Q", d) for d in reversed(shape))  # GGUF lists ne[0] first
        infos += struct.pack("<IQ", ggml_type, offset)
        blobs.append(bytes(size))
        offset += (size + 31) // 32 * 32
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)) + kv + infos
    header += bytes((32 - len(header) % 32) % 32)
    data = b"".join(blob + bytes((32 - len(blob) % 32) % 32) for blob in blobs)
    with open(path, "wb") as handle:
        handle.write(header + data)
