"""``python -m tests.hostile [--minutes N] [--scale K] [--keep DIR] [--code TREE]``: the hostile-tenant
suite; exit status 1 if any demand of issue 19 did not hold."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.hostile import suite


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.hostile")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="rounds of attacks until this long (0: one round, the short suite)")
    p.add_argument("--scale", type=int, default=None,
                   help="size of each attack (default: 1 for one round, 3 for --minutes)")
    p.add_argument("--keep", type=Path, default=None, help="directory for the node's data and log")
    p.add_argument("--code", type=Path, default=None,
                   help="run the node from this tree (e.g. an older release, to compare)")
    a = p.parse_args(argv)
    scale = a.scale or (3 if a.minutes else 1)
    half_open = (180, 120.0) if a.minutes else (30, suite.HALF_OPEN_WAIT_S)
    print(f"hostile-tenant suite: {a.minutes:g} min, scale {scale}, {half_open[0]} half-open "
          f"requests", flush=True)
    report = suite.run(a.minutes, a.keep, scale, half_open, a.code)
    print(report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
