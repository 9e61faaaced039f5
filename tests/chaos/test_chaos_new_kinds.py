"""One short schedule of each opt-in fault kind added with ``membership``, ``slow-disk`` and
``full-disk`` (3 nodes, one fault at the leader, ~600 confirmed msg/s): nothing confirmed may be
lost and nothing consumed that was never published. In the default run (about 15-20 s each);
``make chaos`` / ``make chaos-long`` draw them among the other kinds.

``full-disk`` mounts a tmpfs per node (root only: skipped otherwise); ``slow-disk`` builds the
LD_PRELOAD shim with gcc (skipped without a compiler)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.chaos.runner import run_schedule
from tests.chaos.schedule import make_schedule

pytestmark = pytest.mark.timeout(150)

RATE = 600.0  # msg/s in total
SEED = 8  # one fault at the leader, 2.4 s, for each of these kinds

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None,
                                reason="full-disk mounts a tmpfs per node: needs root")
needs_cc = pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                              reason="slow-disk builds its LD_PRELOAD shim with gcc")


@pytest.mark.parametrize("kind", [
    "membership",
    pytest.param("slow-disk", marks=needs_cc),
    pytest.param("full-disk", marks=needs_root),
])
def test_new_fault_kind(kind: str, tmp_path: Path) -> None:
    s = make_schedule(SEED, 3, fault_seconds=1.0, kinds=(kind,),
                      env={"RAFTMQ_SNAPSHOT_ENTRIES": "100000"}).at_total_rate(RATE)
    r = run_schedule(s, tmp_path, keep="fail")
    print(r.line())
    for rec in r.faults:
        print(f"  {rec.fault.describe()} -> {','.join(rec.targets)}: {'; '.join(rec.notes)}")
    assert r.error is None, r.error
    v = r.verdict
    assert v is not None
    assert v.lost == 0, r.line()
    assert v.unexpected == 0, r.line()
    assert v.confirmed > 1000, r.line()
    assert [f.kind for f in s.faults] == [kind]
    if kind == "membership":  # a member was removed and a fresh one added
        assert any(t.startswith("+") for t in r.faults[0].targets), r.faults[0].targets
