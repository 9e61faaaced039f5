"""Watching the cluster's members from one node.

Three duties, checked a few times a second from the broker's housekeeping tick:

* **Leader only:** a member unreachable for ``node_down_after`` seconds (or
  removed from the cluster) is recorded in the log as ``NodeDown`` with the
  incarnation it had, so its consumers are cancelled and its unacked
  messages go back to their queues for the other nodes' consumers.
* **Every node:** if the log says *this* node's current life is down (it was
  partitioned or paused long enough for the leader to give up on it), close
  every client connection and start a new life (``NodeUp``) — the clients
  reconnect and nothing of the old life lingers.
* **Every node:** cut off from the majority for ``isolation_timeout`` seconds,
  close client connections with 320 and refuse new ones until the node sees a
  leader and a quorum again, so clients fail over to a healthy member.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from cluster import machine
from cluster.commands import LEVEL, Command, EnableLevel, NodeDown, Supports
from cluster.replica import Replica
from node.config import Config


class Host(Protocol):
    """What the watch needs from its node (node/broker.py)."""

    cfg: Config
    raft: Replica
    node_id: str
    incarnation: int
    ready: bool
    isolated: bool

    def close_clients(self, reason: str) -> None: ...

    def new_life(self) -> None: ...

    def propose_once(self, cmd: Command) -> None: ...

log = logging.getLogger(__name__)

CHECK_EVERY_S = 0.1
# A check this much later than the previous one follows a stall of the loop.
ISOLATION_LATE_S = 0.5
LEVELS_EVERY_S = 2.0  # how often command levels are looked at (announcing, enabling)
# Replicas' level tables can differ: a member that ran the previous release skipped the
# others' announcements (an unknown command), and once its log is compacted it never learns
# them; a leader lacking one never enables the level (rolling upgrade test, level 3). So while
# the cluster's level is below this release's, a member announces its level again at the next
# look after anything that may have lost it elsewhere: another member announced or began a
# life (it may have restarted from such a snapshot) or the leader changed (the new one may
# lack it). The timer is only a backstop for an announcement lost with a leader change.
REANNOUNCE_EVERY_S = 10.0
LEVEL_ASK_S = 0.5  # a leader's EnableLevel proposed again after this (lost with a leader)


class MembershipWatch:
    def __init__(self, broker: Host) -> None:
        self.broker = broker
        self._checked = 0.0
        self._unhealthy_since: float | None = None
        self._isolation_checked: float | None = None
        self._lost_since: dict[str, float] = {}
        self._proposed_down: set[tuple[str, int]] = set()
        self._levels_checked = 0.0
        self._level_asked = 0.0
        self._announced = 0.0
        self._heard: object = None  # what _news saw at the previous look

    def check(self) -> None:
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY_S:
            return
        self._checked = now
        self._check_isolation(now)
        self._check_own_life()
        self._check_peers(now)
        self._check_levels(now)
        # at every check (cheap): a starting member waits for it before it serves clients
        self.enable_level(now)

    def _check_isolation(self, now: float) -> None:
        """Cut off for ``isolation_timeout`` of the time this node could look: a check
        that comes late follows a stall of this node's own loop (a large entry written
        or applied), when what it missed is still unread in its sockets; that stretch is
        not counted (issue 19: 20 MiB messages made every node close its clients)."""
        b = self.broker
        gap = now - (self._isolation_checked or now)
        self._isolation_checked = now
        healthy = b.raft.leader is not None and b.raft.has_quorum
        if healthy:
            self._unhealthy_since = None
            if b.isolated:
                log.info("node %s sees a leader and a quorum again; accepting clients", b.node_id)
                b.isolated = False
            return
        if self._unhealthy_since is None:
            self._unhealthy_since = now
            return
        if gap > ISOLATION_LATE_S:
            self._unhealthy_since += gap - CHECK_EVERY_S
        if not b.isolated and now - self._unhealthy_since > b.cfg.isolation_timeout:
            log.warning("node %s cut off from the majority for %.1fs: closing client connections",
                        b.node_id, now - self._unhealthy_since)
            b.isolated = True
            b.close_clients("CONNECTION_FORCED - node is cut off from the cluster majority")

    def _check_own_life(self) -> None:
        b = self.broker
        info = machine.nodes(b.raft.state).get(b.node_id)
        if b.ready and info is not None and info.down and info.incarnation == b.incarnation:
            log.warning("node %s was declared down by the cluster; starting a new life", b.node_id)
            b.new_life()

    def _check_levels(self, now: float) -> None:
        """Upgrades (cluster/commands.py LEVEL): make sure the log says what this node
        understands (a snapshot from a leader of an older release may have lost its
        announcement), and, on the leader, enable the highest level every member
        announced."""
        b = self.broker
        if not b.ready or now - self._levels_checked < LEVELS_EVERY_S:
            return
        self._levels_checked = now
        state = b.raft.state
        me = b.cfg.raft_address
        if state.levels.get(me, 0) < LEVEL or (state.level < LEVEL and (
                self._news(state) or now - self._announced >= REANNOUNCE_EVERY_S)):
            self._announced = now
            b.propose_once(Supports(b.node_id, me, LEVEL))
        self.enable_level(now)

    def common_level(self) -> int:
        """The highest level every member announced (this release's at most)."""
        b = self.broker
        state = b.raft.state
        members = [b.cfg.raft_address, *b.raft.peers()]
        return min(min(state.levels.get(m, 1) for m in members), LEVEL)

    def enable_level(self, now: float | None = None) -> None:
        """Leader: enable the highest level every member announced, if it is not yet (at
        most once per LEVEL_ASK_S while the EnableLevel is on its way)."""
        b = self.broker
        if not b.raft.is_leader or not b.raft.has_quorum:
            return
        common = self.common_level()
        now = time.monotonic() if now is None else now
        if common > b.raft.state.level and now - self._level_asked >= LEVEL_ASK_S:
            self._level_asked = now
            log.info("every member understands command level %d: enabling it", common)
            b.propose_once(EnableLevel(common))

    def _news(self, state: machine.State) -> bool:
        """Whether, since the previous look, another member announced a level or began a
        life, or the leader changed (REANNOUNCE_EVERY_S says why that matters)."""
        b = self.broker
        heard = (b.raft.leader,
                 frozenset((a, lv) for a, lv in state.levels.items()
                           if a != b.cfg.raft_address),
                 frozenset((n, i.incarnation) for n, i in machine.nodes(state).items()
                           if n != b.node_id))
        news = self._heard is not None and heard != self._heard
        self._heard = heard
        return news

    def _check_peers(self, now: float) -> None:
        b = self.broker
        if not b.raft.is_leader or not b.raft.has_quorum:
            # A leader cut off from the majority must not declare the
            # majority down (chaos seed 8).
            self._lost_since.clear()
            self._proposed_down.clear()
            return
        members = set(b.raft.peers())
        for node, info in machine.nodes(b.raft.state).items():
            if node == b.node_id or info.down or not info.raft_address:
                continue
            key = (node, info.incarnation)
            if key in self._proposed_down:
                continue
            removed = info.raft_address not in members
            if not removed and b.raft.is_connected(info.raft_address):
                self._lost_since.pop(node, None)
                continue
            since = self._lost_since.setdefault(node, now)
            if removed or now - since > b.cfg.node_down_after:
                log.warning("node %s (%s) %s: recording it down", node, info.raft_address,
                            "was removed" if removed else f"unreachable for {now - since:.1f}s")
                self._proposed_down.add(key)
                b.propose_once(NodeDown(node, info.incarnation))
