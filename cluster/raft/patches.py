"""Every change RaftMQ makes to pysyncobj, and every private attribute it reads, in one place.

pysyncobj 0.3.17 is used as a library, but several of its behaviours are unsafe
or slow for a broker (the chaos suite found most of them). The fixes reach into
its private, name-mangled attributes; a release that renamed one would make a
safety fix silently do nothing. So:

* :data:`PATCHES` lists each change: what it replaces, why, the chaos seed or test
  that needs it, and its installer: what puts it in place (a function here or in
  :mod:`cluster.raft.tcp`, or the hook of :mod:`cluster.raft.node` that wires it into
  each replica). The rules themselves are pure functions in :mod:`cluster.log_rules`.
* :func:`install` applies the module-level patches (the rows marked ``once``), once,
  explicitly (nothing happens at import), after checking the installed version is the
  one they were written for and that every patched attribute exists.
* :class:`Internals` is the only way to the private state and private methods of a
  ``SyncObj`` instance: it checks, when the replica is built, that every attribute and
  method it names is there, and fails loudly otherwise.

Only the modules of cluster/raft/ import pysyncobj.
"""

from __future__ import annotations

import functools
import gzip
import importlib.metadata
import logging
import os
import random
import struct
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pysyncobj.pickle as sync_pickle
import pysyncobj.serializer as serializer_module
import pysyncobj.syncobj as syncobj_module
from pysyncobj import SyncObj
from pysyncobj.config import FAIL_REASON
from pysyncobj.journal import FileJournal, ResizableFile
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.pickle import to_bytes
from pysyncobj.serializer import Serializer
from pysyncobj.tcp_connection import TcpConnection

from cluster import log_rules
from cluster.replica import MembershipResult

VERSION = "0.3.17"


class PatchError(RuntimeError):
    """pysyncobj is not the version these patches were written for, or an attribute
    they need is missing: running on would silently lose a safety fix."""


@dataclass(frozen=True)
class Patch:
    name: str
    replaces: str  # the pysyncobj attribute(s) involved
    why: str
    found_by: str  # chaos seed, test or measurement
    # What puts it in place, as "module:qualified.name" (installer_of resolves it): with
    # ``once``, a function :func:`install` calls (module-level, before any replica); else
    # what wires it into each replica as it is built (cluster/raft/node.py).
    installer: str = ""
    once: bool = False


PATCHES: tuple[Patch, ...] = (
    Patch("pickle protocol 5", "pysyncobj.pickle.__protocol",
          "protocol 2 turns bytes into text and back: 7.6 µs per 4 KiB message vs 0.5 µs",
          "measured (+50-70 % throughput); ARCHITECTURE.md",
          installer="cluster.raft.patches:install_pickle_protocol", once=True),
    Patch("linear TCP buffers", "TcpConnection.__processSend/__processRead/__processParseMessage",
          "bytes buffers rebuilt on every partial send/recv are quadratic: a multi-MB entry "
          "stalled a node for seconds and elections churned", "measured; cluster/raft/tcp.py",
          installer="cluster.raft.tcp:install_buffers", once=True),
    Patch("no pipe notifier", "syncobj.PIPE_NOTIFIER_ENABLED",
          "cross-thread wake-ups are useless: everything runs on the node's event loop", "-",
          installer="cluster.raft.patches:install_no_pipe_notifier", once=True),
    Patch("durable snapshot replace", "serializer.atomicReplace",
          "snapshots were renamed into place without fsync: after a power loss the snapshot "
          "could be empty while the journal entries it covers were compacted away", "seed 3000",
          installer="cluster.raft.patches:install_durable_replace", once=True),
    Patch("event-loop poller", "syncobj.createPoller (during construction only)",
          "pysyncobj's sockets are served by the asyncio loop, not a poll thread", "design",
          installer="cluster.raft.patches:with_poller"),
    Patch("journal tail kept on snapshot load", "SyncObj.__loadDumpFile (overridden)",
          "a journal holding the snapshot's last entry keeps the entries after it, at start-up "
          "and on install (Raft's rule; pysyncobj dropped entries the node may have "
          "acknowledged)", "seeds 3000, 1029; log_rules.journal_trim_position",
          installer="cluster.raft.node:_Replica._SyncObj__loadDumpFile"),
    Patch("commit index sent before the leader applies", "SyncObj.__applyLogEntries "
          "(overridden)",
          "pysyncobj's tick applies every committed entry and only then sends the followers "
          "the new commit index: they waited out the leader's apply (2 ms for an entry of 428 "
          "messages, 15-35 ms on a busy machine) before applying it themselves",
          "issue 22 burst benchmark (bench/burst.py): delivery gap median 43 -> 28 ms loaded",
          installer="cluster.raft.node:_Replica._SyncObj__applyLogEntries"),
    Patch("stale snapshot refused", "Serializer.setTransmissionData, __incomingTransmissionFile",
          "a follower installed a snapshot older than the state it had applied and re-ran "
          "every later entry's effects", "seed 1029; log_rules.snapshot_is_stale",
          installer="cluster.raft.snapshots:Snapshots.hook_install"),
    Patch("durable Raft meta", "FileJournal.__metaStorer.storeMeta",
          "term and vote were written without fsync: after a power loss a node could vote "
          "twice in one term", "seed 3000 (strict power-loss model)",
          installer="cluster.raft.patches:hook_meta"),
    Patch("fsync before acknowledging", "journal.add, transport.send",
          "a follower acknowledged entries that were only in an unflushed mmap: a confirm "
          "did not mean 'on disk on a majority'", "chaos power-loss schedules",
          installer="cluster.raft.patches:Durability"),
    Patch("fast election after the leader's connection closes",
          "transport on-disconnected callback, __raftElectionDeadline",
          "a killed leader's sockets close at once; waiting a whole election timeout after "
          "the last heartbeat cost 0.5-1.25 s of unavailability", "measured failover",
          installer="cluster.raft.patches:hook_leader_lost"),
    Patch("a split vote retried soon", "__raftElectionDeadline (RaftNode.tick)",
          "a candidate that did not win waited a whole new election timeout (0.5-1.25 s): "
          "after a leader kill the two survivors sometimes stood at once and split the vote",
          "issue 22, make bench-failover (one kill in 20 at 1.18 s)",
          installer="cluster.raft.patches:retry_split_vote_soon"),
    Patch("next index never moves back on success; reset ceiling",
          "transport on-message callback, __raftNextIndex",
          "rejections of pipelined appends undid the walk back to the last matching entry: a "
          "deposed leader never caught up under traffic", "seed 2005; log_rules.ResetCeiling",
          installer="cluster.raft.patches:hook_next_index"),
    Patch("conflict answered with commit index + 1", "next_node_idx replies",
          "one round trip to resolve a diverged tail instead of one per entry",
          "seed 2005; log_rules.conflict_reply_index",
          installer="cluster.raft.patches:Durability"),
    Patch("commit index after a snapshot chunk bounded", "__raftCommitIndex",
          "a snapshot chunk moved the commit index past what was installed",
          "seed 201; log_rules.commit_after_snapshot_message",
          installer="cluster.raft.patches:hook_next_index"),
    Patch("leader quorum needs recent contact", "__lastResponseTime",
          "behind a black hole TCP stays 'connected': a cut-off leader kept its clients for "
          "8 s", "seed 908683",
          installer="cluster.raft.node:RaftNode.has_quorum"),
    Patch("election postponed after a loop stall", "__raftElectionDeadline, "
          "__generateRaftTimeout", "a stalled loop reads heartbeats late; without pre-vote "
          "this deposed healthy leaders (hundreds of terms under multi-MB messages)",
          "measured with the client suites",
          installer="cluster.raft.node:RaftNode.postpone_election"),
    Patch("message store follows snapshots", "Serializer.serialize, checkSerializing, "
          "__pid", "the store's buffer is written out before the snapshot writer forks; store "
          "segments that died before a snapshot started are deleted once it is on disk",
          "docs/storage.md",
          installer="cluster.raft.snapshots:Snapshots.hook_writes"),
    Patch("journal pages let go", "FileJournal.__journalFile.__mm",
          "the journal is an mmap that grows and is read back rarely: its pages, once "
          "synced, are dropped from the process (madvise) so they do not count as its "
          "memory", "bench/memory.py",
          installer="cluster.raft.node:RaftNode.release_pages"),
    Patch("snapshot compression level 1", "serializer.gzip",
          "snapshots were gzipped at level 9: 15 s for the 19 MiB index of 1,000,000 "
          "messages, while the log (bodies included) piled up in memory behind the writer; "
          "level 1 takes 0.1 s for the same size on disk", "bench/memory.py",
          installer="cluster.raft.patches:install_snapshot_gzip", once=True),
    Patch("appends held during a leadership transfer", "_checkCommandsToApply (_Replica)",
          "pysyncobj sends TimeoutNow only to a follower with every entry, which under load "
          "never held (transfers failed for 10 s), and an entry appended after it made the "
          "others refuse the target their votes (terms climbed, the old leader won again); "
          "held for at most 0.25 + 0.5 s, transfers take 10-20 ms with 1,500 msg/s running",
          "tests/chaos/rolling.py",
          installer="cluster.raft.node:_Replica._checkCommandsToApply"),
    Patch("proposals handed over at once", "_checkCommandsToApply",
          "a batch queued in pysyncobj across the start of an election reached the new leader "
          "ahead of older resubmitted ones", "seed 472396",
          installer="cluster.raft.node:RaftNode.propose"),
    Patch("linear reassembly of large entries", "append_entries transmission pieces "
          "(transport on-message callback)",
          "a follower joined a large entry's 64 KiB pieces with bytes += (quadratic: 3.3 GB "
          "copied for 20 MiB), and a premature 'finish' piece raised out of the loop",
          "issue 19 item 9: 20 MiB messages, elections and 320s on every node; "
          "tests/integration_cluster/test_big_messages.py",
          installer="cluster.raft.patches:hook_next_index"),
    Patch("incompressible frames stored, not deflated", "TcpConnection.send",
          "deflating a 20 MiB random body took 0.4 s of one loop turn per hop (forward, and "
          "once per follower); a frame whose sample does not shrink is stored (zlib level 0, "
          "the receiver unchanged)", "issue 19 item 9; cluster/raft/tcp.py",
          installer="cluster.raft.tcp:install_send", once=True),
    Patch("frames encoded as the socket takes them", "TcpConnection.send, __trySendBuffer",
          "a leader encrypted all 320 pieces of a 20 MiB entry for one follower, then for "
          "the next, in one loop turn (0.3 s idle, over 1 s on a busy machine: followers "
          "started elections); and bytes a send left waited for the next send to move on. "
          "Now 1 MiB per connection per turn, the rest on write events, which are asked for",
          "issue 19 item 9; tests/cluster/test_raft_patches.py",
          installer="cluster.raft.tcp:install_send", once=True),
    Patch("a busy loop is not a silent peer", "TcpConnection.__processConnectionTimeout; "
          "__raftElectionDeadline (RaftNode.tick)",
          "after a loop stall the peers' bytes wait unread: pysyncobj dropped connections "
          "for 'no data' and followers started elections before reading the heartbeats "
          "(terms 1 to 25 in a minute of 20 MiB messages); a connection with bytes waiting "
          "stays, a follower whose leader's connection is open restarts its timer; and a "
          "link idle both ways (two followers) was dropped on the first vote request of an "
          "election, splitting the vote after a leader kill: silence counts from that send",
          "issue 19 item 9, issue 22 (make bench-failover); "
          "tests/integration_cluster/test_big_messages.py, tests/cluster/test_raft_patches.py",
          installer="cluster.raft.tcp:install_timeout", once=True),
    Patch(
        "disk errors stop the node", "ResizableFile.write, storeMeta, fdatasync",
        "a full disk made pysyncobj's mmap'd journal die of SIGBUS (a page of a sparse file "
        "with no block behind it) and an unwritable meta file escape as an exception while the "
        "node went on: blocks are now reserved (posix_fallocate) before the mapping grows, and "
        "any write or sync error stops the node with a message (the journal in memory would "
        "no longer be the one on disk; retrying an fsync after an error is unsafe)",
        "chaos full-disk kind",
          installer="cluster.raft.patches:install_reserving_write", once=True),
    Patch("large journal writes without page faults", "FileJournal.add, ResizableFile.write",
          "a 20 MiB entry was joined twice (length + index + command + length) and copied "
          "into the mmap page by page: ~120 ms of the event loop per entry, on every node; "
          "now three writes, the large one a pwrite (the record format is unchanged)",
          "issue 19 hostile-tenant suite (py-spy of a node taking 20 MiB messages)",
          installer="cluster.raft.patches:install_journal_add", once=True),
)


log = logging.getLogger(__name__)
EXIT_DISK_ERROR = 74  # EX_IOERR


def fail_stop(code: int, message: str, *args: Any) -> None:
    """Log ``message`` and end the process at once with ``code``. For what pysyncobj runs
    inside its tick or a socket callback, where an exception would only be logged and the
    node would go on."""
    log.critical("stopping: " + message, *args)
    logging.shutdown()
    os._exit(code)


def stop_on_disk_error(what: str, path: str, error: OSError) -> None:
    """Fail-stop: a write or sync of Raft state failed. Nothing acknowledged depends on the
    failed write (acknowledgements follow a successful fdatasync), so a restart once the disk
    is writable again recovers from what is on disk."""
    fail_stop(EXIT_DISK_ERROR, "%s %s failed: %s. Start the node again once the disk has "
              "space (and works): it recovers from its journal and the other members", what,
              path, error)


# Journal writes this large go through pwrite, not the mapping (see _reserving_write).
PWRITE_FROM = 64 << 10


def _reserving_write(self: Any, offset: int, values: bytes) -> None:
    """ResizableFile.write with the file's blocks reserved before the mapping grows: a
    write through an mmap into a hole the filesystem cannot fill is a SIGBUS. A large
    write goes through ``pwrite``: through the mapping every 4 KiB page faults on its
    own (a 20 MiB entry: ~80 ms of the event loop), a pwrite copies it in one call. The
    mapping still reads it (Linux's page cache is one), and fdatasync syncs both."""
    mm = self._ResizableFile__mm
    end = offset + len(values)
    if end > len(mm):  # (len: the mapping; mm.size() is the file's size)
        new = max(int(len(mm) * self._ResizableFile__resizeFactor), end)
        try:
            os.posix_fallocate(self._ResizableFile__f.fileno(), 0, new)
            mm.resize(new)
        except OSError as e:
            stop_on_disk_error("growing the Raft journal", self._ResizableFile__fileName, e)
    if len(values) < PWRITE_FROM:
        mm[offset:end] = values
        return
    fd = self._ResizableFile__f.fileno()
    try:
        with memoryview(values) as view:
            done = 0
            while done < len(view):  # a regular file takes it whole, but say so if not
                done += os.pwrite(fd, view[done:], offset + done)
    except OSError as e:
        stop_on_disk_error("writing the Raft journal", self._ResizableFile__fileName, e)


def _journal_add(self: Any, command: bytes, idx: int, term: int) -> None:
    """FileJournal.add writing the record in three pieces (length and index, command,
    length) instead of joining them first: two fewer copies of a 20 MiB entry."""
    self._FileJournal__journal.append((command, idx, term))
    data = to_bytes(command)
    size = 16 + len(data)
    head = struct.pack("<IQQ", size, idx, term)
    file = self._FileJournal__journalFile
    offset = self._FileJournal__currentOffset
    file.write(offset, head)
    file.write(offset + 20, data)
    file.write(offset + 4 + size, head[:4])
    self._FileJournal__currentOffset = offset + size + 8
    self._FileJournal__setLastRecordOffset(self._FileJournal__currentOffset)


# What install() replaces: (owner, attribute).
_MODULE_ATTRS: tuple[tuple[Any, str], ...] = (
    (sync_pickle, "__protocol"),
    (syncobj_module, "PIPE_NOTIFIER_ENABLED"),
    (syncobj_module, "createPoller"),
    (serializer_module, "atomicReplace"),
    (serializer_module, "gzip"),
    (TcpConnection, "send"),
    (TcpConnection, "_TcpConnection__trySendBuffer"),
    (TcpConnection, "_TcpConnection__processConnectionTimeout"),
    (TcpConnection, "_TcpConnection__processSend"),
    (TcpConnection, "_TcpConnection__processRead"),
    (TcpConnection, "_TcpConnection__processParseMessage"),
    (SyncObj, "_SyncObj__loadDumpFile"),
    (SyncObj, "_SyncObj__applyLogEntries"),
    (SyncObj, "_checkCommandsToApply"),
    (Serializer, "setTransmissionData"),
    (Serializer, "deserialize"),
    (ResizableFile, "write"),
    (FileJournal, "add"),
    (FileJournal, "_FileJournal__setLastRecordOffset"),
    (FileJournal, "_destroy"),
)

# Private instance attributes the replacements read or write (cluster/raft/tcp.py,
# _reserving_write, _journal_add, Internals): a pysyncobj whose own code no longer names
# one (in any method of the class, as read when this module was imported, before install()
# replaced some) fails check_version.
_INSTANCE_ATTRS: tuple[tuple[type, tuple[str, ...]], ...] = (
    (TcpConnection, ("writeBuffer", "readBuffer", "socket", "poller", "processConnection",
                     "processConnectionTimeout", "lastReadTime", "timeout", "recvBufferSize")),
    (FileJournal, ("journal", "journalFile", "currentOffset", "metaStorer",
                   "setLastRecordOffset")),
    (ResizableFile, ("mm", "f", "fileName", "resizeFactor")),
    (Serializer, ("pid", "incomingTransmissionFile")),
)


def _names_in(cls: type) -> frozenset[str]:
    """The mangled private names the methods of ``cls`` use."""
    prefix = f"_{cls.__name__}__"
    names: set[str] = set()
    for value in vars(cls).values():
        code = getattr(value, "__code__", None)
        if code is not None:
            names.update(n for n in code.co_names if n.startswith(prefix))
    return frozenset(names)


_NAMES_USED = {cls: _names_in(cls) for cls, _ in _INSTANCE_ATTRS}

_installed = False


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_replace(src: str, dst: str) -> None:
    """Data, rename, directory, in that order, all durable before pysyncobj drops a
    journal entry the file covers."""
    fsync_path(src)
    os.replace(src, dst)
    fsync_path(os.path.dirname(os.path.abspath(dst)))


# What pysyncobj's serializer sees as the gzip module: level 1 when writing (reading is
# the same whatever the level, so snapshots written before still load).
SNAPSHOT_GZIP_LEVEL = 1
fast_gzip = types.SimpleNamespace(
    GzipFile=functools.partial(gzip.GzipFile, compresslevel=SNAPSHOT_GZIP_LEVEL))


def check_version() -> None:
    installed = importlib.metadata.version("pysyncobj")
    if installed != VERSION or getattr(syncobj_module, "VERSION", None) != VERSION:
        raise PatchError(f"pysyncobj {installed} is installed; cluster/raft/patches.py "
                         f"was written for {VERSION}: review every patch before changing the pin")
    missing = [f"{getattr(o, '__name__', o)}.{a}" for o, a in _MODULE_ATTRS if not hasattr(o, a)]
    missing += [f"{cls.__name__}.__{a}" for cls, attrs in _INSTANCE_ATTRS for a in attrs
                if f"_{cls.__name__}__{a}" not in _NAMES_USED[cls]]
    if missing:
        raise PatchError(f"pysyncobj {installed} lacks what the patches replace: {missing}")


def install_pickle_protocol() -> None:
    setattr(sync_pickle, "__protocol", 5)  # noqa: B010 - a module "private" global


def install_no_pipe_notifier() -> None:
    syncobj_module.PIPE_NOTIFIER_ENABLED = False


def install_durable_replace() -> None:
    setattr(serializer_module, "atomicReplace", durable_replace)  # noqa: B010


def install_snapshot_gzip() -> None:
    setattr(serializer_module, "gzip", fast_gzip)  # noqa: B010


def install_reserving_write() -> None:
    ResizableFile.write = _reserving_write


def install_journal_add() -> None:
    FileJournal.add = _journal_add


def installer_of(patch: Patch) -> Any:
    """The function, class or method a PATCHES row names as its installer."""
    module, _, qualname = patch.installer.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def install() -> None:
    """Apply the module-level patches (idempotent): the installers of the PATCHES rows
    marked ``once``, in table order, each once."""
    global _installed
    if _installed:
        return
    check_version()
    done: list[Any] = []
    for patch in PATCHES:
        if patch.once:
            fn = installer_of(patch)
            if fn not in done:
                fn()
                done.append(fn)
    _installed = True


def with_poller(poller: Any, build: Callable[[], Any]) -> Any:
    """Run ``build`` (a SyncObj constructor) with ``poller`` as pysyncobj's poller."""
    original = syncobj_module.createPoller
    syncobj_module.createPoller = lambda _type: poller
    try:
        return build()
    finally:
        syncobj_module.createPoller = original


def dumps(obj: Any) -> bytes:
    data: bytes = sync_pickle.dumps(obj)
    return data


def loads(data: bytes) -> Any:
    return sync_pickle.loads(data)


_RESULTS = {
    FAIL_REASON.SUCCESS: MembershipResult.OK,
    FAIL_REASON.QUEUE_FULL: MembershipResult.QUEUE_FULL,
    FAIL_REASON.MISSING_LEADER: MembershipResult.NO_LEADER,
    FAIL_REASON.DISCARDED: MembershipResult.DISCARDED,
    FAIL_REASON.NOT_LEADER: MembershipResult.NOT_LEADER,
    FAIL_REASON.LEADER_CHANGED: MembershipResult.LEADER_CHANGED,
    FAIL_REASON.REQUEST_DENIED: MembershipResult.DENIED,
}


def close_journal(journal: FileJournal) -> None:
    """Close a journal opened outside a SyncObj (cluster/raft/recovery.py)."""
    journal._destroy()


def serializer_busy(serializer: Any) -> bool:
    """A snapshot writer (forked child) is running: a new snapshot will not start."""
    return bool(getattr(serializer, "_Serializer__pid", 0))


def membership_result(code: Any) -> MembershipResult:
    """pysyncobj's FAIL_REASON code as this project's result (translated here, once)."""
    return _RESULTS.get(code, MembershipResult.UNKNOWN)


class Internals:
    """Named access to one SyncObj's private state. Every name is checked when the
    replica is built: a pysyncobj without it fails here, loudly, not later silently."""

    _ATTRS = ("serializer", "raftLog", "conf", "raftLastApplied", "transport", "raftState",
              "raftLeader", "raftElectionDeadline", "raftCommitIndex", "raftNextIndex",
              "raftCurrentTerm", "leaderCommitIndex", "lastResponseTime",
              "onNodeDisconnected", "onMessageReceived", "generateRaftTimeout",
              "newAppendEntriesTime")
    # SyncObj's private methods called (below) or overridden (cluster/raft/node.py _Replica)
    _METHODS = ("_isLeader", "_getLeader", "_checkCommandsToApply", "_SyncObj__loadDumpFile",
                "_SyncObj__applyLogEntries", "_SyncObj__sendAppendEntries")

    def __init__(self, obj: SyncObj) -> None:
        missing = [a for a in self._ATTRS if not hasattr(obj, "_SyncObj__" + a)]
        missing += [m for m in self._METHODS if not callable(getattr(SyncObj, m, None))]
        parts = (getattr(obj, "_SyncObj__serializer", None), getattr(obj, "_SyncObj__raftLog", None))
        for owner, attr in ((parts[0], "_Serializer__incomingTransmissionFile"),
                            (parts[0], "_Serializer__pid"), (parts[1], "add")):
            if not hasattr(owner, attr):
                missing.append(attr)
        if missing:
            raise PatchError(f"pysyncobj's SyncObj lacks private attributes RaftMQ relies on: "
                             f"{missing}")
        self._obj = obj

    def _get(self, name: str) -> Any:
        return getattr(self._obj, "_SyncObj__" + name)

    def _set(self, name: str, value: Any) -> None:
        setattr(self._obj, "_SyncObj__" + name, value)

    # the objects pysyncobj is made of
    @property
    def log(self) -> Any:
        return self._get("raftLog")

    @property
    def transport(self) -> Any:
        return self._get("transport")

    @property
    def serializer(self) -> Any:
        return self._get("serializer")

    @property
    def conf(self) -> Any:
        return self._get("conf")

    # Raft state
    @property
    def commit_index(self) -> int:
        value: int = self._get("raftCommitIndex")
        return value

    @commit_index.setter
    def commit_index(self, value: int) -> None:
        self._set("raftCommitIndex", value)
        self.log.setRaftCommitIndex(value)

    @property
    def last_applied(self) -> int:
        value: int = self._get("raftLastApplied")
        return value

    @property
    def leader_commit_index(self) -> int | None:
        value: int | None = self._get("leaderCommitIndex")
        return value

    @property
    def is_follower(self) -> bool:
        return bool(self._get("raftState") == 0)

    @property
    def is_candidate(self) -> bool:
        return bool(self._get("raftState") == 1)

    @property
    def leader_node(self) -> Any:
        return self._get("raftLeader")

    @property
    def term(self) -> int:
        value: int = self._get("raftCurrentTerm")
        return value

    @property
    def next_index(self) -> dict[Any, int]:
        value: dict[Any, int] = self._get("raftNextIndex")
        return value

    @property
    def last_response_time(self) -> dict[Any, float]:
        value: dict[Any, float] = self._get("lastResponseTime")
        return value

    @property
    def election_deadline(self) -> float:
        value: float = self._get("raftElectionDeadline")
        return value

    @election_deadline.setter
    def election_deadline(self, value: float) -> None:
        self._set("raftElectionDeadline", value)

    # private methods
    def is_leader(self) -> bool:
        return bool(self._obj._isLeader())

    def leader(self) -> Any:
        """The leader's node object (None: no leader known)."""
        return self._obj._getLeader()

    def check_commands_to_apply(self) -> None:
        """Hand proposals queued in pysyncobj to the log now (leader) or forward them."""
        self._obj._checkCommandsToApply()

    def apply_log_entries(self) -> bool:
        """pysyncobj's own apply of the committed entries; True: append_entries are due."""
        return bool(SyncObj._SyncObj__applyLogEntries(self._obj))

    def send_append_entries(self) -> None:
        """Leader: send every follower its next entries and the commit index, now."""
        self._obj._SyncObj__sendAppendEntries()

    @property
    def append_entries_due(self) -> bool:
        """Leader: a heartbeat is due (pysyncobj sends one every ``appendEntriesPeriod``)."""
        return bool(monotonic_time() > self._get("newAppendEntriesTime"))

    def load_dump_file(self, clear_journal: bool) -> None:
        """pysyncobj's own snapshot loading (an override of it calls this)."""
        SyncObj._SyncObj__loadDumpFile(self._obj, clear_journal)

    def random_election_timeout(self) -> float:
        value: float = self._get("generateRaftTimeout")()
        return value

    # callbacks pysyncobj registers with its transport
    @property
    def on_node_disconnected(self) -> Callable[[Any], None]:
        fn: Callable[[Any], None] = self._get("onNodeDisconnected")
        return fn

    @property
    def on_message_received(self) -> Callable[[Any, Any], None]:
        fn: Callable[[Any, Any], None] = self._get("onMessageReceived")
        return fn

    # the serializer's file for a snapshot being received
    @property
    def incoming_snapshot_file(self) -> Any:
        return getattr(self.serializer, "_Serializer__incomingTransmissionFile", None)

    def drop_incoming_snapshot(self) -> None:
        self.serializer._Serializer__incomingTransmissionFile = None

    def meta_storer(self) -> Any:
        """The journal's meta storer (term, vote, commit index), None for a memory journal."""
        storer = getattr(self.log, "_FileJournal__metaStorer", None)
        if storer is None and isinstance(self.log, FileJournal):
            raise PatchError("pysyncobj's FileJournal has no __metaStorer: Raft meta would "
                             "not be made durable")
        return storer

    def journal_mmap(self) -> Any:
        """The journal file's mmap (None for a memory journal)."""
        resizable = getattr(self.log, "_FileJournal__journalFile", None)
        mm = getattr(resizable, "_ResizableFile__mm", None)
        if mm is None and isinstance(self.log, FileJournal):
            raise PatchError("pysyncobj's FileJournal has no __journalFile.__mm")
        return mm


# --- instance patches: wired by cluster/raft/node.py when a replica is built ------------------


class Durability:
    """Mark the journal dirty on every append, and make a follower fsync before it tells
    the leader it has entries (pysyncobj would acknowledge entries that are only in an
    unflushed mmap). Also where a follower's replies get the Raft log corrections of
    :mod:`cluster.log_rules` (seed 2005) and the snapshot-install reply (seed 1029)."""

    def __init__(self, internals: Internals, replica: Any, flush: Callable[[], None]) -> None:
        self.dirty = False
        self.dirty_bytes = 0  # of entries appended since the journal was last synced
        self._internals = internals
        self._replica = replica  # its install_reply: set when a snapshot kept a journal tail
        self._flush = flush
        self._held: list[tuple[Any, Any]] = []
        journal, transport = internals.log, internals.transport
        self._add, self._send = journal.add, transport.send
        journal.add = self._add_entry
        transport.send = self._send_message

    def _add_entry(self, command: Any, *args: Any) -> Any:
        self.dirty = True
        self.dirty_bytes += len(command) if isinstance(command, bytes | bytearray) else 0
        return self._add(command, *args)

    def mark_clean(self) -> None:
        """Every entry appended so far is about to be synced."""
        self.dirty, self.dirty_bytes = False, 0

    def _send_message(self, node: Any, message: Any) -> Any:
        if not isinstance(message, dict) or message.get("type") != "next_node_idx":
            return self._send(node, message)
        self._walk_back_to_commit(message)
        replica = self._replica
        if replica.install_reply is not None and message.get("success"):
            # the kept tail is not known to match the leader's: acknowledge only
            # up to the snapshot
            message["next_node_idx"] = replica.install_reply
            replica.install_reply = None
        if self.dirty:
            # Held until the end of this socket event: one fsync then
            # acknowledges every append_entries that arrived in one read.
            self._held.append((node, message))
            return True
        return self._send(node, message)

    def release_held(self) -> None:
        if self._held:
            self._flush()
            held, self._held = self._held, []
            for node, message in held:
                self._send(node, message)

    def _walk_back_to_commit(self, reply: dict[str, Any]) -> None:
        """Follower: answer a log conflict with the index after our commit index
        (:func:`~cluster.log_rules.conflict_reply_index`)."""
        if not reply.get("reset") or reply.get("success"):
            return
        log = self._internals.log
        reply["next_node_idx"] = log_rules.conflict_reply_index(
            reply["next_node_idx"], log[-1][1], log[0][1], self._internals.commit_index)


def hook_meta(storer: Any) -> None:
    """Term and vote (and the commit index) in ``raft.journal.meta`` are written by pysyncobj
    without fsync: after a power loss a node could vote twice in one term. Made durable
    before pysyncobj goes on (it answers a vote only after storing it)."""
    if storer is None:
        return  # an in-memory journal
    path = storer.getPath()

    def store_meta(meta: Any) -> None:
        try:
            with open(path + ".tmp", "wb") as f:
                f.write(dumps(meta))
            durable_replace(path + ".tmp", path)
        except OSError as e:  # a vote or term that is not durable must not be acted on
            stop_on_disk_error("writing the Raft term and vote to", path, e)

    storer.storeMeta = store_meta


def hook_leader_lost(raft: Internals) -> None:
    """A follower whose connection to the leader closes starts an election soon.

    A killed process's sockets are closed by its kernel at once; pysyncobj still waits for
    a whole election timeout after the last heartbeat (0.5-1.25 s here) before it looks for
    a new leader. A cut that closes no connection (a black hole) keeps the normal timeout.
    The random spread keeps the followers from standing at the same moment (a split vote
    costs another timeout)."""
    on_disconnected = raft.on_node_disconnected

    def disconnected(node: Any) -> None:
        on_disconnected(node)
        if raft.is_follower and raft.leader_node == node:
            _elect_soon(raft)

    raft.transport.setOnNodeDisconnectedCallback(disconnected)


def retry_split_vote_soon(raft: Internals, term_before: int) -> None:
    """Called after each tick: a node that stood for election in it (its term moved, it is a
    candidate) and does not win retries after 0.2-0.8 election timeouts, not pysyncobj's 1-2.5.

    After a leader kill both followers stand within 0.1-0.4 s (:func:`hook_leader_lost`);
    when they stand in the same turn they split the vote, and the next election came another
    0.5-1.25 s later (measured: one kill in 20 took 1.18 s, the others 0.14-0.39 s). Votes come
    back in milliseconds, so the shorter retry leaves them time; Raft's safety does not
    depend on timeouts."""
    if raft.term != term_before and raft.is_candidate:
        _elect_soon(raft)


def _elect_soon(raft: Internals) -> None:
    """Bring the next election forward to 0.2-0.8 election timeouts from now (random, so
    two nodes seldom stand at the same moment); never put it off."""
    soon = monotonic_time() + raft.conf.raftMinTimeout * (0.2 + 0.6 * random.random())
    raft.election_deadline = min(raft.election_deadline, soon)


def hook_next_index(raft: Internals, is_leader: Callable[[], bool]) -> None:
    """Keep the leader's next index for a follower from moving backwards.

    The leader sends entries as soon as they are appended and advances its
    next index optimistically; pysyncobj then sets it back to whatever an
    older acknowledgement says, re-sends entries the follower already has,
    and the follower truncates and re-appends them (measured: hundreds of
    "truncating already-applied log entries" per minute under load, and
    snapshot re-transmissions). A successful acknowledgement can only move
    the index forward; failures (``reset``) only move it back
    (:class:`~cluster.log_rules.ResetCeiling`, seed 2005). A snapshot chunk may
    move the commit index only as far as the installed snapshot (seed 201)."""
    handle = raft.on_message_received
    next_index = raft.next_index
    ceiling = log_rules.ResetCeiling()

    def on_message(node: Any, message: Any) -> None:
        if not isinstance(message, dict):
            handle(node, message)
            return
        kind = message.get("type")
        if kind == "next_node_idx" and message.get("reset") and not message.get("success"):
            handle(node, message)
            if is_leader() and node in next_index:
                next_index[node] = ceiling.on_reset(node, raft.term, message["next_node_idx"])
            return
        if kind == "next_node_idx" and message.get("success"):
            ceiling.on_success(node)
        if kind == "next_node_idx" and message.get("success") and not message.get("reset"):
            before = next_index.get(node)
            handle(node, message)
            if before is not None and node in next_index and next_index[node] < before:
                next_index[node] = before
            return
        if kind == "append_entries" and message.get("transmission") is not None:
            _on_transmission_chunk(handle, node, message)
            return
        if kind == "append_entries" and "prevLogIdx" not in message:
            before = raft.commit_index
            handle(node, message)
            after = raft.commit_index
            commit = log_rules.commit_after_snapshot_message(before, after, raft.last_applied)
            if commit != after:
                raft.commit_index = commit
            return
        handle(node, message)

    raft.transport.setOnMessageReceivedCallback(on_message)


def _on_transmission_chunk(handle: Callable[[Any, Any], None], node: Any,
                           message: dict[str, Any]) -> None:
    """A follower receiving one piece of an entry larger than a frame (pysyncobj sends it in
    64 KiB pieces, ``transmission`` start/process/finish).

    pysyncobj joins the pieces with ``bytes +=``: a copy of everything received so far per
    piece, quadratic (20 MiB: 320 pieces, 3.3 GB copied, 0.2-1 s of the follower's loop
    per entry). Started as a ``bytearray``, the same ``+=`` extends it in place.

    Its leader marks a piece ``finish`` when it reaches the end of the entry's *data*, not
    of the pickled entry (a few bytes longer): for some sizes the piece before the last is
    marked ``finish`` too, and unpickling the incomplete entry raises out of the socket
    callback. Those bytes stay in the buffer and the real last piece completes it, so such
    a premature ``finish`` is ignored."""
    if message.get("transmission") == "start":
        message["data"] = _Pieces(message["data"])
    if message.get("transmission") != "finish":
        handle(node, message)
        return
    try:
        handle(node, message)
    except (EOFError, struct.error, sync_pickle.pickle.UnpicklingError):
        log.debug("an entry's piece marked as its last was not: waiting for the rest")


class _Pieces(bytearray):
    """A large entry's pieces, joined in place by pysyncobj's ``+=``. Its ``loads`` turns
    anything that is not ``bytes`` into bytes with ``encode``: one copy, when complete."""

    def encode(self, *_args: Any) -> bytes:
        return bytes(self)
