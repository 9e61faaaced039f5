"""Nodes, connections, channels, batches: NodeUp/NodeDown cleanup, dedupe, snapshots."""

from __future__ import annotations

from cluster import commands as C
from cluster.effects import ConsumerCancelled, Deliver, OutOfOrder, QueueDeclareOk
from cluster.machine import apply_batch, queue_stats, restore, snapshot
from cluster.machine.state import State
from tests.cluster.helpers import (
    Machine,
    consume,
    enq,
    guest_state,
    of_type,
    q_declare,
    stored,
    x_declare,
)

A1 = ("a", 1, 1)  # node a, connection 1, channel 1
B1 = ("b", 1, 1)


class Cluster:
    """Feeds batches the way cluster/raft/node.py does: one batch per proposal."""

    def __init__(self) -> None:
        self.state = guest_state()
        self.seqs: dict[tuple[str, int], int] = {}

    def batch(self, node: str, inc: int, *cmds: C.Command, ts: int = 0) -> C.Batch:
        seq = self.seqs.get((node, inc), 0) + 1
        self.seqs[(node, inc)] = seq
        return C.Batch(node, inc, seq, ts, tuple(cmds))

    def send(self, node: str, inc: int, *cmds: C.Command, ts: int = 0) -> list:
        return apply_batch(self.state, self.batch(node, inc, *cmds, ts=ts))


def open_ch(ch: C.ChKey) -> list[C.Command]:
    return [C.ConnectionOpen(ch[:2], "/", "guest"), C.ChannelOpen(ch)]


def setup() -> Cluster:
    c = Cluster()
    c.send("a", 1, C.NodeUp("a", 1))
    c.send("b", 1, C.NodeUp("b", 1))
    c.send("a", 1, *open_ch(A1), q_declare(A1, "transient"), q_declare(A1, "durable", durable=True),
           q_declare(A1, "excl", exclusive=True))
    c.send("b", 1, *open_ch(B1), q_declare(B1, "b-transient"))
    return c


def test_node_up_drops_previous_life() -> None:
    c = setup()
    # a consumer on b for a's transient queue, and a's consumer holding a message
    c.send("b", 1, consume(B1, "transient", "bc"))
    c.send("a", 1, consume(A1, "durable", "ac"), enq(A1, "durable", b"m"))
    assert c.state.channels[A1].unacked
    eff = c.send("a", 2, C.NodeUp("a", 2))
    queues = c.state.vhosts["/"].queues
    assert sorted(queues) == ["b-transient", "durable"]
    assert eff == [ConsumerCancelled(B1, "bc")]  # only the other node's consumer is told
    assert ("a", 1) not in c.state.conns and ("b", 1) in c.state.conns
    assert ("/", "durable", 1, 0, 0) in list(queue_stats(c.state))
    assert queues["durable"].returned[0][1].redelivered


def test_node_up_drops_transient_exchanges_of_previous_life() -> None:
    c = setup()
    c.send("a", 1, x_declare(A1, "a-transient-x", durable=False), x_declare(A1, "a-durable-x", durable=True))
    c.send("b", 1, x_declare(B1, "b-transient-x", durable=False))
    c.send("a", 2, C.NodeUp("a", 2))
    exchanges = c.state.vhosts["/"].exchanges
    assert "a-transient-x" not in exchanges
    assert "a-durable-x" in exchanges and "b-transient-x" in exchanges


def test_node_up_arriving_after_new_life_started_keeps_it() -> None:
    c = setup()
    c.send("a", 2, *open_ch(("a", 7, 1)), q_declare(("a", 7, 1), "new-transient"))
    c.send("a", 2, C.NodeUp("a", 2))
    assert ("a", 7) in c.state.conns and ("a", 1) not in c.state.conns
    assert "new-transient" in c.state.vhosts["/"].queues
    assert "transient" not in c.state.vhosts["/"].queues


def test_node_down_requeues_and_cancels() -> None:
    c = setup()
    c.send("a", 1, enq(A1, "durable", b"m"), consume(A1, "durable", "ac"))
    c.send("b", 1, consume(B1, "durable", "bc"))
    eff = c.send("b", 1, C.NodeDown("a", 1))  # proposed by the leader, b
    # a's unacked message goes to b's consumer, redelivered
    assert [(d.ch, d.consumer_tag, d.redelivered) for d in of_type(eff, Deliver)] == [
        (B1, "bc", True)]
    assert sorted(c.state.vhosts["/"].queues) == ["b-transient", "durable"]
    # a late command of that life is ignored
    c.send("a", 1, *open_ch(("a", 9, 1)))
    assert ("a", 9) not in c.state.conns


def test_node_down_for_other_incarnation_ignored() -> None:
    c = setup()
    c.send("b", 1, C.NodeDown("a", 0))
    assert ("a", 1) in c.state.conns


def test_batches_from_an_older_incarnation_are_ignored() -> None:
    c = setup()
    c.send("a", 2, C.NodeUp("a", 2))
    assert c.send("a", 1, *open_ch(("a", 5, 1))) == []
    assert ("a", 5) not in c.state.conns


def test_dedupe_resubmitted_batch() -> None:
    c = setup()
    b = c.batch("b", 1, enq(B1, "b-transient", b"x"))
    apply_batch(c.state, b)
    assert apply_batch(c.state, b) == []
    assert list(queue_stats(c.state))[-1] == ("/", "b-transient", 1, 0, 0)


def test_out_of_order_seqs_each_applied_once() -> None:
    s = guest_state()
    cmds = tuple(open_ch(B1))
    assert apply_batch(s, C.Batch("b", 1, 1, 0, cmds)) == []
    declare = (q_declare(B1, "q1"),)
    e5 = apply_batch(s, C.Batch("b", 1, 5, 0, declare))
    e3 = apply_batch(s, C.Batch("b", 1, 3, 0, (q_declare(B1, "q2"),)))
    assert e5 == [QueueDeclareOk(B1, "q1", 0, 0)] and e3 == [QueueDeclareOk(B1, "q2", 0, 0)]
    assert apply_batch(s, C.Batch("b", 1, 3, 0, (enq(B1, "q2"),))) == []
    assert apply_batch(s, C.Batch("b", 1, 5, 0, (enq(B1, "q1"),))) == []
    assert apply_batch(s, C.Batch("b", 1, 4, 0, (enq(B1, "q1"),))) == []  # new seq: applied
    assert list(queue_stats(s)) == [("/", "q1", 1, 0, 0), ("/", "q2", 0, 0, 0)]
    # same seq from another incarnation or node is a different key
    assert apply_batch(s, C.Batch("c", 1, 5, 0, ())) == []
    assert ("c", 1) in s.dedupe


def test_dedupe_window_is_bounded() -> None:
    s = guest_state()
    for seq in range(1, 20000):
        apply_batch(s, C.Batch("b", 1, seq, 0, ()))
    w = s.dedupe[("b", 1)]
    assert len(w.seen) <= 2 * 4096 + 1
    assert apply_batch(s, C.Batch("b", 1, 10, 0, (C.ConnectionOpen(("b", 1), "/", "guest"),))) == []
    assert ("b", 1) not in s.conns  # far too old: treated as applied


def test_clock_only_moves_forward() -> None:
    s = guest_state()
    apply_batch(s, C.Batch("b", 1, 1, 1000, ()))
    apply_batch(s, C.Batch("b", 1, 2, 500, ()))
    assert s.now_ms == 1000


def test_connection_open_to_unknown_vhost_ignored() -> None:
    s = guest_state()
    apply_batch(s, C.Batch("b", 1, 1, 0, (C.ConnectionOpen(("b", 1), "/nope", "u"),
                                           C.ChannelOpen(B1), q_declare(B1, "q"))))
    assert s.conns == {} and s.vhosts["/"].queues == {}


def test_snapshot_round_trip_preserves_sharing() -> None:
    c = setup()
    c.send("a", 1, consume(A1, "durable", "ac"), enq(A1, "durable", b"m"))
    s2 = restore(snapshot(c.state))
    assert isinstance(s2, State) and s2 == c.state
    # shared identities survive: the unacked entry's queue is the live queue object
    q, _msg, consumer = s2.channels[A1].unacked[1]
    assert q is s2.vhosts["/"].queues["durable"]
    assert consumer is s2.channels[A1].consumers["ac"]
    e1 = apply_batch(c.state, C.Batch("a", 1, 100, 0, (C.Ack(A1, 1, False),)))
    e2 = apply_batch(s2, C.Batch("a", 1, 100, 0, (C.Ack(A1, 1, False),)))
    assert e1 == e2 and s2 == c.state


def test_a_batch_whose_predecessor_was_not_applied_is_refused() -> None:
    """Batch.after: the machine never applies a node's batch ahead of the one it follows
    (a forward lost while the leader was unreachable; chaos seed 916505)."""
    s = Machine().state
    b1 = ("b", 1, 1)
    opened = apply_batch(s, C.Batch("b", 1, 1, 0, (C.ConnectionOpen(b1[:2], "/", "guest"),
                                                   C.ChannelOpen(b1), q_declare(b1, "q"))))
    assert of_type(opened, QueueDeclareOk)
    refused = apply_batch(s, C.Batch("b", 1, 3, 0, (enq(b1, "q", b"second"),), after=2))
    assert refused == [OutOfOrder("b", 1, 3)]
    assert not s.vhosts["/"].queues["q"].ready
    apply_batch(s, C.Batch("b", 1, 2, 0, (enq(b1, "q", b"first"),), after=1))
    apply_batch(s, C.Batch("b", 1, 3, 0, (enq(b1, "q", b"second"),), after=2))
    assert [stored(s, m)[3] for m in s.vhosts["/"].queues["q"].ready] == [b"first", b"second"]


def test_entries_without_a_predecessor_field_still_decode() -> None:
    """The format before Batch.after (a rolling upgrade's older nodes write it)."""
    import msgpack

    old = msgpack.packb([C.FORMAT_VERSION, "b", 1, 5, 0, []], use_bin_type=True)
    batch = C.decode_batch(old)
    assert (batch.seq, batch.after) == (5, 0)
    new = C.decode_batch(C.encode_batch(C.Batch("b", 1, 6, 0, (), after=5)))
    assert new.after == 5
