"""Quorum-loss recovery: reading a stopped node's data directory and forcing its membership.

When a majority of the members is gone for good, the survivors cannot elect a leader: Raft
needs a majority of the membership it knows. ``raftmq cluster force-members --keep A B``
rewrites that membership, on each survivor's data directory while the node is stopped, to the
survivors alone. Where pysyncobj keeps the membership, and what is rewritten:

* the base set a node starts from: ``--peers``, or ``members.forced`` once forced (this
  module writes it; :class:`~cluster.raft.node.RaftNode` prefers it to ``--peers``);
* the snapshot (``raft.dump``) records the members at its index, and replaces the base;
* membership entries in the journal (``add`` / ``rem``) are replayed on top: every one
  present at the time of forcing becomes a no-op (same index and term), so the journal
  no longer re-adds a lost member.

Later membership changes (adding fresh nodes) are new journal entries and snapshots, applied
on top as usual.

What the surviving log holds wins: entries after the survivors' highest commit index that
only the lost members had are lost (publishes confirmed in that window, if any); entries the
survivor holds beyond its commit index become committed once the new membership elects it.
That is why the chosen survivors must include the member with the highest commit index that
can be seen (:func:`check_plan`).

Both checks need the old membership: the members to ask, and the ones to count a quorum of.
The journal alone does not give it: its membership entries record only the members added or
removed after the start, never the ``--peers`` the node started with. So without
``members.forced``, without a snapshot and without ``--peers`` the membership is unknown and
the plan is refused (:func:`unknown_membership`), rather than taken to be this node alone
(which would ask nobody, and so could neither see that the old cluster still works nor that
another member is more advanced).

The pure parts (:func:`replay_membership`, :func:`unknown_membership`, :func:`members_named`,
:func:`check_plan`) are separate from the file
work (:func:`read_data_dir`, :func:`force_members`).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pysyncobj.journal import FileJournal
from pysyncobj.node import TCPNode

from cluster.commands import decode_batch
from cluster.raft import patches
from cluster.store import load_snapshot

FORCED_FILE = "members.forced"
LOCK_FILE = "lock"
JOURNAL = "raft.journal"
DUMP = "raft.dump"

# pysyncobj's entry types (first byte of a journal entry's command)
_REGULAR, _NO_OP, _MEMBERSHIP = 0, 1, 2


class RecoveryError(Exception):
    """The data directory cannot be read or the plan is refused; the message says why."""


# ---------------------------------------------------------------------------- data directory lock


@contextlib.contextmanager
def locked(data_dir: Path) -> Iterator[None]:
    """Hold the data directory's lock: a running node holds it for its whole life
    (:func:`lock`), so a second node, or ``force-members``, on the same directory fails here."""
    fd = lock(data_dir)
    try:
        yield
    finally:
        os.close(fd)


def lock(data_dir: Path) -> int:
    """Take the data directory's lock; returns the file descriptor that holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RecoveryError(f"the data directory {data_dir} is in use by a running node "
                            f"(its {LOCK_FILE} file is locked)") from None
    return fd


# ---------------------------------------------------------------------------- pure


def replay_membership(base: Iterable[str], snapshot_members: Iterable[str] | None,
                      changes: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """The membership a node starts with: ``base``, replaced by the snapshot's if there is
    one, then the journal's ``(add|rem, address)`` changes in order (as pysyncobj does)."""
    members = set(snapshot_members if snapshot_members is not None else base)
    for kind, addr in changes:
        if kind == "add":
            members.add(addr)
        elif kind == "rem":
            members.discard(addr)
    return tuple(sorted(members))


def unknown_membership(peers: Iterable[str] | None, forced: Iterable[str] | None,
                       snapshot_members: Iterable[str] | None,
                       changes: Iterable[tuple[str, str]]) -> str | None:
    """Why the membership a stopped node had cannot be known, or None when it can.

    ``peers`` is None when ``--peers`` was not given (an empty list: the node was started
    alone). The base set comes from ``members.forced``, the snapshot or ``--peers``; the
    journal's ``changes`` only say what happened after the start, so they never make up for
    a missing base: a node started with ``--peers A,B`` and then joined by ``C`` holds
    ``add C`` alone, and ``A`` and ``B`` would be neither asked nor counted."""
    if peers is not None or forced is not None or snapshot_members is not None:
        return None
    named = sorted({addr for _, addr in changes})
    journal = (f"its journal's membership entries name only {', '.join(named)} (they record "
               "the members added or removed later, not the ones it started with)"
               if named else "its journal holds no membership entries")
    return ("the membership this node had cannot be known, so the old members can be neither "
            "asked whether the old cluster still has a quorum nor compared with this node: "
            f"its data directory holds no snapshot ({DUMP}) and no {FORCED_FILE}, {journal}, "
            "and --peers was not given. Pass --peers with the --peers the node was started "
            "with (or set RAFTMQ_PEERS; --peers '' for a node started alone)")


_PARTNER = "partner_node_status_server_"  # pysyncobj's status: one key per other member


def members_named(status: dict[str, Any]) -> set[str]:
    """The other members a running member's status names (its own membership): members the
    old membership given here may have missed (a wrong ``--peers``) are asked as well."""
    return {k[len(_PARTNER):] for k in status if isinstance(k, str) and k.startswith(_PARTNER)}


@dataclass(frozen=True)
class Seen:
    """One member's position as far as it can be known: from its data directory (this node)
    or from its answer over the Raft port (a running member)."""

    address: str
    commit_index: int
    term: int
    has_quorum: bool = False  # a running member that sees a majority of its membership


def check_plan(self_addr: str, keep: Iterable[str], seen: Iterable[Seen],
               old_members: Iterable[str]) -> list[str]:
    """Reasons to refuse forcing the membership to ``keep`` (empty: go ahead)."""
    keep = set(keep)
    seen = list(seen)
    refusals: list[str] = []
    if self_addr not in keep:
        refusals.append(f"--keep must include this node ({self_addr}): force-members rewrites "
                        "the membership of the node whose data directory it is given")
    top = max((s.commit_index for s in seen), default=0)
    best = sorted(s.address for s in seen if s.commit_index == top)
    if best and not keep & set(best):
        refusals.append(
            f"the highest commit index seen ({top}) is on {', '.join(best)}, which --keep leaves "
            "out: keeping only less advanced members would lose committed entries")
    for s in seen:
        if s.address not in keep and s.address in set(old_members) and s.has_quorum:
            refusals.append(f"{s.address} is running and sees a majority of its members: the "
                            "old cluster still works; forcing a new membership would split it")
    return refusals


# ---------------------------------------------------------------------------- reading


@dataclass
class LogInfo:
    """What a stopped node's data directory holds."""

    data_dir: Path
    first_index: int  # the journal's first entry (the snapshot's, when there is one)
    last_index: int
    last_term: int
    commit_index: int
    current_term: int
    snapshot_index: int | None
    snapshot_members: tuple[str, ...] | None
    forced_members: tuple[str, ...] | None  # members.forced, if an earlier run wrote it
    membership_changes: list[tuple[int, str, str]] = field(default_factory=list)  # idx, kind, addr
    # what the entries after the commit index hold (command names, counted)
    uncommitted: Counter[str] = field(default_factory=Counter)
    snapshot: Any = field(default=None, repr=False)  # as read: rewritten without reading again

    def members(self, peers: Iterable[str] | None, self_addr: str) -> tuple[str, ...]:
        """The membership this node had (``peers``: None when ``--peers`` was not given);
        :class:`RecoveryError` when it cannot be known (:func:`unknown_membership`)."""
        changes = [(k, a) for _, k, a in self.membership_changes]
        why = unknown_membership(peers, self.forced_members, self.snapshot_members, changes)
        if why is not None:
            raise RecoveryError(why)
        base = self.forced_members or (self_addr, *(peers or ()))
        return replay_membership(base, self.snapshot_members, changes)


def _entry_kind(command: bytes) -> int:
    return command[0] if command else -1


def _membership_change(command: bytes) -> tuple[str, str] | None:
    try:
        request = patches.loads(command[1:])
        return str(request[0]), str(request[1])
    except Exception:  # a damaged entry: not a change pysyncobj could apply either
        return None


def _commands_in(command: bytes) -> list[str]:
    """Names of the broker commands in a regular entry (the replicated call's argument is
    the msgpack batch)."""
    try:
        call = patches.loads(command[1:])
        batch = decode_batch(call[1][0])
    except Exception:
        return ["(undecodable)"]
    return [type(c).__name__ for c in batch.commands]


def _read_snapshot(path: Path) -> Any:
    """As the node reads it (cluster/store.py load_snapshot): a snapshot from before the
    message store keeps the bytes its entries held when it is rewritten."""
    with open(path, "rb") as f, gzip.GzipFile(fileobj=f) as g:
        return load_snapshot(g)


def read_forced(data_dir: Path) -> tuple[str, ...] | None:
    """The members ``force-members`` wrote for this data directory, if it ran."""
    path = data_dir / FORCED_FILE
    if not path.exists():
        return None
    try:
        members = json.loads(path.read_text())["members"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RecoveryError(f"{path} is unreadable ({e}): remove it, or run force-members "
                            "again") from None
    if not (isinstance(members, list) and members and all(isinstance(m, str) for m in members)):
        raise RecoveryError(f"{path}: 'members' must be a non-empty list of HOST:PORT")
    return tuple(members)


def read_data_dir(data_dir: Path) -> LogInfo:
    journal_path = data_dir / JOURNAL
    if not journal_path.exists():
        raise RecoveryError(f"{data_dir} holds no Raft journal ({JOURNAL}): not a node's data "
                            "directory, or the node never started")
    snapshot: Any = None
    if (data_dir / DUMP).exists():
        try:
            snapshot = _read_snapshot(data_dir / DUMP)
        except Exception as e:
            raise RecoveryError(f"the snapshot {data_dir / DUMP} cannot be read: {e}") from None
    journal = FileJournal(str(journal_path))
    try:
        entries = [journal[i] for i in range(len(journal))]
        commit = int(journal.getRaftCommitIndex())
        current_term = int(journal.getCurrentTerm())
    finally:
        patches.close_journal(journal)
    if not entries:
        raise RecoveryError(f"the journal {journal_path} is empty")
    snapshot_index = int(snapshot[1][1]) if snapshot is not None else None
    # pysyncobj writes the commit index to the journal lazily; a snapshot holds only applied,
    # hence committed, entries, so the commit index is at least the snapshot's
    commit = max(min(commit, entries[-1][1]), snapshot_index or 0)
    info = LogInfo(
        data_dir=data_dir, first_index=entries[0][1], last_index=entries[-1][1],
        last_term=entries[-1][2], commit_index=commit,
        current_term=max(current_term, entries[-1][2]),
        snapshot_index=snapshot_index,
        snapshot_members=(tuple(sorted(n.id for n in snapshot[3]))
                          if snapshot is not None else None),
        forced_members=read_forced(data_dir), snapshot=snapshot)
    for command, idx, _term in entries:
        kind = _entry_kind(command)
        if kind == _MEMBERSHIP:
            change = _membership_change(command)
            if change is not None:
                info.membership_changes.append((idx, *change))
        elif kind == _REGULAR and idx > info.commit_index:
            info.uncommitted.update(_commands_in(command))
    return info


# ---------------------------------------------------------------------------- rewriting


def _rewrite_journal(path: Path) -> int:
    """Every membership entry of the journal at ``path`` becomes a no-op with the same index
    and term (written to a new file, then put in place); returns how many."""
    old = FileJournal(str(path))
    try:
        entries = [old[i] for i in range(len(old))]
    finally:
        patches.close_journal(old)
    changed = sum(1 for c, _, _ in entries if _entry_kind(c) == _MEMBERSHIP)
    if not changed:
        return 0
    tmp = path.with_name(path.name + ".forced.tmp")
    tmp.unlink(missing_ok=True)
    new = FileJournal(str(tmp))
    try:
        for command, idx, term in entries:
            new.add(bytes([_NO_OP]) if _entry_kind(command) == _MEMBERSHIP else command, idx, term)
        new.flush()
    finally:
        patches.close_journal(new)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(str(tmp) + ".meta")  # (FileJournal's meta file: the real one stays)
    patches.durable_replace(str(tmp), str(path))
    return changed


def _rewrite_snapshot(path: Path, snapshot: Any, members: Iterable[str]) -> None:
    updated = (*snapshot[:3], {TCPNode(m) for m in members}, *snapshot[4:])
    tmp = path.with_name(path.name + ".forced.tmp")
    with open(tmp, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=1) as g:
        g.write(patches.dumps(updated))
    patches.durable_replace(str(tmp), str(path))


def force_members(info: LogInfo, keep: Iterable[str]) -> int:
    """Rewrite the data directory of ``info`` so its node starts as a member of exactly
    ``keep``; returns how many journal membership entries were neutralised."""
    members = sorted(set(keep))
    data_dir = info.data_dir
    forced = data_dir / FORCED_FILE
    record = {"members": members, "forced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "last_index": info.last_index, "last_term": info.last_term}
    tmp = forced.with_name(forced.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    patches.durable_replace(str(tmp), str(forced))
    if info.snapshot is not None:
        _rewrite_snapshot(data_dir / DUMP, info.snapshot, members)
    return _rewrite_journal(data_dir / JOURNAL)
