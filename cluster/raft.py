"""The only module that imports pysyncobj.

pysyncobj replicates one method, :meth:`_Replica.apply_batch`, whose single
argument is a msgpack-encoded :class:`~cluster.commands.Batch` (``bytes``), so
method ids never change across versions. Ticks are driven by the node's event
loop (``autoTick=False``): applying commands and collecting their effects
happens on the loop's thread, no locks needed.

Durability: pysyncobj writes its journal through an mmap and never flushes
it. :meth:`RaftNode.flush` ``fdatasync``s the journal; the node calls it once
per batch of applied entries, before it sends any confirm.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pysyncobj.pickle as _sync_pickle
from pysyncobj import SyncObj, SyncObjConf, replicated

from cluster import machine
from cluster.commands import Batch, decode_batch
from cluster.effects import Effect

log = logging.getLogger(__name__)

# pysyncobj pickles every entry and snapshot with protocol 2, which turns bytes
# into text and back (7.6 µs per 4 KiB message vs 0.5 µs with protocol 5,
# measured). The setting is module-global in pysyncobj; every node sets it.
setattr(_sync_pickle, "__protocol", 5)  # noqa: B010 - the name is dunder-ish on purpose


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


_STATE_NAMES = {0: "follower", 1: "candidate", 2: "leader"}


class _Replica(SyncObj):
    """The replicated object: pysyncobj pickles attributes set after its
    ``__init__`` (here ``state``) into snapshots."""

    def __init__(self, self_addr: str, peers: list[str], conf: SyncObjConf,
                 sink: Callable[[Batch, list[Effect]], None]) -> None:
        # Attributes that exist when SyncObj.__init__ ends are left out of
        # snapshots: the sink must be one of them, the state must not.
        self._sink = sink
        super().__init__(self_addr, peers, conf)
        self.state = machine.new_state()

    @replicated
    def apply_batch(self, data: bytes) -> None:
        batch: Batch = decode_batch(data)
        self._sink(batch, machine.apply_batch(self.state, batch))


class RaftNode:
    """A node's handle on the replicated log and the state machine replica."""

    def __init__(
        self,
        node_id: str,
        self_addr: str,
        peers: list[str],
        data_dir: Path,
        *,
        secret: str = "",
        fsync: bool = True,
        election_timeout: float = 0.5,
        snapshot_entries: int = 200000,
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.node_id = node_id
        self._journal_path = str(data_dir / "raft.journal")
        self._fsync = fsync
        host = self_addr.rpartition(":")[0]
        conf = SyncObjConf(
            autoTick=False,
            appendEntriesUseBatch=False,
            journalFile=self._journal_path,
            fullDumpFile=str(data_dir / "raft.dump"),
            # only the configured address, never 0.0.0.0
            bindAddress=self_addr if host else None,
            password=secret or None,
            raftMinTimeout=election_timeout,
            raftMaxTimeout=election_timeout * 2.5,
            appendEntriesPeriod=0.05,
            connectionRetryTime=1.0,
            connectionTimeout=3.5,
            logCompactionMinEntries=snapshot_entries,
            logCompactionMinTime=3600,
            dynamicMembershipChange=True,
            commandsWaitLeader=True,
            # pysyncobj forks to write snapshots, so the loop does not stall
            useFork=True,
        )
        self._pending: list[Effect] = []
        self._applied_seqs: list[int] = []
        self._incarnation: int | None = None
        self._replica = _Replica(self_addr, list(peers), conf, self._on_applied)
        self._journal_fd: int | None = None
        self._dirty = False

    def _on_applied(self, batch: Batch, effects: list[Effect]) -> None:
        self._pending.extend(effects)
        if batch.node == self.node_id and batch.incarnation == self._incarnation:
            self._applied_seqs.append(batch.seq)

    def set_incarnation(self, incarnation: int) -> None:
        """Batches of this node's current life are reported by :meth:`take_applied`."""
        self._incarnation = incarnation

    def take_applied(self) -> list[int]:
        """Sequence numbers of this node's own batches applied since the last call."""
        seqs = self._applied_seqs[:]
        self._applied_seqs.clear()
        return seqs

    # --- driving -----------------------------------------------------------------

    def propose(self, data: bytes) -> None:
        """Append an encoded batch to the log (forwarded to the leader if need be)."""
        self._replica.apply_batch(data)
        self._dirty = True

    def tick(self) -> list[Effect]:
        """Run one non-blocking pysyncobj tick; return the effects applied in it."""
        self._replica.doTick(0.0)
        return self.take_effects()

    def take_effects(self) -> list[Effect]:
        if not self._pending:
            return []
        effects = self._pending[:]
        self._pending.clear()
        return effects

    def flush(self) -> None:
        """Make every journal entry written so far durable (fdatasync)."""
        if not self._fsync:
            return
        if self._journal_fd is None:
            try:
                self._journal_fd = os.open(self._journal_path, os.O_RDONLY)
            except FileNotFoundError:
                return
        os.fdatasync(self._journal_fd)

    def close(self) -> None:
        try:
            self._replica.destroy()
        finally:
            if self._journal_fd is not None:
                os.close(self._journal_fd)
                self._journal_fd = None

    # --- reading ----------------------------------------------------------------

    @property
    def state(self) -> Any:
        """The local replica of the broker state (may lag the leader)."""
        return self._replica.state

    @property
    def is_ready(self) -> bool:
        """A leader is known and this replica has applied up to its commit index."""
        return bool(self._replica.isReady())

    def status(self) -> RaftStatus:
        s = self._replica.getStatus()
        leader = s.get("leader")
        return RaftStatus(
            node=self.node_id,
            state=_STATE_NAMES.get(s.get("state", 0), str(s.get("state"))),
            leader=leader.id if leader is not None else None,
            term=int(s.get("raft_term", 0)),
            commit_index=int(s.get("commit_idx", 0)),
            last_applied=int(s.get("last_applied", 0)),
            log_len=int(s.get("log_len", 0)),
            has_quorum=bool(s.get("has_quorum", False)),
        )
