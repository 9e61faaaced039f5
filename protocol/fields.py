"""AMQP field values on the wire: field tables, arrays and basic content properties.

Standard library only, so the pure state machine can share it with the
protocol layer. Everything here is hostile input until it has been walked:

* every length is checked against the bytes actually present, so nothing
  reads past its buffer or allocates what a length field merely claims;
* nesting (tables in arrays in tables…) is bounded by :data:`MAX_DEPTH`, so a
  deep table cannot exhaust the interpreter's stack;
* walking is linear in the input (offsets, never re-sliced copies: pamqp's
  decoder copies the rest of the buffer at every value, quadratic on a table
  of many small entries).

Field types are those of RabbitMQ's errata
(https://www.rabbitmq.com/amqp-0-9-1-errata.html#section_3), plus pamqp's
``L`` (unsigned 64-bit) and a zero byte read as void, which some clients send.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from typing import Any

MAX_DEPTH = 64  # nested tables / arrays; RabbitMQ sets none, real headers use 2-3
# The arguments of a declare, bind or consume are replicated to every node and kept in
# the state (per queue, binding, consumer), decoded: a 128 KiB table of 40,000 voids
# is 4 MB there. RabbitMQ bounds them by frame_max only. Ours: what the default
# frame_max carries, and no more than this many keys and array elements at every level
# (the management API applies the same numbers, node/mgmt/input.py).
ARGUMENTS_MAX_BYTES = 131072
ARGUMENTS_MAX_ITEMS = 1024

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

# Fixed-size field types: type byte -> (size, decoder struct or None).
_FIXED: dict[int, tuple[int, struct.Struct | None]] = {
    ord("t"): (1, None),
    ord("b"): (1, struct.Struct(">b")),
    ord("B"): (1, struct.Struct(">B")),
    ord("s"): (2, struct.Struct(">h")),  # signed 16-bit in RabbitMQ's errata
    ord("u"): (2, struct.Struct(">H")),
    ord("I"): (4, struct.Struct(">i")),
    ord("i"): (4, struct.Struct(">I")),
    ord("l"): (8, struct.Struct(">q")),
    ord("L"): (8, struct.Struct(">q")),  # as pamqp decodes it
    ord("f"): (4, struct.Struct(">f")),
    ord("d"): (8, struct.Struct(">d")),
    ord("D"): (5, None),
    ord("T"): (8, None),
    ord("V"): (0, None),
    0: (0, None),
}
_LONGSTR, _BYTES, _TABLE, _ARRAY = ord("S"), ord("x"), ord("F"), ord("A")
_INFINITIES = (float("inf"), float("-inf"))


class FieldError(ValueError):
    """Bytes that are not a well-formed field value, table or property list."""


# --- validation (no values built) ----------------------------------------------------


def _sized_end(data: bytes, pos: int, end: int) -> int:
    """End of a 32-bit length-prefixed value starting at ``pos``."""
    if pos + 4 > end:
        raise FieldError("truncated length")
    stop = pos + 4 + _U32.unpack_from(data, pos)[0]
    if stop > end:
        raise FieldError("length overruns its container")
    return stop


def skip_value(data: bytes, pos: int, end: int, depth: int = 0) -> int:
    """Validate the field value (type byte + payload) at ``pos``; return its end."""
    if pos >= end:
        raise FieldError("truncated field value")
    kind = data[pos]
    pos += 1
    fixed = _FIXED.get(kind)
    if fixed is not None:
        stop = pos + fixed[0]
        if stop > end:
            raise FieldError(f"truncated {chr(kind)!r} value")
        return stop
    if kind in (_LONGSTR, _BYTES):
        return _sized_end(data, pos, end)
    if kind == _TABLE:
        return skip_table(data, pos, end, depth + 1)
    if kind == _ARRAY:
        if depth + 1 > MAX_DEPTH:
            raise FieldError(f"field values nested deeper than {MAX_DEPTH}")
        stop = _sized_end(data, pos, end)
        pos += 4
        while pos < stop:
            pos = skip_value(data, pos, stop, depth + 1)
        return stop
    raise FieldError(f"unknown field type 0x{kind:02x}")


def skip_table(data: bytes, pos: int, end: int | None = None, depth: int = 0) -> int:
    """Validate the length-prefixed field table at ``pos``; return its end."""
    if depth > MAX_DEPTH:
        raise FieldError(f"field tables nested deeper than {MAX_DEPTH}")
    stop = _sized_end(data, pos, len(data) if end is None else end)
    pos += 4
    while pos < stop:
        pos += 1 + data[pos]  # key: short string
        if pos > stop:
            raise FieldError("table key overruns the table")
        pos = skip_value(data, pos, stop, depth)
    return stop


# --- raw entries (rewriting a table while keeping every value's bytes) --------------

Entry = tuple[bytes, bytes]  # (key, raw value: type byte + payload)


def table_entries(data: bytes, pos: int = 0) -> list[Entry]:
    """The length-prefixed table at ``pos`` as (key, raw value) pairs, in wire order."""
    stop = _sized_end(data, pos, len(data))
    pos += 4
    out = []
    while pos < stop:
        key_end = pos + 1 + data[pos]
        if key_end > stop:
            raise FieldError("table key overruns the table")
        end = skip_value(data, key_end, stop)
        out.append((bytes(data[pos + 1 : key_end]), bytes(data[key_end:end])))
        pos = end
    return out


def array_items(raw: bytes) -> list[bytes]:
    """The raw items (type byte + payload) of a raw array value (``A`` + length + items)."""
    if raw[:1] != b"A":
        raise FieldError("not an array")
    stop = _sized_end(raw, 1, len(raw))
    pos = 5
    items = []
    while pos < stop:
        end = skip_value(raw, pos, stop)
        items.append(raw[pos:end])
        pos = end
    return items


def encode_table(entries: list[Entry]) -> bytes:
    body = b"".join(bytes([len(k)]) + k + v for k, v in entries)
    return _U32.pack(len(body)) + body


def encode_array(items: list[bytes]) -> bytes:
    body = b"".join(items)
    return b"A" + _U32.pack(len(body)) + body


def longstr(s: bytes) -> bytes:
    return b"S" + _U32.pack(len(s)) + s


def string_value(raw: bytes | None) -> bytes | None:
    """The bytes of a raw long-string value, None for anything else."""
    if raw is not None and raw[:1] == b"S" and len(raw) >= 5:
        return raw[5:]
    return None


def int_value(raw: bytes | None) -> int | None:
    """A raw integer value (any width), None for anything else."""
    if not raw:
        return None
    fixed = _FIXED.get(raw[0])
    if fixed is None or fixed[1] is None or raw[0] in (ord("f"), ord("d")):
        return None
    if len(raw) != 1 + fixed[0]:
        return None
    value: int = fixed[1].unpack_from(raw, 1)[0]
    return value


# --- decoding into Python values (method arguments, client properties, headers) ------


def _timestamp(raw: int) -> datetime.datetime | int:
    """A datetime (pamqp's rule, kept so values compare as before: above 2106 it is
    milliseconds); one Python cannot represent stays the number it is."""
    value: float = raw / 1000.0 if raw > 0xFFFFFFFF else raw
    try:
        return datetime.datetime.fromtimestamp(value, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return raw


def decode_value(data: bytes, pos: int, end: int, depth: int = 0) -> tuple[Any, int]:
    """The field value at ``pos`` as a Python value, and its end. Long strings are
    ``str`` when they are UTF-8, else ``bytes`` (as pamqp); byte arrays are ``bytes``."""
    if pos >= end:
        raise FieldError("truncated field value")
    kind = data[pos]
    pos += 1
    fixed = _FIXED.get(kind)
    if fixed is not None:
        size, st = fixed
        stop = pos + size
        if stop > end:
            raise FieldError(f"truncated {chr(kind)!r} value")
        if st is not None:
            value = st.unpack_from(data, pos)[0]
            if value != value or value in _INFINITIES:
                # Erlang has no NaN or infinity: RabbitMQ cannot decode these either
                raise FieldError(f"{chr(kind)!r} value {value} is not a finite number")
            return value, stop
        if kind == 0x74:  # 't'
            return data[pos] != 0, stop
        if kind == 0x44:  # 'D': scale, unsigned 32-bit value (RabbitMQ, pamqp)
            scale = data[pos]
            return decimal.Decimal(_U32.unpack_from(data, pos + 1)[0]).scaleb(-scale), stop
        if kind == 0x54:  # 'T'
            return _timestamp(_U64.unpack_from(data, pos)[0]), stop
        return None, stop  # void
    if kind in (_LONGSTR, _BYTES):
        stop = _sized_end(data, pos, end)
        raw = bytes(data[pos + 4 : stop])
        if kind == _LONGSTR:
            try:
                return raw.decode("utf-8"), stop
            except UnicodeDecodeError:
                return raw, stop
        return raw, stop
    if kind == _TABLE:
        return decode_table(data, pos, end, depth + 1)
    if kind == _ARRAY:
        if depth + 1 > MAX_DEPTH:
            raise FieldError(f"field values nested deeper than {MAX_DEPTH}")
        stop = _sized_end(data, pos, end)
        pos += 4
        items = []
        while pos < stop:
            item, pos = decode_value(data, pos, stop, depth + 1)
            items.append(item)
        return items, stop
    raise FieldError(f"unknown field type 0x{kind:02x}")


def decode_table(
    data: bytes, pos: int = 0, end: int | None = None, depth: int = 0
) -> tuple[dict[str, Any], int]:
    """The length-prefixed field table at ``pos`` as a dict, and its end."""
    if depth > MAX_DEPTH:
        raise FieldError(f"field tables nested deeper than {MAX_DEPTH}")
    stop = _sized_end(data, pos, len(data) if end is None else end)
    pos += 4
    out: dict[str, Any] = {}
    while pos < stop:
        n = data[pos]
        key_end = pos + 1 + n
        if key_end > stop:
            raise FieldError("table key overruns the table")
        try:
            key = bytes(data[pos + 1 : key_end]).decode("utf-8")
        except UnicodeDecodeError:
            raise FieldError("table key is not UTF-8") from None
        out[key], pos = decode_value(data, key_end, stop, depth)
    return out, stop


# --- basic content properties --------------------------------------------------------

# Basic properties in flag order (bit 15 downwards) and their wire kinds:
# s = short string, t = table, o = octet, T = timestamp (64 bits).
PROPERTY_KINDS = "sstoossssTssss"
CONTENT_TYPE, CONTENT_ENCODING, HEADERS, DELIVERY_MODE, PRIORITY = 0, 1, 2, 3, 4
CORRELATION_ID, REPLY_TO, EXPIRATION, MESSAGE_ID, TIMESTAMP = 5, 6, 7, 8, 9
TYPE, USER_ID, APP_ID, CLUSTER_ID = 10, 11, 12, 13
_FLAG_BITS = 0xFFFC  # the 14 property bits; bit 1 is reserved, bit 0 continues the flags


def property_flags(props: bytes) -> tuple[int, int]:
    """(flags, offset of the first property value). Continuation flag words are
    allowed but may not announce properties: the basic class has only 14."""
    if len(props) < 2:
        raise FieldError("property flags missing")
    flags = _U16.unpack_from(props, 0)[0]
    if flags & 0x0002:
        raise FieldError("reserved property flag bit set")
    pos, word = 2, flags
    while word & 1:
        if pos + 2 > len(props):
            raise FieldError("truncated property flags")
        word = _U16.unpack_from(props, pos)[0]
        pos += 2
        if word & 0xFFFE:
            raise FieldError("property flags announce properties the basic class does not have")
    return flags, pos


def property_spans(props: bytes) -> list[tuple[int, int] | None]:
    """(start, end) of each of the 14 basic properties in ``props`` (flags + property
    list, as in a content header), None where absent. Validates everything: each
    value lies within ``props``, tables are well formed, nothing trails."""
    flags, pos = property_flags(props)
    end = len(props)
    spans: list[tuple[int, int] | None] = []
    for i, kind in enumerate(PROPERTY_KINDS):
        if not flags & (0x8000 >> i):
            spans.append(None)
            continue
        start = pos
        if kind == "s":
            if pos >= end:
                raise FieldError(f"property {i}: truncated short string")
            pos += 1 + props[pos]
        elif kind == "t":
            pos = skip_table(props, pos, end)
        elif kind == "o":
            pos += 1
        else:
            pos += 8
        if pos > end:
            raise FieldError(f"property {i} overruns the content header")
        spans.append((start, pos))
    if pos != end:
        raise FieldError(f"{end - pos} bytes after the last property")
    return spans


# flags -> the kinds of the properties present, in order (at most 2**14 entries).
_PLANS: dict[int, str] = {}


def _plan(flags: int) -> str:
    plan = _PLANS.get(flags)
    if plan is None:
        plan = _PLANS[flags] = "".join(
            k for i, k in enumerate(PROPERTY_KINDS) if flags & (0x8000 >> i))
    return plan


def check_properties(props: bytes) -> None:
    """Raise :class:`FieldError` unless ``props`` is a well-formed basic property list.
    On every published message, so lean: :func:`property_spans` without the list."""
    n = len(props)
    if n == 2 and props == b"\x00\x00":
        return
    if n >= 2 and not props[1] & 3:
        flags, pos = (props[0] << 8) | props[1], 2
    else:
        flags, pos = property_flags(props)
    for kind in _plan(flags & 0xFFFC):
        if kind == "s":
            if pos >= n:
                raise FieldError("truncated short string property")
            pos += 1 + props[pos]
        elif kind == "o":
            pos += 1
        elif kind == "t":
            pos = skip_table(props, pos, n)
        else:
            pos += 8
    if pos != n:
        raise FieldError("property list does not match its flags "
                         f"({n - pos:+d} bytes after the last property)")


def property_offset(props: bytes, index: int) -> int:
    """Offset of basic property ``index`` in ``props``, or -1 when absent. Walks only
    the properties before it (cheap for the early ones: the machine's hot reads);
    :class:`FieldError` if they are malformed or the value itself is cut off."""
    if len(props) >= 2 and not props[1] & 3:
        flags, pos = (props[0] << 8) | props[1], 2
    else:
        flags, pos = property_flags(props)
    if not flags & (0x8000 >> index):
        return -1
    n = len(props)
    for kind in _plan(flags & (0xFFFF << (16 - index)) & 0xFFFC):
        if kind == "s":
            if pos >= n:
                raise FieldError("truncated short string property")
            pos += 1 + props[pos]
        elif kind == "o":
            pos += 1
        elif kind == "t":
            pos = skip_table(props, pos, n)
        else:
            pos += 8
    if pos >= n:
        raise FieldError(f"property {index} missing")
    kind = PROPERTY_KINDS[index]
    size = (1 + props[pos]) if kind == "s" else 1 if kind == "o" else 8 if kind == "T" else 4
    if pos + size > n:
        raise FieldError(f"property {index} overruns the content header")
    return pos


def octet_property(props: bytes, index: int) -> int | None:
    """An octet property (delivery mode, priority), None when absent."""
    pos = property_offset(props, index)
    return props[pos] if pos >= 0 else None


def short_property(props: bytes, index: int) -> str | None:
    """A short-string property's text, None when absent."""
    pos = property_offset(props, index)
    if pos < 0:
        return None
    return props[pos + 1 : pos + 1 + props[pos]].decode("utf-8", "replace")


def short_string(props: bytes, span: tuple[int, int] | None) -> str | None:
    """A short-string property's text (undecodable bytes replaced, as they are opaque
    to the broker)."""
    if span is None:
        return None
    return props[span[0] + 1 : span[1]].decode("utf-8", "replace")


def truncate_short(text: str) -> str:
    """``text`` cut to fit a short string (255 bytes of UTF-8) on a character boundary."""
    raw = text.encode("utf-8")
    if len(raw) <= 255:
        return text
    return raw[:255].decode("utf-8", "ignore")


def count_items(value: Any, limit: int) -> int:
    """Keys and array elements of ``value`` at every level, counted up to just past
    ``limit`` (a caller comparing with ``limit`` need not walk the rest)."""
    n = 0
    stack = [value]
    while stack and n <= limit:
        v = stack.pop()
        if isinstance(v, dict):
            n += len(v)
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            n += len(v)
            stack.extend(v)
    return n
