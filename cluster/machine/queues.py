"""Queue internals: enqueue, delivery assignment, settle/return, consumer
removal, and queue deletion.

Delivery assignment (the core, modelled on rabbit_fifo's service queue): each
queue keeps a deque of consumers that may have credit. ``run_queue`` pops the
head consumer, gives it the next message if it still has credit, and puts it
back at the tail: round robin without scanning all consumers per message.
Consumers out of credit (per-consumer prefetch, channel-wide prefetch, or
channel.flow off) drop out of the deque when reached, and are put back by
``reactivate`` when credit frees up. A removed consumer stays in the deque, marked
out of service, until it is reached or the deque is compacted (once such entries
outnumber the live ones): removal is O(1) amortised, so closing a connection with
n consumers costs O(n), not O(n²).

Queues with TTLs, length limits, priorities or consumer priorities (``q.slow``)
take the feature-aware paths in :mod:`cluster.machine.features`; a plain queue
pays one flag check for them.
"""

from __future__ import annotations

import heapq

from cluster.effects import ConsumerCancelled, Deliver, Effect
from cluster.machine import messages
from cluster.machine.bindings import remove_binding
from cluster.machine.contain import Failed, note, report
from cluster.machine.errors import rs
from cluster.machine.features import (
    dead_letter,
    enqueue,
    has_credit,
    insert_service,
    is_active,
    message_priority,
    next_active,
    push_returned,
    run_slow,
    touch,
)
from cluster.machine.state import Channel, Consumer, Entry, Msg, Queue, State, entry_id

# The command level from which x-delivery-limit counts returns (return_msg).
DELIVERY_LIMIT_LEVEL = 4


def take(q: Queue) -> Entry:
    """The next message to hand out: returned ones first, in original order
    (plain queues only; slow queues go through features.pop_head)."""
    if q.returned:
        return heapq.heappop(q.returned)[1]
    return q.ready.popleft()


def run_queue(state: State, q: Queue, out: list[Effect]) -> None:
    """Hand ready messages to consumers with credit, round robin."""
    if q.slow:
        run_slow(state, q, out)
    else:
        run_fast(state, q, out)


def run_fast(state: State, q: Queue, out: list[Effect]) -> None:
    """run_queue for a plain queue (``not q.slow``): the hot path."""
    service = q.service
    channels = state.channels
    writes = state.writes
    while service and (q.ready or q.returned):
        c = service.popleft()
        if not c.in_service:  # removed meanwhile
            q.service_stale -= 1
            continue
        ch = channels[c.ch]
        if not has_credit(c, ch):
            c.in_service = False
            continue
        if q.returned:
            msg: Entry = heapq.heappop(q.returned)[1]
            mid, redelivered = msg.id, msg.redelivered  # type: ignore[union-attr]
        else:
            msg = q.ready.popleft()
            if type(msg) is int:
                mid, redelivered = msg, False
            else:
                mid, redelivered = msg.id, msg.redelivered  # type: ignore[union-attr]
        ch.last_tag = tag = ch.last_tag + 1
        if c.no_ack:
            c.sent += 1
            if q.dlx is None and q.delivery_limit is None and q.dedup_ids is None:
                writes.append(mid)  # let go; readable until the node has written it
            else:
                messages.let_go(state, q, mid)
        else:
            ch.unacked[tag] = (q, msg, c)
            c.unacked += 1
            ch.global_unacked += 1
            q.unacked += 1
        out.append(Deliver(ch.key, c.tag, tag, redelivered, mid, c.no_ack))
        q.n_delivered += 1
        if redelivered:
            q.n_redelivered += 1
        service.append(c)


def add_message(state: State, q: Queue, msg_id: int, size: int, properties: bytes,
                msg_ttl: int | None, out: list[Effect]) -> bool:
    """A new message (published or dead-lettered) arrives at ``q``, which takes one
    reference to its bytes, and goes to a consumer if one has credit. A plain queue
    keeps only its id; a slow queue (or a message with a TTL) takes the feature-aware
    path. False when the queue refuses it (x-overflow reject-publish)."""
    q.n_published += 1
    if q.slow or msg_ttl is not None:
        return enqueue(state, q, Msg(msg_id, size, message_priority(q, properties)),
                       msg_ttl, out)
    q.ready.append(msg_id)  # never delivered: the id is the whole entry
    if q.service:
        run_fast(state, q, out)
    return True


def reactivate(c: Consumer, ch: Channel, q: Queue, touched: dict[int, Queue]) -> None:
    """Put a consumer that may have regained credit back in its queue's service."""
    if c.active and not c.in_service and has_credit(c, ch):
        if q.single_active and not is_active(q, c):
            return
        c.in_service = True
        if q.consumer_priorities:
            insert_service(q, c)
        else:
            q.service.append(c)
        touched[q.qid] = q


def reactivate_channel(state: State, ch: Channel, touched: dict[int, Queue]) -> None:
    queues = state.queues
    for c in ch.consumers.values():
        if not c.in_service:
            reactivate(c, ch, queues[c.qid], touched)


def run_touched(state: State, touched: dict[int, Queue], out: list[Effect]) -> None:
    """Run each queue on its own: one that raises (a bug) does not keep the others, or
    the command that touched them, from going on (contain.py)."""
    failed: Failed | None = None
    for q in touched.values():
        if not q.deleted:
            try:
                run_queue(state, q, out)
            except Exception as exc:
                failed = note(failed, rs("queue", q.name, q.vhost), exc)
    report(state, failed, "delivering", out)


def return_msg(state: State, q: Queue, entry: Entry) -> None:
    """A checked-out message goes back to the queue head (redelivered); gone with its
    queue if that was deleted meanwhile.

    Every return counts (nack/reject with requeue, basic.recover, its channel or
    connection closed, its node lost). From level 4, in a queue with a delivery limit
    (x-delivery-limit, as RabbitMQ 3.10's quorum queues: rabbit_fifo's return): past the
    limit the message is dead-lettered with reason delivery_limit, or dropped without a
    dead-letter exchange; otherwise it is redelivered with header x-delivery-count (its
    returns so far: messages.count_return)."""
    if q.deleted:
        messages.let_go(state, q, entry_id(entry))
        return
    q.unacked -= 1
    msg = Msg(entry, 0) if type(entry) is int else entry
    assert isinstance(msg, Msg)
    msg.redelivered = True
    msg.delivery_count += 1
    limit = q.delivery_limit
    if limit is not None and state.level >= DELIVERY_LIMIT_LEVEL:
        if msg.delivery_count > limit:
            dead_letter(state, q, msg, "delivery_limit")
            return
        messages.count_return(state, q, msg)
    if q.slow:
        push_returned(q, msg)
    else:
        heapq.heappush(q.returned, (msg.id, msg))


def release(state: State, ch: Channel, tags: list[int], requeue: bool,
            touched: dict[int, Queue], reject: bool = False) -> None:
    """Settle (ack, or nack without requeue) or return the given unacked tags.
    ``reject``: a nack/reject without requeue, which dead-letters."""
    unacked = ch.unacked
    for tag in tags:
        q, msg, c = unacked.pop(tag)
        if requeue:
            return_msg(state, q, msg)
            touched[q.qid] = q
        elif q.deleted:
            messages.let_go(state, q, entry_id(msg))
        else:
            q.unacked -= 1
            if reject and q.dlx is not None:
                dead_letter(state, q, msg, "rejected")
            else:
                messages.let_go(state, q, entry_id(msg))
                if not reject:
                    q.n_acked += 1
        if c is not None:
            c.unacked -= 1
            ch.global_unacked -= 1
            if c.active and not c.in_service:
                reactivate(c, ch, q, touched)


def remove_consumer(state: State, c: Consumer, out: list[Effect], notify: bool,
                    touched: dict[int, Queue] | None = None) -> None:
    """Cancel ``c`` (its unacked messages stay on its channel); ``notify`` emits
    ConsumerCancelled (server-initiated cancel). May auto-delete the queue.
    With single active consumer the next consumer takes over: the queue is run at
    once, or added to ``touched`` for the caller to run."""
    c.active = False
    ch = state.channels.get(c.ch)
    if ch is not None and ch.consumers.get(c.tag) is c:
        del ch.consumers[c.tag]
    q = state.queues.get(c.qid)
    if q is None:
        return
    was_active = q.single_active and q.active_consumer == (c.ch, c.tag)
    del q.consumers[(c.ch, c.tag)]
    if c.exclusive:
        q.exclusive_consumer = False
    if c.in_service:
        c.in_service = False  # left where it is: skipped when reached
        q.service_stale += 1
        if 2 * q.service_stale > len(q.service):
            compact_service(q)
    if notify:
        out.append(ConsumerCancelled(c.ch, c.tag))
    if q.auto_delete and q.had_consumer and not q.consumers:
        delete_queue(state, q, out)
        return
    if was_active:
        nxt = next_active(q)
        nch = state.channels.get(nxt.ch) if nxt is not None else None
        if nxt is not None and nch is not None:
            local: dict[int, Queue] = {} if touched is None else touched
            reactivate(nxt, nch, q, local)
            if touched is None:
                run_touched(state, local, out)
    if not q.consumers:
        touch(state, q)


def compact_service(q: Queue) -> None:
    """Drop the removed consumers' entries from the service deque, in one pass (done when
    they are over half of it, so each removal pays O(1) amortised)."""
    q.service = type(q.service)(x for x in q.service if x.in_service)
    q.service_stale = 0


def drop_ready(state: State, q: Queue) -> None:
    """Every ready message of ``q`` goes (purge, deletion), its bytes with it."""
    if not messages.tracked(q):
        writes = state.writes
        writes.extend(entry_id(entry) for entry in q.ready)
        writes.extend(msg.id for _key, msg in q.returned)
    else:
        for entry in q.ready:
            messages.let_go(state, q, entry_id(entry))
        for _key, msg in q.returned:
            messages.let_go(state, q, msg.id)
    q.ready.clear()
    q.returned.clear()
    q.ready_bytes = 0


def delete_queue(state: State, q: Queue, out: list[Effect]) -> int:
    """Delete ``q``: cancel its consumers (ConsumerCancelled: channels being
    closed have already dropped theirs), drop its bindings and messages. Returns
    the ready count. Messages checked out stay on their channels; settling them
    is then a no-op."""
    count = q.ready_count()
    q.deleted = True
    vh = state.vhosts[q.vhost]
    if vh.queues.get(q.name) is q:
        del vh.queues[q.name]
    state.queues.pop(q.qid, None)
    state.timed.pop(q.qid, None)  # (the deadline heap drops its entry when it comes up)
    state.pushed.pop(q.qid, None)
    for c in list(q.consumers.values()):
        c.active = False
        c.in_service = False
        ch = state.channels.get(c.ch)
        if ch is not None and ch.consumers.get(c.tag) is c:
            del ch.consumers[c.tag]
            out.append(ConsumerCancelled(c.ch, c.tag))
    q.consumers.clear()
    q.service.clear()
    q.service_stale = 0
    q.sac = None
    drop_ready(state, q)
    if q.exclusive_owner is not None:
        conn = state.conns.get(q.exclusive_owner)
        if conn is not None:
            conn.exclusive_queues.pop(q.qid, None)
    for source, key in list(q.bindings):
        remove_binding(state, vh, source, key, out)
    q.bindings.clear()
    return count
