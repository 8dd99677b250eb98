"""The shared conformance vectors (proto/conformance/vectors.json, written by the Rust
proto tests): every message decodes to its JSON form and re-encodes to its bytes, every
varint boundary holds, and every invalid body is refused."""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Set, TypeVar

import pytest

from mlxd import _codec, protocol
from mlxd.errors import DecodeError, EncodeError

from harness import VECTORS

DATA: Dict[str, Any] = json.loads(VECTORS.read_text())
TYPES = {"client": protocol.ClientMessage, "server": protocol.ServerMessage}
DECODE = {"client": protocol.decode_client, "server": protocol.decode_server}
INTS = {"u64": _codec.u64, "u32": _codec.u32, "i64": _codec.i64}


F = TypeVar("F", bound=Callable[..., None])


def by_name(items: List[Dict[str, Any]]) -> Callable[[F], F]:
    mark: Callable[[F], F] = pytest.mark.parametrize("vector", items, ids=[item["name"] for item in items])
    return mark


def test_the_vectors_are_for_this_protocol_version() -> None:
    assert DATA["protocol_version"] == protocol.PROTOCOL_VERSION


@by_name(DATA["messages"])
def test_message_decodes_to_its_json_and_reencodes_to_its_bytes(vector: Dict[str, Any]) -> None:
    body = bytes.fromhex(vector["body"])
    message = DECODE[vector["direction"]](body)
    assert _codec.to_json(message) == vector["message"]
    assert _codec.encode(message, TYPES[vector["direction"]]) == body
    # Built from the JSON form alone, it encodes to the same bytes.
    built = _codec.from_json(vector["message"], TYPES[vector["direction"]])
    assert built == message
    assert _codec.encode(built, TYPES[vector["direction"]]) == body


@pytest.mark.parametrize("vector", DATA["varints"], ids=[f"{v['type']}={v['value']}" for v in DATA["varints"]])
def test_varint(vector: Dict[str, Any]) -> None:
    kind = INTS[vector["type"]]
    body = bytes.fromhex(vector["body"])
    assert _codec.decode(body, kind) == int(vector["value"])
    assert _codec.encode(int(vector["value"]), kind) == body


@by_name(DATA["invalid"])
def test_invalid_body_is_refused(vector: Dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        DECODE[vector["direction"]](bytes.fromhex(vector["body"]))


def test_every_message_type_has_a_vector() -> None:
    # A variant added to the protocol without a vector would go unchecked here.
    seen: Set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            seen.update(value)
            for inner in value.values():
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)
        elif isinstance(value, str):
            seen.add(value)

    for vector in DATA["messages"]:
        walk(vector["message"])
    for enum_name in (
        "ClientMessage",
        "Request",
        "ServerMessage",
        "Response",
        "Event",
        "ModelRef",
        "PromptInput",
        "Constraint",
        "ToolChoice",
    ):
        for cls in _codec._ENUMS[enum_name]:
            assert cls.NAME in seen, f"{enum_name}::{cls.NAME} has no vector"
    for code in protocol.ErrorCode:
        assert code.name in seen
    for reason in protocol.FinishReason:
        assert reason.name in seen, f"FinishReason::{reason.name} has no vector"


@pytest.mark.parametrize(
    "kind, body",
    [
        (_codec.u32, "fd0000000001000000"),  # a u64 marker in a u32 field
        (_codec.u16, "fc00000100"),  # a u32 marker in a u16 field
        (_codec.u64, "fb"),  # truncated
    ],
)
def test_markers_wider_than_the_field_or_truncated_are_refused(kind: Any, body: str) -> None:
    with pytest.raises(DecodeError):
        _codec.decode(bytes.fromhex(body), kind)


def test_a_sequence_longer_than_its_body_is_refused_before_anything_is_built() -> None:
    # Detokenize (lease 2) claiming 2^62 tokens in a 14-byte body.
    body = bytes.fromhex("010d080102fd0000000000000040")
    with pytest.raises(DecodeError, match="declares"):
        protocol.decode_client(body)


def test_values_out_of_range_are_refused_when_encoding() -> None:
    with pytest.raises(EncodeError):
        protocol.encode_client(protocol.Credit(id=1, events=1 << 32))
    with pytest.raises(EncodeError):
        protocol.encode_client(protocol.Cancel(id=-1))
    with pytest.raises(EncodeError):
        params = protocol.GenerateParams(temperature=1e39)
        request = protocol.GenerateRequest(protocol.ByName("m"), protocol.Raw("x"), params, 1)
        protocol.encode_client(protocol.Request(1, request))


def test_frame_length_is_checked_before_the_body() -> None:
    assert _codec.body_length(b"\x00\x01\x00\x00", _codec.HANDSHAKE_MAX_FRAME_LEN) == 65536
    with pytest.raises(_codec.FrameTooLargeError):
        _codec.body_length(b"\x00\x01\x00\x01", _codec.HANDSHAKE_MAX_FRAME_LEN)
