"""Message ids and references: what the machine decides about message bytes.

The machine never holds a message's bytes, nor the store that keeps them (rabbit_fifo
leaves bodies to the log and its segment writer). A queue entry holds a message id and
stands for one reference to it; a message routed to N queues is put once with N
references. What applying decides goes to ``State.writes`` in order (cluster/records.py):
a new record, a reference let go, a dead-lettered copy. The replica carries that out on
its store after the entry (cluster/store.py ``run``), and the node reads the bytes of a
Deliver or GetOk by its id when it writes the frame.

Dead-lettering republishes a message under its exchange, routing key and properties
(rabbit_dead_letter), and routes on them; a queue with a delivery limit rewrites the
properties of a returned message (x-delivery-count, a new record: queues.return_msg).
So for every message held by a queue with a dead-letter exchange or a delivery limit
(``holds``) the machine keeps those and the body size in ``State.headers``, with the
number of such queues (or their unacked deliveries) that hold it. Nothing is read while
applying.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cluster.machine.deadletter import with_delivery_count
from cluster.machine.state import Entry, Msg, Queue, State, entry_id
from cluster.records import Copy, Record, RecordError, check_sizes

# (exchange, routing key, properties, body size)
Header = tuple[str, str, bytes, int]


def put(state: State, msg_id: int, exchange: str, routing_key: str, properties: bytes,
        body: bytes, refs: int) -> None:
    """A new message with ``refs`` references. Raises RecordError (before any change) if
    the record format cannot hold it."""
    check_sizes(exchange, routing_key, len(properties), len(body))
    state.writes.append((msg_id, exchange, routing_key, properties, body, refs))


def copy(state: State, msg_id: int, source: int, exchange: str, routing_key: str,
         properties: bytes, size: int, refs: int) -> None:
    """A new message with ``source``'s body (dead-lettering). Raises RecordError (before
    any change) if the record format cannot hold it."""
    check_sizes(exchange, routing_key, len(properties), size)
    state.writes.append(Copy(msg_id, source, exchange, routing_key, properties, refs))


def hold(state: State, msg_id: int, exchange: str, routing_key: str, properties: bytes,
         size: int) -> None:
    """``msg_id`` enters a queue with a dead-letter exchange: keep its header."""
    h = state.headers.get(msg_id)
    if h is None:
        state.headers[msg_id] = [exchange, routing_key, properties, size, 1]
    else:
        h[4] += 1


def holds(q: Queue) -> bool:
    """Whether ``q`` keeps the headers of its messages: it dead-letters them, or it
    rewrites them when they come back (x-delivery-limit: queues.return_msg)."""
    return q.dlx is not None or q.delivery_limit is not None


def tracked(q: Queue) -> bool:
    """Whether every message leaving ``q`` must go through :func:`let_go`: it keeps their
    headers, or their deduplication values (x-message-deduplication)."""
    return q.dlx is not None or q.delivery_limit is not None or q.dedup_ids is not None


def let_go(state: State, q: Queue, msg_id: int) -> None:
    """An entry of ``q`` (queued or delivered unacked) is gone: one reference less."""
    state.writes.append(msg_id)
    ids = q.dedup_ids
    if ids is not None:  # its deduplication value may come again (dedup.py)
        key = ids.pop(msg_id, None)
        if key is not None:
            del q.dedup_keys[key]  # type: ignore[union-attr]
    if q.dlx is not None or q.delivery_limit is not None:
        h = state.headers.get(msg_id)
        if h is None:
            return  # it came before a policy gave q a dead-letter exchange or a limit
        if h[4] == 1:
            del state.headers[msg_id]
        else:
            h[4] -= 1


def header(state: State, msg: Entry) -> Header | None:
    """The header of a message held by a queue with a dead-letter exchange or a delivery
    limit (None: it came before a policy gave the queue one)."""
    h = state.headers.get(entry_id(msg))
    return None if h is None else (h[0], h[1], h[2], h[3])


def count_return(state: State, q: Queue, msg: Msg) -> None:
    """``msg`` comes back to ``q``, a queue with a delivery limit, with
    ``msg.delivery_count`` returns: it becomes a new record, its body copied, with that
    count in header x-delivery-count, and ``msg`` takes its id (so the id orders the
    returned messages by return, as rabbit_fifo's returns queue). Only returned messages
    of such queues pay for this; a message that came before a policy gave ``q`` its
    limit is only counted (its header was not kept)."""
    old = msg.id
    h = state.headers.get(old)
    if h is None:
        return
    exchange, routing_key, properties, size = h[0], h[1], h[2], h[3]
    properties = with_delivery_count(properties, msg.delivery_count)
    new = state.next_msg_id
    try:
        copy(state, new, old, exchange, routing_key, properties, size, 1)
    except RecordError:
        return  # (cannot happen: the same names fitted; then it keeps its record)
    state.next_msg_id = new + 1
    hold(state, new, exchange, routing_key, properties, size)
    ids = q.dedup_ids
    key = ids.pop(old, None) if ids is not None else None
    let_go(state, q, old)
    msg.id = new
    if key is not None:  # the same message under its new id (x-message-deduplication)
        ids[new] = key  # type: ignore[index]
        q.dedup_keys[key] = new  # type: ignore[index]


def take_writes(state: State) -> list[Any]:
    """What applying decided since the last call, in order (cluster/records.py)."""
    writes = state.writes
    state.writes = []
    return writes


def rebuild_headers(state: State, read: Callable[[int], Record]) -> None:
    """Fill ``State.headers`` from the store's records (``read``): a snapshot that does not
    carry them (an earlier release's). Every replica of the same snapshot builds the same."""
    if state.headers_built:
        return
    held: dict[int, int] = {}
    for q in state.queues.values():
        if holds(q) and not q.deleted:
            for m in q.ready:
                i = entry_id(m)
                held[i] = held.get(i, 0) + 1
            for _key, m in q.returned:
                held[m.id] = held.get(m.id, 0) + 1
    for ch in state.channels.values():
        for q, m, _c in ch.unacked.values():
            if holds(q):
                i = entry_id(m)
                held[i] = held.get(i, 0) + 1
    headers: dict[int, list[Any]] = {}
    for msg_id in sorted(held):
        exchange, routing_key, properties, body = read(msg_id)
        headers[msg_id] = [exchange, routing_key, properties, len(body), held[msg_id]]
    state.headers = headers
    state.headers_built = True
