"""The feature-aware ("slow") queue paths: message TTL, length limits, priority
queues, consumer priorities, single active consumer, and the deadline index.

A queue takes these paths when ``Queue.slow`` is set: from its arguments
(x-message-ttl, x-max-length[-bytes], x-max-priority), from a consumer with an
x-priority, or from holding a message with a per-message TTL (``expiration``).
Plain queues never touch this module on the publish / deliver / ack hot path.

Layout of a slow queue's ready messages:

* not a priority queue: as a plain queue, ``returned`` (a heap by message id)
  then ``ready`` (FIFO);
* priority queue: everything in ``returned``, a heap keyed by
  ``(max_priority - priority) << 48 | id``: highest priority first, and within a
  priority by message id, which puts requeued messages (older) ahead of the
  never-delivered ones, as RabbitMQ's per-priority backing queues do.

Expiry happens at the queue head (RabbitMQ's classic queues do the same for
per-message TTL; a per-queue TTL is uniform, so the head is always the oldest).
A message is expired once ``now_ms >= expires_at``; a message with TTL 0 is
still handed to a consumer with credit when it arrives, as RabbitMQ does.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from typing import cast

from cluster.effects import Deliver, Effect
from cluster.machine import messages
from cluster.machine.deadletter import without_delivery_count
from cluster.machine.fifo import IdFifo
from cluster.machine.state import Channel, Consumer, Entry, Msg, Queue, State, entry_id
from protocol.fields import PRIORITY, FieldError, octet_property

PRIO_SHIFT = 48


# A no-ack consumer has no prefetch to bound what is handed to it: at most this many
# deliveries on their way to its socket (RabbitMQ's credit_flow plays this part).
NOACK_WINDOW = 1000


def has_credit(c: Consumer, ch: Channel) -> bool:
    if not ch.flow or ch.paused:
        return False
    if c.no_ack:
        return c.sent < NOACK_WINDOW
    if c.prefetch and c.unacked >= c.prefetch:
        return False
    return not (ch.global_prefetch and ch.global_unacked >= ch.global_prefetch)


# --- ready messages ------------------------------------------------------------------


def message_priority(q: Queue, properties: bytes) -> int:
    """The priority property (0 if absent), where ``q`` is a priority queue; capped at
    its x-max-priority."""
    if not q.max_priority or not properties or not properties[0] & 0x08:
        return 0
    try:
        p = octet_property(properties, PRIORITY) or 0
    except FieldError:
        p = 0  # only a replica of an old log can hold one: the edge validates
    return min(p, q.max_priority)


def prio_key(q: Queue, msg: Msg) -> int:
    return ((q.max_priority - msg.priority) << PRIO_SHIFT) | msg.id


def peek(q: Queue) -> Msg:
    """The head of a slow queue (whose entries are all Msg: see make_slow)."""
    return cast(Msg, q.returned[0][1] if q.returned else q.ready[0])


def needs_slow(q: Queue) -> bool:
    """Whether the queue's configuration alone needs the feature-aware paths."""
    return (q.message_ttl is not None or q.max_length is not None
            or q.max_length_bytes is not None or q.max_priority > 0 or q.consumer_priorities)


def make_slow(q: Queue) -> None:
    """The queue takes the feature-aware paths from now on; entries that are bare ids
    (a plain queue's) become Msg, which those paths read."""
    if q.slow:
        return
    q.slow = True
    q.ready = deque(Msg(m, 0) if type(m) is int else m for m in q.ready)


def push_ready(q: Queue, msg: Msg) -> None:
    """A new message at the tail (of its priority)."""
    if q.max_priority:
        heapq.heappush(q.returned, (prio_key(q, msg), msg))
    else:
        cast("deque[Entry]", q.ready).append(msg)  # a slow queue: a deque (make_slow)
    if q.max_length_bytes is not None:
        q.ready_bytes += msg.size


def push_returned(q: Queue, msg: Msg) -> None:
    """A returned message back at the head (of its priority), in original order."""
    heapq.heappush(q.returned, (prio_key(q, msg) if q.max_priority else msg.id, msg))
    if q.max_length_bytes is not None:
        q.ready_bytes += msg.size


def pop_head(q: Queue) -> Msg:
    msg = cast(Msg, heapq.heappop(q.returned)[1] if q.returned else q.ready.popleft())
    if q.max_length_bytes is not None:
        q.ready_bytes -= msg.size
    return msg


def dead_letter(state: State, q: Queue, msg: Entry, reason: str) -> None:
    """``msg`` leaves ``q`` for ``reason`` (rejected / expired / maxlen /
    delivery_limit): republish it to the queue's dead-letter exchange, if any, once the
    current command is done (``expiry.flush_dead_letters``, as a new message); without
    one it is dropped (and so is a message that came before a policy gave ``q`` its
    dead-letter exchange: the machine has not kept its header)."""
    if q.dlx is not None:
        hdr = messages.header(state, msg)
        if hdr is not None:
            if type(msg) is not int and msg.delivery_count and q.delivery_limit is not None:  # type: ignore[union-attr]
                # returned, so its record carries x-delivery-count: the dead-lettered
                # copy does not (a quorum queue adds it to deliveries only)
                hdr = (hdr[0], hdr[1], without_delivery_count(hdr[2]), hdr[3])
            state.dl_pending.append((q.vhost, q.name, q.dlx, q.dlrk, msg, reason, hdr))
    messages.let_go(state, q, entry_id(msg))  # its body is copied when republished


def expire_head(state: State, q: Queue, fresh: Msg | None = None) -> None:
    """Drop (dead-letter) expired messages at the head; ``fresh`` is exempt (a TTL 0
    message that may still go straight to a consumer)."""
    now = state.now_ms
    while q.ready or q.returned:
        m = peek(q)
        e = m.expires_at
        if e is None or e > now or m is fresh:
            return
        pop_head(q)
        dead_letter(state, q, m, "expired")


def over_limit(q: Queue, extra_count: int = 0, extra_bytes: int = 0) -> bool:
    ml, mb = q.max_length, q.max_length_bytes
    return ((ml is not None and q.ready_count() + extra_count > ml)
            or (mb is not None and q.ready_bytes + extra_bytes > mb))


def enforce_max_length(state: State, q: Queue) -> None:
    """x-overflow drop-head: drop (dead-letter, reason maxlen) the oldest ready
    messages while the queue is over its limits."""
    if q.overflow != "drop-head" or (q.max_length is None and q.max_length_bytes is None):
        return
    while (q.ready or q.returned) and over_limit(q):
        dead_letter(state, q, pop_head(q), "maxlen")


# --- consumers -----------------------------------------------------------------------


def insert_service(q: Queue, c: Consumer) -> None:
    """Back into the service deque: behind consumers of equal or higher priority."""
    s = q.service
    if not q.consumer_priorities or not s or s[-1].priority >= c.priority:
        s.append(c)
        return
    for i, x in enumerate(s):
        if x.priority < c.priority:
            s.insert(i, c)
            return
    s.append(c)


def is_active(q: Queue, c: Consumer) -> bool:
    """Single active consumer: only the active one receives."""
    return not q.single_active or q.active_consumer == (c.ch, c.tag)


class _Succession:
    """Single active consumer: who takes over next, as a heap of (-priority, order,
    consumer) over the queue's consumers, derived from ``Queue.consumers`` (whose
    insertion order is registration order) and kept beside it. Consumers that left stay
    in the heap until they reach its top, so each removal costs O(log n) instead of a
    scan of every consumer (a connection with n consumers closing: O(n log n), not
    O(n²)); rebuilt when stale entries outnumber live ones."""

    __slots__ = ("heap", "order")

    def __init__(self, consumers: Iterable[Consumer]) -> None:
        self.heap = [(-c.priority, i, c) for i, c in enumerate(consumers)]
        heapq.heapify(self.heap)
        self.order = len(self.heap)


def _succession(q: Queue) -> _Succession:
    sac = q.sac
    if sac is None or len(sac.heap) > 2 * len(q.consumers) + 16:
        sac = q.sac = _Succession(q.consumers.values())
    return cast(_Succession, sac)


def consumer_added(q: Queue, c: Consumer) -> None:
    """A new consumer of a single-active-consumer queue joins the succession."""
    sac = q.sac
    if sac is not None:
        heapq.heappush(sac.heap, (-c.priority, sac.order, c))
        sac.order += 1
        _succession(q)  # rebuilt if it holds too many that left


def next_active(q: Queue) -> Consumer | None:
    """Who takes over from a single active consumer: the highest x-priority, the
    earliest registered among equals (rabbit_queue_consumers:get_consumer)."""
    heap = _succession(q).heap
    consumers = q.consumers
    best = None
    while heap:
        c = heap[0][2]
        if consumers.get((c.ch, c.tag)) is c:
            best = c
            break
        heapq.heappop(heap)  # left the queue
    q.active_consumer = (best.ch, best.tag) if best is not None else None
    return best


# --- delivery ------------------------------------------------------------------------


def run_slow(state: State, q: Queue, out: list[Effect], fresh: Msg | None = None) -> None:
    """run_queue for slow queues: deliver (never an expired message), then apply
    the length limit and expire the head, then record the queue's deadline."""
    service = q.service
    if service:
        channels = state.channels
        now = state.now_ms
        cprio = q.consumer_priorities
        while service and (q.ready or q.returned):
            m = peek(q)
            if m.expires_at is not None and m.expires_at <= now and m is not fresh:
                pop_head(q)
                dead_letter(state, q, m, "expired")
                continue
            c = service.popleft()
            if not c.in_service:  # removed meanwhile (queues.remove_consumer)
                q.service_stale -= 1
                continue
            ch = channels[c.ch]
            if not has_credit(c, ch):
                c.in_service = False
                continue
            msg = pop_head(q)
            ch.last_tag = tag = ch.last_tag + 1
            if c.no_ack:
                c.sent += 1
                messages.let_go(state, q, msg.id)
            else:
                ch.unacked[tag] = (q, msg, c)
                c.unacked += 1
                ch.global_unacked += 1
                q.unacked += 1
            out.append(Deliver(ch.key, c.tag, tag, msg.redelivered, msg.id, c.no_ack))
            q.n_delivered += 1
            q.n_redelivered += msg.redelivered
            if cprio:
                insert_service(q, c)
            else:
                service.append(c)
    enforce_max_length(state, q)
    expire_head(state, q)
    if not (q.ready or q.returned or q.unacked) and not needs_slow(q):
        q.slow = False  # no message with a TTL left anywhere: back to the fast paths
        q.ready = IdFifo()
    schedule(state, q)


def enqueue(state: State, q: Queue, msg: Msg, msg_ttl: int | None,
            out: list[Effect]) -> bool:
    """A newly published (or dead-lettered) message arrives at ``q``, which takes over
    one reference to its bytes. False when the queue refuses it (x-overflow
    reject-publish / reject-publish-dlx): the reference is let go then."""
    ttl = q.message_ttl
    if msg_ttl is not None and (ttl is None or msg_ttl < ttl):
        ttl = msg_ttl
    if ttl is not None:
        msg.expires_at = state.now_ms + ttl
        make_slow(q)
    if q.slow:
        expire_head(state, q)
        if q.overflow != "drop-head" and over_limit(q, 1, msg.size):
            if q.overflow == "reject-publish-dlx":
                dead_letter(state, q, msg, "maxlen")
            else:
                messages.let_go(state, q, msg.id)
            return False
    push_ready(q, msg)
    run_slow(state, q, out, fresh=msg)
    return True


# --- deadlines -----------------------------------------------------------------------


def queue_deadline(q: Queue) -> int | None:
    """When something about ``q`` expires next: its head message, or the queue
    itself (x-expires, counted from its last use while it has no consumers)."""
    d = None
    if q.slow and (q.ready or q.returned):
        d = peek(q).expires_at
    if q.expires is not None and not q.consumers:
        e = q.last_used + q.expires
        if d is None or e < d:
            d = e
    return d


def schedule(state: State, q: Queue) -> None:
    """Record ``q`` in the deadline index after anything that may have given it an
    earlier deadline (``next_due`` stays a lower bound of all deadlines)."""
    d = queue_deadline(q)
    if d is None:
        return
    if q.qid not in state.timed:
        state.timed[q.qid] = state.timed_seq
        state.timed_seq += 1
    if state.deadlines_built:
        push_deadline(state, q.qid, d)
    nd = state.next_due
    if nd is None or d < nd:
        state.next_due = d


def push_deadline(state: State, qid: int, d: int) -> None:
    """Keep an entry no later than ``d`` in the deadline heap for ``qid``. Entries
    that went stale (the queue's deadline moved, or it left) are dropped when popped,
    and the heap is rebuilt once they outnumber the live ones: its size stays linear in
    the timed queues whatever a tenant does."""
    cur = state.pushed.get(qid)
    if cur is not None and cur <= d:
        return
    state.pushed[qid] = d
    heap = state.deadlines
    heapq.heappush(heap, (d, qid))
    if len(heap) > 2 * len(state.pushed) + 64:
        heap[:] = sorted((dl, i) for i, dl in state.pushed.items())


def touch(state: State, q: Queue) -> None:
    """The queue was used (declare, basic.get, last consumer gone): x-expires restarts."""
    if q.expires is not None:
        q.last_used = state.now_ms
        schedule(state, q)
