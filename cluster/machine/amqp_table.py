"""Just enough AMQP decoding for the headers exchange: the ``headers`` field table
of a basic content header, kept as raw wire bytes everywhere else.

Values are normalised (see :func:`norm`) so that binding arguments (decoded by
the protocol layer into Python values) and message headers compare the way
RabbitMQ compares them with Erlang's ``==``: numbers by value (1 == 1.0),
strings and byte arrays by their bytes, booleans only with booleans.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from typing import Any

_VOID = ("void",)  # normalised AMQP void: in a binding it means "header present"

_S_B = struct.Struct(">b")
_S_BU = struct.Struct(">B")
_S_H = struct.Struct(">h")
_S_HU = struct.Struct(">H")
_S_I = struct.Struct(">i")
_S_IU = struct.Struct(">I")
_S_Q = struct.Struct(">q")
_S_QU = struct.Struct(">Q")
_S_F = struct.Struct(">f")
_S_D = struct.Struct(">d")

_FIXED: dict[int, struct.Struct] = {
    ord("b"): _S_B,
    ord("B"): _S_BU,
    ord("s"): _S_H,  # RabbitMQ's errata: 's' is a signed 16-bit int
    ord("u"): _S_HU,
    ord("I"): _S_I,
    ord("i"): _S_IU,
    ord("l"): _S_Q,
    ord("L"): _S_QU,
    ord("T"): _S_QU,  # timestamp: compares as an integer, as in Erlang
    ord("f"): _S_F,
    ord("d"): _S_D,
}


def norm(v: Any) -> Any:
    """Normalise a Python value (from a binding's arguments) for comparison."""
    if v is None:
        return _VOID
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, int | float):
        return ("num", v)
    if isinstance(v, str):
        return ("str", v.encode())
    if isinstance(v, bytes | bytearray | memoryview):
        return ("str", bytes(v))
    if isinstance(v, decimal.Decimal):
        return ("dec", v)
    if isinstance(v, datetime.datetime):
        return ("num", int(v.timestamp()))
    if isinstance(v, list | tuple):
        return ("array", tuple(norm(x) for x in v))
    if isinstance(v, dict):
        return ("table", tuple(sorted((str(k), norm(x)) for k, x in v.items())))
    return ("other", repr(v))


def _value(data: bytes, pos: int) -> tuple[Any, int]:
    t = data[pos]
    pos += 1
    st = _FIXED.get(t)
    if st is not None:
        return ("num", st.unpack_from(data, pos)[0]), pos + st.size
    if t == 0x53 or t == 0x78:  # 'S' long string, 'x' byte array
        (n,) = _S_IU.unpack_from(data, pos)
        pos += 4
        return ("str", bytes(data[pos : pos + n])), pos + n
    if t == 0x74:  # 't'
        return ("bool", data[pos] != 0), pos + 1
    if t == 0x44:  # 'D' decimal: scale, int32
        scale = data[pos]
        (raw,) = _S_I.unpack_from(data, pos + 1)
        return ("dec", decimal.Decimal(raw).scaleb(-scale)), pos + 5
    if t == 0x56:  # 'V'
        return ("void-data",), pos
    if t == 0x46:  # 'F'
        table, pos = _table(data, pos)
        return ("table", tuple(sorted(table.items()))), pos
    if t == 0x41:  # 'A'
        (n,) = _S_IU.unpack_from(data, pos)
        pos += 4
        end = pos + n
        items = []
        while pos < end:
            item, pos = _value(data, pos)
            items.append(item)
        return ("array", tuple(items)), end
    raise ValueError(f"bad field type {t!r}")


def _table(data: bytes, pos: int) -> tuple[dict[str, Any], int]:
    (n,) = _S_IU.unpack_from(data, pos)
    pos += 4
    end = pos + n
    out: dict[str, Any] = {}
    while pos < end:
        klen = data[pos]
        key = bytes(data[pos + 1 : pos + 1 + klen]).decode("utf-8", "surrogateescape")
        pos += 1 + klen
        out[key], pos = _value(data, pos)
    return out, end


def message_headers(properties: bytes) -> dict[str, Any]:
    """The normalised ``headers`` table of a basic content header's property
    flags + list, or {} when absent or malformed (a malformed header routes
    nowhere rather than crashing every replica)."""
    try:
        if len(properties) < 2:
            return {}
        flags = (properties[0] << 8) | properties[1]
        pos = 2
        word = flags
        while word & 1:  # continuation flag words
            word = (properties[pos] << 8) | properties[pos + 1]
            pos += 2
        if flags & 0x8000:  # content-type shortstr
            pos += 1 + properties[pos]
        if flags & 0x4000:  # content-encoding shortstr
            pos += 1 + properties[pos]
        if not flags & 0x2000:
            return {}
        return _table(properties, pos)[0]
    except (IndexError, ValueError, struct.error, decimal.DecimalException):
        return {}


def is_void(v: Any) -> bool:
    return v is _VOID
