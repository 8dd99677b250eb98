"""A raw GGUF v3 writer for malformed or unusual files (any type id, chosen offsets, wrong
version), which the gguf package's GGUFWriter will not write. Well-formed test models are
written with GGUFWriter (gguf_models.py)."""

from __future__ import annotations

import struct

# bytes and elements per block of the type ids used here
BLOCK = {0: (4, 1), 1: (2, 1), 2: (18, 32), 6: (22, 32), 16: (66, 256), 20: (18, 32), 23: (136, 256), 99: (1, 1)}


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack("<Q", len(data)) + data


def write_gguf(
    path,
    metadata: dict[str, object],
    tensors: list[tuple[str, list[int], int]],
    offsets: list[int] | None = None,
    version: int = 3,
) -> None:
    """Writes `tensors` (name, numpy-order shape, GGML type id) filled with zero bytes, at
    `offsets` (default: one after the other), plus string/uint32 metadata."""
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
    for index, (name, shape, ggml_type) in enumerate(tensors):
        count = 1
        for dim in shape:
            count *= dim
        block_bytes, block_elems = BLOCK[ggml_type]
        size = count // block_elems * block_bytes
        at = offsets[index] if offsets else offset
        infos += _string(name) + struct.pack("<I", len(shape))
        infos += b"".join(struct.pack("<Q", d) for d in reversed(shape))  # GGUF lists ne[0] first
        infos += struct.pack("<IQ", ggml_type, at)
        blobs.append(bytes(size))
        offset += (size + 31) // 32 * 32
    header = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata)) + kv + infos
    header += bytes((32 - len(header) % 32) % 32)
    data = b"".join(blob + bytes((32 - len(blob) % 32) % 32) for blob in blobs)
    with open(path, "wb") as handle:
        handle.write(header + data)
