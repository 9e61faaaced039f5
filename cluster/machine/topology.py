"""exchange.* and queue.* methods: declare, bind, unbind, purge, delete.

Error behaviour follows RabbitMQ 3.10's rabbit_channel / rabbit_binding:
unbinding something missing is ok, deleting a missing exchange or queue is ok,
``amq.*`` names are reserved for new exchanges and for all queues, and the
default exchange cannot be declared, deleted or bound.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from cluster import commands as C
from cluster.effects import (
    Effect,
    ExchangeBindOk,
    ExchangeDeclareOk,
    ExchangeDeleteOk,
    ExchangeUnbindOk,
    QueueBindOk,
    QueueDeclareOk,
    QueueDeleteOk,
    QueuePurgeOk,
    QueueUnbindOk,
)
from cluster.machine import access, dedup, delayed, policies, reply_to
from cluster.machine import errors as E
from cluster.machine.access import CONFIGURE, READ, WRITE
from cluster.machine.bindings import add_binding, delete_exchange, remove_binding
from cluster.machine.errors import AMQPError, error, rs
from cluster.machine.features import touch
from cluster.machine.names import check_name, name_problem
from cluster.machine.qargs import configure, text, type_name, validate_queue_args
from cluster.machine.queues import delete_queue, drop_ready
from cluster.machine.routing import freeze, x_match_valid
from cluster.machine.state import BindKey, Channel, Exchange, Queue, State, VHost

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")
# The community plugins' types RaftMQ builds in (from level 4): delayed.py, dedup.py
PLUGIN_EXCHANGE_TYPES = (delayed.DELAYED, dedup.DEDUP)

# Queue arguments RabbitMQ 3.10 checks for equivalence on redeclare (others are ignored).
QUEUE_EQUIV_ARGS = (
    "x-expires", "x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key",
    "x-max-length", "x-max-length-bytes", "x-max-in-memory-length", "x-max-in-memory-bytes",
    "x-max-priority", "x-overflow", "x-queue-mode", "x-single-active-consumer", "x-queue-type",
    "x-quorum-initial-group-size", "x-delivery-limit", "x-queue-master-locator",
    "x-initial-cluster-size", "x-max-age", "x-stream-max-segment-size-bytes",
)
EXCHANGE_EQUIV_ARGS = ("alternate-exchange",)


def generate_name(state: State, prefix: str, salt: tuple[Any, ...]) -> str:
    """Deterministic server-generated name: prefix + 22 base64url chars."""
    state.name_counter += 1
    raw = repr((state.name_counter, *salt)).encode()
    digest = hashlib.blake2b(raw, digest_size=16).digest()
    return prefix + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def resolve_queue_name(ch: Channel, name: str, method: tuple[int, int]) -> str:
    """AMQP's "" shortcut: the channel's most recently declared queue."""
    if name:
        return name
    if not ch.last_queue:
        raise error(E.NOT_FOUND, "no previously declared queue", method)
    return ch.last_queue


def lookup_queue(state: State, ch: Channel, name: str, method: tuple[int, int]) -> Queue:
    """The queue, checking it exists and is not another connection's exclusive one."""
    q = state.vhosts[ch.vhost].queues.get(name)
    if q is None:
        raise E.no_queue(name, ch.vhost, method)
    check_exclusive(q, ch, method)
    return q


def check_exclusive(q: Queue, ch: Channel, method: tuple[int, int]) -> None:
    owner = q.exclusive_owner
    if owner is not None and owner != ch.key[:2]:
        raise E.locked(q.name, q.vhost, method)


def _arg_key(v: Any) -> Any:
    # RabbitMQ compares the type class and the value: 1 and 1.0 differ, True and 1 differ.
    return (type_name(v), freeze(v))


def _inequivalent(kind: str, name: str, vhost: str, field: str, received: str,
                  current: str, method: tuple[int, int]) -> AMQPError:
    return error(
        E.PRECONDITION_FAILED,
        f"inequivalent arg '{field}' for {rs(kind, name, vhost)}: "
        f"received {received} but current is {current}",
        method,
    )


def _check_field(kind: str, name: str, vhost: str, field: str, current: Any, received: Any,
                 method: tuple[int, int]) -> None:
    if current != received:
        raise _inequivalent(kind, name, vhost, field, f"'{E.fmt_value(received)}'",
                            f"'{E.fmt_value(current)}'", method)


def _describe_arg(args: dict[str, Any], key: str) -> str:
    if key not in args:
        return "none"
    v = args[key]
    return f"the value '{E.fmt_value(v)}' of type '{type_name(v)}'"


def _check_args(kind: str, name: str, vhost: str, current: dict[str, Any],
                received: dict[str, Any], keys: tuple[str, ...], method: tuple[int, int]) -> None:
    for key in keys:
        a, b = current.get(key, _ABSENT), received.get(key, _ABSENT)
        if a is _ABSENT and b is _ABSENT:
            continue
        if a is _ABSENT or b is _ABSENT or _arg_key(a) != _arg_key(b):
            raise _inequivalent(kind, name, vhost, key, _describe_arg(received, key),
                                _describe_arg(current, key), method)


_ABSENT = object()


# --- exchange.* ----------------------------------------------------------------------


def exchange_declare(state: State, ch: Channel, cmd: C.ExchangeDeclare, out: list[Effect]) -> None:
    m = E.EXCHANGE_DECLARE
    vh = state.vhosts[ch.vhost]
    name = cmd.exchange
    if cmd.passive:
        if name == "":
            raise E.default_exchange_refused(m)
        if name not in vh.exchanges:
            raise E.no_exchange(name, ch.vhost, m)
    else:
        if cmd.type not in EXCHANGE_TYPES and not (
                cmd.type in (delayed.DELAYED, dedup.DEDUP) and state.level >= 4):
            raise error(E.COMMAND_INVALID, f"unknown exchange type '{cmd.type}'", m)
        if cmd.type == delayed.DELAYED:
            delayed.check_declare(cmd.arguments, m)
        elif cmd.type == dedup.DEDUP:
            dedup.check_declare(cmd.arguments, m)
        if name == "":
            raise E.default_exchange_refused(m)
        check_name("exchange name", name, ch.vhost, m)
        access.check(state, ch, CONFIGURE, "exchange", name, m)
        ex = vh.exchanges.get(name)
        if ex is None:
            if name.startswith("amq."):
                raise error(
                    E.ACCESS_REFUSED,
                    f"exchange name '{name}' contains reserved prefix 'amq.*'", m)
            ae = cmd.arguments.get("alternate-exchange")
            if ae is not None and not isinstance(ae, str | bytes):
                raise error(E.PRECONDITION_FAILED,
                                f"invalid type '{type_name(ae)}' for arg 'alternate-exchange' "
                                f"in {rs('exchange', name, ch.vhost)}", m)
            problem = name_problem(text(ae)) if ae is not None else None
            if problem is not None:  # an exchange name once routed to
                raise error(E.PRECONDITION_FAILED,
                            f"invalid arg 'alternate-exchange' for "
                            f"{rs('exchange', name, ch.vhost)}: {{value_too_long,{problem}}}", m)
            if ae is not None:
                access.check(state, ch, READ, "exchange", name, m)
                access.check(state, ch, WRITE, "exchange", text(ae), m)
            conn = state.conns[ch.key[:2]]
            ex = vh.exchanges[name] = Exchange(name, cmd.type, cmd.durable, cmd.auto_delete,
                                               cmd.internal, dict(cmd.arguments),
                                               home=(conn.key[0], conn.incarnation))
            policies.declared(state, vh, ex=ex)
        else:
            for field, current, received in (
                ("type", ex.type, cmd.type),
                ("durable", ex.durable, cmd.durable),
                ("auto_delete", ex.auto_delete, cmd.auto_delete),
                ("internal", ex.internal, cmd.internal),
            ):
                _check_field("exchange", name, ch.vhost, field, current, received, m)
            _check_args("exchange", name, ch.vhost, ex.arguments, cmd.arguments,
                        EXCHANGE_EQUIV_ARGS, m)
    if not cmd.nowait:
        out.append(ExchangeDeclareOk(ch.key))


def exchange_delete(state: State, ch: Channel, cmd: C.ExchangeDelete, out: list[Effect]) -> None:
    m = E.EXCHANGE_DELETE
    vh = state.vhosts[ch.vhost]
    name = cmd.exchange
    if name == "":
        raise E.default_exchange_refused(m)
    if name.startswith("amq."):
        raise error(E.ACCESS_REFUSED,
                        f"deletion of system {rs('exchange', name, ch.vhost)} not allowed", m)
    access.check(state, ch, CONFIGURE, "exchange", name, m)
    ex = vh.exchanges.get(name)
    if ex is not None:
        if cmd.if_unused and ex.bindings:
            raise error(E.PRECONDITION_FAILED, f"{rs('exchange', name, ch.vhost)} in use", m)
        delete_exchange(state, vh, ex, out)
    if not cmd.nowait:
        out.append(ExchangeDeleteOk(ch.key))


def _check_headers_args(source: Exchange, args: dict[str, Any], m: tuple[int, int]) -> None:
    if delayed.routing_type(source) == "headers":
        problem = x_match_valid(args)
        if problem is not None:
            raise error(E.PRECONDITION_FAILED, problem, m)


def exchange_bind(state: State, ch: Channel, cmd: C.ExchangeBind, out: list[Effect]) -> None:
    m = E.EXCHANGE_BIND
    vh = state.vhosts[ch.vhost]
    access.check(state, ch, WRITE, "exchange", cmd.destination, m)
    if cmd.destination == "" or cmd.source == "":
        raise E.default_exchange_refused(m)
    access.check(state, ch, READ, "exchange", cmd.source, m)
    source = vh.exchanges.get(cmd.source)
    if source is None:
        raise E.no_exchange(cmd.source, ch.vhost, m)
    if cmd.destination not in vh.exchanges:
        raise E.no_exchange(cmd.destination, ch.vhost, m)
    _check_headers_args(source, cmd.arguments, m)
    check_name("routing key", cmd.routing_key, ch.vhost, m)
    add_binding(vh, source, (True, cmd.destination), cmd.routing_key, cmd.arguments)
    if not cmd.nowait:
        out.append(ExchangeBindOk(ch.key))


def exchange_unbind(state: State, ch: Channel, cmd: C.ExchangeUnbind, out: list[Effect]) -> None:
    m = E.EXCHANGE_UNBIND
    access.check(state, ch, WRITE, "exchange", cmd.destination, m)
    if cmd.destination == "" or cmd.source == "":
        raise E.default_exchange_refused(m)
    access.check(state, ch, READ, "exchange", cmd.source, m)
    vh = state.vhosts[ch.vhost]
    key: BindKey = ((True, cmd.destination), cmd.routing_key, freeze(cmd.arguments))
    source = vh.exchanges.get(cmd.source)
    if source is not None and key in source.bindings:
        remove_binding(state, vh, cmd.source, key, out)
    if not cmd.nowait:
        out.append(ExchangeUnbindOk(ch.key))


# --- queue.* -------------------------------------------------------------------------


def queue_declare(state: State, ch: Channel, cmd: C.QueueDeclare, out: list[Effect]) -> None:
    if state.level >= 4 and cmd.queue.startswith(reply_to.PREFIX):
        reply_to.declare(state, ch, cmd, out)  # direct reply-to's pseudo-queue
        return
    m = E.QUEUE_DECLARE
    vh = state.vhosts[ch.vhost]
    conn_key = ch.key[:2]
    if cmd.passive:
        name = resolve_queue_name(ch, cmd.queue, m)
        q = lookup_queue(state, ch, name, m)
        touch(state, q)
    else:
        name = cmd.queue
        if name == "":
            name = generate_name(state, "amq.gen-", conn_key)
            while name in vh.queues:
                name = generate_name(state, "amq.gen-", conn_key)
        elif name.startswith("amq."):
            raise error(E.ACCESS_REFUSED,
                            f"queue name '{name}' contains reserved prefix 'amq.*'", m)
        else:
            check_name("queue name", name, ch.vhost, m)
        access.check(state, ch, CONFIGURE, "queue", name, m)
        found = vh.queues.get(name)
        if found is None:
            q = _create_queue(state, vh, ch, name, cmd)
        else:
            q = found
            owner = conn_key if cmd.exclusive else None
            if q.exclusive_owner != owner:
                raise E.locked(name, ch.vhost, m)
            _check_field("queue", name, ch.vhost, "durable", q.durable, cmd.durable, m)
            _check_field("queue", name, ch.vhost, "auto_delete", q.auto_delete,
                         cmd.auto_delete, m)
            _check_args("queue", name, ch.vhost, q.arguments, cmd.arguments,
                        QUEUE_EQUIV_ARGS, m)
            touch(state, q)
    ch.last_queue = name
    if not cmd.nowait:
        out.append(QueueDeclareOk(ch.key, name, q.ready_count(), len(q.consumers)))


def _create_queue(state: State, vh: VHost, ch: Channel, name: str, cmd: C.QueueDeclare) -> Queue:
    m = E.QUEUE_DECLARE
    if cmd.arguments:
        validate_queue_args(name, vh.name, cmd.arguments, state.level)
        dlx = cmd.arguments.get("x-dead-letter-exchange")
        if dlx is not None:
            access.check(state, ch, READ, "queue", name, m)
            access.check(state, ch, WRITE, "exchange", text(dlx), m)
    limit = vh.limits.get("max-queues")
    if limit is not None and len(vh.queues) >= limit:
        raise error(E.PRECONDITION_FAILED, f"cannot declare queue '{name}': queue limit in "
                                           f"vhost '{vh.name}' ({limit}) is reached", m)
    conn = state.conns[ch.key[:2]]
    qid = state.next_qid
    state.next_qid += 1
    q = Queue(qid, vh.name, name, cmd.durable, conn.key if cmd.exclusive else None,
              cmd.auto_delete, dict(cmd.arguments), (conn.key[0], conn.incarnation))
    vh.queues[name] = q
    state.queues[qid] = q
    if cmd.exclusive:
        conn.exclusive_queues[qid] = None
    if cmd.arguments:
        configure(q)
        touch(state, q)
    policies.declared(state, vh, q=q)
    return q


def queue_bind(state: State, ch: Channel, cmd: C.QueueBind, out: list[Effect]) -> None:
    m = E.QUEUE_BIND
    vh = state.vhosts[ch.vhost]
    name = resolve_queue_name(ch, cmd.queue, m)
    # AMQP: an empty queue *and* routing key bind with the last declared queue's name.
    routing_key = ch.last_queue if (cmd.queue == "" and cmd.routing_key == "") else cmd.routing_key
    access.check(state, ch, WRITE, "queue", name, m)
    if cmd.exchange == "":
        raise E.default_exchange_refused(m)
    access.check(state, ch, READ, "exchange", cmd.exchange, m)
    source = vh.exchanges.get(cmd.exchange)
    if source is None:
        raise E.no_exchange(cmd.exchange, ch.vhost, m)
    access.check_topic(state, ch, READ, source, routing_key, m)
    q = lookup_queue(state, ch, name, m)
    _check_headers_args(source, cmd.arguments, m)
    check_name("routing key", routing_key, ch.vhost, m)
    add_binding(vh, source, (False, q.name), routing_key, cmd.arguments)
    if not cmd.nowait:
        out.append(QueueBindOk(ch.key))


def queue_unbind(state: State, ch: Channel, cmd: C.QueueUnbind, out: list[Effect]) -> None:
    m = E.QUEUE_UNBIND
    vh = state.vhosts[ch.vhost]
    name = resolve_queue_name(ch, cmd.queue, m)
    access.check(state, ch, WRITE, "queue", name, m)
    if cmd.exchange == "":
        raise E.default_exchange_refused(m)
    access.check(state, ch, READ, "exchange", cmd.exchange, m)
    key: BindKey = ((False, name), cmd.routing_key, freeze(cmd.arguments))
    source = vh.exchanges.get(cmd.exchange)
    if source is not None and key in source.bindings:
        q = vh.queues.get(name)
        if q is not None:
            check_exclusive(q, ch, m)
        remove_binding(state, vh, cmd.exchange, key, out)
    out.append(QueueUnbindOk(ch.key))


def queue_purge(state: State, ch: Channel, cmd: C.QueuePurge, out: list[Effect]) -> None:
    m = E.QUEUE_PURGE
    name = resolve_queue_name(ch, cmd.queue, m)
    access.check(state, ch, READ, "queue", name, m)
    q = lookup_queue(state, ch, name, m)
    count = q.ready_count()
    drop_ready(state, q)
    if not cmd.nowait:
        out.append(QueuePurgeOk(ch.key, count))


def queue_delete(state: State, ch: Channel, cmd: C.QueueDelete, out: list[Effect]) -> None:
    m = E.QUEUE_DELETE
    name = resolve_queue_name(ch, cmd.queue, m)
    access.check(state, ch, CONFIGURE, "queue", name, m)
    q = state.vhosts[ch.vhost].queues.get(name)
    count = 0
    cancels: list[Effect] = []
    if q is not None:
        check_exclusive(q, ch, m)
        if cmd.if_unused and q.consumers:
            raise error(E.PRECONDITION_FAILED, f"{rs('queue', name, ch.vhost)} in use", m)
        if cmd.if_empty and q.ready_count():
            raise error(E.PRECONDITION_FAILED, f"{rs('queue', name, ch.vhost)} not empty", m)
        count = delete_queue(state, q, cancels)
    if not cmd.nowait:
        # delete-ok first, then the basic.cancel of the queue's consumers: RabbitMQ's
        # order, on the deleting channel too (its queue process cancels them afterwards)
        out.append(QueueDeleteOk(ch.key, count))
    out.extend(cancels)
