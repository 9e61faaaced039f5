"""The node's replica of the Raft log, on pysyncobj (one of the modules of cluster/raft/,
the only package that imports it).

pysyncobj replicates one method, :meth:`_Replica.apply_batch`, whose single
argument is a msgpack-encoded :class:`~cluster.commands.Batch` (``bytes``), so
method ids never change across versions. Ticks are driven by the node's event
loop (``autoTick=False``): applying commands and collecting their effects
happens on the loop's thread, no locks needed.

Sockets: pysyncobj's poller is replaced by :class:`_LoopPoller`, which hands
its sockets to the asyncio loop; readiness runs pysyncobj's own callback and
asks the node for a tick, so Raft traffic is handled as soon as it arrives
instead of on a timer.

Durability: pysyncobj writes its journal through an mmap and never flushes
it. Here the journal is ``fdatasync``ed before a leader ticks (the tick in which
it counts its own copy toward a commit: :attr:`RaftNode.must_wait`) and before a
follower acknowledges entries to the leader, so an entry is on disk on a
majority before it commits, and so before any confirm. The fdatasync runs on the
loop's thread: on a worker thread (group commit while the loop goes on) it was
measured slower here, 26.8k against 28.0k msg/s and e2e p50 9.5 against 6.5 ms
(a sync takes ~0.1 ms; the hand-offs between threads cost more than it). Only a
leader's sync of a large append runs on a worker thread, the loop sending
heartbeats meanwhile (:mod:`cluster.raft.journal_sync`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import select
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.poller import POLL_EVENT_TYPE

from cluster import log_rules, machine
from cluster import store as stores
from cluster.commands import Batch, decode_batch
from cluster.effects import Effect, OutOfOrder
from cluster.raft import journal_sync, patches, recovery
from cluster.raft.patches import Internals, membership_result
from cluster.raft.snapshots import Snapshots
from cluster.replica import MembershipResult, RaftStatus

log = logging.getLogger(__name__)

_READ, _WRITE, _ERROR = POLL_EVENT_TYPE.READ, POLL_EVENT_TYPE.WRITE, POLL_EVENT_TYPE.ERROR
# Two ticks this far apart: the loop was busy in between (ticks run every 20 ms when
# idle, and after every socket event).
STALL_S = 0.2


class _LoopPoller:
    """pysyncobj's poller interface on top of an asyncio loop.

    Before :meth:`attach` (and in tests without a loop) ``poll`` falls back to
    ``select``."""

    def __init__(self) -> None:
        self._subs: dict[int, tuple[Callable[[int, int], None], int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_event: Callable[[], None] = lambda: None

    def attach(self, loop: asyncio.AbstractEventLoop, on_event: Callable[[], None]) -> None:
        self._loop, self._on_event = loop, on_event
        for fd, (_, mask) in self._subs.items():
            self._register(fd, mask)

    def subscribe(self, descr: int, callback: Callable[[int, int], None], eventMask: int) -> None:  # noqa: N803
        self.unsubscribe(descr)
        self._subs[descr] = (callback, eventMask)
        if self._loop is not None:
            self._register(descr, eventMask)

    def unsubscribe(self, descr: int) -> None:
        if self._subs.pop(descr, None) is not None and self._loop is not None:
            self._loop.remove_reader(descr)
            self._loop.remove_writer(descr)

    def _register(self, fd: int, mask: int) -> None:
        assert self._loop is not None
        if mask & (_READ | _ERROR):
            self._loop.add_reader(fd, self._fire, fd, _READ)
        if mask & _WRITE:
            self._loop.add_writer(fd, self._fire, fd, _WRITE)

    def _fire(self, fd: int, event: int) -> None:
        sub = self._subs.get(fd)
        if sub is not None:
            sub[0](fd, event)
            self.after_event()
            self._on_event()

    def after_event(self) -> None:
        """Replaced by RaftNode: runs after pysyncobj handled a socket event."""

    def poll(self, timeout: float) -> None:
        if self._loop is not None or not self._subs:
            return  # the loop delivers events
        rd = [fd for fd, (_, m) in self._subs.items() if m & _READ]
        wr = [fd for fd, (_, m) in self._subs.items() if m & _WRITE]
        r, w, _ = select.select(rd, wr, [], timeout)
        for fd in set(r) | set(w):
            sub = self._subs.get(fd)
            if sub is not None:
                sub[0](fd, (_READ if fd in r else 0) | (_WRITE if fd in w else 0))
        self.after_event()


_STATE_NAMES = {0: "follower", 1: "candidate", 2: "leader"}


class _Replica(SyncObj):
    """The replicated object: pysyncobj pickles attributes set after its
    ``__init__`` (here ``state``) into snapshots.

    The machine keeps message ids, not bytes: after each entry the replica carries out on
    its message store what applying decided (``State.writes``); the store and the snapshot
    hooks that keep it in step with snapshots are ``snapshots`` (cluster/raft/snapshots.py).

    Also where pysyncobj's snapshot handling is corrected (both found by the chaos suite)."""

    def __init__(self, self_addr: str, peers: list[str], conf: SyncObjConf,
                 sink: Callable[[Batch, list[Effect], int], None],
                 store_root: Path | None = None) -> None:
        # Attributes that exist when SyncObj.__init__ ends are left out of
        # snapshots: the sink must be one of them, the state must not.
        self._sink = sink
        self.store_root = store_root  # message store files (None: bytes stay in memory)
        # message bytes (set before SyncObj's __init__ so that pysyncobj leaves it out of
        # snapshots: the state carries the store's index)
        self.snapshots = Snapshots(store_root)
        # next_node_idx for the reply to an installed snapshot whose journal tail was kept
        self.install_reply: int | None = None
        self.internals: Internals | None = None  # set during SyncObj.__init__ (loading)
        # Leader only, during a leadership transfer: new commands wait in pysyncobj's queue
        # until then (monotonic s), so the target can catch up (Raft's thesis, 3.10).
        self.hold_appends_until = 0.0
        super().__init__(self_addr, peers, conf)
        self.internals = Internals(self)
        self.snapshots.hook_install(self.internals, self._read_snapshot_once)
        self.snapshots.hook_writes(self.internals)
        self.state = machine.new_state()

    @property
    def store(self) -> Any:
        """The message store (replaced when a snapshot is loaded)."""
        return self.snapshots.store

    def _checkCommandsToApply(self) -> None:  # noqa: N802 - pysyncobj's name
        if self.hold_appends_until and monotonic_time() < self.hold_appends_until \
                and self._internals().is_leader():
            return
        super()._checkCommandsToApply()

    def _internals(self) -> Internals:
        # SyncObj.__init__ loads the snapshot before it returns: build the view early then
        if self.internals is None:
            self.internals = Internals(self)
        return self.internals

    def _read_snapshot_once(self, snapshot: Any) -> None:
        """The next ``deserialize`` returns ``snapshot`` (already read) instead of reading
        and unpickling the file again."""
        serializer = self._internals().serializer

        def once() -> Any:
            del serializer.deserialize
            return snapshot

        serializer.deserialize = once

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:  # noqa: N802, N803
        """pysyncobj's snapshot loading (at start-up, and installing one from the leader), but
        a journal that holds the snapshot's last entry keeps the entries after it
        (:func:`~cluster.log_rules.journal_trim_position`)."""
        try:
            snapshot = self.snapshots.load(self._internals())
        except Exception:  # pysyncobj logs a broken dump itself, below
            snapshot = None
        if snapshot is not None:
            _refuse_newer_format(snapshot)
            self._read_snapshot_once(snapshot)
            if self._trim_journal_to(snapshot[2], snapshot[1]) and clearJournal:
                # This node may have acknowledged the entries kept (counted for a commit).
                clearJournal = False
                self.install_reply = snapshot[1][1] + 1
        previous = self.__dict__.get("state")
        self._internals().load_dump_file(clearJournal)
        if self.state is not previous:
            self.snapshots.adopt(self.state)

    def _SyncObj__applyLogEntries(self) -> bool:  # noqa: N802
        """pysyncobj's apply of the committed entries, but a leader first sends the
        followers the new commit index, so they apply alongside it. The send pysyncobj
        makes after the apply (appendEntriesUseBatch off) would carry nothing new."""
        raft = self._internals()
        if raft.commit_index > raft.last_applied and raft.is_leader():  # (most ticks: none)
            raft.send_append_entries()
            raft.apply_log_entries()
            return False
        return raft.apply_log_entries()

    def _trim_journal_to(self, before_last: Any, last: Any) -> bool:
        """Drop the journal's head up to the snapshot; False if the journal does not hold the
        snapshot's last two entries."""
        journal = self._internals().log
        pos = log_rules.journal_trim_position(journal, before_last, last)
        if pos is None:
            return False
        if pos > 0:
            journal.deleteEntriesTo(pos)
        return True

    @replicated
    def apply_batch(self, data: bytes) -> None:
        try:
            batch: Batch = decode_batch(data)
        except ValueError as exc:
            # Every replica skips the same entry; nothing else can be done with it.
            log.error("skipping a Raft entry of %d bytes: %s", len(data), exc)
            return
        if batch.skipped:
            log.error("entry %s/%d/%d: %d undecodable commands skipped", batch.node,
                      batch.incarnation, batch.seq, batch.skipped)
        effects = machine.apply_batch(self.state, batch)
        writes = machine.take_writes(self.state)
        if writes:
            self.snapshots.run(writes)
        self._sink(batch, effects, len(data))

    def read(self, msg_id: int) -> stores.Record:
        """A stored message's exchange, routing key, properties and body."""
        rec: stores.Record = self.store.read(msg_id)
        return rec


EXIT_NEWER_FORMAT = 78  # EX_CONFIG


def _refuse_newer_format(snapshot: Any) -> None:
    """A snapshot written by a newer release (a node downgraded, or a newer leader's) is
    never applied: this release would misread it. The node stops, saying so (pysyncobj
    loads snapshots inside its tick, where an exception would only be logged)."""
    data = snapshot[0] if isinstance(snapshot, tuple) and snapshot else None
    state = data.get("state") if isinstance(data, dict) else None
    written = getattr(state, "format", 1)
    if isinstance(written, int) and written > machine.SNAPSHOT_FORMAT:
        patches.fail_stop(EXIT_NEWER_FORMAT, "a snapshot of format %d (written by a newer "
                          "release) cannot be read by this release (formats up to %d); run "
                          "the newer release", written, machine.SNAPSHOT_FORMAT)


def _sync_conf(self_addr: str, journal: str, dump: str, bind_address: str | None, secret: str,
               election_timeout: float, snapshot_entries: int,
               dns_cache_s: float | None) -> SyncObjConf:
    """pysyncobj's settings, each chosen for a measured reason."""
    host = self_addr.rpartition(":")[0]
    return SyncObjConf(
        autoTick=False,
        appendEntriesUseBatch=False,
        journalFile=journal,
        fullDumpFile=dump,
        # only the configured address, never 0.0.0.0
        bindAddress=bind_address or (self_addr if host else None),
        password=secret or None,
        raftMinTimeout=election_timeout,
        raftMaxTimeout=election_timeout * 2.5,
        # A leader that has not heard from a majority steps down after this
        # (pysyncobj's default, 30 s, leaves a cut-off leader believing it
        # leads, and proposing, for far too long; 3 election timeouts made
        # leaders step down during CPU-starved stretches and elections churn).
        leaderFallbackTimeout=max(2.0, election_timeout * 10),
        appendEntriesPeriod=0.05,
        # Larger socket buffers: fewer partial sends/receives for big entries.
        sendBufferSize=1 << 22,
        recvBufferSize=1 << 18,
        connectionRetryTime=1.0,
        connectionTimeout=3.5,
        logCompactionMinEntries=snapshot_entries,
        logCompactionMinTime=3600,
        dynamicMembershipChange=True,
        commandsWaitLeader=True,
        # pysyncobj forks to write snapshots, so the loop does not stall
        useFork=True,
        **({} if dns_cache_s is None else
           {"dnsCacheTime": dns_cache_s, "dnsFailCacheTime": dns_cache_s}),
    )


def _check_bindable(addr: str) -> None:
    """Raise OSError naming ``addr`` if the Raft listener cannot bind there. pysyncobj
    retries a failed bind every second, silently and forever: a node whose Raft port
    is taken would wait for a leader without saying why."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        family, _, _, _, sockaddr = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as pysyncobj does
            s.bind(sockaddr)
    except (OSError, ValueError) as e:
        raise OSError(f"cannot bind the Raft listener on {addr}: "
                      f"{getattr(e, 'strerror', None) or e}") from None


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
        snapshot_bytes: int = 64 << 20,
        bind_address: str | None = None,
        dns_cache_s: float | None = None,
        store: bool = True,
    ) -> None:
        """``bind_address`` (HOST:PORT): where the Raft listener binds when it is
        not ``self_addr`` (a DNS name that other members dial, e.g. in Kubernetes).
        ``dns_cache_s``: how long pysyncobj keeps a peer name's address (and a
        failed lookup); its own defaults are 600 s and 30 s, too long for pods
        that come back with a new IP."""
        data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = recovery.lock(data_dir)
        with contextlib.ExitStack() as undo:
            undo.callback(self._release_lock)  # start-up failed: let go of the directory
            forced = recovery.read_forced(data_dir)
            if forced is not None:
                # force-members rewrote this node's membership: it replaces --peers for good
                if set(forced) != {self_addr, *peers}:
                    log.warning("membership forced by 'raftmq cluster force-members' to %s: "
                                "--peers (%s) is not used", ", ".join(forced), ", ".join(peers))
                peers = [m for m in forced if m != self_addr]
            self.node_id = node_id
            self._journal_path = str(data_dir / "raft.journal")
            # a leader that heard from no majority for this long counts as cut off
            self._contact_timeout = max(1.0, 2 * election_timeout)
            self._fsync = fsync
            conf = _sync_conf(self_addr, self._journal_path, str(data_dir / "raft.dump"),
                              bind_address, secret, election_timeout, snapshot_entries, dns_cache_s)
            _check_bindable(conf.bindAddress or self_addr)
            self._pending: list[Effect] = []
            self._applied_seqs: list[int] = []
            self._out_of_order: list[int] = []
            self._incarnation: int | None = None
            self.self_addr = self_addr
            self._poller = _LoopPoller()
            patches.install()
            self._replica: _Replica = patches.with_poller(
                self._poller, lambda: _Replica(self_addr, list(peers), conf, self._on_applied,
                                               data_dir / "store" if store else None))
            internals = self._replica.internals
            assert internals is not None
            self._internals: Internals = internals
            self._sync = journal_sync.JournalSync(self._journal_path, fsync)
            self._loop: asyncio.AbstractEventLoop | None = None
            self._wake: Callable[[], None] = lambda: None
            # pysyncobj keeps every entry since the last snapshot in memory and
            # counts only entries; at 4 KiB messages that is gigabytes. Compact
            # by bytes as well.
            self._log_bytes = 0
            self._snapshot_bytes = snapshot_bytes
            self._last_tick = monotonic_time()
            self._hook_durability()
            undo.pop_all()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _hook_durability(self) -> None:
        """Wire the instance patches (cluster/raft/patches.py)."""
        internals = self._internals
        self._durability = patches.Durability(internals, self._replica, self.flush)
        if self._fsync:
            patches.hook_meta(internals.meta_storer())
        self._poller.after_event = self._durability.release_held  # type: ignore[method-assign]
        patches.hook_next_index(internals, internals.is_leader)
        patches.hook_leader_lost(internals)

    def attach(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        """Serve Raft sockets from ``loop``; ``wake`` is called after socket events (and
        when a background sync of the journal is done)."""
        self._loop, self._wake = loop, wake
        self._poller.attach(loop, wake)

    def _on_applied(self, batch: Batch, effects: list[Effect], size: int) -> None:
        self._log_bytes += size
        mine = batch.node == self.node_id and batch.incarnation == self._incarnation
        if effects and type(effects[0]) is OutOfOrder:
            if mine:
                self._out_of_order.append(batch.seq)
            return
        self._pending.extend(effects)
        if mine:
            self._applied_seqs.append(batch.seq)

    def set_incarnation(self, incarnation: int) -> None:
        """Batches of this node's current life are reported by :meth:`take_applied`."""
        self._incarnation = incarnation

    def take_applied(self) -> list[int]:
        """Sequence numbers of this node's own batches applied since the last call."""
        seqs = self._applied_seqs[:]
        self._applied_seqs.clear()
        return seqs

    def take_out_of_order(self) -> list[int]:
        """This node's batches refused since the last call: their predecessor was lost."""
        seqs, self._out_of_order = self._out_of_order, []
        return seqs

    # --- driving -----------------------------------------------------------------

    def propose(self, data: bytes) -> None:
        """Append an encoded batch to the log (forwarded to the leader if need be), now.

        pysyncobj queues a command until its next tick. If that tick first starts an
        election (no leader: commands wait), the queued batch goes to the next leader as
        soon as one is known, ahead of the older batches the broker resubmits once it sees
        the new leader: one publisher's messages out of order in a queue (chaos seed
        472396). Handed over at once, it goes to the leader the caller saw, as the batches
        before it did, and is resubmitted after them if that leader is gone."""
        self._replica.apply_batch(data)
        self._internals.check_commands_to_apply()

    def tick(self) -> list[Effect]:
        """Run one non-blocking pysyncobj tick; return the effects applied in it.

        Entries this tick appends are NOT yet durable: the caller must make
        them so (:meth:`flush`) before a leader's next tick (:attr:`must_wait`),
        in which it counts its own copy towards a commit."""
        now = monotonic_time()
        if now - self._last_tick > STALL_S:
            self._after_stall()
        self._last_tick = now
        term = self._internals.term
        self._replica.doTick(0.0)
        patches.retry_split_vote_soon(self._internals, term)
        try:
            self._replica.store.flush()  # records of entries applied in the tick
        except OSError as e:  # (the log holds them: a restart writes them again)
            patches.stop_on_disk_error("writing to the message store in", str(
                self._replica.store_root), e)
        self._poller.after_event()  # acknowledgements held during the tick, if any
        if self._snapshot_bytes and self._log_bytes > self._snapshot_bytes:
            self._log_bytes = 0
            self._replica.forceLogCompaction()
        return self.take_effects()

    def _after_stall(self) -> None:
        """Ticks run every few ms, and after every socket event: a longer gap means this
        node's loop was busy (a large entry encrypted, written, applied), not that its
        leader was silent; heartbeats that came meanwhile are still unread in the socket,
        and pysyncobj would start an election before reading them (measured: elections
        every second or two, terms 1 to 25, under 20 MiB messages, every node closing
        its clients). A follower whose connection to its leader is open restarts its
        election timer; a closed one (the leader is gone) keeps the early election."""
        raft = self._internals
        leader = raft.leader_node
        if raft.is_follower and leader is not None and self._replica.isNodeConnected(leader):
            self.postpone_election()

    def take_effects(self) -> list[Effect]:
        if not self._pending:
            return []
        effects = self._pending[:]
        self._pending.clear()
        return effects

    @property
    def dirty(self) -> bool:
        """Entries were appended since the last flush."""
        return self._durability.dirty

    @property
    def must_wait(self) -> bool:
        """This node leads and holds entries not yet durable (a proposal goes into the
        leader's log at once): it must not tick before :meth:`make_durable` says so,
        since a tick counts the leader's own copy toward a commit."""
        return (self._durability.dirty or self._sync.running) and self._internals.is_leader()

    def flush(self) -> None:
        """Make every journal entry written so far durable (fdatasync), now."""
        self._durability.mark_clean()
        self._sync.now()

    def make_durable(self) -> bool:
        """Leader, before a tick (:attr:`must_wait`): True once every entry appended so far
        is durable. A large append is synced on a worker thread instead (False), the loop
        sending followers their entries and heartbeats meanwhile; ``wake`` is called when
        it is done."""
        raft = self._internals
        if self._loop is not None and (self._sync.running or self._durability.dirty_bytes
                                       >= journal_sync.BACKGROUND_FROM):
            if not self._sync.running:
                self._durability.mark_clean()
                self._sync.start(self._loop, self._wake)
            if raft.append_entries_due:
                raft.send_append_entries()
            return False
        self.flush()
        return True

    def collect(self) -> None:
        """Let go of message-store files deleted since the last call: the caller has
        written every effect applied so far (nothing it holds reads them any more)."""
        self._replica.store.collect()

    def read(self, msg_id: int) -> stores.Record:
        """A stored message's record (a Deliver's or GetOk's ``msg_id``): readable until
        the :meth:`collect` after the entry that let it go."""
        return self._replica.read(msg_id)

    def release_pages(self) -> None:
        """Drop the journal's synced pages from this process (they stay in the page
        cache and in the file): an mmap'd journal would otherwise count in the node's
        resident memory for every byte written since the last snapshot."""
        mm = self._internals.journal_mmap()
        if mm is None or self._sync.running:  # not now: the leader's loop must not wait
            return
        self.flush()
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        try:
            self._replica.destroy()
            closing = getattr(self._replica.store, "close", None)
            if closing is not None:
                closing()
        finally:
            self._sync.close()
            self._release_lock()

    # --- reading ----------------------------------------------------------------

    @property
    def state(self) -> Any:
        """The local replica of the broker state (may lag the leader)."""
        return self._replica.state

    @property
    def leader(self) -> str | None:
        leader = self._internals.leader()
        return leader.id if leader is not None else None

    def postpone_election(self) -> None:
        """The loop was stalled (a huge entry, a snapshot load, CPU starvation):
        heartbeats that arrived meanwhile are still unread in the sockets, and
        the loop runs timers before it reads them. Restart the election timer
        so a stall of this node is not mistaken for a silent leader (Raft
        without pre-vote would depose a healthy leader: measured as election
        churn, hundreds of terms, under the client suites' multi-MB messages)."""
        raft = self._internals
        raft.election_deadline = monotonic_time() + raft.random_election_timeout()

    @property
    def catching_up(self) -> bool:
        """The leader told this follower of committed entries it has not applied yet
        (it has not received them): what it applies now may be undone by what follows."""
        leader_commit = self._internals.leader_commit_index
        return leader_commit is not None and leader_commit > self._internals.last_applied

    @property
    def has_quorum(self) -> bool:
        """This node is connected to a majority (itself included); a leader must also have
        heard from a majority lately.

        Behind a black hole (packets dropped, no reset) TCP connections stay open, and
        pysyncobj counts them as connected: a cut-off leader kept its clients until its
        leader fallback timeout stepped it down (5 s, plus the isolation timeout), while the
        others had elected a new leader within a second."""
        replica = self._replica
        if not replica.hasQuorum:
            return False
        if not self._internals.is_leader():
            return True
        since = monotonic_time() - self._contact_timeout
        heard = self._internals.last_response_time
        others = replica.otherNodes
        recent = 1 + sum(1 for n in others if heard.get(n, 0.0) > since)
        return recent > (len(others) + 1) / 2

    @property
    def is_leader(self) -> bool:
        return self._internals.is_leader()

    def is_connected(self, peer: str) -> bool:
        return any(n.id == peer and self._replica.isNodeConnected(n)
                   for n in self._replica.otherNodes)

    def peers(self) -> list[str]:
        return sorted(n.id for n in self._replica.otherNodes)

    def add_member(self, addr: str, callback: Callable[[MembershipResult], None]) -> None:
        """Add a member (leader only; one change at a time)."""
        self._replica.addNodeToCluster(
            addr, callback=lambda _r, err: callback(membership_result(err)))

    def hold_appends(self, seconds: float) -> None:
        """Leader: take no new commands into the log for ``seconds`` (0: from now on
        again); they wait in pysyncobj's queue, and go to the new leader if this one
        steps down."""
        self._replica.hold_appends_until = monotonic_time() + seconds if seconds > 0 else 0.0

    def transfer_leadership(self, to: str | None = None) -> bool:
        """Leader only: ask ``to`` (a member's Raft address; None: the most caught-up
        follower) to take over (Raft's TimeoutNow). False when pysyncobj refused: the
        target is not caught up (it must have every entry the leader has), or gone."""
        sent: list[bool] = []
        self._replica.transferLeadership(
            to, callback=lambda _r, err: sent.append(err == FAIL_REASON.SUCCESS))
        return bool(sent and sent[0])

    def remove_member(self, addr: str, callback: Callable[[MembershipResult], None]) -> None:
        self._replica.removeNodeFromCluster(
            addr, callback=lambda _r, err: callback(membership_result(err)))

    @property
    def is_ready(self) -> bool:
        """A leader is known and this replica has applied up to its commit index."""
        return bool(self._replica.isReady())

    def status(self) -> RaftStatus:
        s = self._replica.getStatus()
        leader = s.get("leader")
        peers = sorted(n.id for n in self._replica.otherNodes)
        return RaftStatus(
            members=tuple(sorted([self.self_addr, *peers])),
            connected=tuple(p for p in peers if s.get("partner_node_status_server_" + p) == 2),
            match_index=tuple((k[len("match_idx_server_"):], int(v)) for k, v in sorted(s.items())
                              if k.startswith("match_idx_server_")),
            node=self.node_id,
            state=_STATE_NAMES.get(s.get("state", 0), str(s.get("state"))),
            leader=leader.id if leader is not None else None,
            term=int(s.get("raft_term", 0)),
            commit_index=int(s.get("commit_idx", 0)),
            last_applied=int(s.get("last_applied", 0)),
            log_len=int(s.get("log_len", 0)),
            has_quorum=bool(s.get("has_quorum", False)),
        )
