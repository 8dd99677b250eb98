"""The body encoding (bincode 2, "standard" configuration) and the framing, by hand.

Every wire type in :mod:`mlxd.protocol` is a dataclass (a struct, or one variant of an
enum with data), an :class:`enum.IntEnum` (an enum whose variants carry nothing), or a
type built from these with the annotations below (``u32``, ``Optional[...]``,
``list[...]``). This module reads those annotations once per type and builds an encoder
and a decoder for it, so the message definitions are the only schema.

Decoding is strict, like the Rust decoder: varints must be minimal, markers 254 and 255
are refused, a field's marker may not be wider than its type, strings must be UTF-8,
bools and Option tags must be 0 or 1, and a body must hold exactly one message. A
sequence's declared length is checked against the bytes left before anything is built.
"""

from __future__ import annotations

import array
import dataclasses
import enum
import struct
import sys
import typing
from typing import Any, Callable, ClassVar, Dict, List, Sequence, Tuple, Type, Union

from ._exc import ProtocolError

# -- Framing ------------------------------------------------------------------------------

#: Bytes in the length prefix (a u32, big-endian).
PREFIX_LEN = 4
#: Largest body either side accepts before the handshake has finished.
HANDSHAKE_MAX_FRAME_LEN = 64 * 1024
#: The default largest body after the handshake (16 MiB).
DEFAULT_MAX_FRAME_LEN = 16 * 1024 * 1024
#: The ceiling of any negotiated maximum (64 MiB).
ABSOLUTE_MAX_FRAME_LEN = 64 * 1024 * 1024


class DecodeError(ProtocolError):
    """A frame body that is not exactly one valid message."""


class EncodeError(ProtocolError, ValueError):
    """A value that cannot be written as the wire type its field declares."""


class FrameTooLargeError(ProtocolError):
    """A frame longer than the receiver's maximum (checked before the body is read)."""


def frame(body: bytes) -> bytes:
    """The body with its length prefix."""
    return struct.pack(">I", len(body)) + body


def body_length(prefix: bytes, max_len: int) -> int:
    """The body length a 4-byte prefix declares, refused when over ``max_len``."""
    (length,) = struct.unpack(">I", prefix)
    if length > max_len:
        raise FrameTooLargeError(f"frame of {length} bytes exceeds the maximum of {max_len} bytes")
    return int(length)


# -- Wire scalar types, used in annotations ------------------------------------------------


class Int:
    """An integer wire type: its width and whether it is zigzag-encoded."""

    def __init__(self, name: str, bits: int, signed: bool = False) -> None:
        self.name, self.bits, self.signed = name, bits, signed
        self.low = -(1 << (bits - 1)) if signed else 0
        self.high = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1

    def __repr__(self) -> str:
        return self.name


class F32:
    """A 4-byte IEEE-754 float, little-endian."""

    def __repr__(self) -> str:
        return "f32"


class F32s:
    """``Vec<f32>``: a varint count, then the floats packed (read into an ``array("f")``)."""

    def __repr__(self) -> str:
        return "Vec<f32>"


U8 = Int("u8", 8)
U16 = Int("u16", 16)
U32 = Int("u32", 32)
U64 = Int("u64", 64)
I64 = Int("i64", 64, signed=True)
F32_TYPE = F32()

u8 = typing.Annotated[int, U8]
u16 = typing.Annotated[int, U16]
u32 = typing.Annotated[int, U32]
u64 = typing.Annotated[int, U64]
i64 = typing.Annotated[int, I64]
f32 = typing.Annotated[float, F32_TYPE]
f32s = typing.Annotated[Sequence[float], F32s()]


# -- Enums with data -----------------------------------------------------------------------


class Variant:
    """Base of every class that is one variant of an enum with data.

    ``ENUM`` names the enum, ``TAG`` is the variant index (its wire tag) and ``NAME`` the
    variant's name in the Rust types (and in the JSON of the conformance vectors). A
    variant with ``NEWTYPE`` set wraps one value that is not a struct (``Tokens(Vec<u32>)``)
    and has exactly one field; otherwise its fields are the variant's fields (a struct
    variant, or a newtype of a struct: both are the struct's fields on the wire).
    """

    ENUM: ClassVar[str] = ""
    TAG: ClassVar[int] = -1
    NAME: ClassVar[str] = ""
    NEWTYPE: ClassVar[bool] = False


_ENUMS: Dict[str, List[Type[Variant]]] = {}


def variants(enum_name: str, *classes: Tuple[str, type]) -> None:
    """Registers the variants of ``enum_name`` in wire order, as (Rust name, class)."""
    table: List[Type[Variant]] = []
    for tag, (name, cls) in enumerate(classes):
        if not (isinstance(cls, type) and issubclass(cls, Variant)):
            raise TypeError(f"{cls!r} is not a Variant")
        if cls.ENUM:
            raise TypeError(f"{cls.__name__} is already a variant of {cls.ENUM}")
        cls.ENUM, cls.TAG, cls.NAME = enum_name, tag, name
        table.append(cls)
    _ENUMS[enum_name] = table


# -- Reading -------------------------------------------------------------------------------

_MARKER_U16, _MARKER_U32, _MARKER_U64 = 251, 252, 253
_LITTLE_ENDIAN = sys.byteorder == "little"
_F32_ARRAYS = array.array("f").itemsize == 4


class Reader:
    """A cursor over one frame body."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, count: int) -> bytes:
        if count > len(self.data) - self.pos:
            raise DecodeError(f"body ends {count - self.left()} bytes early")
        start = self.pos
        self.pos += count
        return self.data[start : self.pos]

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise DecodeError("body ends early")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def varint(self, bits: int) -> int:
        """An unsigned varint of a ``bits``-wide type, refusing wider or non-minimal forms."""
        marker = self.byte()
        if marker < _MARKER_U16:
            return marker
        if marker == _MARKER_U16:
            width, smallest = 16, _MARKER_U16
        elif marker == _MARKER_U32:
            width, smallest = 32, 1 << 16
        elif marker == _MARKER_U64:
            width, smallest = 64, 1 << 32
        else:
            raise DecodeError(f"invalid varint marker {marker} (254 and 255 are never valid)")
        if width > bits:
            raise DecodeError(f"varint marker {marker} ({width}-bit) in a {bits}-bit field")
        value = int.from_bytes(self.take(width // 8), "little")
        if value < smallest:
            raise DecodeError(f"{value} is not minimally encoded (varints must be minimal)")
        return value

    def length(self, element_size: int = 1) -> int:
        """A sequence length, checked against the bytes left (every element takes some)."""
        count = self.varint(64)
        if count * element_size > self.left():
            raise DecodeError(f"a sequence declares {count} elements; only {self.left()} bytes follow")
        return count


class Writer:
    """Collects one frame body."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: List[bytes] = []

    def varint(self, value: int) -> None:
        if value < _MARKER_U16:
            self.parts.append(bytes((value,)))
        elif value < 1 << 16:
            self.parts.append(b"\xfb" + value.to_bytes(2, "little"))
        elif value < 1 << 32:
            self.parts.append(b"\xfc" + value.to_bytes(4, "little"))
        else:
            self.parts.append(b"\xfd" + value.to_bytes(8, "little"))

    def raw(self, data: bytes) -> None:
        self.parts.append(data)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


def zigzag(value: int) -> int:
    return (value << 1) ^ (value >> 63)


def unzigzag(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


# -- Encoders and decoders built from annotations -------------------------------------------

Encoder = Callable[[Writer, Any], None]
Decoder = Callable[[Reader], Any]

_encoders: Dict[Any, Encoder] = {}
_decoders: Dict[Any, Decoder] = {}


def _hints(cls: type) -> Dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def fields_of(cls: type) -> List[Tuple[str, Any]]:
    """A dataclass's fields and their annotations, in declaration (= wire) order."""
    hints = _hints(cls)
    return [(field.name, hints[field.name]) for field in dataclasses.fields(cls)]


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) is Union


def _union_args(tp: Any) -> Tuple[bool, Tuple[Any, ...]]:
    """(optional, the other members) of a Union annotation."""
    args = typing.get_args(tp)
    others = tuple(arg for arg in args if arg is not type(None))
    return len(others) != len(args), others


def _enum_table(members: Tuple[Any, ...]) -> List[Type[Variant]]:
    first = members[0]
    if not (isinstance(first, type) and issubclass(first, Variant) and first.ENUM):
        raise TypeError(f"{members!r} is not an enum with data")
    table = _ENUMS[first.ENUM]
    if set(members) != set(table):
        raise TypeError(f"a Union naming some variants of {first.ENUM} but not all: {members!r}")
    return table


def encoder(tp: Any) -> Encoder:
    """The encoder of annotation ``tp`` (built once, then cached)."""
    found = _encoders.get(tp)
    if found is None:
        found = _build_encoder(tp)
        _encoders[tp] = found
    return found


def decoder(tp: Any) -> Decoder:
    """The decoder of annotation ``tp`` (built once, then cached)."""
    found = _decoders.get(tp)
    if found is None:
        found = _build_decoder(tp)
        _decoders[tp] = found
    return found


def _check_int(kind: Int, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EncodeError(f"{kind.name} field holds {value!r}, not an int")
    if not kind.low <= value <= kind.high:
        raise EncodeError(f"{value} is out of range for {kind.name}")
    return int(value)


def _build_encoder(tp: Any) -> Encoder:
    if typing.get_origin(tp) is typing.Annotated:
        base, meta = typing.get_args(tp)[0], typing.get_args(tp)[1]
        if isinstance(meta, Int):
            kind = meta
            if kind.bits == 8:
                return lambda w, v: w.raw(bytes((_check_int(kind, v),)))
            if kind.signed:
                return lambda w, v: w.varint(zigzag(_check_int(kind, v)))
            return lambda w, v: w.varint(_check_int(kind, v))
        if isinstance(meta, F32):

            def write_f32(w: Writer, v: Any) -> None:
                try:
                    w.raw(struct.pack("<f", v))
                except (OverflowError, struct.error) as err:
                    raise EncodeError(f"{v!r} is not an f32: {err}") from None

            return write_f32
        if isinstance(meta, F32s):
            return _write_f32s
        raise TypeError(f"unknown wire annotation {meta!r} on {base!r}")
    if tp is bool:

        def write_bool(w: Writer, v: Any) -> None:
            if not isinstance(v, bool):
                raise EncodeError(f"bool field holds {v!r}")
            w.raw(b"\x01" if v else b"\x00")

        return write_bool
    if tp is str:

        def write_str(w: Writer, v: Any) -> None:
            if not isinstance(v, str):
                raise EncodeError(f"string field holds {v!r}")
            try:
                data = v.encode("utf-8")
            except UnicodeEncodeError as err:  # lone surrogates
                raise EncodeError(f"string is not valid Unicode: {err}") from None
            w.varint(len(data))
            w.raw(data)

        return write_str
    if tp is bytes:

        def write_bytes(w: Writer, v: Any) -> None:
            if not isinstance(v, (bytes, bytearray, memoryview)):
                raise EncodeError(f"bytes field holds {v!r}")
            data = bytes(v)
            w.varint(len(data))
            w.raw(data)

        return write_bytes
    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        members = tp

        def write_unit_enum(w: Writer, v: Any) -> None:
            try:
                w.varint(members(v).value)
            except ValueError:
                raise EncodeError(f"{v!r} is not a {members.__name__}") from None

        return write_unit_enum
    origin = typing.get_origin(tp)
    if origin in (list, List):
        (item_type,) = typing.get_args(tp)
        item = encoder(item_type)

        def write_list(w: Writer, v: Any) -> None:
            w.varint(len(v))
            for element in v:
                item(w, element)

        return write_list
    if _is_union(tp):
        optional, members_ = _union_args(tp)
        if optional:
            inner = encoder(members_[0] if len(members_) == 1 else Union[members_])

            def write_option(w: Writer, v: Any) -> None:
                if v is None:
                    w.raw(b"\x00")
                else:
                    w.raw(b"\x01")
                    inner(w, v)

            return write_option
        table = _enum_table(members_)

        def write_variant(w: Writer, v: Any) -> None:
            if type(v) not in table:
                raise EncodeError(f"{type(v).__name__} is not a variant of {table[0].ENUM}")
            w.varint(v.TAG)
            struct_encoder(type(v))(w, v)

        return write_variant
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return struct_encoder(tp)
    raise TypeError(f"no wire encoding for {tp!r}")


def _write_f32s(w: Writer, v: Any) -> None:
    w.varint(len(v))
    if isinstance(v, array.array) and v.typecode == "f" and _F32_ARRAYS and _LITTLE_ENDIAN:
        w.raw(v.tobytes())
        return
    try:
        w.raw(struct.pack(f"<{len(v)}f", *v))
    except (OverflowError, struct.error) as err:
        raise EncodeError(f"not a sequence of f32: {err}") from None


_struct_encoders: Dict[type, Encoder] = {}


def struct_encoder(cls: type) -> Encoder:
    """Writes a dataclass's fields (a newtype variant: its one value)."""
    found = _struct_encoders.get(cls)
    if found is not None:
        return found
    fields = [(name, encoder(tp)) for name, tp in fields_of(cls)]

    def write_struct(w: Writer, v: Any) -> None:
        for name, write in fields:
            write(w, getattr(v, name))

    _struct_encoders[cls] = write_struct
    return write_struct


def _build_decoder(tp: Any) -> Decoder:
    if typing.get_origin(tp) is typing.Annotated:
        meta = typing.get_args(tp)[1]
        if isinstance(meta, Int):
            kind = meta
            if kind.bits == 8:
                return lambda r: r.byte()
            if kind.signed:
                return lambda r: unzigzag(r.varint(kind.bits))
            return lambda r: r.varint(kind.bits)
        if isinstance(meta, F32):
            return lambda r: struct.unpack("<f", r.take(4))[0]
        if isinstance(meta, F32s):
            return _read_f32s
        raise TypeError(f"unknown wire annotation {meta!r}")
    if tp is bool:

        def read_bool(r: Reader) -> bool:
            value = r.byte()
            if value > 1:
                raise DecodeError(f"a bool is 0 or 1, not {value}")
            return value == 1

        return read_bool
    if tp is str:

        def read_str(r: Reader) -> str:
            data = r.take(r.length())
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DecodeError(f"a string is not valid UTF-8: {err}") from None

        return read_str
    if tp is bytes:
        return lambda r: bytes(r.take(r.length()))
    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        members = tp
        count = len(members)

        def read_unit_enum(r: Reader) -> Any:
            tag = r.varint(32)
            if tag >= count:
                raise DecodeError(f"{members.__name__} has {count} variants; tag {tag} is unknown")
            return members(tag)

        return read_unit_enum
    origin = typing.get_origin(tp)
    if origin in (list, List):
        (item_type,) = typing.get_args(tp)
        item = decoder(item_type)

        def read_list(r: Reader) -> List[Any]:
            return [item(r) for _ in range(r.length())]

        return read_list
    if _is_union(tp):
        optional, members_ = _union_args(tp)
        if optional:
            inner = decoder(members_[0] if len(members_) == 1 else Union[members_])

            def read_option(r: Reader) -> Any:
                tag = r.byte()
                if tag == 0:
                    return None
                if tag == 1:
                    return inner(r)
                raise DecodeError(f"an Option tag is 0 or 1, not {tag}")

            return read_option
        table = _enum_table(members_)
        name = table[0].ENUM

        def read_variant(r: Reader) -> Any:
            tag = r.varint(32)
            if tag >= len(table):
                raise DecodeError(f"{name} has {len(table)} variants; tag {tag} is unknown")
            return struct_decoder(table[tag])(r)

        return read_variant
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return struct_decoder(tp)
    raise TypeError(f"no wire decoding for {tp!r}")


def _read_f32s(r: Reader) -> "array.array[float]":
    count = r.length(4)
    data = r.take(count * 4)
    if _F32_ARRAYS:
        values = array.array("f")
        values.frombytes(data)
        if not _LITTLE_ENDIAN:
            values.byteswap()
        return values
    return array.array("d", struct.unpack(f"<{count}f", data))


_struct_decoders: Dict[type, Decoder] = {}


def struct_decoder(cls: type) -> Decoder:
    """Reads a dataclass's fields and builds it."""
    found = _struct_decoders.get(cls)
    if found is not None:
        return found
    fields = [decoder(tp) for _, tp in fields_of(cls)]

    def read_struct(r: Reader) -> Any:
        return cls(*[read(r) for read in fields])

    _struct_decoders[cls] = read_struct
    return read_struct


def encode(value: Any, tp: Any) -> bytes:
    """One value as a body."""
    writer = Writer()
    encoder(tp)(writer, value)
    return writer.getvalue()


def decode(body: bytes, tp: Any) -> Any:
    """Exactly one value of annotation ``tp`` from ``body``; trailing bytes are an error."""
    reader = Reader(bytes(body))
    value = decoder(tp)(reader)
    if reader.left():
        raise DecodeError(f"body has {reader.left()} trailing bytes after the message")
    return value


# -- serde's JSON form (for the conformance vectors and for logs) ----------------------------


def to_json(value: Any) -> Any:
    """``value`` in serde's externally tagged JSON form, as the Rust types print it: a unit
    variant is its name, any other variant an object with one key, ``None`` is null, bytes
    are arrays of numbers, f32 values are the doubles they widen to."""
    if isinstance(value, enum.IntEnum):
        return value.name
    if isinstance(value, Variant):
        payload = _fields_json(value)
        if value.NEWTYPE:
            return {value.NAME: next(iter(payload.values()))}
        if not payload:
            return value.NAME
        return {value.NAME: payload}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _fields_json(value)
    if isinstance(value, (bytes, bytearray)):
        return list(value)
    if isinstance(value, (list, tuple, array.array)):
        return [to_json(item) for item in value]
    return value


def _fields_json(value: Any) -> Dict[str, Any]:
    return {field.name: to_json(getattr(value, field.name)) for field in dataclasses.fields(value)}


def from_json(data: Any, tp: Any) -> Any:
    """The inverse of :func:`to_json`, for annotation ``tp``."""
    if typing.get_origin(tp) is typing.Annotated:
        meta = typing.get_args(tp)[1]
        if isinstance(meta, F32):
            return float(data)
        if isinstance(meta, F32s):
            return array.array("f", data)
        return int(data)
    if tp in (bool, str):
        return data
    if tp is bytes:
        return bytes(data)
    if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
        return tp[data]
    origin = typing.get_origin(tp)
    if origin in (list, List):
        (item_type,) = typing.get_args(tp)
        return [from_json(item, item_type) for item in data]
    if _is_union(tp):
        optional, members = _union_args(tp)
        if optional:
            if data is None:
                return None
            return from_json(data, members[0] if len(members) == 1 else Union[members])
        table = _enum_table(members)
        if isinstance(data, str):
            name, payload = data, None
        else:
            ((name, payload),) = data.items()
        for cls in table:
            if cls.NAME == name:
                return _struct_from_json(cls, payload)
        raise ValueError(f"{name!r} is not a variant of {table[0].ENUM}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _struct_from_json(tp, data)
    raise TypeError(f"no JSON form for {tp!r}")


def _struct_from_json(cls: Any, data: Any) -> Any:
    fields = fields_of(cls)
    if issubclass(cls, Variant) and cls.NEWTYPE:
        ((_, tp),) = fields
        return cls(from_json(data, tp))
    if data is None:
        return cls()
    return cls(*[from_json(data[name], tp) for name, tp in fields])


__all__ = [
    "ABSOLUTE_MAX_FRAME_LEN",
    "DEFAULT_MAX_FRAME_LEN",
    "DecodeError",
    "EncodeError",
    "FrameTooLargeError",
    "HANDSHAKE_MAX_FRAME_LEN",
    "PREFIX_LEN",
    "Variant",
    "body_length",
    "decode",
    "encode",
    "f32",
    "f32s",
    "frame",
    "from_json",
    "i64",
    "to_json",
    "u8",
    "u16",
    "u32",
    "u64",
    "variants",
]
