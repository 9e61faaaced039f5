"""A few short chaos schedules for the default test run (about two minutes): 3-node clusters,
seeded faults of each family, real clients; nothing confirmed may be lost and nothing consumed
that was never published. The long run is ``python -m tests.chaos`` (``make chaos``).

Log compaction is left at its default (no snapshots in a run this short) so that these stay
clear of the known snapshot bugs (see test_chaos_regressions.py); the full suite draws small
compaction thresholds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.runner import run_schedule
from tests.chaos.schedule import make_schedule

pytestmark = pytest.mark.timeout(150)

SHORT = {
    "kill-pause": (8, ("kill", "pause")),
    "partitions": (8, ("isolate", "halves", "ring")),
    "power-and-whole-cluster": (89, ("power-loss", "power-loss-all", "kill-all")),
}


@pytest.mark.parametrize("name", list(SHORT))
def test_short_schedule(name: str, tmp_path: Path) -> None:
    seed, kinds = SHORT[name]
    s = make_schedule(seed, 3, fault_seconds=14.0, kinds=kinds,
                      env={"RAFTMQ_SNAPSHOT_ENTRIES": "100000"})
    r = run_schedule(s, tmp_path, keep="fail")
    print(r.line())
    assert r.error is None, r.error
    v = r.verdict
    assert v is not None
    assert v.lost == 0, r.line()
    assert v.unexpected == 0, r.line()
    assert v.confirmed > 0, r.line()
