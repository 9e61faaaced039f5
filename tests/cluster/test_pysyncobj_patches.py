"""cluster/pysyncobj_patches.py: the patch table, the version pin, loud failures."""

from __future__ import annotations

import pytest

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
