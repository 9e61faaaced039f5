"""An in-memory Raft log for testing the proposer and the node without pysyncobj.

In the spirit of etcd's raft tests against its in-memory storage and network:
one :class:`FakeCluster` holds the log; each :class:`FakeRaft` is a node's view
of it, with a replica of the machine applied entry by entry. The test decides
everything a real network decides: who leads, which proposals are lost, when
entries commit, whether a node is catching up, whether an apply is reported.

Several nodes share one log (tests/node/inproc.py InProcessCluster): any node's
proposal reaches the log while there is a leader (as pysyncobj forwards a
follower's command to it), a committed entry wakes every other node attached to
a loop (as the leader's AppendEntries wake a real replica), and a node that is
``down`` (its process gone) or ``cut_off`` is unreachable to the others and
counts against the quorum.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cluster import machine
from cluster.commands import decode_batch
from cluster.effects import Effect, OutOfOrder
from cluster.records import Record
from cluster.replica import MembershipResult, RaftStatus
from cluster.store import run
from tests.cluster.helpers import guest_state, store_of


class FakeCluster:
    def __init__(self) -> None:
        self.log: list[bytes] = []
        self.commit = 0  # entries [0, commit) are committed
        self.leader: str | None = "n1"
        self.auto_commit = True  # a proposal commits at once
        self.lose_proposals = False  # proposals vanish (a leader about to fail)
        self.nodes: dict[str, FakeRaft] = {}

    def node(self, node_id: str, address: str | None = None) -> FakeRaft:
        """A node; ``address``: its Raft address, as peers name it (default: its id)."""
        raft = self.nodes[node_id] = FakeRaft(self, node_id, address)
        return raft

    def append(self, data: bytes, by: FakeRaft | None = None) -> None:
        if self.lose_proposals or self.leader is None:
            return
        self.log.append(data)
        if self.auto_commit:
            self.commit = len(self.log)
            self.replicate(by)  # (the proposing node applies in its own flush)

    def commit_all(self) -> None:
        self.commit = len(self.log)
        self.replicate()

    def replicate(self, skip: FakeRaft | None = None) -> None:
        """Wake every running node behind the commit index (but ``skip``) to apply."""
        for raft in self.nodes.values():
            if (raft is not skip and raft.wake is not None and not raft.down
                    and raft.applied < self.commit):
                raft.wake()

    def reachable(self, raft: FakeRaft) -> bool:
        return not raft.down and not raft.cut_off

    def has_majority(self) -> bool:
        """More than half the nodes are reachable."""
        return 2 * sum(self.reachable(r) for r in self.nodes.values()) > len(self.nodes)


class FakeRaft:
    """One node's replica: implements cluster.replica.Replica."""

    def __init__(self, cluster: FakeCluster, node_id: str, address: str | None = None) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.address = address or node_id
        self.state = guest_state()  # as after the first node's Bootstrap
        self.store = store_of(self.state)  # message bytes, as the replica keeps them
        self.applied = 0  # entries of the log applied here
        self.incarnation: int | None = None
        self.proposed: list[bytes] = []
        self.dirty = False
        self.flushes = 0
        # entries of this node applied while it still had appends not made durable: a
        # leader counts its own copy toward a commit, so this must stay 0
        self.undurable_applies = 0
        self.catching_up = False
        self.hide_applied = False  # an apply whose callback never arrives
        self.cut_off = False  # this node sees no leader
        self.down = False  # its process is gone: it proposes and applies nothing
        self.wake: Callable[[], None] | None = None  # its node's (attach)
        self._applied_seqs: list[int] = []
        self._out_of_order: list[int] = []

    # --- RaftLog --------------------------------------------------------------------

    @property
    def leader(self) -> str | None:
        return None if self.cut_off or self.down else self.cluster.leader

    def propose(self, data: bytes) -> None:
        if self.down:
            return
        self.proposed.append(data)
        if not self.cut_off:
            self.cluster.append(data, by=self)
            self.dirty = True

    def tick(self) -> list[Effect]:
        effects: list[Effect] = []
        if self.down:
            return effects
        while self.applied < self.cluster.commit:
            batch = decode_batch(self.cluster.log[self.applied])
            self.applied += 1
            out = machine.apply_batch(self.state, batch)
            run(self.store, machine.take_writes(self.state))  # as the replica does
            mine = (batch.node, batch.incarnation) == (self.node_id, self.incarnation)
            if mine and self.dirty and self.is_leader:
                self.undurable_applies += 1
            if out and type(out[0]) is OutOfOrder:
                if mine:
                    self._out_of_order.append(batch.seq)
                continue
            effects.extend(out)
            if mine and not self.hide_applied:
                self._applied_seqs.append(batch.seq)
        return effects

    def take_applied(self) -> list[int]:
        seqs, self._applied_seqs = self._applied_seqs, []
        return seqs

    def take_out_of_order(self) -> list[int]:
        seqs, self._out_of_order = self._out_of_order, []
        return seqs

    def flush(self) -> None:
        self.dirty = False
        self.flushes += 1

    @property
    def must_wait(self) -> bool:
        return self.dirty and self.is_leader

    def make_durable(self) -> bool:
        self.flush()
        return True

    def set_incarnation(self, incarnation: int) -> None:
        self.incarnation = incarnation

    # --- the rest of Replica (what a node uses) ------------------------------------------

    @property
    def is_ready(self) -> bool:
        return self.leader is not None

    @property
    def is_leader(self) -> bool:
        return self.leader == self.node_id

    @property
    def has_quorum(self) -> bool:
        return self.cluster.reachable(self) and self.cluster.has_majority()

    def attach(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        self.wake = wake

    def postpone_election(self) -> None:
        pass

    def status(self) -> RaftStatus:
        return RaftStatus(self.node_id, "leader" if self.is_leader else "follower", self.leader,
                          1, self.cluster.commit, self.applied, len(self.cluster.log),
                          self.has_quorum, members=(self.node_id,))

    def peers(self) -> list[str]:
        return [r.address for r in self.cluster.nodes.values() if r is not self]

    def is_connected(self, peer: str) -> bool:
        return self.cluster.reachable(self) and any(
            r.address == peer and r is not self and self.cluster.reachable(r)
            for r in self.cluster.nodes.values())

    def read(self, msg_id: int) -> Record:
        return self.store.read(msg_id)

    def collect(self) -> None:
        self.store.collect()

    def release_pages(self) -> None:
        pass

    def add_member(self, addr: str, callback: Callable[[MembershipResult], None]) -> None:
        callback(MembershipResult.DENIED)

    def remove_member(self, addr: str, callback: Callable[[MembershipResult], None]) -> None:
        callback(MembershipResult.DENIED)

    def transfer_leadership(self, to: str | None = None) -> bool:
        return False

    def hold_appends(self, seconds: float) -> None:
        pass

    def close(self) -> None:
        pass
