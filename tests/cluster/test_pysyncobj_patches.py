"""cluster/pysyncobj_patches.py: the patch table, the version pin, loud failures."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from pysyncobj.journal import FileJournal

from cluster import pysyncobj_patches as P


def test_every_patch_says_what_why_and_who_found_it() -> None:
    assert len(P.PATCHES) >= 10
    for patch in P.PATCHES:
        assert patch.name and patch.replaces and len(patch.why) > 20 and patch.found_by


def test_install_checks_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    P.check_version()  # the pinned one is installed
    monkeypatch.setattr(P.importlib.metadata, "version", lambda name: "0.3.18")
    with pytest.raises(P.PatchError, match="0.3.18"):
        P.check_version()


def test_a_missing_attribute_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "_MODULE_ATTRS", (*P._MODULE_ATTRS, (P.SyncObj, "_SyncObj__gone")))
    with pytest.raises(P.PatchError, match="_SyncObj__gone"):
        P.check_version()


def test_internals_refuse_an_object_without_the_private_state() -> None:
    class NotSyncObj:
        pass

    with pytest.raises(P.PatchError, match="raftLog"):
        P.Internals(NotSyncObj())


def test_membership_results_are_this_projects_own() -> None:
    from cluster.replica import MembershipResult as R

    assert P.membership_result(0) is R.OK
    assert P.membership_result(6) is R.DENIED
    assert P.membership_result(99) is R.UNKNOWN


def test_journal_blocks_are_reserved_and_a_full_disk_stops_the_node(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    P.install()
    journal = FileJournal(str(tmp_path / "j"))
    for i in range(200):  # grows the file several times, blocks reserved each time
        journal.add(b"x" * 100, i + 1, 1)
    journal.flush()
    assert [journal[i][1] for i in (0, 199)] == [1, 200]
    assert os.stat(tmp_path / "j").st_blocks * 512 >= os.stat(tmp_path / "j").st_size
    stopped: list[int] = []

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(P.os, "posix_fallocate", full)
    monkeypatch.setattr(P.os, "_exit", stopped.append)
    monkeypatch.setattr(P.logging, "shutdown", lambda: None)
    with pytest.raises(IndexError):  # (a real stop never returns to write)
        for i in range(200, 2000):
            journal.add(b"x" * 100, i + 1, 1)
    assert stopped and stopped[0] == P.EXIT_DISK_ERROR
    journal._destroy()
