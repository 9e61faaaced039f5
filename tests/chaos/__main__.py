"""``python -m tests.chaos``: run seeded fault schedules against real RaftMQ clusters.

    python -m tests.chaos --seed 42                 # one schedule, exactly as that seed says
    python -m tests.chaos --schedules 50 --nodes 3,5 --minutes 60   # make chaos

One line per schedule, a table at the end; exit status 1 if any schedule failed. A failed
schedule keeps its directory (node logs, data, proxy log, history.jsonl) and prints the command
that replays it.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from .powerloss import MODELS
from .runner import RunResult, run_schedule
from .schedule import ALL_KINDS, EXTRA_KINDS, make_schedule

# Time model of a schedule: FIXED_S (start, warm-up, drain, sweep, stop) plus PER_FAULT_S for
# every second of --fault-seconds (faults, gaps, recoveries, and the last fault running past the
# target); PER_FAULT_S starts at this guess and is then measured.
FIXED_S = 15.0
PER_FAULT_S = 1.5
MIN_FAULT_S = 8.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, help="run this one schedule")
    p.add_argument("--schedules", type=int, default=1, help="how many schedules (default 1)")
    p.add_argument("--base-seed", type=int,
                   help="seeds are BASE, BASE+1, ... (default: random, printed)")
    p.add_argument("--nodes", default="3,5",
                   help="cluster sizes (default 3,5): seed N runs on sizes[N %% len(sizes)]")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="time budget: fault time per schedule is sized to fit, and no schedule "
                        "starts that cannot finish (0: no budget)")
    p.add_argument("--fault-seconds", type=float, default=30.0,
                   help="fault time per schedule (default 30; with --minutes: at most this)")
    p.add_argument("--kinds", default="",
                   help=f"only these fault kinds, comma-separated ({', '.join(ALL_KINDS)}; "
                        f"or all; {', '.join(EXTRA_KINDS)} are only drawn when named here "
                        "or with all)")
    p.add_argument("--env", action="append", default=[], metavar="RAFTMQ_X=V",
                   help="override a node tunable the seed would draw (repeatable)")
    p.add_argument("--power-loss-model", choices=MODELS, default="journal",
                   help="journal: cut raft.journal back to its last fdatasync (default); strict: "
                        "also lose files never fsynced (raft.journal.meta, raft.dump)")
    p.add_argument("--workdir", type=Path,
                   default=Path(tempfile.gettempdir()) / "raftmq-chaos",
                   help="where each schedule's directory goes (default /tmp/raftmq-chaos)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="msg/s published in total by the producers (default: the schedule's, "
                        "25 a producer); the confirm window grows with it")
    p.add_argument("--keep", choices=("fail", "always", "never"), default="fail",
                   help="keep a schedule's logs and data: on failure (default), always, never")
    return p


def table(results: list[RunResult]) -> str:
    head = ("seed", "nodes", "faults", "published", "confirmed", "consumed", "lost",
            "unexpected", "dup", "unexpl", "order", "msg/s", "max rec s", "time s", "verdict")
    rows = []
    for r in results:
        v = r.verdict
        recs = [t.recovery_s for t in r.timings if t.recovery_s is not None]
        norec = any(t.recovery_s is None for t in r.timings)
        rows.append((
            str(r.schedule.seed), str(r.schedule.nodes), str(len(r.schedule.faults)),
            *(("-",) * 8 if v is None else (
                str(v.published), str(v.confirmed), str(v.consumed), str(v.lost),
                str(v.unexpected), str(v.duplicated), str(v.dup_unexplained),
                str(v.order_violations))),
            "-" if r.rate is None else f"{r.rate:.0f}",
            ("NONE" if norec else "") + (f"{max(recs):.1f}" if recs else "-"),
            f"{r.elapsed:.0f}", r.status))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    ok = sum(1 for r in results if r.status == "OK")
    rates = sorted(r.rate for r in results if r.rate is not None)
    median = f"; confirmed msg/s median {rates[len(rates) // 2]:.0f} (min {rates[0]:.0f})" \
        if rates else ""
    lines.append(f"{ok}/{len(results)} schedules OK; lost={sum(r.verdict.lost for r in results if r.verdict)} "
                 f"unexpected={sum(r.verdict.unexpected for r in results if r.verdict)}"
                 f"; published={sum(r.verdict.published for r in results if r.verdict)}{median}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sizes = [int(x) for x in args.nodes.split(",") if x.strip()]
    kinds = tuple(k for k in args.kinds.split(",") if k) or None
    if kinds and "all" in kinds:
        kinds = tuple(dict.fromkeys(k for k in (*kinds, *ALL_KINDS) if k != "all"))
    if kinds and (bad := [k for k in kinds if k not in ALL_KINDS]):
        print(f"unknown fault kinds {bad}", file=sys.stderr)
        return 2
    env: dict[str, str] = {}
    for item in args.env:
        k, sep, v = item.partition("=")
        if not sep or not k.startswith("RAFTMQ_"):
            print(f"--env {item!r}: expected RAFTMQ_NAME=VALUE", file=sys.stderr)
            return 2
        env[k] = v
    # The cluster size is a function of the seed (sizes[seed % len(sizes)]), so `--seed N` with
    # the default --nodes replays the same schedule as the multi-schedule run that printed N.
    if args.seed is not None:
        plan = [(args.seed, sizes[args.seed % len(sizes)])]
    else:
        base = args.base_seed if args.base_seed is not None else random.randrange(1, 10**6)
        print(f"base seed {base}", flush=True)
        plan = [(base + i, sizes[(base + i) % len(sizes)]) for i in range(args.schedules)]
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
    results: list[RunResult] = []
    per_fault = PER_FAULT_S  # measured as we go
    for i, (seed, n) in enumerate(plan):
        fault_s = args.fault_seconds
        if deadline is not None:
            # Share what is left of the budget among the schedules still to run.
            left = deadline - time.monotonic()
            fault_s = min(fault_s, (left / (len(plan) - i) - FIXED_S) / per_fault)
            if fault_s < MIN_FAULT_S:
                if left < FIXED_S + per_fault * MIN_FAULT_S:
                    print(f"time budget spent: {len(plan) - i} schedules not run", flush=True)
                    break
                fault_s = MIN_FAULT_S
        s = make_schedule(seed, n, round(fault_s), kinds, env)
        if args.rate:
            s = s.at_total_rate(args.rate)
        print(f"[{i + 1}/{len(plan)}] seed={seed} nodes={n} env={s.env}: {s.describe()}",
              flush=True)
        r = run_schedule(s, args.workdir, keep=args.keep, model=args.power_loss_model,
                         log=lambda m: print(m, flush=True))
        results.append(r)
        print(r.line(), flush=True)
        per_fault = 0.5 * per_fault + 0.5 * max(1.0, (r.elapsed - FIXED_S) / s.fault_seconds)
    print()
    print(table(results))
    return 0 if results and all(r.status == "OK" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
