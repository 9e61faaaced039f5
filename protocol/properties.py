"""Helpers over raw content-header property bytes (flags + property list).

The broker keeps properties exactly as the publisher sent them; routing and
queueing need only a few fields (delivery mode, priority, expiration), which
these accessors read by skipping fields according to the flag bits, without
decoding tables (:mod:`protocol.fields`; malformed bytes raise its FieldError).
The pamqp-based full decode and encode are for tests and tools.
"""

from __future__ import annotations

from typing import Any

from pamqp import commands, header

from protocol.fields import (
    CONTENT_TYPE,
    DELIVERY_MODE,
    EXPIRATION,
    PRIORITY,
    USER_ID,
    octet_property,
    short_property,
)


def delivery_mode(props: bytes) -> int:
    """1 = transient, 2 = persistent, 0 when the property is absent."""
    return octet_property(props, DELIVERY_MODE) or 0


def priority(props: bytes) -> int | None:
    return octet_property(props, PRIORITY)


def expiration(props: bytes) -> str | None:
    """The per-message TTL property as sent (milliseconds, as a string)."""
    return short_property(props, EXPIRATION)


def content_type(props: bytes) -> str | None:
    return short_property(props, CONTENT_TYPE)


def user_id(props: bytes) -> str | None:
    """The user-id property; RabbitMQ refuses a publish whose user-id is not the login."""
    if len(props) < 2 or not props[1] & 0x10:  # fast exit: user-id's flag bit is clear
        return None
    return short_property(props, USER_ID)


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
