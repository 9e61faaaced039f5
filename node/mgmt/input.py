"""What the management API accepts from a client, checked before anything is proposed.

Pure functions (no aiohttp, no state): each raises :class:`InputError` with a reason the
handler answers as 400. The rules, and why:

* **JSON**: ``NaN``, ``Infinity`` and numbers that overflow a double are refused (they
  would be stored and later written out as invalid JSON, breaking every listing and the
  export of the vhost); nesting is bounded (``MAX_DEPTH``) and measured on the raw text
  before parsing, without recursion (a depth of 100,000 made the parser raise
  RecursionError: a 500 with a traceback); integers have at most ``MAX_DIGITS`` digits.
* **Names** (queues, exchanges, vhosts, users) and **routing keys**: 1 (0 for a routing
  key) to 255 bytes of UTF-8, an AMQP short string; a lone surrogate (``"\\ud800"`` is
  valid JSON) cannot be encoded and is refused.
* **Argument tables** (queue, exchange, binding arguments) become AMQP field tables:
  integers fit a signed 64-bit ``long`` (a larger one could not be encoded in a Raft
  entry: the API said 201 and nothing was declared), floats are finite, keys are short
  strings, and a table has at most ``MAX_ARGUMENT_ITEMS`` entries and
  ``MAX_ARGUMENTS_BYTES`` bytes in all (what one AMQP frame of the default frame_max can
  carry: a client can declare nothing larger, so an export always imports).
"""

from __future__ import annotations

import json
import math
import re
from array import array
from itertools import accumulate
from typing import Any

# An AMQP short string (names, routing keys, table keys): the machine checks the same
# limit on what reaches it; this is the API's check before proposing.
from cluster.machine.names import MAX_NAME_BYTES

MAX_DEPTH = 32  # JSON nesting; RabbitMQ's definitions nest 4 deep, arguments a few more
MAX_DIGITS = 40  # an integer literal (a signed 64-bit value has at most 20)
# Brackets (and quotes of strings with brackets) in one document: bounds the depth
# check's work to ~0.15 s for any body (measured at 16 MiB); an import of 300,000
# objects has 1.2 million.
MAX_MARKS = 2_500_000
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_ARGUMENT_ITEMS = 1024  # keys and array elements at every level of one table
MAX_ARGUMENTS_BYTES = 131072  # the default frame_max: the most an AMQP declare carries
# Arguments whose value names an exchange or is a routing key: a short string each.
NAME_ARGUMENTS = ("x-dead-letter-exchange", "x-dead-letter-routing-key", "alternate-exchange")
MAX_TAGS = 64  # of a user or a vhost
# the limits RaftMQ enforces (RabbitMQ's names), of a vhost and of a user
VHOST_LIMITS = ("max-connections", "max-queues")
USER_LIMITS = ("max-connections", "max-channels")


class InputError(ValueError):
    """A client value the API refuses; the message is the 400's reason."""


# --- JSON --------------------------------------------------------------------------------

_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_NOT_MARK = bytes(b for b in range(256) if b not in b'[]{}"')
_STRING = re.compile(b'"[^"]*"')
# opening brackets to 1, closing ones to 255 (-1 as a signed byte)
_STEPS = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")


def nesting_exceeds(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the UTF-8 JSON text ``raw`` nests deeper than ``limit`` (an InputError
    when it has more than MAX_MARKS brackets to count): the running count of its
    brackets outside strings (+1 opening, -1 closing), with no recursion and at C speed
    (bytes methods, ``accumulate`` over signed bytes: measured ~9 ms a MiB of RabbitMQ
    definitions). In UTF-8 no byte of a multi-byte character is ASCII, so the quotes,
    backslashes and brackets found are the text's own."""
    # Outside strings JSON has no backslash: without its escaped backslashes and quotes,
    # the quotes left delimit the strings. Keep only quotes and brackets; two adjacent
    # quotes hold no bracket outside a string (an empty string, or nothing between two),
    # so they go too, and what remains between quotes is inside a string.
    marks = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_MARK)
    marks = marks.replace(b'""', b"")
    if len(marks) > MAX_MARKS:
        raise InputError(f"more than {MAX_MARKS} arrays, objects and strings with brackets")
    outside = _STRING.sub(b"", marks)
    brackets = outside.translate(_STEPS, _NOT_BRACKET)
    if re.search(b"\x01{%d}" % (limit + 1), brackets):  # the usual attack, found at once
        return True
    return max(accumulate(array("b", brackets)), default=0) > limit


def _no_constant(name: str) -> Any:
    raise InputError(f"{name} is not a valid JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InputError(f"number {text[:40]} is out of range")
    return value


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise InputError(f"integer {text[:40]}... is out of range")
    return int(text)


def parse_json(raw: bytes) -> Any:
    """The JSON document ``raw`` (empty: ``{}``) under the rules of the module docstring."""
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")  # (json.loads would guess UTF-16 and 32 too)
    except UnicodeDecodeError as e:
        raise InputError(f"invalid JSON: not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        too_deep = nesting_exceeds(raw)
    except InputError as e:
        raise InputError(f"invalid JSON: {e}") from None
    if too_deep:
        raise InputError(f"invalid JSON: nested deeper than {MAX_DEPTH} levels "
                         "(or unbalanced brackets)")
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite,
                          parse_int=_integer)
    except InputError as e:
        raise InputError(f"invalid JSON: {e}") from None
    except (ValueError, RecursionError) as e:
        raise InputError(f"invalid JSON: {e}") from None


# --- names ----------------------------------------------------------------------------


def utf8_length(value: str, what: str) -> int:
    """Bytes of ``value`` in UTF-8; a lone surrogate cannot be encoded."""
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InputError(f"{what} is not valid Unicode (a lone surrogate)") from None


def check_text(value: Any, what: str, max_bytes: int | None = None,
               empty: bool = True) -> str:
    """``value`` if it is a string of valid Unicode, not empty unless ``empty``, at most
    ``max_bytes`` of UTF-8."""
    if not isinstance(value, str):
        raise InputError(f"{what} must be a string")
    size = utf8_length(value, what)
    if not empty and size == 0:
        raise InputError(f"{what} must not be empty")
    if max_bytes is not None and size > max_bytes:
        raise InputError(f"{what} is longer than {max_bytes} bytes of UTF-8")
    return value


def check_name(value: Any, what: str) -> str:
    """A queue, exchange, vhost or user name: 1 to 255 bytes of UTF-8."""
    return check_text(value, what, MAX_NAME_BYTES, empty=False)


def check_short(value: Any, what: str) -> str:
    """A routing key, an exchange name that may be "" (the default exchange)."""
    return check_text(value, what, MAX_NAME_BYTES)


def check_regex(value: Any, what: str) -> str:
    """A permission pattern: a string that compiles."""
    check_text(value, what)
    try:
        re.compile(value)
    except (re.error, RecursionError, OverflowError) as e:
        raise InputError(f"{what}: invalid regular expression: {e}") from None
    return str(value)


# --- argument tables -------------------------------------------------------------------


def check_arguments(value: Any, what: str = "arguments") -> dict[str, Any]:
    """``value`` (None or {} for none) as an argument table that encodes as an AMQP field
    table within the module's bounds; refused with the first offending entry named."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{what} must be a JSON object")
    budget = _Budget()
    _table(value, what, budget)
    for key in NAME_ARGUMENTS:
        if isinstance(value.get(key), str):
            check_short(value[key], f"{what}: {key}")
    return value


class _Budget:
    __slots__ = ("items", "size")

    def __init__(self) -> None:
        self.items = 0
        self.size = 0

    def spend(self, items: int, size: int, what: str) -> None:
        self.items += items
        self.size += size
        if self.items > MAX_ARGUMENT_ITEMS:
            raise InputError(f"{what}: more than {MAX_ARGUMENT_ITEMS} entries")
        if self.size > MAX_ARGUMENTS_BYTES:
            raise InputError(f"{what}: larger than {MAX_ARGUMENTS_BYTES} bytes")


def _table(table: dict[Any, Any], what: str, budget: _Budget) -> None:
    for key, v in table.items():
        if not isinstance(key, str):
            raise InputError(f"{what}: keys must be strings")
        size = utf8_length(key, f"{what}: key")
        if size > MAX_NAME_BYTES:
            raise InputError(f"{what}: key {key[:40]!r}... is longer than {MAX_NAME_BYTES} "
                             "bytes")
        budget.spend(1, size, what)
        _value(v, f"{what}: {key[:40]}", budget)


def _value(v: Any, what: str, budget: _Budget) -> None:
    # (nesting is bounded by the JSON depth check: recursion here stays shallow)
    if v is None or isinstance(v, bool):
        budget.spend(0, 1, what)
    elif isinstance(v, int):
        if not INT64_MIN <= v <= INT64_MAX:
            raise InputError(f"{what}: integer {v} does not fit 64 bits (signed)")
        budget.spend(0, 8, what)
    elif isinstance(v, float):
        if not math.isfinite(v):
            raise InputError(f"{what}: {v} is not a finite number")
        budget.spend(0, 8, what)
    elif isinstance(v, str):
        budget.spend(0, utf8_length(v, what), what)
    elif isinstance(v, dict):
        _table(v, what, budget)
    elif isinstance(v, list):
        budget.spend(len(v), 0, what)
        for item in v:
            _value(item, what, budget)
    else:
        raise InputError(f"{what}: {type(v).__name__} values are not supported")
