"""The pure rules of quorum-loss recovery (cluster/recovery.py); the command itself runs
against real nodes in tests/integration_cluster/test_recovery.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster import recovery
from cluster.recovery import Seen, check_plan, replay_membership


def test_membership_replay_order() -> None:
    assert replay_membership(["a", "b"], None, []) == ("a", "b")
    assert replay_membership(["a", "b"], ["a", "b", "c"], [("rem", "b")]) == ("a", "c")
    assert replay_membership(["a"], None, [("add", "d"), ("rem", "d"), ("add", "e")]) == ("a", "e")
    assert replay_membership(["a"], None, [("bogus", "z")]) == ("a",)


def test_plan_keeps_the_most_advanced_member() -> None:
    seen = [Seen("a", 100, 3), Seen("b", 120, 3)]
    assert check_plan("a", ["a", "b"], seen, ["a", "b", "c"]) == []
    refused = check_plan("a", ["a"], seen, ["a", "b", "c"])
    assert len(refused) == 1 and "120" in refused[0] and "b" in refused[0]
    # a tie: keeping any one of the most advanced is enough
    assert check_plan("a", ["a"], [Seen("a", 120, 3), Seen("b", 120, 3)], ["a", "b"]) == []


def test_plan_refusals() -> None:
    assert "must include this node" in check_plan("a", ["b"], [Seen("a", 1, 1)], ["a", "b"])[0]
    working = check_plan("a", ["a"], [Seen("a", 5, 1), Seen("c", 5, 1, has_quorum=True)],
                         ["a", "b", "c"])
    assert len(working) == 1 and "still works" in working[0]


def test_lock_and_forced_file(tmp_path: Path) -> None:
    with recovery.locked(tmp_path), pytest.raises(recovery.RecoveryError, match="in use"):
        recovery.lock(tmp_path)
    with recovery.locked(tmp_path):  # released
        pass
    assert recovery.read_forced(tmp_path) is None
    (tmp_path / recovery.FORCED_FILE).write_text('{"members": []}')
    with pytest.raises(recovery.RecoveryError, match="non-empty"):
        recovery.read_forced(tmp_path)
    (tmp_path / recovery.FORCED_FILE).write_text("{")
    with pytest.raises(recovery.RecoveryError, match="unreadable"):
        recovery.read_forced(tmp_path)
    with pytest.raises(recovery.RecoveryError, match="no Raft journal"):
        recovery.read_data_dir(tmp_path)
