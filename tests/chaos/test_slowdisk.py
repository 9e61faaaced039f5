"""The slow-disk shim (``slowsync.c``) really delays fsync / fdatasync / msync, and the harness
switches the delay on and off without restarting the process. Fast (a few seconds); skipped
without a C compiler."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.chaos.slowdisk import build_shim, clear_delay, set_delay, shim_env

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                                 reason="no C compiler")]

# Times os.fsync / os.fdatasync / mmap.flush, in a loop driven from stdin: "fsync N" -> the
# median ms of N calls.
CHILD = r"""
import mmap, os, statistics, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
os.ftruncate(fd, 4096)
mm = mmap.mmap(fd, 4096)
calls = {"fsync": lambda: os.fsync(fd), "fdatasync": lambda: os.fdatasync(fd),
         "msync": lambda: mm.flush()}
for line in sys.stdin:
    what, n = line.split()
    times = []
    for _ in range(int(n)):
        os.pwrite(fd, b"x", 0)
        mm[1:2] = b"y"
        t = time.monotonic()
        calls[what]()
        times.append((time.monotonic() - t) * 1000)
    print(statistics.median(times), flush=True)
"""


def test_shim_delays_syncs_and_switches_without_restart(tmp_path: Path) -> None:
    build_shim()
    control = tmp_path / "delay"
    clear_delay(control)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "file")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**shim_env(control, tmp_path / "shim.log"), "PATH": "/usr/bin"})
    assert proc.stdin is not None and proc.stdout is not None

    def median_ms(what: str, n: int) -> float:
        proc.stdin.write(f"{what} {n}\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        return float(proc.stdout.readline())  # type: ignore[union-attr]

    try:
        for what in ("fsync", "fdatasync", "msync"):
            assert median_ms(what, 5) < 40, what  # no delay by default
        set_delay(control, 200, 220)
        time.sleep(0.25)  # the shim re-reads the file at most every 100 ms
        for what in ("fsync", "fdatasync", "msync"):
            ms = median_ms(what, 3)
            assert 195 <= ms < 400, (what, ms)
        clear_delay(control)
        time.sleep(0.25)
        for what in ("fsync", "fdatasync", "msync"):
            assert median_ms(what, 5) < 40, what
    finally:
        proc.stdin.close()
        proc.wait(10)
    assert (tmp_path / "shim.log").read_text().strip()  # delayed calls were logged
