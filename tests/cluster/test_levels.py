"""Command levels and snapshot formats (upgrades with two releases running together,
cluster/commands.py LEVEL): the bookkeeping commands, the proposer's refusal of a command
above the enabled level, and the snapshot format's migration and refusal."""

from __future__ import annotations

import pickle

import pytest

from cluster import commands as C
from cluster.machine import SNAPSHOT_FORMAT, apply, new_state
from cluster.machine.state import State
from cluster.proposer import Proposer
from cluster.raft import node as raft
from tests.cluster.fake_raft import FakeCluster


def test_announcements_and_enabling() -> None:
    st = new_state()
    assert st.level == 1 and st.format == SNAPSHOT_FORMAT
    apply(st, 1, C.Supports("n1", "a:1", 2), [])
    apply(st, 1, C.Supports("n2", "", 2), [])  # no address: ignored
    assert st.levels == {"a:1": 2}
    apply(st, 1, C.EnableLevel(2), [])
    apply(st, 1, C.EnableLevel(1), [])  # never goes back
    assert st.level == 2
    apply(st, 1, C.NodeUp("n1", 5, "a:1", ""), [])
    apply(st, 1, C.NodeDraining("n1", 4), [])  # another life: ignored
    assert not st.nodes["n1"].draining
    apply(st, 1, C.NodeDraining("n1", 5), [])
    assert st.nodes["n1"].draining
    apply(st, 1, C.NodeUp("n1", 6, "a:1", ""), [])  # a new life is not draining
    assert not st.nodes["n1"].draining


def test_proposer_holds_back_commands_above_the_enabled_level() -> None:
    fake = FakeCluster()
    node = fake.node("n1")
    level = [1]
    p = Proposer(node, "n1", 7, lambda effects: None, level=lambda: level[0])
    p.propose(C.NodeDraining("n1", 7))
    p.propose(C.Supports("n1", "a:1", C.LEVEL))  # announcements go at any level
    assert [type(c) for c in p._batch] == [C.Supports]
    level[0] = 2
    p.propose(C.NodeDraining("n1", 7))
    assert [type(c) for c in p._batch] == [C.Supports, C.NodeDraining]


def test_old_snapshot_state_is_migrated() -> None:
    st = new_state()
    d = dict(st.__dict__)
    for name in ("format", "level", "levels"):  # as pickled by the previous release
        del d[name]
    old = State.__new__(State)
    old.__setstate__(d)
    assert (old.format, old.level, old.levels) == (SNAPSHOT_FORMAT, 1, {})
    again = pickle.loads(pickle.dumps(old))
    assert again.format == SNAPSHOT_FORMAT


def test_newer_snapshot_format_stops_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    st = new_state()
    raft._refuse_newer_format(({"state": st}, None, None, set()))  # this release's: fine
    st.format = SNAPSHOT_FORMAT + 1
    exits: list[int] = []
    monkeypatch.setattr(raft.patches.os, "_exit", exits.append)
    monkeypatch.setattr(raft.patches.logging, "shutdown", lambda: None)
    raft._refuse_newer_format(({"state": st}, None, None, set()))
    assert exits == [raft.EXIT_NEWER_FORMAT]
