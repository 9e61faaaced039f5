"""What the node needs from its replica of the Raft log, as interfaces.

:class:`cluster.raft.node.RaftNode` (pysyncobj) implements them; tests use in-memory
fakes (tests/cluster/fake_raft.py), so the proposer's rules and the node's logic
run without sockets or pysyncobj.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cluster.effects import Effect
from cluster.records import Record


@dataclass(frozen=True)
class RaftStatus:
    node: str
    state: str  # leader / follower / candidate
    leader: str | None
    term: int
    commit_index: int
    last_applied: int
    log_len: int
    has_quorum: bool
    members: tuple[str, ...] = ()
    connected: tuple[str, ...] = ()
    match_index: tuple[tuple[str, int], ...] = ()


class MembershipResult(enum.StrEnum):
    """Outcomes of a membership change."""

    OK = "ok"
    QUEUE_FULL = "queue full"
    NO_LEADER = "no leader"
    DISCARDED = "discarded (the leader changed)"
    NOT_LEADER = "not the leader"
    LEADER_CHANGED = "the leader changed"
    DENIED = "denied (one membership change at a time, and the member must (not) exist)"
    UNKNOWN = "unknown outcome"


class RaftLog(Protocol):
    """The log as the proposer drives it (cluster/proposer.py)."""

    @property
    def leader(self) -> str | None: ...

    @property
    def catching_up(self) -> bool: ...

    @property
    def dirty(self) -> bool: ...

    def propose(self, data: bytes) -> None: ...

    def tick(self) -> list[Effect]: ...

    def take_applied(self) -> list[int]: ...

    def take_out_of_order(self) -> list[int]: ...

    def flush(self) -> None: ...

    @property
    def must_wait(self) -> bool:
        """This node leads and has appended entries not yet durable: it must not tick
        before :meth:`make_durable` returns True."""
        ...

    def make_durable(self) -> bool:
        """Sync the appends (True), or start syncing them in the background (False: the
        node's wake callback runs when they are durable)."""
        ...

    def set_incarnation(self, incarnation: int) -> None: ...


class Replica(RaftLog, Protocol):
    """Everything a node uses: the log, the local state, membership and status."""

    @property
    def state(self) -> Any: ...

    @property
    def is_ready(self) -> bool: ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def has_quorum(self) -> bool: ...

    def attach(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None: ...

    def postpone_election(self) -> None: ...

    def status(self) -> RaftStatus: ...

    def peers(self) -> list[str]: ...

    def is_connected(self, peer: str) -> bool: ...

    def read(self, msg_id: int) -> Record:
        """A stored message's record (the ``msg_id`` of a Deliver or GetOk): readable until
        the :meth:`collect` after the entry that let it go."""

    def collect(self) -> None:
        """Let go of message bytes released so far (every effect that could read them
        has been written)."""

    def release_pages(self) -> None:
        """Drop file pages the replica maps but no longer needs from the process."""

    def add_member(self, addr: str, callback: Callable[[MembershipResult], None]) -> None: ...

    def remove_member(self, addr: str,
                      callback: Callable[[MembershipResult], None]) -> None: ...

    def transfer_leadership(self, to: str | None = None) -> bool: ...

    def hold_appends(self, seconds: float) -> None: ...

    def close(self) -> None: ...
