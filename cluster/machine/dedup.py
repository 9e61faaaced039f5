"""Publish deduplication: the exchange type ``x-message-deduplication`` of the community
plugin rabbitmq-message-deduplication (0.6, the releases for RabbitMQ 3.10), in the
replicated state (from level 4).

The plugin's interface: an exchange of type ``x-message-deduplication`` with the
arguments ``x-cache-size`` (required, an integer > 0: entries kept), ``x-cache-ttl``
(optional, ms an entry is kept) and ``x-cache-persistence`` (optional, ``memory`` or
``disk``; every entry here is replicated and in the snapshots, whichever is asked). It
routes as a fanout exchange. A message with header ``x-deduplication-header`` whose value
the exchange has seen (within the TTL: the exchange's, or the message's own header
``x-cache-ttl``) is a duplicate: routed nowhere, so confirmed (and returned if
mandatory) and dropped; any other message is routed and its value remembered. When the
cache is full the oldest entry gives way.

Unlike the plugin's (a Mnesia table on one node, or in memory), the cache is in the
replicated state (``Exchange.dedup``: value -> expiry ms, insertion ordered): a duplicate
is recognised whichever node it is published on and after any node is lost. A value
longer than 64 bytes is kept as its SHA-256, so an entry costs at most ~100 bytes and the
cache at most ``x-cache-size`` entries.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cluster.machine import errors as E
from cluster.machine.deadletter import split_properties
from cluster.machine.errors import error
from cluster.machine.state import Exchange, State
from protocol.fields import HEADERS, FieldError, int_value, string_value, table_entries

DEDUP = "x-message-deduplication"
DEDUP_LEVEL = 4
KEY_MAX = 64  # longer header values are kept as their SHA-256
NO_EXPIRY = -1


def _positive(v: Any) -> int | None:
    """An integer > 0, as the plugin takes it (an integer, or a string of one)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, str):
        s = v.strip()
        v = int(s) if s.lstrip("+-").isdigit() else None
    return v if isinstance(v, int) and v > 0 else None


def check_declare(arguments: dict[str, Any], method: tuple[int, int]) -> None:
    """exchange.declare of an x-message-deduplication exchange: 406 as the plugin's validate."""
    if _positive(arguments.get("x-cache-size")) is None:
        raise error(E.PRECONDITION_FAILED, "Missing or invalid argument, 'x-cache-size' must "
                    "be an integer greater than 0", method)
    if "x-cache-ttl" in arguments and _positive(arguments["x-cache-ttl"]) is None:
        raise error(E.PRECONDITION_FAILED, "Invalid argument, 'x-cache-ttl' must be an "
                    "integer greater than 0", method)
    p = arguments.get("x-cache-persistence")
    if isinstance(p, bytes):
        p = p.decode("utf-8", "replace")
    if "x-cache-persistence" in arguments and p not in ("disk", "memory"):
        raise error(E.PRECONDITION_FAILED, "Invalid argument, 'x-cache-persistence' must be "
                    "either 'disk' or 'memory'", method)


def _headers(props: bytes) -> tuple[bytes | None, int | None]:
    """(the x-deduplication-header value as the key, the x-cache-ttl header) of a message."""
    if not props or not props[0] & 0x20:  # no headers
        return None, None
    try:
        raw = split_properties(props)[2][HEADERS]
        entries = table_entries(raw) if raw is not None else []
    except FieldError:
        return None, None
    key: bytes | None = None
    ttl: int | None = None
    for k, v in entries:
        if k == b"x-deduplication-header":
            key = v if len(v) <= KEY_MAX else b"#" + hashlib.sha256(v).digest()
        elif k == b"x-cache-ttl":
            t = int_value(v)
            if t is None:
                s = string_value(v)
                t = int(s) if s is not None and s.isdigit() else None
            ttl = t if t is not None and t > 0 else None
    return key, ttl


def duplicate(state: State, ex: Exchange, props: bytes) -> bool:
    """Whether a message published to ``ex`` (an x-message-deduplication exchange) is a
    duplicate; if not, and it has a deduplication header, its value is remembered."""
    key, ttl = _headers(props)
    if key is None:
        return False
    cache = ex.dedup
    if cache is None:
        cache = ex.dedup = {}
    now = state.now_ms
    exp = cache.get(key)
    if exp is not None:
        if exp == NO_EXPIRY or exp > now:
            return True
        del cache[key]  # expired: the message is routed, and the value remembered again
    if ttl is None:
        ttl = _positive(ex.arguments.get("x-cache-ttl"))
    size = _positive(ex.arguments.get("x-cache-size")) or 1
    while len(cache) >= size:
        del cache[next(iter(cache))]  # full: the oldest entry gives way
    cache[key] = now + ttl if ttl is not None else NO_EXPIRY
    return False


# --- queue level: x-message-deduplication = true ------------------------------------------
# As the plugin's deduplication queues: a message whose x-deduplication-header value is
# that of a message the queue holds (ready, or delivered and not yet acknowledged) is not
# enqueued; the value is free again once that message is acknowledged or leaves the queue
# otherwise (dropped, expired, dead-lettered, purged, fetched without ack). A message
# requeued keeps it. The values are the queue's (Queue.dedup_ids / dedup_keys), forgotten
# where every message leaving a queue passes (messages.let_go).


def for_queues(targets: list[Any], props: bytes) -> tuple[list[Any], bytes | None]:
    """The queues among ``targets`` that take the message (a deduplication queue holding
    its value does not), and its deduplication value."""
    key, _ttl = _headers(props)
    if key is None:
        return targets, None
    return [q for q in targets if q.dedup_keys is None or key not in q.dedup_keys], key


def enter(q: Any, props: bytes, msg_id: int) -> bool:
    """A message published to ``q``, a deduplication queue: True if the queue holds its
    value (a duplicate: not enqueued); else its value, if any, is remembered."""
    key, _ttl = _headers(props)
    if key is None:
        return False
    if key in q.dedup_keys:
        return True
    remember(q, key, msg_id)
    return False


def remember(q: Any, key: bytes, msg_id: int) -> None:
    """``msg_id`` enters ``q``, a deduplication queue, with value ``key``."""
    q.dedup_ids[msg_id] = key
    q.dedup_keys[key] = msg_id
