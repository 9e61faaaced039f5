"""Helpers over raw content-header property bytes (flags + property list).

The broker keeps properties exactly as the publisher sent them; routing and
queueing need only a few fields (delivery mode, priority, expiration), which
these accessors read by skipping fields according to the flag bits, without
decoding tables.
"""

from __future__ import annotations

import struct
from typing import Any

from pamqp import commands, header

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")

# Basic properties in flag order (bit 15 downwards) and their wire kinds:
# s = shortstr, t = table, o = octet, T = timestamp.
_KINDS = "sstoossssTssss"
_CONTENT_TYPE, _HEADERS, _DELIVERY_MODE, _PRIORITY, _EXPIRATION = 0, 2, 3, 4, 7
_USER_ID = 11


def _field_offset(props: bytes, field: int) -> int:
    """Offset of property ``field`` in ``props``, or -1 if it is absent."""
    flags = _U16.unpack_from(props, 0)[0]
    pos = 2
    word = flags
    while word & 1:  # continuation flag words (unused by 0-9-1 basic, but legal)
        word = _U16.unpack_from(props, pos)[0]
        pos += 2
    if not flags & (0x8000 >> field):
        return -1
    for i in range(field):
        if flags & (0x8000 >> i):
            kind = _KINDS[i]
            if kind == "s":
                pos += 1 + props[pos]
            elif kind == "t":
                pos += 4 + _U32.unpack_from(props, pos)[0]
            elif kind == "o":
                pos += 1
            else:
                pos += 8
    return pos


def delivery_mode(props: bytes) -> int:
    """1 = transient, 2 = persistent, 0 when the property is absent."""
    pos = _field_offset(props, _DELIVERY_MODE)
    return props[pos] if pos >= 0 else 0


def priority(props: bytes) -> int | None:
    pos = _field_offset(props, _PRIORITY)
    return props[pos] if pos >= 0 else None


def _shortstr(props: bytes, field: int) -> str | None:
    pos = _field_offset(props, field)
    if pos < 0:
        return None
    n = props[pos]
    return props[pos + 1 : pos + 1 + n].decode("utf-8", "replace")


def expiration(props: bytes) -> str | None:
    """The per-message TTL property as sent (milliseconds, as a string)."""
    return _shortstr(props, _EXPIRATION)


def content_type(props: bytes) -> str | None:
    return _shortstr(props, _CONTENT_TYPE)


def user_id(props: bytes) -> str | None:
    """The user-id property; RabbitMQ refuses a publish whose user-id is not the login."""
    if len(props) < 2 or not props[1] & 0x10:  # fast exit: user-id's flag bit is clear
        return None
    return _shortstr(props, _USER_ID)


def decode_properties(props: bytes) -> dict[str, Any]:
    """All present properties by pamqp name (``message_type`` for "type")."""
    consumed, flags = header.ContentHeader._get_flags(props)
    decoded = commands.Basic.Properties()
    decoded.unmarshal(flags, props[consumed:])
    flag_of = commands.Basic.Properties.flags
    return {name: value for name, value in decoded if flags & flag_of[name]}


def encode_properties(**kwargs: Any) -> bytes:
    """Encode properties given by pamqp name, e.g. ``delivery_mode=2``."""
    return commands.Basic.Properties(**kwargs).marshal()


EMPTY = b"\x00\x00"  # no properties
PERSISTENT = encode_properties(delivery_mode=2)
