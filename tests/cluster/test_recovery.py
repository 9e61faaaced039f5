"""The pure rules of quorum-loss recovery (cluster/raft/recovery.py); the command itself runs
against real nodes in tests/integration_cluster/test_recovery.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from cluster.raft import recovery
from cluster.raft.recovery import Seen, check_plan, replay_membership


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


# ---------------------------------------------------------------------------- the membership


def test_members_named_by_a_running_member() -> None:
    status = {"commit_idx": 3, "partner_node_status_server_b:1": 2,
              "partner_node_status_server_c:1": 0, "partner_nodes_count": 2}
    assert recovery.members_named(status) == {"b:1", "c:1"}


def test_membership_unknown_without_snapshot_forced_or_peers() -> None:
    from cluster.raft.recovery import unknown_membership

    assert unknown_membership([], None, None, []) is None  # --peers '': started alone
    assert unknown_membership(["b", "c"], None, None, []) is None
    assert unknown_membership(None, ["a", "b"], None, []) is None  # members.forced
    assert unknown_membership(None, None, ["a", "b", "c"], []) is None  # the snapshot's
    why = unknown_membership(None, None, None, [])
    assert why is not None and "no membership entries" in why and "Pass --peers" in why
    # entries name only later changes: the members it started with stay unknown
    why = unknown_membership(None, None, None, [("add", "d"), ("rem", "e")])
    assert why is not None and "name only d, e" in why and "Pass --peers" in why


def _data_dir(path: Path, membership: Sequence[tuple[str, str]] = ()) -> Path:
    """A stopped node's data directory that never took a snapshot: a journal of no-ops
    (and membership entries), all committed."""
    from pysyncobj.journal import FileJournal

    from cluster.raft import patches

    path.mkdir()
    journal = FileJournal(str(path / recovery.JOURNAL))
    try:
        entries = [bytes([1])] * 5 + [bytes([2]) + patches.dumps([k, a]) for k, a in membership]
        for i, command in enumerate(entries, start=1):
            journal.add(command, i, 1)
        journal.setRaftCommitIndex(len(entries))
        journal.setCurrentTerm(1, None)
        journal.flush()
    finally:
        journal._destroy()
    return path


def _force(monkeypatch: pytest.MonkeyPatch, answers: Mapping[str, Mapping[str, object]],
           *argv: str) -> tuple[int, list[str]]:
    """Run ``force-members`` as the CLI would, the running members' answers faked; returns
    its exit code and the addresses it asked."""
    import argparse

    from cluster.raft import probe
    from node.ops import force_members

    asked: list[str] = []

    def member_status(address: str, secret: str, timeout: float = 2.0) -> dict[str, object] | None:
        asked.append(address)
        return dict(answers[address]) if address in answers else None

    monkeypatch.setattr(probe, "member_status", member_status)
    monkeypatch.delenv("RAFTMQ_PEERS", raising=False)
    p = argparse.ArgumentParser()
    force_members.add_arguments(p)
    return force_members.run(p.parse_args(list(argv))), asked


def test_refused_without_peers_on_a_young_node(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's old command (no --peers) on a node that never took a snapshot: refused,
    instead of a plan that takes the membership to be this node alone and asks nobody."""
    d = _data_dir(tmp_path / "n1")
    rc, asked = _force(monkeypatch, {}, "--data-dir", str(d), "--raft-address", "n1:25672",
                       "--cluster-secret", "s", "--keep", "n1:25672", "--yes")
    out, err = capsys.readouterr()
    assert rc == 2 and asked == [] and out == ""
    assert "membership this node had cannot be known" in err and "Pass --peers" in err
    assert not (d / recovery.FORCED_FILE).exists()
    # membership entries alone do not make up for it: they never name the start members
    d2 = _data_dir(tmp_path / "n2", [("add", "n4:25672")])
    rc, asked = _force(monkeypatch, {}, "--data-dir", str(d2), "--raft-address", "n2:25672",
                       "--cluster-secret", "s", "--keep", "n2:25672")
    err = capsys.readouterr().err
    assert rc == 2 and asked == [] and "name only n4:25672" in err


def test_plan_with_peers_lists_and_asks_the_old_members(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """With --peers (as the README now shows) the plan lists the old members, those the
    journal added included, asks each, and refuses while the old cluster still works."""
    d = _data_dir(tmp_path / "n1", [("add", "n4:25672")])
    argv = ["--data-dir", str(d), "--raft-address", "n1:25672", "--peers",
            "n2:25672,n3:25672", "--cluster-secret", "s", "--keep", "n1:25672"]
    rc, asked = _force(monkeypatch, {}, *argv)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "  membership: n1:25672, n2:25672, n3:25672, n4:25672\n" in out
    assert "        into: n1:25672\n" in out
    assert asked == ["n2:25672", "n3:25672", "n4:25672"]
    for addr in asked:
        assert f"  {addr:<28} not answering\n" in out
    assert "entries that only n2:25672, n3:25672, n4:25672 hold" in out
    assert "nothing written" in out and not (d / recovery.FORCED_FILE).exists()
    # two of the old members still run and see a majority: refused
    working = {"commit_idx": 5, "raft_term": 1, "has_quorum": True}
    rc, asked = _force(monkeypatch, {"n2:25672": working, "n3:25672": working}, *argv, "--yes")
    err = capsys.readouterr().err
    assert rc == 2 and "n2:25672 is running and sees a majority" in err and "still works" in err
    assert not (d / recovery.FORCED_FILE).exists()
    # a member further ahead than this node, not kept: refused
    ahead = {"commit_idx": 9, "raft_term": 1, "has_quorum": False}
    rc, _ = _force(monkeypatch, {"n3:25672": ahead}, *argv, "--yes")
    assert rc == 2 and "highest commit index seen (9) is on n3:25672" in capsys.readouterr().err
    # a wrong --peers is caught: a running member names its own members, and they are asked
    named = {"commit_idx": 5, "raft_term": 1, "has_quorum": False,
             "partner_node_status_server_n1:25672": 0, "partner_node_status_server_n5:25672": 2}
    rc, asked = _force(monkeypatch, {"n2:25672": named, "n5:25672": working}, *argv, "--yes")
    out, err = capsys.readouterr()
    assert asked == ["n2:25672", "n3:25672", "n4:25672", "n5:25672"]
    assert "  n5:25672                     commit         5  running, has a quorum  (named by a " \
        "running member)" in out
    assert rc == 2 and "n5:25672 is running and sees a majority" in err
    assert not (d / recovery.FORCED_FILE).exists()
    # all gone: forced
    rc, _ = _force(monkeypatch, {}, *argv, "--yes")
    assert rc == 0 and recovery.read_forced(d) == ("n1:25672",), capsys.readouterr()


def test_peers_empty_means_started_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A single node whose membership was corrupted (a member added that never answers):
    ``--peers ''`` says it was started alone; the journal adds the bogus member."""
    d = _data_dir(tmp_path / "n1", [("add", "bogus:1")])
    rc, asked = _force(monkeypatch, {}, "--data-dir", str(d), "--raft-address", "n1:25672",
                       "--peers", "", "--cluster-secret", "s", "--keep", "n1:25672")
    out = capsys.readouterr().out
    assert rc == 0 and asked == ["bogus:1"] and "  membership: bogus:1, n1:25672\n" in out
