"""The proposer's rules against an in-memory log (tests/cluster/fake_raft.py): group
commit, order across leader changes, idempotent resubmission, lost entries, the
catch-up gate, durability before anything leaves."""

from __future__ import annotations

from typing import Any

import pytest

from cluster import commands as C
from cluster import effects as E
from cluster.commands import decode_batch
from cluster.proposer import Proposer
from tests.cluster.fake_raft import FakeCluster, FakeRaft
from tests.cluster.helpers import enq, of_type, q_declare, stored

CH = ("n1", 1, 1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Node:
    """A proposer on a fake replica, recording what it dispatches."""

    def __init__(self, cluster: FakeCluster, node_id: str = "n1") -> None:
        self.raft: FakeRaft = cluster.node(node_id)
        self.clock = Clock()
        self.dispatched: list[E.Effect] = []
        self.proposer = Proposer(self.raft, node_id, 7, self.dispatched.extend,
                                 clock=self.clock, wall_ms=lambda: 1000)

    def turn(self, *cmds: C.Command) -> bool:
        """One event-loop turn: propose, flush, run."""
        for cmd in cmds:
            self.proposer.propose(cmd)
        self.proposer.flush()
        return self.proposer.run()

    def confirms(self) -> list[int]:
        return [e.seq for e in of_type(self.dispatched, E.Confirm)]


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def node(cluster: FakeCluster) -> Node:
    n = Node(cluster)
    n.turn(C.ConnectionOpen(CH[:2], "/", "guest"), C.ChannelOpen(CH), q_declare(CH, "q"))
    n.dispatched.clear()
    return n


def queue_bodies(raft: FakeRaft, name: str = "q") -> list[bytes]:
    return [stored(raft.state, m)[3] for m in raft.state.vhosts["/"].queues[name].ready]


def test_one_entry_per_turn(node: Node, cluster: FakeCluster) -> None:
    before = len(cluster.log)
    node.turn(*(enq(CH, "q", b"m%d" % i, confirm=i + 1) for i in range(5)))
    assert len(cluster.log) == before + 1
    [batch] = [decode_batch(d) for d in cluster.log[before:]]
    assert len(batch.commands) == 5 and (batch.node, batch.incarnation) == ("n1", 7)
    assert node.confirms() == [1, 2, 3, 4, 5]
    assert node.proposer.in_flight == 0


def test_appends_are_durable_before_the_next_tick(node: Node) -> None:
    flushes = node.raft.flushes
    node.turn(enq(CH, "q", b"m", confirm=1))
    assert node.raft.flushes == flushes + 1 and not node.raft.dirty


def test_a_leader_applies_its_own_entry_only_once_durable(node: Node) -> None:
    """A leader appends a proposal at once (pysyncobj's log), and its next tick counts
    its own copy toward the commit: the confirm must wait for the flush (a confirm sent
    before the fdatasync was lost by a power cut)."""
    node.turn(*(enq(CH, "q", b"m%d" % i, confirm=i + 1) for i in range(3)))
    assert node.confirms() == [1, 2, 3]
    assert node.raft.undurable_applies == 0


def test_after_apply_runs_once_applied(node: Node, cluster: FakeCluster) -> None:
    ran: list[int] = []
    cluster.auto_commit = False
    node.proposer.propose(enq(CH, "q", b"tx"))
    node.proposer.after_apply(lambda: ran.append(1))
    node.proposer.flush()
    node.proposer.run()
    assert ran == []
    cluster.commit_all()
    node.proposer.run()
    assert ran == [1]


def test_no_leader_batches_wait_in_order(node: Node, cluster: FakeCluster) -> None:
    cluster.leader = None
    for i in range(3):
        node.turn(enq(CH, "q", b"%d" % i, confirm=i + 1))
    assert queue_bodies(node.raft) == [] and node.proposer.in_flight == 3
    cluster.leader = "n2"
    node.turn(enq(CH, "q", b"3", confirm=4))
    assert queue_bodies(node.raft) == [b"0", b"1", b"2", b"3"]
    assert node.confirms() == [1, 2, 3, 4]


def test_leader_change_mid_stream_keeps_publisher_order(node: Node, cluster: FakeCluster) -> None:
    """Entries lost with a failing leader are resubmitted, oldest first, before anything
    proposed after the new leader is known (chaos seed 472396)."""
    node.turn(enq(CH, "q", b"0", confirm=1))
    cluster.lose_proposals = True  # the old leader takes these and dies
    node.turn(enq(CH, "q", b"1", confirm=2))
    node.turn(enq(CH, "q", b"2", confirm=3))
    cluster.lose_proposals = False
    cluster.leader = "n3"
    node.turn(enq(CH, "q", b"3", confirm=4))
    assert queue_bodies(node.raft) == [b"0", b"1", b"2", b"3"]
    assert node.confirms() == [1, 2, 3, 4]
    assert node.proposer.resubmitted == 2


def test_a_batch_applied_twice_takes_effect_once(node: Node, cluster: FakeCluster) -> None:
    """pysyncobj may report LEADER_CHANGED for a command that was applied: the batch is
    then proposed again; its idempotency key keeps the second copy from applying."""
    cluster.auto_commit = False
    node.turn(enq(CH, "q", b"once", confirm=1))
    cluster.leader = "n2"
    node.proposer.flush()  # the leader change resubmits the (committed later) batch
    cluster.commit_all()
    node.proposer.run()
    assert len(cluster.log) == 3 and cluster.log[1] == cluster.log[2]  # both copies
    assert queue_bodies(node.raft) == [b"once"]
    assert node.confirms() == [1]


def test_a_lost_entry_is_resubmitted_after_the_timeout(node: Node, cluster: FakeCluster) -> None:
    cluster.lose_proposals = True  # dropped silently: no leader change to notice it by
    node.turn(enq(CH, "q", b"lost", confirm=1))
    cluster.lose_proposals = False
    node.clock.now += node.proposer.resubmit_after / 2
    node.proposer.resubmit_late()
    node.proposer.run()
    assert queue_bodies(node.raft) == []
    node.clock.now += node.proposer.resubmit_after
    node.proposer.resubmit_late()
    node.proposer.run()
    assert queue_bodies(node.raft) == [b"lost"] and node.confirms() == [1]


def test_a_gap_is_refused_and_filled_in_order(node: Node, cluster: FakeCluster) -> None:
    """Chaos seed 916505: a forward dropped while the link to the leader was down, the
    next one delivered once it was back. The later batch is refused, not applied ahead
    of the lost one; the proposer proposes both again, oldest first."""
    cluster.lose_proposals = True
    node.turn(enq(CH, "q", b"m1", confirm=1))
    cluster.lose_proposals = False
    node.turn(enq(CH, "q", b"m2", confirm=2))
    assert queue_bodies(node.raft) == [] and node.confirms() == []
    assert node.proposer.in_flight == 2
    node.clock.now += 0.2  # well within resubmit_after: the gap itself triggers it
    node.proposer.resubmit_late()
    node.proposer.run()
    assert queue_bodies(node.raft) == [b"m1", b"m2"] and node.confirms() == [1, 2]
    assert node.proposer.in_flight == 0


def test_gap_resends_are_spaced(node: Node, cluster: FakeCluster) -> None:
    cluster.lose_proposals = True
    node.turn(enq(CH, "q", b"m1", confirm=1))
    cluster.lose_proposals = False
    node.turn(enq(CH, "q", b"m2", confirm=2))
    node.turn(enq(CH, "q", b"m3", confirm=3))
    proposed = len(node.raft.proposed)
    for _ in range(5):  # refusals reported in the same instant: one resend at most
        node.proposer.resubmit_late()
        node.proposer.run()
    assert len(node.raft.proposed) - proposed <= 3


def test_batches_name_their_predecessor(node: Node, cluster: FakeCluster) -> None:
    before = len(cluster.log)
    node.turn(enq(CH, "q", b"a"))
    node.proposer.propose_once(C.Tick())
    node.turn(enq(CH, "q", b"b"))
    a, once, b = (decode_batch(d) for d in cluster.log[before:])
    assert once.after == 0 and b.after == a.seq and a.after == a.seq - 1


def test_settled_says_when_a_turns_commands_are_applied(node: Node,
                                                       cluster: FakeCluster) -> None:
    p = node.proposer
    idle = p.turn()
    assert p.settled(idle)  # nothing proposed in it
    p.propose(enq(CH, "q", b"a"))
    turn = p.turn()
    assert not p.settled(turn)  # not even sealed
    cluster.auto_commit = False
    p.flush()
    assert not p.settled(turn) and p.turn() == turn + 1
    cluster.commit_all()
    p.run()
    assert p.settled(turn) and p.settled(p.turn())


def test_a_lost_callback_is_harmless(node: Node, cluster: FakeCluster) -> None:
    """The entry applied but this node never heard (pysyncobj dropped the callback): the
    resubmission applies as a duplicate, and the next report completes it."""
    node.raft.hide_applied = True
    node.turn(enq(CH, "q", b"m", confirm=1))
    assert node.proposer.in_flight == 1
    node.raft.hide_applied = False
    node.clock.now += node.proposer.resubmit_after + 1
    node.proposer.resubmit_late()
    node.proposer.run()
    assert node.proposer.in_flight == 0
    assert queue_bodies(node.raft) == [b"m"] and node.confirms() == [1]


def test_catch_up_holds_effects_until_applied_to_the_leader_commit(
    node: Node, cluster: FakeCluster
) -> None:
    """Effects of a catch-up go out only once the replica has applied everything the
    leader says is committed, and only this node's (chaos seed 908683)."""
    other = ("n2", 1, 1)
    cluster.nodes["n2"] = FakeRaft(cluster, "n2")
    node.raft.catching_up = True
    cluster.log.append(_batch("n2", 1, 1, C.ConnectionOpen(other[:2], "/", "guest"),
                              C.ChannelOpen(other), enq(other, "q", b"x", confirm=9)))
    cluster.commit_all()
    node.turn(enq(CH, "q", b"mine", confirm=1))
    assert node.dispatched == []
    node.raft.catching_up = False
    node.proposer.run()
    assert node.confirms() == [1]
    assert all(e.ch[0] == "n1" for e in node.dispatched)  # type: ignore[attr-defined]


def test_propose_once_is_never_resubmitted(node: Node, cluster: FakeCluster) -> None:
    cluster.lose_proposals = True
    node.proposer.propose_once(C.NodeDown("n2", 1))
    cluster.lose_proposals = False
    cluster.leader = "n9"
    node.turn()
    node.clock.now += 100
    node.proposer.resubmit_late()
    assert not any(isinstance(c, C.NodeDown) for d in cluster.log
                   for c in decode_batch(d).commands)


def test_new_life_forgets_what_was_in_flight(node: Node, cluster: FakeCluster) -> None:
    cluster.lose_proposals = True
    node.turn(enq(CH, "q", b"old", confirm=1))
    node.proposer.new_life(8)
    cluster.lose_proposals = False
    cluster.leader = "n2"
    node.turn()
    assert node.proposer.in_flight == 0 and node.raft.incarnation == 8
    assert queue_bodies(node.raft) == []


def test_a_command_that_does_not_encode_is_left_out(node: Node, cluster: FakeCluster) -> None:
    dropped: list[C.Command] = []
    node.proposer._unencodable = dropped.append
    bad = C.QueueDeclare(CH, "x", False, False, False, False, False, {"k": object()})
    node.turn(bad, enq(CH, "q", b"fine", confirm=1))
    assert dropped == [bad]
    assert queue_bodies(node.raft) == [b"fine"] and node.confirms() == [1]


def test_the_hooks_of_a_turn_learn_what_was_left_out(node: Node) -> None:
    """An API request waits with an after_apply hook: it must learn that its command was
    not in the entry (the API said 201 for a queue never declared)."""
    bad = C.QueueDeclare(CH, "x", False, False, False, False, False, {"k": 1 << 70})
    turn = node.proposer.turn()
    seen: list[tuple[C.Command, ...]] = []
    node.proposer.propose(bad)
    node.proposer.propose(enq(CH, "q", b"fine", confirm=1))
    node.proposer.after_apply(lambda: seen.append(node.proposer.dropped(turn)))
    node.proposer.flush()
    node.proposer.run()
    assert seen == [(bad,)]
    assert queue_bodies(node.raft) == [b"fine"] and "x" not in node.raft.state.vhosts["/"].queues
    assert node.proposer.dropped(turn) == ()  # forgotten once the hooks ran
    seen.clear()
    turn = node.proposer.turn()
    node.proposer.after_apply(lambda: seen.append(node.proposer.dropped(turn)))
    node.turn(enq(CH, "q", b"also fine", confirm=2))
    assert seen == [()]


def test_check_encodable_names_the_reason() -> None:
    C.check_encodable(C.QueueDeclare(CH, "x", False, False, False, False, False,
                                     {"k": (1 << 63) - 1}))
    for bad in ({"k": 1 << 70}, {"k": "\ud800"}, {"k": object()}):
        with pytest.raises(C.Unencodable, match="QueueDeclare cannot be encoded"):
            C.check_encodable(C.QueueDeclare(CH, "x", False, False, False, False, False, bad))


def _batch(node: str, inc: int, seq: int, *cmds: C.Command) -> bytes:
    return C.encode_batch(C.Batch(node, inc, seq, 0, cmds))


def test_failing_hook_does_not_stop_the_others(node: Node) -> None:
    ran: list[Any] = []
    def broken() -> None:
        raise ZeroDivisionError

    node.proposer.after_apply(broken)
    node.proposer.after_apply(lambda: ran.append(1))
    node.turn()
    assert ran == [1]
