"""A leader applies its own entry (and so sends its confirm) only after an fdatasync that
followed the entry's append (cluster/raft/node.py RaftNode.must_wait): a real single-node
RaftNode driven by the proposer, os.fdatasync counted. Until issue 22 a proposal went into
the leader's log at once, the next tick committed and applied it, and the fdatasync came
after: a confirm a power cut could take back.

A large append (a multi-MB message) is synced on a worker thread instead, the loop going on
meanwhile (cluster/raft/journal_sync.py); the entry is still applied only after that sync."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cluster import commands as C
from cluster.proposer import Proposer
from cluster.raft.node import RaftNode
from harness.ports import free_port

pytestmark = pytest.mark.timeout(60)


class Syncs:
    """os.fdatasync, counted (each taking ``delay_s`` longer), with the threads it ran on."""

    def __init__(self, real: Callable[[int], None], delay_s: float = 0.0) -> None:
        self._real = real
        self._delay_s = delay_s
        self.count = 0
        self.threads: list[str] = []

    def __call__(self, fd: int) -> None:
        self._real(fd)
        time.sleep(self._delay_s)
        self.threads.append(threading.current_thread().name)
        self.count += 1


async def until(cond: Callable[[], bool], proposer: Proposer, what: str,
                limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        proposer.run()
        await asyncio.sleep(0.005)


async def test_leader_applies_its_entry_only_after_an_fdatasync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs = Syncs(os.fdatasync)
    monkeypatch.setattr(os, "fdatasync", syncs)
    raft = RaftNode("n1", f"127.0.0.1:{free_port()}", [], tmp_path / "n1", fsync=True,
                    election_timeout=0.2)
    try:
        raft.set_incarnation(1)
        proposer = Proposer(raft, "n1", 1, lambda effects: None)
        raft.attach(asyncio.get_running_loop(), lambda: None)
        await until(lambda: raft.is_leader and not raft.must_wait, proposer, "leadership")
        proposer.leader_seen()
        seen: list[int] = []
        for _ in range(3):
            seen.clear()
            proposer.propose(C.Tick())
            proposer.after_apply(lambda: seen.append(syncs.count))
            proposer.flush()  # appended to the leader's log at once
            appended_at = syncs.count
            assert raft.must_wait
            await until(lambda: bool(seen), proposer, "the entry applied")
            assert seen[0] > appended_at, "applied before any fdatasync after its append"
            assert not raft.must_wait
    finally:
        raft.close()


async def test_a_large_append_is_synced_off_the_loop_and_applied_only_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raft = RaftNode("n1", f"127.0.0.1:{free_port()}", [], tmp_path / "n1", fsync=True,
                    election_timeout=0.2)
    try:
        raft.set_incarnation(1)
        proposer = Proposer(raft, "n1", 1, lambda effects: None)
        raft.attach(asyncio.get_running_loop(), lambda: None)
        await until(lambda: raft.is_leader and not raft.must_wait, proposer, "leadership")
        proposer.leader_seen()
        syncs = Syncs(os.fdatasync, delay_s=0.4)  # a busy disk
        monkeypatch.setattr(os, "fdatasync", syncs)
        seen: list[int] = []
        proposer.propose(C.Publish(("n1", 1, 1), "", "q", False, b"", b"x" * (2 << 20), 0))
        proposer.after_apply(lambda: seen.append(syncs.count))
        proposer.flush()
        t0 = time.monotonic()
        proposer.run()  # starts the sync and returns: the loop is not held for it
        assert time.monotonic() - t0 < 0.2
        assert raft.must_wait and not seen
        turns = 0
        while syncs.count == 0 and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.01)  # the loop serves everything else meanwhile
            turns += 1
            proposer.run()
        assert turns > 10, "the loop waited for the sync"
        assert syncs.threads[0] == "raft-journal-sync"
        await until(lambda: bool(seen), proposer, "the entry applied")
        assert seen[0] >= 1, "applied before the sync of its append was done"
    finally:
        raft.close()
