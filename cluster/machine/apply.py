"""Dispatch: batches and commands in, effects out."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable

from cluster import commands as C
from cluster.effects import ChannelError, ConnectionError, Effect
from cluster.machine import basic, expiry, lifecycle, topology
from cluster.machine.errors import AmqpError
from cluster.machine.expiry import expire_due, flush_dead_letters
from cluster.machine.lifecycle import close_channel, close_connection
from cluster.machine.state import DedupeWindow, NodeInfo, State

DEDUPE_WINDOW = 4096

# Commands addressed to an open channel: handler(state, channel, cmd, out).
_CHANNEL_HANDLERS: dict[type[C.Command], Callable[..., None]] = {
    C.Publish: basic.publish,
    C.Ack: basic.ack,
    C.Nack: basic.nack,
    C.Consume: basic.consume,
    C.Cancel: basic.cancel,
    C.Get: basic.get,
    C.Recover: basic.recover,
    C.Qos: basic.qos,
    C.Flow: basic.flow,
    C.ExchangeDeclare: topology.exchange_declare,
    C.ExchangeDelete: topology.exchange_delete,
    C.ExchangeBind: topology.exchange_bind,
    C.ExchangeUnbind: topology.exchange_unbind,
    C.QueueDeclare: topology.queue_declare,
    C.QueueBind: topology.queue_bind,
    C.QueueUnbind: topology.queue_unbind,
    C.QueuePurge: topology.queue_purge,
    C.QueueDelete: topology.queue_delete,
}

# Everything else: handler(state, cmd, out).
_OTHER_HANDLERS: dict[type[C.Command], Callable[..., None]] = {
    C.NodeUp: lifecycle.node_up,
    C.NodeDown: lifecycle.node_down,
    C.ConnectionOpen: lifecycle.connection_open,
    C.ConnectionClose: lifecycle.connection_close,
    C.ChannelOpen: lifecycle.channel_open,
    C.ChannelClose: lifecycle.channel_close,
    C.Tick: expiry.tick,
}


def apply(state: State, now_ms: int, cmd: C.Command, out: list[Effect]) -> None:
    """Apply one command at ``now_ms``, appending its effects to ``out``."""
    if now_ms > state.now_ms:
        state.now_ms = now_ms
    due = state.next_due
    if due is not None and state.now_ms >= due:
        expire_due(state, out)
    _apply(state, cmd, out)


def _apply(state: State, cmd: C.Command, out: list[Effect]) -> None:
    """Apply one command at ``state.now_ms``. Nothing is overdue when it starts: the
    callers expire what is due whenever time moves, and no command leaves anything
    due at the current time."""
    handler = _CHANNEL_HANDLERS.get(type(cmd))
    if handler is None:
        other = _OTHER_HANDLERS.get(type(cmd))
        if other is not None:
            other(state, cmd, out)
    else:
        # a channel that is gone (raced a close or an error): the command is ignored
        ch = state.channels.get(cmd.ch)  # type: ignore[attr-defined]
        if ch is not None:
            try:
                handler(state, ch, cmd, out)
            except AmqpError as e:
                if e.hard:
                    conn = state.conns[ch.key[:2]]
                    out.append(ConnectionError(conn.key, e.code, e.text, e.class_id,
                                               e.method_id))
                    close_connection(state, conn, out)
                else:
                    out.append(ChannelError(ch.key, e.code, e.text, e.class_id, e.method_id))
                    close_channel(state, ch, out)
    if state.dl_pending:
        flush_dead_letters(state, out)  # dead-lettered by this command


def _seen_before(state: State, batch: C.Batch) -> bool:
    """Record the batch's idempotency key; True if it was applied already."""
    key = (batch.node, batch.incarnation)
    w = state.dedupe.get(key)
    if w is None:
        w = state.dedupe[key] = DedupeWindow()
    seq = batch.seq
    if seq <= w.high - DEDUPE_WINDOW or seq in w.seen:
        return True
    w.seen.add(seq)
    if seq > w.high:
        w.high = seq
        if len(w.seen) > 2 * DEDUPE_WINDOW:
            floor = seq - DEDUPE_WINDOW
            w.seen = {s for s in w.seen if s > floor}
    return False


def apply_batch(state: State, batch: C.Batch) -> list[Effect]:
    """Apply one Raft entry once per idempotency key; returns its effects."""
    info = state.nodes.get(batch.node)
    if info is not None and batch.incarnation < info.incarnation:
        return []  # from an earlier life of the node: everything it refers to is gone
    if _seen_before(state, batch):
        return []
    if batch.timestamp_ms > state.now_ms:
        state.now_ms = batch.timestamp_ms
    out: list[Effect] = []
    state.origin = (batch.node, batch.incarnation)
    try:
        due = state.next_due
        if due is not None and state.now_ms >= due:
            expire_due(state, out)  # nothing overdue is visible to the batch's commands
        for cmd in batch.commands:
            _apply(state, cmd, out)
    finally:
        state.origin = None
    return out


def snapshot(state: State) -> bytes:
    return pickle.dumps(state, protocol=5)


def restore(data: bytes) -> State:
    state = pickle.loads(data)
    assert isinstance(state, State)
    return state


# --- read-only helpers for the node --------------------------------------------------


def vhost_exists(state: State, vhost: str) -> bool:
    return vhost in state.vhosts


def queue_stats(state: State) -> Iterable[tuple[str, str, int, int, int]]:
    """(vhost, queue, ready, unacked, consumers) for every queue."""
    for vh in state.vhosts.values():
        for q in vh.queues.values():
            yield vh.name, q.name, q.ready_count(), q.unacked, len(q.consumers)





def nodes(state: State) -> dict[str, NodeInfo]:
    """Every node the log has seen: incarnation, down flag and addresses."""
    return dict(state.nodes)


def channel_open(state: State, ch: C.ChKey) -> bool:
    """The machine still has this channel (not closed, errored or its node down)."""
    return ch in state.channels
