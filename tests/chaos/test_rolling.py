"""A short rolling restart in the default run (``make rolling-restart`` is the full one,
at 1,200 msg/s with the 1 s bound): every node drained, restarted and waited for in turn
under traffic; nothing confirmed is lost. The confirm-gap bound is looser here (3 s) because
the default run shares a 2-core CI machine with everything else."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.chaos.rolling import rolling_restart

pytestmark = pytest.mark.timeout(300)


def test_rolling_restart_short(tmp_path: Path) -> None:
    result = asyncio.run(rolling_restart(tmp_path / "rolling", nodes=3, rate=600.0,
                                         settle=2.0))
    print("\n" + result.table())
    v = result.verdict
    assert v is not None and v.lost == 0 and v.unexpected == 0, result.table()
    assert v.confirmed > 1000
    assert len(result.restarts) == 3
    assert all(r.longest_gap_s < 3.0 for r in result.restarts), result.table()
