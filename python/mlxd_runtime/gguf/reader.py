"""Reads a GGUF file's header (metadata and tensor table) and maps its tensor data.

Everything here is checked against the file's size, so a corrupt or truncated file is
refused with `UnsupportedModel` naming what is wrong, never read past its end.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np


class UnsupportedModel(ValueError):
    """The GGUF file uses an architecture, tensor type or tokenizer this importer does not
    handle, or is not a readable GGUF file."""


# GGML type id → (name, elements per block, bytes per block); the sizes are ggml's
# (GGML_QUANT_SIZES in the gguf package), so the tensor table can be checked against the file.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_id: int
    shape: tuple[int, ...]  # numpy order: rows first (GGUF lists ne[0], the row length, first)
    offset: int  # from the start of the data section

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.type_id][0] if self.type_id in GGML_TYPES else f"type {self.type_id}"

    @property
    def nbytes(self) -> int:
        _, block_elems, block_bytes = GGML_TYPES[self.type_id]
        count = 1
        for dim in self.shape:
            count *= dim
        return count // block_elems * block_bytes


class GGUFFile:
    """A GGUF file's metadata (`metadata`: key → int/float/bool/str, or list for arrays)
    and tensor table (`tensors`: name → TensorInfo, in file order); `data(info)` maps one
    tensor's bytes. Use as a context manager, or call close()."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._file = open(path, "rb")
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size < 4 or self._file.read(4) != b"GGUF":
                raise UnsupportedModel(f"{self.path} is not a GGUF file")
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except BaseException:
            self._file.close()
            raise
        try:
            self._parse()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if getattr(self, "_map", None) is not None:
            try:
                self._map.close()
            except BufferError:  # an array from data() is still alive; the map goes with it
                pass
            self._map = None
        self._file.close()

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- header ------------------------------------------------------------------------
    def _take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self._pos + size > len(self._map):
            raise UnsupportedModel(f"{self.path}: truncated GGUF header")
        values = struct.unpack_from(fmt, self._map, self._pos)
        self._pos += size
        return values

    def _string(self, what: str, errors: str = "strict") -> str:
        (length,) = self._take("<Q")
        if length > 1 << 24:
            raise UnsupportedModel(f"{self.path}: {what} of {length} bytes; the GGUF header is corrupt")
        if self._pos + length > len(self._map):
            raise UnsupportedModel(f"{self.path}: truncated GGUF header")
        raw = self._map[self._pos : self._pos + length]
        self._pos += length
        try:
            return raw.decode("utf-8", errors=errors)
        except UnicodeDecodeError:
            raise UnsupportedModel(f"{self.path}: {what} is not UTF-8; the GGUF header is corrupt") from None

    def _value(self, kind: int, key: str):
        if kind == 8:
            return self._string(f"the value of {key!r}", errors="replace")
        if kind in _SCALARS:
            return self._take(_SCALARS[kind])[0]
        if kind == 9:
            item_kind, count = self._take("<IQ")
            if count > len(self._map):
                raise UnsupportedModel(f"{self.path}: {key!r} claims {count} items; the GGUF header is corrupt")
            if item_kind in _NUMPY:
                dtype = np.dtype(_NUMPY[item_kind])
                end = self._pos + dtype.itemsize * count
                if end > len(self._map):
                    raise UnsupportedModel(f"{self.path}: truncated GGUF header (in {key!r})")
                values = np.frombuffer(self._map, dtype=dtype, count=count, offset=self._pos).copy()
                self._pos = end
                return values.tolist()
            if item_kind == 8:
                return [self._string(f"an item of {key!r}", errors="replace") for _ in range(count)]
            if item_kind == 9:
                return [self._value(9, key) for _ in range(count)]
            raise UnsupportedModel(f"{self.path}: unknown GGUF metadata type {item_kind} (in {key!r})")
        raise UnsupportedModel(f"{self.path}: unknown GGUF metadata type {kind} (in {key!r})")

    def _parse(self) -> None:
        self._pos = 4
        (self.version,) = self._take("<I")
        if self.version not in (2, 3):
            raise UnsupportedModel(f"{self.path}: GGUF version {self.version} is not supported (supported: 2, 3)")
        n_tensors, n_kv = self._take("<QQ")
        if n_tensors > 1 << 20 or n_kv > 1 << 20:
            raise UnsupportedModel(f"{self.path}: GGUF header claims {n_tensors} tensors and {n_kv} keys; it is corrupt")
        self.metadata: dict = {}
        for _ in range(n_kv):
            key = self._string("a metadata key")
            (kind,) = self._take("<I")
            self.metadata[key] = self._value(kind, key)
        alignment = self.metadata.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise UnsupportedModel(f"{self.path}: general.alignment {alignment!r} is not a power of two")
        self.tensors: dict[str, TensorInfo] = {}
        for _ in range(n_tensors):
            name = self._string("a tensor name")
            (n_dims,) = self._take("<I")
            if n_dims > 8:
                raise UnsupportedModel(f"{self.path}: tensor {name!r} claims {n_dims} dimensions; the header is corrupt")
            dims = self._take(f"<{n_dims}Q")
            type_id, offset = self._take("<IQ")
            if name in self.tensors:
                raise UnsupportedModel(f"{self.path}: tensor {name!r} is listed twice")
            self.tensors[name] = TensorInfo(name, type_id, tuple(reversed(dims)), offset)
        self.data_start = (self._pos + alignment - 1) // alignment * alignment
        ranges = []
        for info in self.tensors.values():
            if info.type_id not in GGML_TYPES:
                continue  # refused by name later; its size is unknown
            _, block_elems, _ = GGML_TYPES[info.type_id]
            if info.shape and info.shape[-1] % block_elems:
                raise UnsupportedModel(
                    f"{self.path}: tensor {info.name!r} has rows of {info.shape[-1]} elements, "
                    f"not a multiple of {info.type_name}'s block of {block_elems}"
                )
            ranges.append((info.offset, info.offset + info.nbytes, info.name))
        ranges.sort()
        for index, (begin, end, name) in enumerate(ranges):
            if self.data_start + end > len(self._map):
                raise UnsupportedModel(
                    f"{self.path}: tensor {name!r} (bytes {begin}..{end} of the data) runs past the end of the file"
                )
            if index and begin < ranges[index - 1][1]:
                raise UnsupportedModel(f"{self.path}: tensors {ranges[index - 1][2]!r} and {name!r} overlap")

    # -- data --------------------------------------------------------------------------
    def data(self, info: TensorInfo) -> np.ndarray:
        """The tensor's bytes as a read-only array without copying: float types in their
        dtype and shape, block types as uint8 rows of (row bytes)."""
        name, block_elems, block_bytes = GGML_TYPES[info.type_id]
        rows = 1
        for dim in info.shape[:-1]:
            rows *= dim
        cols = info.shape[-1] if info.shape else 1
        start = self.data_start + info.offset
        if name in ("F32", "F16", "BF16"):
            dtype = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}[name]
            array = np.frombuffer(self._map, dtype=dtype, count=rows * cols, offset=start)
            return array.reshape(rows, cols)
        array = np.frombuffer(self._map, dtype=np.uint8, count=info.nbytes, offset=start)
        return array.reshape(rows, cols // block_elems * block_bytes)
