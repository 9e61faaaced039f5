"""protocol/fields.py: field tables and content properties, valid and hostile."""

from __future__ import annotations

import datetime
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pamqp import encode
from pamqp.common import FieldTable

from protocol import fields as F
from protocol.properties import encode_properties
from tests.protocol.test_field_tables import TABLE, values


def table(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return struct.pack(">I", len(body)) + body


def entry(key: str, kind: bytes, payload: bytes = b"") -> bytes:
    return bytes([len(key.encode())]) + key.encode() + kind + payload


def nested(depth: int) -> bytes:
    """A table holding a table holding ... ``depth`` levels."""
    raw = table()
    for _ in range(depth):
        raw = table(entry("k", b"F", raw))
    return raw


def test_decode_agrees_with_pamqp_on_every_type() -> None:
    raw = encode.field_table(TABLE)
    got, end = F.decode_table(raw)
    assert end == len(raw)
    assert got == TABLE
    assert F.skip_table(raw, 0) == len(raw)


@given(st.dictionaries(st.text(max_size=12), values, max_size=6))
def test_decode_roundtrip(value: FieldTable) -> None:
    raw = encode.field_table(value)
    assert F.decode_table(raw) == (value, len(raw))
    assert F.skip_table(raw, 0) == len(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x00",  # length truncated
        struct.pack(">I", 10) + b"abc",  # overruns
        table(b"\x05ab"),  # key overruns the table
        table(entry("k", b"S", struct.pack(">I", 100) + b"x")),  # long string overruns
        table(entry("k", b"Q", b"")),  # unknown type
        table(entry("k", b"l", b"\x00\x00")),  # truncated fixed-size value
        table(entry("k", b"A", struct.pack(">I", 2) + b"S\x00")),  # array item overruns
    ],
)
def test_malformed_tables_raise_field_error(raw: bytes) -> None:
    with pytest.raises(F.FieldError):
        F.decode_table(raw)


def test_depth_is_bounded() -> None:
    ok = nested(F.MAX_DEPTH)
    F.decode_table(ok)
    F.skip_table(ok, 0)
    deep = nested(F.MAX_DEPTH + 1)
    with pytest.raises(F.FieldError):
        F.decode_table(deep)
    with pytest.raises(F.FieldError):
        F.skip_table(deep, 0)
    # far deeper than the interpreter's stack: still a FieldError, not RecursionError
    with pytest.raises(F.FieldError):
        F.decode_table(nested(5000))


def test_arrays_nest_within_the_same_bound() -> None:
    raw = b"V"
    for _ in range(F.MAX_DEPTH + 2):
        raw = b"A" + struct.pack(">I", len(raw)) + raw
    with pytest.raises(F.FieldError):
        F.decode_table(table(entry("k", raw[:1], raw[1:])))


def test_timestamp_as_pamqp_decodes_it() -> None:
    ts = datetime.datetime(2024, 5, 1, tzinfo=datetime.UTC)
    raw = table(entry("t", b"T", struct.pack(">Q", int(ts.timestamp()))))
    assert F.decode_table(raw)[0] == {"t": ts}
    # one datetime cannot hold stays a number (RabbitMQ accepts any 64-bit timestamp)
    raw = table(entry("t", b"T", struct.pack(">Q", 2**63)))
    assert F.decode_table(raw)[0] == {"t": 2**63}


# --- properties -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "props",
    [
        b"\x00\x00",
        encode_properties(delivery_mode=2),
        encode_properties(expiration="100", priority=3, headers={"a": [1, {"b": None}]}),
        encode_properties(content_type="café", user_id="guest", message_id="x" * 255,
                          timestamp=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)),
        b"\x00\x01\x00\x00",  # an empty continuation flag word
    ],
)
def test_valid_properties(props: bytes) -> None:
    F.check_properties(props)
    spans = F.property_spans(props)
    assert len(spans) == 14


@pytest.mark.parametrize(
    "props",
    [
        b"",
        b"\x00",
        b"\x01\x00",  # expiration announced, no bytes (the probe's poisoned header)
        b"\x00\x10",  # user-id announced, no bytes
        b"\x80\x00\x05ab",  # content-type shorter than its length
        b"\x20\x00" + struct.pack(">I", 50),  # headers table overruns
        b"\x20\x00" + table(entry("k", b"Z")),  # bad field type in headers
        b"\x20\x00" + nested(F.MAX_DEPTH + 1),
        b"\x00\x00x",  # trailing byte
        b"\x00\x02",  # reserved bit
        b"\x00\x01",  # continuation word missing
        b"\x00\x01\x80\x00\x00",  # continuation word announcing a 15th property
        b"\x10\x00",  # delivery-mode octet missing
        b"\x00\x40\x00\x00\x00",  # timestamp truncated
    ],
)
def test_malformed_properties(props: bytes) -> None:
    with pytest.raises(F.FieldError):
        F.check_properties(props)
    with pytest.raises(F.FieldError):
        F.property_spans(props)


@given(st.binary(max_size=40))
def test_check_and_spans_agree_on_any_bytes(props: bytes) -> None:
    try:
        F.check_properties(props)
        ok = True
    except F.FieldError:
        ok = False
    try:
        F.property_spans(props)
        spans_ok = True
    except F.FieldError:
        spans_ok = False
    assert ok == spans_ok


def test_truncate_short_cuts_on_a_character_boundary() -> None:
    text = "é" * 200  # 400 bytes
    cut = F.truncate_short(text)
    assert len(cut.encode()) <= 255
    assert cut == "é" * 127
    assert F.truncate_short("plain") == "plain"
