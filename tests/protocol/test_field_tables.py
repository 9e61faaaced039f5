"""Field tables with every AMQP / RabbitMQ field type, via pamqp's codec."""

from __future__ import annotations

import datetime
import decimal
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands, decode, encode
from pamqp.common import FieldTable

from protocol.properties import decode_properties, encode_properties
from tests.protocol.client import feed, method, opened

TS = datetime.datetime(2024, 5, 1, 12, 30, 15, tzinfo=datetime.UTC)

# Everything pamqp can encode (its encoder picks the smallest integer type).
TABLE: FieldTable = {
    "bool_t": True,
    "bool_f": False,
    "int8": -5,  # b
    "int16": -3000,  # s
    "uint16": 60000,  # u
    "int32": -(2**31),  # I
    "uint32": 2**32 - 1,  # i
    "int64": -(2**63),  # l
    "float": 1.5,  # f (pamqp encodes Python floats as 32-bit)
    "decimal": decimal.Decimal("3.14"),  # D
    "longstr": "héllo",  # S
    "array": [1, "two", [3], {"four": 4}, None, True],  # A
    "timestamp": TS,  # T
    "table": {"nested": {"deeper": "yes"}},  # F
    "void": None,  # V
    "bytes": bytearray(b"\x00\xff\x01"),  # x
}


def test_table_roundtrip_every_encodable_type() -> None:
    raw = encode.field_table(TABLE)
    n, got = decode.field_table(raw)
    assert n == len(raw)
    assert got == TABLE


def _entry(key: str, kind: bytes, payload: bytes) -> bytes:
    return bytes([len(key)]) + key.encode() + kind + payload


@pytest.mark.parametrize(
    ("kind", "payload", "value"),
    [
        (b"t", b"\x01", True),
        (b"b", struct.pack(">b", -128), -128),
        (b"B", struct.pack(">B", 255), 255),
        (b"s", struct.pack(">h", -32768), -32768),
        (b"u", struct.pack(">H", 65535), 65535),
        (b"I", struct.pack(">i", -(2**31)), -(2**31)),
        (b"i", struct.pack(">I", 2**32 - 1), 2**32 - 1),
        (b"l", struct.pack(">q", -(2**63)), -(2**63)),
        (b"f", struct.pack(">f", 0.25), 0.25),
        (b"d", struct.pack(">d", 0.1), 0.1),  # doubles: decode only in pamqp
        (b"D", b"\x02" + struct.pack(">i", 314), decimal.Decimal("3.14")),
        (b"S", struct.pack(">I", 3) + b"abc", "abc"),
        (b"A", struct.pack(">I", 2) + b"b\x07", [7]),
        (b"T", struct.pack(">Q", int(TS.timestamp())), TS),
        (b"F", struct.pack(">I", 4) + _entry("k", b"t", b"\x00"), {"k": False}),
        (b"V", b"", None),
        (b"x", struct.pack(">I", 2) + b"\x00\x01", bytearray(b"\x00\x01")),
    ],
)
def test_decode_each_rabbitmq_type(kind: bytes, payload: bytes, value: object) -> None:
    entry = _entry("key", kind, payload)
    raw = struct.pack(">I", len(entry)) + entry
    n, got = decode.field_table(raw)
    assert n == len(raw)
    assert got == {"key": value}


def test_table_in_method_and_properties() -> None:
    conn = opened(1)
    [ev] = feed(conn, method(1, commands.Queue.Declare(queue="q", arguments=TABLE)))
    assert ev.method.arguments == TABLE
    props = encode_properties(headers=TABLE)
    assert decode_properties(props)["headers"] == TABLE


def test_truncated_table_is_frame_error() -> None:
    from tests.protocol.client import raw as raw_frame

    conn = opened(1)
    payload = b"\x00\x32\x00\x0a" + b"\x00\x00" + b"\x01q" + b"\x00" + b"\x00\x00\x00\x10abc"
    [err] = feed(conn, raw_frame(1, 1, payload))
    assert err.reply_code == 501


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=20)
    | st.datetimes(
        min_value=datetime.datetime(1971, 1, 1), max_value=datetime.datetime(2100, 1, 1)
    ).map(lambda d: d.replace(microsecond=0, tzinfo=datetime.UTC)),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=12), values, max_size=6))
def test_table_roundtrip_property(table: FieldTable) -> None:
    raw = encode.field_table(table)
    assert decode.field_table(raw) == (len(raw), table)
