"""Taking a node out of service cleanly, and moving Raft leadership (``raftmq node drain``,
``raftmq cluster transfer-leadership``).

A drain, in order: the node stops accepting connections (its listeners close, so clients
reconnect elsewhere); if it leads, leadership goes to the most up-to-date follower; it
stops reading from its clients, so nothing new is proposed, and waits until what they
proposed is applied (their publishes confirmed or nacked); then it closes them with 320
CONNECTION_FORCED. Its clients wait only for the last two steps (measured: ~0.1 s). The node stays a Raft member, serving the log, until it stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cluster.commands import NodeDraining

if TYPE_CHECKING:
    from node.broker import Broker

log = logging.getLogger(__name__)

TRANSFER_TIMEOUT_S = 10.0
SETTLE_TIMEOUT_S = 10.0
POLL_S = 0.05
# pysyncobj hands leadership only to a follower that has every entry the leader has; under
# load that holds for moments between appends, so a transfer is asked for at every tick
# until one is sent. A sent one is given this long to complete before asking again: each
# TimeoutNow starts an election, and a stream of them would only disrupt the cluster.
TRANSFER_POLL_S = 0.005
TRANSFER_WAIT_S = 2.0
# While trying, the leader takes no new entries into its log for this long (they wait in
# its queue), so that a follower can have them all: Raft's transfer procedure.
HOLD_S = 0.25
HOLD_AFTER_SEND_S = 0.5
DRAIN_REASON = "CONNECTION_FORCED - node drained for maintenance"


@dataclass
class DrainResult:
    leader_before: str | None
    leader_after: str | None
    settled: bool  # every proposal of the node's clients was applied before they closed
    closed: int  # client connections closed


async def transfer_leadership(broker: Broker, to: str | None = None,
                              timeout: float = TRANSFER_TIMEOUT_S) -> str | None:
    """Leader only: hand leadership to ``to`` (a Raft address) or to the most caught-up
    follower, and wait until another node leads. The new leader's address, or None when
    no other node took over in time."""
    deadline = time.monotonic() + timeout
    me = broker.cfg.raft_address
    sent_at = held_at = -TRANSFER_WAIT_S
    while time.monotonic() < deadline:
        leader = broker.raft.leader
        if leader is not None and leader != me:
            broker.raft.hold_appends(0)
            return leader
        now = time.monotonic()
        if broker.raft.is_leader and now - sent_at >= TRANSFER_WAIT_S:
            if broker.raft.transfer_leadership(to):  # refused while the target is behind
                sent_at = now
                # still nothing new until the target has won: an entry appended now would
                # make the others refuse it their votes (their logs would be longer)
                broker.raft.hold_appends(HOLD_AFTER_SEND_S)
            elif now - held_at >= TRANSFER_WAIT_S:
                held_at = now
                broker.raft.hold_appends(HOLD_S)
            broker.wake()
        await asyncio.sleep(TRANSFER_POLL_S)
    broker.raft.hold_appends(0)
    return None


async def drain(broker: Broker) -> DrainResult:
    leader_before = broker.raft.leader
    broker.draining = True
    if broker.raft.state.level >= NodeDraining.SINCE:
        # every member's API shows it (a member of an older release would not know it)
        broker.propose(NodeDraining(broker.node_id, broker.incarnation))
        broker.flush_now()
    for server in broker.servers:
        server.close()
    log.warning("draining: listeners closed, no new connections")
    leader_after = leader_before
    if broker.raft.is_leader:
        leader_after = await transfer_leadership(broker)
        log.warning("draining: leadership handed to %s", leader_after)
    # Nothing new from this node's clients from here on: what they sent is proposed now.
    conns = list(broker.connections.values())
    for conn in conns:
        conn.pause_reading("drain")
    broker.flush_now()
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while broker.proposer.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
    settled = not broker.proposer.in_flight
    await asyncio.sleep(POLL_S)  # the last confirms reach the sockets
    broker.close_clients(DRAIN_REASON)
    log.warning("draining: %d client connections closed (proposals settled: %s)",
                len(conns), settled)
    return DrainResult(leader_before, broker.raft.leader or leader_after, settled, len(conns))
