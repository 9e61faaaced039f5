"""Dispatch: batches and commands in, effects out."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable

from cluster import commands as C
from cluster.effects import ChannelError, ConnectionError, Effect, Fault, OutOfOrder
from cluster.machine import access, basic, expiry, lifecycle, policies, reply_to, shovels, topology
from cluster.machine.errors import INTERNAL_ERROR, AMQPError
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
    C.Sent: basic.sent,
    C.ReplyConsume: reply_to.consume,
    C.ReplyCancel: reply_to.cancel,
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
    C.ConnectionFlow: lifecycle.connection_flow,
    C.AlarmSet: lifecycle.alarm_set,
    C.Tick: expiry.tick,
    C.Bootstrap: access.bootstrap,
    C.UserPut: access.user_put,
    C.UserDelete: access.user_delete,
    C.VHostPut: access.vhost_put,
    C.VHostDelete: shovels.vhost_delete,  # (access.vhost_delete, and its shovels)
    C.PermissionSet: access.permission_set,
    C.PermissionClear: access.permission_clear,
    C.TopicPermissionSet: access.topic_permission_set,
    C.TopicPermissionClear: access.topic_permission_clear,
    C.LimitsSet: access.limits_set,
    C.Supports: lifecycle.supports,
    C.EnableLevel: lifecycle.enable_level,
    C.NodeDraining: lifecycle.node_draining,
    C.SetPolicy: policies.set_policy,
    C.ClearPolicy: policies.clear_policy,
    C.ShovelSet: shovels.shovel_set,
    C.ShovelClear: shovels.shovel_clear,
    C.ShovelStatus: shovels.shovel_status,
}


def apply(state: State, now_ms: int, cmd: C.Command, out: list[Effect]) -> None:
    """Apply one command at ``now_ms``, appending its effects to ``out``."""
    if now_ms > state.now_ms:
        state.now_ms = now_ms
    _expire_due(state, out)
    _apply(state, cmd, out)


def _expire_due(state: State, out: list[Effect]) -> None:
    due = state.next_due
    if due is not None and state.now_ms >= due:
        try:
            expire_due(state, out)
        except Exception as exc:
            _fault(state, C.Tick(), exc, out)


def _apply(state: State, cmd: C.Command, out: list[Effect]) -> None:
    """Apply one command at ``state.now_ms``, on its own: whatever it raises stays with
    it (an error for its channel or connection) and the next command applies as if it
    had not been there. Nothing is overdue when it starts: the callers expire what is
    due whenever time moves, and no command leaves anything due at the current time."""
    try:
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
                except AMQPError as e:
                    # validated before anything changed: the state is as before the command
                    if e.hard:
                        conn = state.conns[ch.key[:2]]
                        out.append(ConnectionError(conn.key, e.reply_code, e.reply_text,
                                                   e.class_id, e.method_id))
                        close_connection(state, conn, out)
                    else:
                        out.append(ChannelError(ch.key, e.reply_code, e.reply_text,
                                                e.class_id, e.method_id))
                        close_channel(state, ch, out)
        if state.dl_pending:
            flush_dead_letters(state, out)  # dead-lettered by this command
    except Exception as exc:
        _fault(state, cmd, exc, out)


def _fault(state: State, cmd: C.Command, exc: Exception, out: list[Effect]) -> None:
    """``cmd`` raised: a bug. The same bug raises at the same point on every replica,
    so whatever it changed before raising, the replicas stay equal. Its connection is
    closed with 541 (the client may have lost a reply, so it must not go on), a
    Fault effect asks its node to log it, and the batch goes on. Messages dead-lettered
    before it raised (possibly other tenants', by a tick) are still republished."""
    node = state.origin[0] if state.origin is not None else ""
    name = type(exc).__name__
    out.append(Fault(node, describe(cmd), f"{name}: {exc}"))
    key = getattr(cmd, "ch", None) or getattr(cmd, "conn", None)
    conn = state.conns.get(key[:2]) if isinstance(key, tuple) and len(key) >= 2 else None
    if conn is not None:
        out.append(ConnectionError(conn.key, INTERNAL_ERROR,
                                   f"INTERNAL_ERROR - {type(cmd).__name__} failed ({name})",
                                   0, 0))
        try:
            close_connection(state, conn, out)
        except Exception as again:  # the state is too broken to close it cleanly: forget it
            out.append(Fault(node, f"closing {conn.key}", f"{type(again).__name__}: {again}"))
            state.conns.pop(conn.key, None)
    if state.dl_pending:
        flush_dead_letters(state, out)  # each on its own: never raises


def describe(cmd: C.Command, limit: int = 60) -> str:
    """A command for the log: long strings and bytes shortened (a body may be 128 MiB)."""
    parts = []
    for name in getattr(cmd, "_FIELDS", ()):
        v = getattr(cmd, name)
        if isinstance(v, bytes | str) and len(v) > limit:
            r = f"{v[:limit]!r}...({len(v)})"
        else:
            r = repr(v)
            if len(r) > 4 * limit:
                r = r[: 4 * limit] + "..."
        parts.append(f"{name}={r}")
    return f"{type(cmd).__name__}({', '.join(parts)})"


def _applied(w: DedupeWindow | None, seq: int) -> bool:
    return w is not None and (seq <= w.high - DEDUPE_WINDOW or seq in w.seen)


def _seen_before(state: State, batch: C.Batch) -> bool:
    """Record the batch's idempotency key; True if it was applied already."""
    key = (batch.node, batch.incarnation)
    w = state.dedupe.get(key)
    if w is None:
        w = state.dedupe[key] = DedupeWindow()
    seq = batch.seq
    if _applied(w, seq):
        return True
    w.seen.add(seq)
    if seq > w.high:
        w.high = seq
        if len(w.seen) > 2 * DEDUPE_WINDOW:
            floor = seq - DEDUPE_WINDOW
            w.seen = {s for s in w.seen if s > floor}
    return False


def apply_batch(state: State, batch: C.Batch) -> list[Effect]:
    """Apply one Raft entry once per idempotency key; returns its effects. What it decided
    about message bytes is in ``state.writes`` (``take_writes``)."""
    if not state.headers_built:
        raise RuntimeError("State.headers were not rebuilt after loading a snapshot "
                           "(cluster.machine.rebuild_headers)")
    info = state.nodes.get(batch.node)
    if info is not None and batch.incarnation < info.incarnation:
        return []  # from an earlier life of the node: everything it refers to is gone
    if batch.after and not _applied(state.dedupe.get((batch.node, batch.incarnation)),
                                    batch.after):
        # Its predecessor was lost on the way (a forward to a leader that was
        # unreachable): applying this one would reorder the node's channels.
        return [OutOfOrder(batch.node, batch.incarnation, batch.seq)]
    if _seen_before(state, batch):
        return []
    if batch.timestamp_ms > state.now_ms:
        state.now_ms = batch.timestamp_ms
    out: list[Effect] = []
    state.origin = (batch.node, batch.incarnation)
    try:
        _expire_due(state, out)  # nothing overdue is visible to the batch's commands
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
