"""Rewriting a dead-lettered message's properties, at the wire level.

As RabbitMQ 3.10's rabbit_dead_letter: the ``x-death`` header (an array of
tables, most recent first) gets an entry for ``(queue, reason)``, or the existing
entry for that pair gets its count incremented and moves to the front; the first
death also adds ``x-first-death-reason`` / ``-queue`` / ``-exchange``; the
``expiration`` property is removed (recorded as ``original-expiration``) so the
message does not expire again where it lands; with a dead-letter routing key the
``CC`` header goes. Every other property and header is copied byte for byte.
"""

from __future__ import annotations

import struct

from protocol.fields import (
    EXPIRATION,
    HEADERS,
    Entry,
    FieldError,
    array_items,
    encode_array,
    encode_table,
    int_value,
    longstr,
    property_flags,
    property_spans,
    string_value,
    table_entries,
)

_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_U16 = struct.Struct(">H")

Death = tuple[bytes | None, bytes | None]  # (queue, reason) of one x-death entry


def _get(entries: list[Entry], key: bytes) -> bytes | None:
    for k, v in entries:
        if k == key:
            return v
    return None


def _set(entries: list[Entry], key: bytes, value: bytes) -> None:
    """rabbit_misc:set_table_value: replace in place or append (sorted afterwards)."""
    for i, (k, _v) in enumerate(entries):
        if k == key:
            entries[i] = (key, value)
            return
    entries.append((key, value))


def split_properties(props: bytes) -> tuple[int, bytes, list[bytes | None]]:
    """(flags, continuation flag words, raw bytes of each of the 14 properties)."""
    flags, pos = property_flags(props)
    spans = property_spans(props)
    return flags, props[2:pos], [props[sp[0]:sp[1]] if sp is not None else None for sp in spans]


def join_properties(flags: int, extra: bytes, raw: list[bytes | None]) -> bytes:
    flags &= 0x0003  # keep the reserved/continuation bits, recompute the rest
    parts = []
    for i, value in enumerate(raw):
        if value is not None:
            flags |= 0x8000 >> i
            parts.append(value)
    return _U16.pack(flags) + extra + b"".join(parts)


def _death_table(entries: list[Entry]) -> bytes:
    return b"F" + encode_table(entries)


def record_death(props: bytes, reason: str, queue: str, exchange: str, routing_key: str,
                 now_s: int, drop_cc: bool) -> tuple[bytes, list[Death]]:
    """The properties of the dead-lettered copy, and its deaths (queue, reason) in
    x-death order (for cycle detection). Malformed properties are left as they are."""
    try:
        flags, extra, raw = split_properties(props)
        headers_raw = raw[HEADERS]
        headers = table_entries(headers_raw) if headers_raw is not None else []
    except FieldError:
        return props, [(queue.encode(), reason.encode())]
    q, r, x = queue.encode(), reason.encode(), exchange.encode()
    expiration = raw[EXPIRATION]
    info: list[Entry] = [
        (b"reason", longstr(r)),
        (b"queue", longstr(q)),
        (b"time", b"T" + _U64.pack(max(now_s, 0))),
        (b"exchange", longstr(x)),
        (b"routing-keys", encode_array([longstr(routing_key.encode())])),
    ]
    if expiration is not None:
        info.append((b"original-expiration", longstr(expiration[1:])))
    deaths: list[Death]
    old = _get(headers, b"x-death")
    if old is None:
        _set(headers, b"x-first-death-reason", longstr(r))
        _set(headers, b"x-first-death-queue", longstr(q))
        _set(headers, b"x-first-death-exchange", longstr(x))
        _set(headers, b"x-death", encode_array([_death_table([(b"count", b"l" + _I64.pack(1)),
                                                              *info])]))
        deaths = [(q, r)]
    elif old[:1] != b"A":
        # not an array (a client re-published it converted): reset it
        _set(headers, b"x-death", encode_array([_death_table([(b"count", b"l" + _I64.pack(1)),
                                                              *info])]))
        deaths = [(q, r)]
    else:
        try:
            items = array_items(old)
        except FieldError:
            items = []
        match: list[Entry] | None = None
        others: list[bytes] = []
        other_deaths: list[Death] = []
        for item in items:
            table = _table_of(item)
            if table is None:
                others.append(item)
                other_deaths.append((None, None))
                continue
            dq, dr = string_value(_get(table, b"queue")), string_value(_get(table, b"reason"))
            if match is None and dq == q and dr == r:
                match = table
            else:
                others.append(item)
                other_deaths.append((dq, dr))
        if match is None:
            entry = [(b"count", b"l" + _I64.pack(1)), *info]
        else:  # the earlier entry, its count incremented (rabbit_dead_letter keeps its fields)
            count = int_value(_get(match, b"count"))
            entry = list(match)
            _set(entry, b"count", b"l" + _I64.pack((count or 0) + 1))
        entry.sort(key=lambda kv: kv[0])
        _set(headers, b"x-death", encode_array([_death_table(entry), *others]))
        deaths = [(q, r), *other_deaths]
    if drop_cc:
        headers = [(k, v) for k, v in headers if k != b"CC"]
    headers.sort(key=lambda kv: kv[0])  # rabbit_misc:set_table_value sorts the table
    raw[HEADERS] = encode_table(headers)
    raw[EXPIRATION] = None
    return join_properties(flags, extra, raw), deaths


def _table_of(item: bytes) -> list[Entry] | None:
    if item[:1] != b"F":
        return None
    try:
        return table_entries(item, 1)
    except FieldError:
        return None


def is_cycle(queue: bytes, deaths: list[Death]) -> bool:
    """rabbit_dead_letter's is_cycle: the message has died in ``queue`` before, and
    no death since (including that one) was a rejection."""
    for dq, dr in deaths:
        if dq is None and dr is None:
            return False  # something a client put there: not "fully automatic"
        if dr == b"rejected":
            return False
        if dq == queue:
            return True
    return False


# --- x-delivery-count (x-delivery-limit queues) ----------------------------------------

DELIVERY_COUNT = b"x-delivery-count"


def _rewrite_headers(props: bytes, count: int | None) -> bytes:
    """``props`` with the x-delivery-count header set to ``count`` (None: removed), the
    headers table sorted as rabbit_misc:set_table_value leaves it; malformed
    properties are left as they are."""
    try:
        flags, extra, raw = split_properties(props)
        headers_raw = raw[HEADERS]
        headers = table_entries(headers_raw) if headers_raw is not None else []
    except FieldError:
        return props
    if count is None:
        if _get(headers, DELIVERY_COUNT) is None:
            return props
        headers = [(k, v) for k, v in headers if k != DELIVERY_COUNT]
    else:
        _set(headers, DELIVERY_COUNT, b"l" + _I64.pack(count))
        headers.sort(key=lambda kv: kv[0])
    raw[HEADERS] = encode_table(headers)
    return join_properties(flags, extra, raw)


def with_delivery_count(props: bytes, count: int) -> bytes:
    """The properties a returned message of a queue with a delivery limit is
    redelivered with: header ``x-delivery-count`` (a long) = its returns so far, as
    RabbitMQ 3.10's quorum queues add it to a redelivery (rabbit_quorum_queue)."""
    return _rewrite_headers(props, count)


def without_delivery_count(props: bytes) -> bytes:
    """The properties without x-delivery-count: a quorum queue adds it to deliveries
    only, so a dead-lettered message does not carry it."""
    return _rewrite_headers(props, None)
