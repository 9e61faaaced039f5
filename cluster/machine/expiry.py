"""Time-driven work and dead-letter republishing.

``State.timed`` indexes the queues that may have a deadline (a message with a TTL
at their head, or x-expires while unused) and ``State.next_due`` is a lower bound
of the earliest one. ``apply`` calls :func:`expire_due` before a command once
``now_ms`` has reached ``next_due``, so commands never see anything overdue; a
``Tick`` command lets time pass when nothing else happens, and the leader
proposes one at :func:`next_deadline`.
"""

from __future__ import annotations

import heapq

from cluster import commands as C
from cluster.effects import Effect
from cluster.machine import messages
from cluster.machine.basic import message_ttl
from cluster.machine.contain import Failed, note, report
from cluster.machine.deadletter import is_cycle, record_death
from cluster.machine.dedup import DEDUP_LEVEL, for_queues, remember
from cluster.machine.delayed import next_release
from cluster.machine.errors import rs
from cluster.machine.features import expire_head, push_deadline, queue_deadline
from cluster.machine.queues import add_message, delete_queue
from cluster.machine.routing import route
from cluster.machine.state import Entry, Queue, State, entry_id

# The command level from which expiry finds due queues through State.deadlines.
DEADLINE_HEAP_LEVEL = 3


def next_deadline(state: State) -> int | None:
    """The earliest ``now_ms`` at which something may expire (a message at a queue
    head, or an unused queue with x-expires), or None. It may be early (something
    due then was consumed meanwhile): a Tick then does nothing but recompute it."""
    return state.next_due


def expire_due(state: State, out: list[Effect]) -> None:
    """Expire whatever is due at ``state.now_ms`` and recompute ``next_due``. Each queue
    on its own: one that raises leaves the index (``schedule`` puts it back at its next
    use) rather than fail again at every command, and the others expire as due.

    Up to level 2 every timed queue is visited (as release 0.1.0 does, so that replicas
    of both releases expire alike); from level 3 only the queues the deadline heap says
    are due, in the same order: 50,000 idle x-expires queues of one tenant cost 64 ms a
    visit of all, at every command that found something due."""
    if state.level >= DEADLINE_HEAP_LEVEL:
        _expire_by_heap(state, out)
    else:
        state.deadlines_built = False
        _expire_scan(state, out)
    if state.delayed:  # x-delayed-message exchanges' held messages (level 4)
        if state.delayed[0][0] <= state.now_ms:
            release_delayed(state, out)
            flush_dead_letters(state, out)
        r, nd = next_release(state), state.next_due
        if r is not None and (nd is None or r < nd):
            state.next_due = r


def _expire_by_heap(state: State, out: list[Effect]) -> None:
    now = state.now_ms
    timed = state.timed
    if not state.deadlines_built:
        _build_heap(state)
    heap, pushed = state.deadlines, state.pushed
    due: set[int] = set()
    while heap and heap[0][0] <= now:
        d, qid = heapq.heappop(heap)
        if pushed.get(qid) == d:
            del pushed[qid]
        if qid in timed:
            due.add(qid)
    failed: Failed | None = None
    for qid in sorted(due, key=lambda i: (timed[i] if timed[i] is not None else -1, i)):
        q = state.queues.get(qid)
        if q is None or q.deleted:
            _untime(state, qid)
            continue
        try:
            d_next = _expire_queue(state, q, now, out)
        except Exception as exc:
            _untime(state, qid)
            failed = note(failed, rs("queue", q.name, q.vhost), exc)
            continue
        if d_next is None:
            _untime(state, qid)
        else:
            push_deadline(state, qid, d_next)
    state.next_due = heap[0][0] if heap else None
    report(state, failed, "expiring", out)
    flush_dead_letters(state, out)


def _untime(state: State, qid: int) -> None:
    state.timed.pop(qid, None)
    state.pushed.pop(qid, None)


def _build_heap(state: State) -> None:
    """The deadline heap from ``timed`` (once per life of the index: level 3 reached, a
    snapshot of an earlier release restored)."""
    entries: list[tuple[int, int]] = []
    for qid in state.timed:
        q = state.queues.get(qid)
        d = queue_deadline(q) if q is not None and not q.deleted else None
        # a queue that left keeps an entry due now: the next visit drops it from timed
        entries.append((d if d is not None else state.now_ms, qid))
    heapq.heapify(entries)
    state.deadlines = entries
    state.pushed = {qid: d for d, qid in entries}
    state.deadlines_built = True


def _expire_scan(state: State, out: list[Effect]) -> None:
    now = state.now_ms
    timed = state.timed
    nd: int | None = None
    failed: Failed | None = None
    for qid in list(timed):
        q = state.queues.get(qid)
        if q is None or q.deleted:
            del timed[qid]
            continue
        try:
            d = _expire_queue(state, q, now, out)
        except Exception as exc:
            timed.pop(qid, None)
            failed = note(failed, rs("queue", q.name, q.vhost), exc)
            continue
        if d is None:
            timed.pop(qid, None)
        elif nd is None or d < nd:
            nd = d
    state.next_due = nd
    report(state, failed, "expiring", out)
    flush_dead_letters(state, out)


def _expire_queue(state: State, q: Queue, now: int, out: list[Effect]) -> int | None:
    """Expire what is due in ``q``; its next deadline (None: none, or it was deleted)."""
    if q.expires is not None and not q.consumers and q.last_used + q.expires <= now:
        # x-expires: deleted as by queue.delete; its messages are not dead-lettered
        delete_queue(state, q, out)
        return None
    if q.slow:
        expire_head(state, q)
    return queue_deadline(q)


def tick(state: State, cmd: C.Tick, out: list[Effect]) -> None:
    nd = state.next_due
    if nd is not None and state.now_ms >= nd:
        expire_due(state, out)


def flush_dead_letters(state: State, out: list[Effect]) -> None:
    """Republish the messages dead-lettered during the current command, including
    those dead-lettered again on arrival (rabbit_dead_letter:publish). Each on its own:
    one that cannot be republished is dropped (a Fault says so), the others go on, and
    so does the command that dead-lettered them. Never raises."""
    pending = state.dl_pending
    failed: Failed | None = None
    i = 0
    while i < len(pending):
        vhost, qname, dlx, dlrk, msg, reason, hdr = pending[i]
        i += 1
        try:
            _republish(state, vhost, qname, dlx, dlrk, msg, reason, hdr, out)
        except Exception as exc:
            failed = note(failed, f"message {entry_id(msg)} from {rs('queue', qname, vhost)}",
                          exc)
    pending.clear()
    report(state, failed, "dead-lettering", out)


def _republish(state: State, vhost: str, qname: str, dlx: str, dlrk: str | None, msg: Entry,
               reason: str, hdr: messages.Header, out: list[Effect]) -> None:
    vh = state.vhosts.get(vhost)
    if vh is None:
        return
    # kept by the machine while a queue with a dead-letter exchange held it
    exchange, routing_key, properties, size = hdr
    rk = dlrk if dlrk is not None else routing_key
    props, deaths = record_death(properties, reason, qname, exchange, routing_key,
                                 state.now_ms // 1000, dlrk is not None)
    targets: list[Queue]
    if dlx == "":
        t = vh.queues.get(rk)
        targets = [t] if t is not None else []
    else:
        ex = vh.exchanges.get(dlx)
        if ex is None:
            return  # a missing dead-letter exchange drops the message
        targets = route(vh, ex, rk, props)
    if reason != "rejected":
        # a message back in a queue it died in, with no rejection since, is dropped
        targets = [t for t in targets if not is_cycle(t.name.encode(), deaths)]
    key = None
    if state.level >= DEDUP_LEVEL and any(t.dedup_ids is not None for t in targets):
        targets, key = for_queues(targets, props)  # (x-message-deduplication queues)
    if not targets:
        return
    msg_id = state.next_msg_id
    # the body stays the store's: copied from the message that died (let go in this
    # entry, so still readable); raises before any change
    messages.copy(state, msg_id, entry_id(msg), dlx, rk, props, size, len(targets))
    state.next_msg_id = msg_id + 1
    _enqueue(state, targets, msg_id, dlx, rk, props, size, None, key, out)


def _enqueue(state: State, targets: list[Queue], msg_id: int, exchange: str, rk: str,
             props: bytes, size: int, ttl: int | None, key: bytes | None,
             out: list[Effect]) -> None:
    """A routed message (dead-lettered or released from a delay) into each target queue:
    its routing data kept where the queue keeps it, its deduplication value remembered."""
    for q in targets:
        if messages.holds(q):
            messages.hold(state, msg_id, exchange, rk, props, size)
        if key is not None and q.dedup_ids is not None:
            remember(q, key, msg_id)
        add_message(state, q, msg_id, size, props, ttl, out)


def release_delayed(state: State, out: list[Effect]) -> None:
    """Route every message an x-delayed-message exchange holds that is due, in due order (then
    publish order) (cluster/machine/delayed.py holds them)."""
    heap = state.delayed
    now = state.now_ms
    failed: Failed | None = None
    while heap and heap[0][0] <= now:
        due, msg_id, vhost, exchange, routing_key, props, size = heapq.heappop(heap)
        try:
            vh = state.vhosts.get(vhost)
            ex = vh.exchanges.get(exchange) if vh is not None else None
            targets: list[Queue] = route(vh, ex, routing_key, props) if (
                vh is not None and ex is not None) else []
            key = None
            if any(q.dedup_ids is not None for q in targets):
                targets, key = for_queues(targets, props)  # (x-message-deduplication queues)
            if not targets:
                state.writes.append(msg_id)  # routed nowhere, or a duplicate: dropped
                continue
            ttl = message_ttl(props) if props[0] & 1 else None
            mid = msg_id
            if len(targets) > 1:  # one reference per queue: a record with as many
                mid = state.next_msg_id
                messages.copy(state, mid, msg_id, exchange, routing_key, props, size,
                              len(targets))
                state.next_msg_id = mid + 1
                state.writes.append(msg_id)
            _enqueue(state, targets, mid, exchange, routing_key, props, size, ttl, key, out)
        except Exception as exc:
            failed = note(failed, f"delayed message {msg_id} of exchange '{exchange}'", exc)
    report(state, failed, "releasing delayed messages", out)
