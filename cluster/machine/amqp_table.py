"""The headers exchange's view of values: the ``headers`` field table of a basic
content header (decoded by :mod:`protocol.fields`; kept as raw wire bytes
everywhere else) and binding arguments, normalised to compare alike.

Values are normalised (see :func:`norm`) so that binding arguments (decoded by
the protocol layer into Python values) and message headers compare the way
RabbitMQ compares them with Erlang's ``==``: numbers by value (1 == 1.0),
strings and byte arrays by their bytes, booleans only with booleans.
"""

from __future__ import annotations

import datetime
import decimal
from typing import Any

from protocol.fields import HEADERS, FieldError, decode_table, property_offset

_VOID = ("void",)  # normalised AMQP void: in a binding it means "header present"


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



def message_headers(properties: bytes) -> dict[str, Any]:
    """The normalised ``headers`` table of a basic content header's property
    flags + list, or {} when absent or malformed (a malformed header routes
    nowhere rather than crashing every replica; the edge lets none through)."""
    try:
        pos = property_offset(properties, HEADERS)
        if pos < 0:
            return {}
        table, _ = decode_table(properties, pos)
    except FieldError:
        return {}
    return {k: norm(v) for k, v in table.items()}


def is_void(v: Any) -> bool:
    return v is _VOID
