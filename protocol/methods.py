"""The long tail of methods: strict decoding into pamqp command objects, and encoding.

pamqp's own ``Frame.unmarshal`` silently truncates short/long strings and
ignores trailing bytes; a server must not guess, so this walks the same
per-class type annotations (``pamqp.commands.X._field``) with bounds checks and
raises on any mismatch. RabbitMQ reports undecodable method fields as 501
FRAME_ERROR ("cannot decode", rabbit_misc:frame_error), and so do we. Field
tables go through :mod:`protocol.fields` (linear, depth-bounded).

Encoding does not use pamqp's ``marshal`` either: it validates names against a
pattern narrower than AMQP's (``café`` is a valid queue name: any UTF-8 up to
255 bytes), so a reply naming a queue the broker just created could fail to
encode. :func:`build` makes a command object without pamqp's validation and
:func:`encode_method` writes it; the only check is the wire's own (a short
string is at most 255 bytes).
"""

from __future__ import annotations

import struct
from typing import Any

from pamqp import base, commands, encode

from protocol.fields import decode_table

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_IDS = struct.Struct(">I")

# (class_id << 16 | method_id) -> pamqp class
METHODS: dict[int, type[base.Frame]] = commands.INDEX_MAPPING


class DecodeError(ValueError):
    """Method fields do not match the method's signature."""


def _fields(cls: type[base.Frame]) -> list[tuple[str, str]]:
    return [(name, cls.amqp_type(name)) for name in cls.__slots__]


# Precomputed once: field names and types for every method.
_LAYOUT: dict[int, list[tuple[str, str]]] = {idx: _fields(c) for idx, c in METHODS.items()}


def decode_method(index: int, data: bytes) -> base.Frame:
    """Decode ``data`` (the fields after class/method ids) for method ``index``.

    Raises KeyError for an unknown index and DecodeError for bad fields: any
    failure to decode is the input's fault, never an internal error."""
    cls = METHODS[index]
    try:
        return _decode(cls, _LAYOUT[index], data)
    except DecodeError:
        raise
    except Exception as exc:  # struct.error, IndexError, FieldError, UnicodeDecodeError...
        raise DecodeError(f"{cls.name}: {exc}") from exc


def _decode(cls: type[base.Frame], layout: list[tuple[str, str]], data: bytes) -> base.Frame:
    obj: Any = cls.__new__(cls)  # skip __init__: its validate() is client-side policy
    pos = 0
    end = len(data)
    bits = -1  # current bit octet, -1 when not inside a run of bits
    bitpos = 0
    for name, kind in layout:
        if kind == "bit":
            if bits < 0 or bitpos == 8:
                if pos >= end:
                    raise DecodeError("truncated bit field")
                bits = data[pos]
                pos += 1
                bitpos = 0
            setattr(obj, name, bool(bits & (1 << bitpos)))
            bitpos += 1
            continue
        bits = -1
        if kind == "shortstr":
            if pos >= end:
                raise DecodeError(f"{name}: truncated short string")
            stop = pos + 1 + data[pos]
            if stop > end:
                raise DecodeError(f"{name}: short string overruns frame")
            value: Any = data[pos + 1 : stop].decode("utf-8")
            pos = stop
        elif kind == "longstr":
            (n,) = _U32.unpack_from(data, pos)
            stop = pos + 4 + n
            if stop > end:
                raise DecodeError(f"{name}: long string overruns frame")
            raw = data[pos + 4 : stop]
            # Like pamqp: text when it is UTF-8 (SASL responses are), else bytes.
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError:
                value = bytes(raw)
            pos = stop
        elif kind == "octet":
            (value,) = _U8.unpack_from(data, pos)
            pos += 1
        elif kind == "short":
            (value,) = _U16.unpack_from(data, pos)
            pos += 2
        elif kind == "long":
            (value,) = _U32.unpack_from(data, pos)
            pos += 4
        elif kind == "longlong":
            (value,) = _U64.unpack_from(data, pos)
            pos += 8
        elif kind == "table":
            value, pos = decode_table(data, pos, end)
        else:  # pragma: no cover - no other method field types in 0-9-1
            raise DecodeError(f"unsupported field type {kind}")
        setattr(obj, name, value)
    if pos != end:
        raise DecodeError(f"{cls.name}: {end - pos} trailing bytes")
    result: base.Frame = obj
    return result


# --- encoding ------------------------------------------------------------------------


def build(cls: type[base.Frame], *values: Any) -> base.Frame:
    """A command object with ``values`` in field order (missing trailing fields are
    empty / zero / false), without pamqp's validation (see the module docstring)."""
    obj: Any = cls.__new__(cls)
    names = cls.__slots__
    if len(values) > len(names):
        raise TypeError(f"{cls.name} takes {len(names)} fields")
    for i, name in enumerate(names):
        setattr(obj, name, values[i] if i < len(values) else None)
    result: base.Frame = obj
    return result


def shortstr(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"short string longer than 255 bytes: {value[:40]!r}...")
    return bytes((len(raw),)) + raw


def _longstr(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return _U32.pack(len(raw)) + raw


def encode_method(method: base.Frame) -> bytes:
    """The method's payload: class and method ids, then its fields."""
    parts = [_IDS.pack(method.index)]
    bits = 0
    nbits = -1  # -1: not inside a run of bits
    for name, kind in _LAYOUT[method.index]:
        value = getattr(method, name, None)
        if kind == "bit":
            if nbits == 8:
                parts.append(_U8.pack(bits))
                nbits = -1
            if nbits < 0:
                bits, nbits = 0, 0
            if value:
                bits |= 1 << nbits
            nbits += 1
            continue
        if nbits >= 0:
            parts.append(_U8.pack(bits))
            nbits = -1
        if kind == "shortstr":
            parts.append(shortstr(value or ""))
        elif kind == "longstr":
            parts.append(_longstr(value or ""))
        elif kind == "octet":
            parts.append(_U8.pack(value or 0))
        elif kind == "short":
            parts.append(_U16.pack(value or 0))
        elif kind == "long":
            parts.append(_U32.pack(value or 0))
        elif kind == "longlong":
            parts.append(_U64.pack(value or 0))
        elif kind == "table":
            parts.append(encode.field_table(value or {}))
        else:  # pragma: no cover
            raise ValueError(f"unsupported field type {kind}")
    if nbits >= 0:
        parts.append(_U8.pack(bits))
    return b"".join(parts)
