"""Pure rules for replicating the Raft log where pysyncobj's own are unsafe or stall.

Each was found by the chaos suite (the seed is named); :mod:`cluster.raft.node` applies them to
pysyncobj's messages and state. No I/O here, so each rule is tested on its own
(``tests/cluster/test_log_rules.py``).

Entries are pysyncobj's ``(command, index, term)`` tuples.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

Entry = tuple[Any, int, int]


def conflict_reply_index(reported: int, last_index: int, first_index: int,
                         commit_index: int) -> int:
    """Follower: the next index to answer a rejected append with.

    pysyncobj answers a term conflict at ``prevLogIdx`` with ``prevLogIdx`` itself, so a
    leader walks a diverged tail back one entry per round trip. Entries up to the commit index
    are committed, hence in every later leader's log: resending from the one after it resolves
    any conflict in one round trip. A reply past the log's end ("I lack prevLogIdx") is kept."""
    if reported > last_index:
        return reported
    return min(reported, max(commit_index, first_index) + 1)


class ResetCeiling:
    """Leader: between two successful acknowledgements from a follower, its next index never
    rises above the lowest index a rejection (``reset``) asked for, within one term.

    Replies arrive in the order the appends were sent. While clients publish, a leader has
    appends in flight past a diverged follower's log; each is rejected with "send from my log
    end", which pysyncobj took as it came, undoing every step of the walk back to the last
    matching entry: the follower never caught up (seed 2005)."""

    def __init__(self) -> None:
        self._lowest: dict[Hashable, tuple[int, int]] = {}  # follower -> (term, index)

    def on_reset(self, follower: Hashable, term: int, reported: int) -> int:
        """The next index to use after a rejection reporting ``reported``."""
        seen = self._lowest.get(follower)
        if seen is not None and seen[0] == term:
            reported = min(reported, seen[1])
        self._lowest[follower] = (term, reported)
        return reported

    def on_success(self, follower: Hashable) -> None:
        self._lowest.pop(follower, None)


def journal_trim_position(journal: Sequence[Entry], before_last: Entry, last: Entry) -> int | None:
    """Where a journal must start so that it begins with a snapshot's last two entries
    (``before_last``, ``last``), keeping every entry after them; None if the journal does not
    hold them (then it is replaced by the snapshot, as pysyncobj does).

    pysyncobj empties any journal that does not begin exactly at the snapshot. After a power
    loss between a snapshot and the next journal sync the journal is the one from before the
    compaction, and it also holds every later entry this node acknowledged (seed 3000); when a
    snapshot is installed from the leader the same holds (Raft keeps the entries following a
    matching last entry)."""
    if len(journal) < 2:
        return None
    pos = last[1] - journal[0][1]
    if 1 <= pos < len(journal) and tuple(journal[pos]) == tuple(last) \
            and tuple(journal[pos - 1]) == tuple(before_last):
        return pos - 1
    return None


def snapshot_is_stale(snapshot_last_index: int, last_applied: int) -> bool:
    """A snapshot from the leader that is not newer than what this replica applied is refused.

    A leader sends a snapshot again when a reply from before the first transmission arrives
    after it; installing it rolled the replica back, and every entry after it was applied a
    second time in the same process: deliveries and confirms ran twice (seed 1029)."""
    return snapshot_last_index <= last_applied


def commit_after_snapshot_message(before: int, after: int, last_applied: int) -> int:
    """The commit index after a snapshot chunk: at most what it was, or the installed
    snapshot's last index.

    pysyncobj sets it to min(leader's commit, own last index) on every chunk without a
    log-matching check: a deposed leader being caught up committed and applied its own
    never-committed tail (seed 201); a journal tail kept after an installed snapshot is not
    known to match the leader's either."""
    return min(after, max(before, last_applied))
