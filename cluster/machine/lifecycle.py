"""Nodes, connections and channels coming and going.

A connection remembers the incarnation of the node that opened it (the batch's
incarnation), so ``NodeUp(node, n)`` can drop exactly the leftovers of the
node's earlier lives, and transient queues remember their home node the same way.
"""

from __future__ import annotations

from cluster import commands as C
from cluster.effects import Effect
from cluster.machine.bindings import delete_exchange
from cluster.machine.contain import Failed, note, report
from cluster.machine.errors import rs
from cluster.machine.queues import (
    delete_queue,
    reactivate_channel,
    remove_consumer,
    return_msg,
    run_touched,
)
from cluster.machine.state import Channel, Connection, NodeInfo, Queue, State, entry_id


def close_channel(state: State, ch: Channel, out: list[Effect]) -> None:
    close_channels(state, [ch], out)


def close_channels(state: State, chs: list[Channel], out: list[Effect]) -> None:
    """Forget channels: first cancel all their consumers (no ConsumerCancelled:
    the channels are going away), then return their unacked messages, so that
    nothing is redelivered to a channel that is closing in the same step. Each
    consumer and each message on its own (contain.py): the channels may be many
    tenants' (a node down), and each is forgotten whatever one item does."""
    touched: dict[int, Queue] = {}
    failed: Failed | None = None
    for ch in chs:
        del state.channels[ch.key]
        conn = state.conns.get(ch.key[:2])
        if conn is not None:
            conn.channels.pop(ch.key[2], None)
        for c in list(ch.consumers.values()):
            try:
                remove_consumer(state, c, out, notify=False, touched=touched)
            except Exception as exc:
                failed = note(failed, f"consumer '{c.tag}' of channel {ch.key}", exc)
    for ch in chs:
        for q, msg, _c in ch.unacked.values():
            try:
                return_msg(state, q, msg)
            except Exception as exc:
                failed = note(failed, f"message {entry_id(msg)} unacked on channel {ch.key}",
                              exc)
            if not q.deleted:
                touched[q.qid] = q
        ch.unacked.clear()
        ch.global_unacked = 0
    report(state, failed, "closing channels", out)
    run_touched(state, touched, out)


def close_connection(state: State, conn: Connection, out: list[Effect]) -> None:
    close_connections(state, [conn], out)


def close_connections(state: State, conns: list[Connection], out: list[Effect]) -> None:
    # (a channel the connection lists but the state lost would be a bug: skipped, so the
    # other connections, maybe other tenants' on the same node, still close)
    chs = [ch for conn in conns for num in conn.channels
           if (ch := state.channels.get((conn.key[0], conn.key[1], num))) is not None]
    close_channels(state, chs, out)
    for conn in conns:
        del state.conns[conn.key]
    failed: Failed | None = None
    for conn in conns:
        for qid in list(conn.exclusive_queues):
            q = state.queues.get(qid)
            if q is not None:
                try:
                    delete_queue(state, q, out)
                except Exception as exc:
                    failed = note(failed, rs("exclusive queue", q.name, q.vhost), exc)
        conn.exclusive_queues.clear()
    report(state, failed, "closing connections", out)


def _incarnation_of(state: State, node: str) -> int:
    """The incarnation to stamp on something ``node`` creates now."""
    if state.origin is not None and state.origin[0] == node:
        return state.origin[1]
    info = state.nodes.get(node)
    return info.incarnation if info is not None else 0


def connection_open(state: State, cmd: C.ConnectionOpen, out: list[Effect]) -> None:
    node = cmd.conn[0]
    inc = _incarnation_of(state, node)
    info = state.nodes.get(node)
    if info is not None and (inc < info.incarnation or (info.down and inc == info.incarnation)):
        return  # a late command from a life already cleaned up
    if cmd.conn in state.conns or cmd.vhost not in state.vhosts:
        return
    state.conns[cmd.conn] = Connection(cmd.conn, cmd.vhost, cmd.user, inc,
                                       system=cmd.system)


def connection_close(state: State, cmd: C.ConnectionClose, out: list[Effect]) -> None:
    conn = state.conns.get(cmd.conn)
    if conn is not None:
        close_connection(state, conn, out)


def channel_open(state: State, cmd: C.ChannelOpen, out: list[Effect]) -> None:
    conn = state.conns.get(cmd.ch[:2])
    if conn is None or cmd.ch in state.channels:
        return
    state.channels[cmd.ch] = Channel(cmd.ch, conn.vhost, paused=conn.paused, user=conn.user,
                                     system=conn.system)
    conn.channels[cmd.ch[2]] = None


def connection_flow(state: State, cmd: C.ConnectionFlow, out: list[Effect]) -> None:
    """Deliveries to the connection's channels stop, or resume where they stopped."""
    conn = state.conns.get(cmd.conn)
    if conn is None:
        return
    conn.paused = not cmd.active
    touched: dict[int, Queue] = {}
    for num in conn.channels:
        ch = state.channels[(conn.key[0], conn.key[1], num)]
        ch.paused = conn.paused
        if cmd.active:
            reactivate_channel(state, ch, touched)
    run_touched(state, touched, out)


def channel_close(state: State, cmd: C.ChannelClose, out: list[Effect]) -> None:
    ch = state.channels.get(cmd.ch)
    if ch is not None:
        close_channel(state, ch, out)


def _forget_node(state: State, node: str, doomed: object, out: list[Effect]) -> None:
    """Close the node's connections and delete its transient queues whose
    incarnation satisfies ``doomed(incarnation)``."""
    assert callable(doomed)
    close_connections(
        state, [c for k, c in state.conns.items() if k[0] == node and doomed(c.incarnation)], out)
    failed: Failed | None = None
    for q in [q for q in state.queues.values()
              if not q.durable and q.home[0] == node and doomed(q.home[1])]:
        if not q.deleted:
            try:
                delete_queue(state, q, out)
            except Exception as exc:
                failed = note(failed, rs("transient queue", q.name, q.vhost), exc)
    for vh in state.vhosts.values():
        for ex in [x for x in vh.exchanges.values()
                   if not x.durable and x.home[0] == node and doomed(x.home[1])]:
            if ex.name in vh.exchanges:
                try:
                    delete_exchange(state, vh, ex, out)
                except Exception as exc:
                    failed = note(failed, rs("transient exchange", ex.name, vh.name), exc)
    report(state, failed, f"forgetting node {node}", out)


def alarm_set(state: State, cmd: C.AlarmSet, out: list[Effect]) -> None:
    info = state.nodes.get(cmd.node)
    if info is None or info.down or info.incarnation != cmd.incarnation:
        return  # about a life that is over, or not yet announced
    key = (cmd.node, cmd.resource)
    if cmd.active:
        state.alarms[key] = None
    else:
        state.alarms.pop(key, None)


def _clear_alarms(state: State, node: str) -> None:
    for key in [k for k in state.alarms if k[0] == node]:
        del state.alarms[key]


def node_up(state: State, cmd: C.NodeUp, out: list[Effect]) -> None:
    info = state.nodes.get(cmd.node)
    if info is not None and cmd.incarnation < info.incarnation:
        return  # stale
    _clear_alarms(state, cmd.node)  # a new life raises its alarms again if it has any
    state.nodes[cmd.node] = NodeInfo(cmd.incarnation, False, cmd.raft_address, cmd.http_address)
    inc = cmd.incarnation
    _forget_node(state, cmd.node, lambda i: i != inc, out)
    for key in [k for k in state.dedupe if k[0] == cmd.node and k[1] < inc]:
        del state.dedupe[key]


def node_down(state: State, cmd: C.NodeDown, out: list[Effect]) -> None:
    info = state.nodes.get(cmd.node)
    if info is not None and info.incarnation != cmd.incarnation:
        return  # about a life that is already over (or not yet seen)
    state.nodes[cmd.node] = NodeInfo(cmd.incarnation, True, info.raft_address if info else "",
                                     info.http_address if info else "")
    _clear_alarms(state, cmd.node)  # a node that is down blocks nobody
    inc = cmd.incarnation
    _forget_node(state, cmd.node, lambda i: i <= inc, out)


# --- upgrades (command levels, cluster/commands.py) ----------------------------------------


def supports(state: State, cmd: C.Supports, out: list[Effect]) -> None:
    if cmd.raft_address and isinstance(cmd.level, int) and cmd.level > 0:
        state.levels[cmd.raft_address] = cmd.level


def enable_level(state: State, cmd: C.EnableLevel, out: list[Effect]) -> None:
    if isinstance(cmd.level, int) and cmd.level > state.level:
        state.level = cmd.level


def node_draining(state: State, cmd: C.NodeDraining, out: list[Effect]) -> None:
    info = state.nodes.get(cmd.node)
    if info is not None and info.incarnation == cmd.incarnation and not info.down:
        info.draining = True
