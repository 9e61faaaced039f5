"""Delayed messages: the exchange type ``x-delayed-message`` of the community plugin
rabbitmq-delayed-message-exchange, in the replicated state (from level 4).

The plugin's interface: an exchange of type ``x-delayed-message`` with the argument
``x-delayed-type`` (direct, fanout, topic or headers: how it routes; 406 "Invalid
argument, 'x-delayed-type' must be an existing exchange type" otherwise). A message
published to it with header ``x-delay`` (ms, an integer or a string of one) in
``(0, 2^32 - 1]`` is held that long, then routed through the exchange's bindings as they
are then, with ``x-delay`` negated (how the plugin marks a message that was delayed);
any other message is routed at once. As in the plugin, a publisher confirm comes when
the message is held, and ``mandatory`` is not supported: the message routes to no queue
at publish time, so a mandatory one is returned (and still delivered when due).

Unlike the plugin, which keeps delayed messages in one node's Mnesia table, they are in
the replicated state: a node lost, even the leader, loses none, and the new leader's
Tick releases them (``expiry.expire_due`` calls ``expiry.release_delayed``). The machine keeps
per message what routing needs (exchange, routing key, properties, body size) in
``State.delayed``, a heap by due time; the body is the store's, as a queued message's.
A message due when its exchange (or vhost) is gone is dropped.
"""

from __future__ import annotations

import heapq
import struct
from typing import Any

from cluster import commands as C
from cluster.machine import errors as E
from cluster.machine import messages
from cluster.machine.deadletter import join_properties, split_properties
from cluster.machine.dedup import DEDUP
from cluster.machine.errors import error
from cluster.machine.state import Channel, Exchange, State
from protocol.fields import (
    HEADERS,
    FieldError,
    encode_table,
    int_value,
    string_value,
    table_entries,
)

DELAYED = "x-delayed-message"
ROUTING_TYPES = ("direct", "fanout", "topic", "headers")
MAX_DELAY = 4294967295  # the plugin's ?ERL_MAX_T
DELAYED_LEVEL = 4  # the command level from which the exchange type exists

_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")

# One held message: (due ms, message id, vhost, exchange, routing key, properties, size).
Held = tuple[int, int, str, str, str, bytes, int]


def check_declare(arguments: dict[str, Any], method: tuple[int, int]) -> None:
    """exchange.declare of an x-delayed-message exchange: its routing type must exist."""
    t = arguments.get("x-delayed-type")
    if isinstance(t, bytes):
        t = t.decode("utf-8", "replace")
    if t not in ROUTING_TYPES:
        raise error(E.PRECONDITION_FAILED,
                    "Invalid argument, 'x-delayed-type' must be an existing exchange type",
                    method)


def routing_type(ex: Exchange) -> str:
    """The type ``ex`` routes as: its own, or an x-delayed-message exchange's x-delayed-type."""
    t = ex.type
    if t != DELAYED:
        return "fanout" if t == DEDUP else t  # (an x-message-deduplication exchange)
    v = ex.arguments.get("x-delayed-type")
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _delay(props: bytes) -> tuple[int | None, list[tuple[bytes, bytes]] | None]:
    """The message's x-delay in ms when it is to be held (in (0, MAX_DELAY]), and its
    decoded headers (to negate it)."""
    if not props or not props[0] & 0x20:  # the headers flag (bit 13)
        return None, None
    try:
        _flags, _extra, raw = split_properties(props)
        headers_raw = raw[HEADERS]
        if headers_raw is None:
            return None, None
        entries = table_entries(headers_raw)
    except FieldError:
        return None, None
    for k, v in entries:
        if k == b"x-delay":
            d = int_value(v)
            if d is None:
                s = string_value(v)
                if s is not None and s.lstrip(b"-").isdigit():
                    d = int(s)
            if d is not None and 0 < d <= MAX_DELAY:
                return d, entries
            return None, None
    return None, None


def _negated(props: bytes, entries: list[tuple[bytes, bytes]], delay: int) -> bytes:
    """The properties with x-delay set to -delay (a signed 32-bit integer where it fits, as
    the plugin writes it), every other header kept in place."""
    flags, extra, raw = split_properties(props)
    value = b"I" + _I32.pack(-delay) if delay <= 0x80000000 else b"l" + _I64.pack(-delay)
    raw[HEADERS] = encode_table([(k, value if k == b"x-delay" else v) for k, v in entries])
    return join_properties(flags, extra, raw)


def hold(state: State, ch: Channel, ex: Exchange, cmd: C.Publish) -> bool:
    """A message published to ``ex`` (an x-delayed-message exchange): held (True) if its
    x-delay says so, else False (the caller routes it now). Raises RecordError before any
    change if the store cannot hold it."""
    delay, entries = _delay(cmd.properties)
    if delay is None or entries is None:
        return False
    props = _negated(cmd.properties, entries, delay)
    msg_id = state.next_msg_id
    messages.put(state, msg_id, ex.name, cmd.routing_key, props, cmd.body, 1)
    state.next_msg_id = msg_id + 1
    due = state.now_ms + delay
    heapq.heappush(state.delayed, (due, msg_id, ch.vhost, ex.name, cmd.routing_key, props,
                                   len(cmd.body)))
    nd = state.next_due
    if nd is None or due < nd:
        state.next_due = due
    return True


def next_release(state: State) -> int | None:
    return state.delayed[0][0] if state.delayed else None


def count(state: State, vhost: str, exchange: str) -> int:
    """Messages held for an exchange (the plugin's messages_delayed)."""
    return sum(1 for h in state.delayed if h[2] == vhost and h[3] == exchange)
