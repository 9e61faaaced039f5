"""Strict decoding of the long tail of methods into pamqp command objects.

pamqp's own ``Frame.unmarshal`` silently truncates short/long strings and
ignores trailing bytes; a server must not guess, so this walks the same
per-class type annotations (``pamqp.commands.X._field``) with bounds checks and
raises on any mismatch. RabbitMQ reports undecodable method fields as 501
FRAME_ERROR ("cannot decode", rabbit_misc:frame_error), and so do we.
"""

from __future__ import annotations

import struct
from typing import Any

from pamqp import base, commands, decode

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

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

    Raises KeyError for an unknown index and DecodeError for bad fields."""
    cls = METHODS[index]
    layout = _LAYOUT[index]
    obj: Any = cls.__new__(cls)  # skip __init__: its validate() is client-side policy
    pos = 0
    end = len(data)
    bits = -1  # current bit octet, -1 when not inside a run of bits
    bitpos = 0
    try:
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
                n = data[pos]
                stop = pos + 1 + n
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
            elif kind == "timestamp":
                n, value = decode.timestamp(bytes(data[pos : pos + 8]))
                pos += n
            elif kind == "table":
                (n,) = _U32.unpack_from(data, pos)
                if pos + 4 + n > end:
                    raise DecodeError(f"{name}: table overruns frame")
                _, value = decode.field_table(bytes(data[pos : pos + 4 + n]))
                pos += 4 + n
            else:  # pragma: no cover - pamqp has no other method field types
                raise DecodeError(f"unsupported field type {kind}")
            setattr(obj, name, value)
    except (struct.error, IndexError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, DecodeError):
            raise
        raise DecodeError(f"{cls.name}: {exc}") from exc
    if pos != end:
        raise DecodeError(f"{cls.name}: {end - pos} trailing bytes")
    result: base.Frame = obj
    return result
