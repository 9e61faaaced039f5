"""basic.* and channel.flow: publish, consume, cancel, get, ack, nack, recover,
qos, flow. Publish and ack are the hot path: keep them lean."""

from __future__ import annotations

from cluster import commands as C
from cluster.effects import (
    CancelOk,
    Confirm,
    ConsumeOk,
    Effect,
    FlowOk,
    GetEmpty,
    GetOk,
    QosOk,
    RecoverOk,
    Return,
)
from cluster.machine import access, dedup, delayed, messages, reply_to
from cluster.machine import errors as E
from cluster.machine.access import READ, WRITE
from cluster.machine.errors import error, rs
from cluster.machine.features import (
    consumer_added,
    expire_head,
    make_slow,
    pop_head,
    run_slow,
)
from cluster.machine.names import check_name, name_problem
from cluster.machine.qargs import consumer_priority, parse_expiration, validate_consume_args
from cluster.machine.queues import (
    add_message,
    reactivate,
    reactivate_channel,
    release,
    remove_consumer,
    run_touched,
    take,
)
from cluster.machine.routing import route
from cluster.machine.state import Channel, Consumer, Exchange, Queue, State, entry_id
from cluster.machine.topology import generate_name, lookup_queue, resolve_queue_name
from protocol.fields import EXPIRATION, FieldError, property_spans, short_string

# --- publish -------------------------------------------------------------------------


def message_ttl(props: bytes) -> int:
    """The expiration property as a TTL in ms; 406 when RabbitMQ would refuse it. The
    node validated the properties before proposing; checked again because the
    machine reads them (a malformed list is a frame error, on every replica alike)."""
    try:
        spans = property_spans(props)
    except FieldError as exc:
        raise error(E.FRAME_ERROR, f"cannot decode content header properties: {exc}",
                        E.BASIC_PUBLISH) from None
    raw = short_string(props, spans[EXPIRATION]) or ""
    ttl = parse_expiration(raw)
    if isinstance(ttl, str):
        raise error(E.PRECONDITION_FAILED, f"invalid expiration '{raw}': {ttl}",
                        E.BASIC_PUBLISH)
    return ttl


def publish(state: State, ch: Channel, cmd: C.Publish, out: list[Effect]) -> None:
    vh = state.vhosts[ch.vhost]
    name = cmd.exchange
    # what the store records (with one-byte lengths) must fit a short string: the API
    # publishes without AMQP framing (O(1) for ASCII)
    if name_problem(cmd.routing_key) is not None or name_problem(name) is not None:
        _bad_publish(ch, cmd)
    access.check(state, ch, WRITE, "exchange", name, E.BASIC_PUBLISH)
    dd: Exchange | None = None  # an x-message-deduplication exchange (dedup.py)
    if name == "":
        q = vh.queues.get(cmd.routing_key)
        targets = [q] if q is not None else []
    else:
        ex = vh.exchanges.get(name)
        if ex is None:
            raise E.no_exchange(name, ch.vhost, E.BASIC_PUBLISH)
        if ex.internal:
            raise error(E.ACCESS_REFUSED,
                            f"cannot publish to internal {rs('exchange', name, ch.vhost)}",
                            E.BASIC_PUBLISH)
        access.check_topic(state, ch, WRITE, ex, cmd.routing_key, E.BASIC_PUBLISH)
        if ex.type == delayed.DELAYED and state.level >= delayed.DELAYED_LEVEL:
            if cmd.properties and cmd.properties[0] & 1:
                message_ttl(cmd.properties)  # refused now if invalid, as any publish
            if delayed.hold(state, ch, ex, cmd):
                _held(state, ch, cmd, out)
                return
        if ex.type == dedup.DEDUP and state.level >= dedup.DEDUP_LEVEL:
            dd = ex
        targets = route(vh, ex, cmd.routing_key, cmd.properties)
    props = cmd.properties
    # the expiration property's flag bit (0x0100) is bit 0 of the first flags byte
    msg_ttl = message_ttl(props) if props and props[0] & 1 else None
    if dd is not None and dedup.duplicate(state, dd, props):
        targets = []  # a duplicate: routed nowhere (confirmed, returned if mandatory)
    if not targets and not name and state.level >= 4 and \
            cmd.routing_key.startswith(reply_to.TOKEN_PREFIX):
        reply_to.publish(state, ch, cmd, out)  # a direct reply-to reply: no queue
        return
    refused = False
    state.n_published += 1
    if targets:
        msg_id = state.next_msg_id
        # the bytes once, one reference per queue (enqueue takes a queue's reference);
        # a put that raises has changed nothing, not even the next id
        messages.put(state, msg_id, name, cmd.routing_key, props, cmd.body, len(targets))
        state.next_msg_id = msg_id + 1
        size = len(cmd.body)
        for q in targets:
            if q.dedup_ids is not None and state.level >= dedup.DEDUP_LEVEL and \
                    dedup.enter(q, props, msg_id):
                # a deduplication queue holding its value: not enqueued (still routed, so
                # confirmed and never returned); its reference let go
                state.writes.append(msg_id)
                continue
            if q.dlx is not None or q.delivery_limit is not None:
                messages.hold(state, msg_id, name, cmd.routing_key, props, size)
            if not add_message(state, q, msg_id, size, props, msg_ttl, out):
                refused = True
    if not targets:
        state.n_unroutable += 1
        if cmd.mandatory:
            out.append(Return(ch.key, 312, "NO_ROUTE", name, cmd.routing_key, props, cmd.body))
    if cmd.confirm_seq:
        state.n_confirmed += 1
        # a queue refusing the message (x-overflow reject-publish) nacks it
        out.append(Confirm(ch.key, cmd.confirm_seq, not refused))


def _held(state: State, ch: Channel, cmd: C.Publish, out: list[Effect]) -> None:
    """A message held by an x-delayed-message exchange: routed to no queue now, so
    returned if mandatory (the plugin does not support it), and confirmed."""
    state.n_published += 1
    if cmd.mandatory:
        out.append(Return(ch.key, 312, "NO_ROUTE", cmd.exchange, cmd.routing_key,
                          cmd.properties, cmd.body))
    if cmd.confirm_seq:
        state.n_confirmed += 1
        out.append(Confirm(ch.key, cmd.confirm_seq, True))


def _bad_publish(ch: Channel, cmd: C.Publish) -> None:
    for kind, value in (("exchange name", cmd.exchange), ("routing key", cmd.routing_key)):
        check_name(kind, value, ch.vhost, E.BASIC_PUBLISH)


# --- consumers -----------------------------------------------------------------------


def consume(state: State, ch: Channel, cmd: C.Consume, out: list[Effect]) -> None:
    m = E.BASIC_CONSUME
    tag = cmd.consumer_tag
    if tag in ch.consumers:
        raise error(E.NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'", m)
    check_name("consumer tag", tag, ch.vhost, m)  # it goes back in every basic.deliver
    if cmd.max_consumers and len(ch.consumers) >= cmd.max_consumers:
        raise error(E.NOT_ALLOWED, f"reached maximum ({cmd.max_consumers}) of consumers per "
                                   "channel", m)
    name = resolve_queue_name(ch, cmd.queue, m)
    access.check(state, ch, READ, "queue", name, m)
    q = lookup_queue(state, ch, name, m)
    if cmd.arguments:
        validate_consume_args(q.name, q.vhost, cmd.arguments)
    if q.exclusive_consumer or (cmd.exclusive and (q.consumers or q.single_active)):
        # (an exclusive consumer is refused on a single-active-consumer queue)
        raise error(E.ACCESS_REFUSED, f"{rs('queue', q.name, q.vhost)} in exclusive use", m)
    if not tag:
        tag = generate_name(state, "amq.ctag-", ch.key)
        while tag in ch.consumers:
            tag = generate_name(state, "amq.ctag-", ch.key)
    c = Consumer(ch.key, tag, q.qid, cmd.no_ack, cmd.exclusive, ch.consumer_prefetch,
                 dict(cmd.arguments))
    if cmd.arguments:
        c.priority = consumer_priority(cmd.arguments)
        if c.priority and not q.consumer_priorities:
            q.consumer_priorities = True  # from now on the service deque is kept sorted
            make_slow(q)
            q.service = type(q.service)(sorted(q.service, key=lambda x: -x.priority))
    ch.consumers[tag] = c
    q.consumers[(ch.key, tag)] = c
    if q.single_active:
        consumer_added(q, c)
        if q.active_consumer is None:
            q.active_consumer = (ch.key, tag)
    q.had_consumer = True
    if cmd.exclusive:
        q.exclusive_consumer = True
    if not cmd.nowait:
        out.append(ConsumeOk(ch.key, tag))
    touched: dict[int, Queue] = {}
    reactivate(c, ch, q, touched)
    run_touched(state, touched, out)


def cancel(state: State, ch: Channel, cmd: C.Cancel, out: list[Effect]) -> None:
    c = ch.consumers.get(cmd.consumer_tag)
    if not cmd.nowait:
        out.append(CancelOk(ch.key, cmd.consumer_tag))
    if c is not None:
        remove_consumer(state, c, out, notify=False)


def get(state: State, ch: Channel, cmd: C.Get, out: list[Effect]) -> None:
    m = E.BASIC_GET
    name = resolve_queue_name(ch, cmd.queue, m)
    access.check(state, ch, READ, "queue", name, m)
    q = lookup_queue(state, ch, name, m)
    if q.expires is not None:
        q.last_used = state.now_ms
    slow = q.slow
    if slow:
        expire_head(state, q)
    if not (q.ready or q.returned):
        out.append(GetEmpty(ch.key))
        if slow:
            run_slow(state, q, out)
        return
    msg = pop_head(q) if slow else take(q)
    mid, redelivered = (msg, False) if type(msg) is int else (msg.id, msg.redelivered)  # type: ignore[union-attr]
    ch.last_tag = tag = ch.last_tag + 1
    if not cmd.no_ack:
        # basic.get ignores prefetch and is tied to no consumer
        ch.unacked[tag] = (q, msg, None)
        q.unacked += 1
    else:
        messages.let_go(state, q, mid)  # readable until the node has written the get-ok
    if slow:
        expire_head(state, q)
    out.append(GetOk(ch.key, tag, redelivered, q.ready_count(), mid))
    q.n_delivered += 1
    q.n_redelivered += redelivered
    if slow:
        run_slow(state, q, out)


# --- settlement ----------------------------------------------------------------------


def _tags(ch: Channel, delivery_tag: int, multiple: bool, method: tuple[int, int]) -> list[int]:
    """Tags an ack/nack covers, validated as rabbit_channel's collect_acks does:
    multiple with tag 0 means all; otherwise the tag itself must be outstanding."""
    unacked = ch.unacked
    if multiple and delivery_tag == 0:
        return list(unacked)
    if delivery_tag not in unacked:
        raise error(E.PRECONDITION_FAILED, f"unknown delivery tag {delivery_tag}", method)
    if not multiple:
        return [delivery_tag]
    tags = []
    for t in unacked:  # insertion order is tag order
        if t > delivery_tag:
            break
        tags.append(t)
    return tags


def _settle(state: State, ch: Channel, tags: list[int], requeue: bool,
            out: list[Effect], reject: bool = False) -> None:
    touched: dict[int, Queue] = {}
    release(state, ch, tags, requeue, touched, reject)
    if ch.global_prefetch:
        reactivate_channel(state, ch, touched)
    if touched:
        run_touched(state, touched, out)


def ack(state: State, ch: Channel, cmd: C.Ack, out: list[Effect]) -> None:
    tag = cmd.delivery_tag
    if not cmd.multiple:
        # fast path: one tag, one consumer
        entry = ch.unacked.pop(tag, None)
        if entry is None:
            raise error(E.PRECONDITION_FAILED, f"unknown delivery tag {tag}", E.BASIC_ACK)
        q, msg, c = entry
        messages.let_go(state, q, entry_id(msg))
        if not q.deleted:
            q.unacked -= 1
            q.n_acked += 1
        if c is None:
            return
        c.unacked -= 1
        ch.global_unacked -= 1
        if c.in_service and not ch.global_prefetch:
            return
        touched: dict[int, Queue] = {}
        if c.active and not c.in_service:
            reactivate(c, ch, q, touched)
        if ch.global_prefetch:
            reactivate_channel(state, ch, touched)
        if touched:
            run_touched(state, touched, out)
        return
    _settle(state, ch, _tags(ch, tag, True, E.BASIC_ACK), False, out)


def nack(state: State, ch: Channel, cmd: C.Nack, out: list[Effect]) -> None:
    method = E.BASIC_REJECT if cmd.reject else E.BASIC_NACK
    _settle(state, ch, _tags(ch, cmd.delivery_tag, cmd.multiple, method), cmd.requeue, out,
            reject=not cmd.requeue)


def recover(state: State, ch: Channel, cmd: C.Recover, out: list[Effect]) -> None:
    if not cmd.nowait:
        out.append(RecoverOk(ch.key))
    _settle(state, ch, list(ch.unacked), True, out)


# --- credit --------------------------------------------------------------------------


def qos(state: State, ch: Channel, cmd: C.Qos, out: list[Effect]) -> None:
    out.append(QosOk(ch.key))
    if cmd.global_:
        ch.global_prefetch = cmd.prefetch_count
        touched: dict[int, Queue] = {}
        reactivate_channel(state, ch, touched)
        run_touched(state, touched, out)
    else:
        ch.consumer_prefetch = cmd.prefetch_count


def sent(state: State, ch: Channel, cmd: C.Sent, out: list[Effect]) -> None:
    """Deliveries of a no-ack consumer reached its socket: its window opens again."""
    c = ch.consumers.get(cmd.consumer_tag)
    if c is None or not c.no_ack or cmd.count <= 0:
        return
    c.sent = max(0, c.sent - cmd.count)
    if c.active and not c.in_service:
        touched: dict[int, Queue] = {}
        reactivate(c, ch, state.queues[c.qid], touched)
        run_touched(state, touched, out)


def flow(state: State, ch: Channel, cmd: C.Flow, out: list[Effect]) -> None:
    ch.flow = cmd.active
    out.append(FlowOk(ch.key, cmd.active))
    if cmd.active:
        touched: dict[int, Queue] = {}
        reactivate_channel(state, ch, touched)
        run_touched(state, touched, out)
