"""RaftMQ vs RabbitMQ: same load, fresh broker per trial, alternating brokers within one run.

    .venv/bin/python -m bench.run_bench [--sizes 100,4096] [--duration 20] [--runs 3]
                                        [--only raftmq|rabbitmq] [--raftmq-env KEY=VALUE ...]

Each trial: start a fresh broker (RaftMQ: one node via harness.raftmq.RaftMQNode; RabbitMQ 3.x:
harness.rabbitmq.RabbitMQ, durable classic queue), note its idle RSS, run bench.loadgen (one
confirming producer, one acking consumer), sample its RSS during the load, note RSS after,
stop it. The table shows per-(size, broker) medians over the runs; JSON with every trial goes to
bench/results/<timestamp>.json. Every process started is stopped on exit, Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.loadgen import LoadConfig, run_load
from harness.procs import cpu_seconds, rss_bytes, system_busy_seconds
from harness.rabbitmq import RabbitMQ, ensure_installed
from harness.raftmq import REPO_ROOT, RaftMQNode

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MiB = 2**20
IDLE_SETTLE_S = 1.0
METRICS = (
    "published_per_s",
    "consumed_per_s",
    "confirm_p50_ms",
    "confirm_p99_ms",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "rss_idle_mib",
    "rss_peak_mib",
    "rss_after_mib",
    "broker_cpu",
    "other_cpu",
    "max_confirm_gap_ms",
    "max_deliver_gap_ms",
)


@dataclass
class Broker:
    """What a trial needs from either broker."""

    name: str
    port: int
    pid: int  # the process whose RSS/CPU we report (RabbitMQ: beam.smp)
    stop: Callable[[], object]
    log_tail: Callable[[], str]


def start_raftmq(workdir: Path, env: dict[str, str]) -> Broker:
    node = RaftMQNode(workdir / "n1", extra_env=env)
    try:
        node.start(timeout=30)
    except BaseException:
        node.stop(timeout=2)
        raise
    assert node.pid is not None
    return Broker("raftmq", node.amqp_port, node.pid, node.stop, node.log_tail)


def start_rabbitmq(workdir: Path, env: dict[str, str]) -> Broker:
    rmq = RabbitMQ(workdir / "rabbitmq")
    rmq.start(timeout=60)  # stops itself when it fails to start
    pid = rmq.beam_pid()
    if pid is None:
        rmq.stop()
        raise RuntimeError("RabbitMQ answers AMQP but has no beam.smp process?")
    return Broker("rabbitmq", rmq.amqp_port, pid, rmq.stop, rmq.log_tail)


STARTERS: dict[str, Callable[[Path, dict[str, str]], Broker]] = {
    "raftmq": start_raftmq,
    "rabbitmq": start_rabbitmq,
}


class RssSampler:
    """Max RSS of one pid, sampled every ``period`` s on a thread until stopped."""

    def __init__(self, pid: int, period: float = 0.5) -> None:
        self.pid, self.period, self.peak = pid, period, rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.peak = max(self.peak, rss_bytes(self.pid))


def run_trial(
    broker_name: str, size: int, args: argparse.Namespace, workroot: Path, run: int
) -> dict[str, Any]:
    trial: dict[str, Any] = {"broker": broker_name, "size": size, "run": run}
    workdir = Path(tempfile.mkdtemp(prefix=f"{broker_name}-{size}-", dir=workroot))
    broker: Broker | None = None
    try:
        t0 = time.monotonic()
        broker = STARTERS[broker_name](workdir, args.raftmq_env if broker_name == "raftmq" else {})
        trial["startup_s"] = round(time.monotonic() - t0, 2)
        time.sleep(IDLE_SETTLE_S)
        trial["rss_idle_mib"] = rss_bytes(broker.pid) / MiB
        cfg = LoadConfig(port=broker.port, size=size, duration=args.duration, warmup=args.warmup)
        cpu0, sys0, wall0 = cpu_seconds(broker.pid), system_busy_seconds(), time.monotonic()
        with RssSampler(broker.pid) as rss:
            res = run_load(cfg)
        wall = time.monotonic() - wall0
        trial["broker_cpu"] = round((cpu_seconds(broker.pid) - cpu0) / wall, 3)
        # everything else the machine did meanwhile (other jobs sharing the cores skew results)
        system = (system_busy_seconds() - sys0) / wall
        clients = res.producer_cpu + res.consumer_cpu
        trial["other_cpu"] = round(system - trial["broker_cpu"] - clients, 3)
        trial["rss_peak_mib"] = rss.peak / MiB
        trial["rss_after_mib"] = rss_bytes(broker.pid) / MiB
        trial.update(res.as_dict())
        if res.errors:
            trial["log_tail"] = broker.log_tail()
    except Exception as exc:  # a broker that does not start is a result too, not a crash
        trial.update(stalled=True, errors=[f"{type(exc).__name__}: {exc}"])
    finally:
        if broker is not None:
            broker.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return trial


def _median(values: list[Any]) -> float | None:
    nums = [float(v) for v in values if v is not None]
    return statistics.median(nums) if nums else None


def summarize(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for t in trials:
        groups.setdefault((t["size"], t["broker"]), []).append(t)
    rows = []
    for (size, broker), ts in groups.items():
        row: dict[str, Any] = {"size": size, "broker": broker, "runs": len(ts)}
        for m in METRICS:
            # a broker that stalled counts as 0 msg/s; its latencies are unknown
            default = 0.0 if m.endswith("_per_s") else None
            row[m] = _median([t.get(m, default) for t in ts])
        row["errors"] = sorted({e for t in ts for e in t.get("errors", [])})
        rows.append(row)
    for row in rows:
        if row["broker"] == "raftmq":
            other = next(
                (r for r in rows if r["size"] == row["size"] and r["broker"] == "rabbitmq"), None
            )
            if other and other["consumed_per_s"]:
                row["consumed_vs_rabbitmq"] = row["consumed_per_s"] / other["consumed_per_s"]
    return rows


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict[str, Any]], out: Any = sys.stdout) -> None:
    head = (
        f"{'size':>6}  {'broker':<9} {'pub msg/s':>10} {'cons msg/s':>10}  "
        f"{'confirm p50/p99 ms':>18}  {'e2e p50/p99 ms':>15}  {'RSS idle/peak/after MiB':>23}  {'cpu':>4}"
    )
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        size = f"{r['size']} B" if r["size"] < 1024 else f"{r['size'] // 1024} KiB"
        print(
            f"{size:>6}  {r['broker']:<9} {_fmt(r['published_per_s'], ',.0f'):>10} "
            f"{_fmt(r['consumed_per_s'], ',.0f'):>10}  "
            f"{_fmt(r['confirm_p50_ms'], '.1f'):>8} / {_fmt(r['confirm_p99_ms'], '.1f'):<7}  "
            f"{_fmt(r['e2e_p50_ms'], '.1f'):>6} / {_fmt(r['e2e_p99_ms'], '.1f'):<6}  "
            f"{_fmt(r['rss_idle_mib'], '.0f'):>7} / {_fmt(r['rss_peak_mib'], '.0f'):>5} / "
            f"{_fmt(r['rss_after_mib'], '.0f'):<5}  {_fmt(r['broker_cpu'], '.2f'):>4}",
            file=out,
        )
    for r in rows:
        if "consumed_vs_rabbitmq" in r:
            print(
                f"RaftMQ/RabbitMQ consumed msg/s at {r['size']} B: {r['consumed_vs_rabbitmq']:.2f}x",
                file=out,
            )
    for r in rows:
        for e in r["errors"][:3]:
            print(f"! {r['broker']} {r['size']} B: {e[:300]}", file=out)
    print("(medians over runs; cpu = broker CPU cores used during the load)", file=out)
    worst = max((r.get("other_cpu") or 0.0 for r in rows), default=0.0)
    if worst > 0.25:
        print(
            f"WARNING: other processes used ~{worst:.2f} cores during trials: noisy numbers",
            file=out,
        )


def _versions() -> dict[str, str]:
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "python": platform.python_version(),
        "rabbitmq": run("dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"),
        "git": run("git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"),
        "cpus": str(os.cpu_count()),
        "kernel": platform.release(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes", default="100,4096", help="message body sizes in bytes, comma-separated"
    )
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds per trial")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before that")
    ap.add_argument(
        "--runs", type=int, default=3, help="trials per (size, broker); medians reported"
    )
    ap.add_argument("--only", choices=sorted(STARTERS), help="run one broker only")
    ap.add_argument(
        "--raftmq-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra env for RaftMQ nodes",
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep broker data/log dirs (printed at the end)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the JSON results")
    args = ap.parse_args(argv)
    args.sizes = [max(8, int(s)) for s in str(args.sizes).split(",") if s.strip()]
    args.raftmq_env = dict(kv.split("=", 1) for kv in args.raftmq_env)
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through every finally: brokers and clients stop


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C and SIGTERM (also when started in the background, where SIGINT may be ignored)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    interrupted = False
    brokers = [args.only] if args.only else ["raftmq", "rabbitmq"]
    if "rabbitmq" in brokers:
        ensure_installed()
    per_trial = 60 + args.warmup + args.duration + 45
    n = args.runs * len(args.sizes) * len(brokers)
    print(
        f"{n} trials, at most ~{n * per_trial / 60:.0f} min (typically ~{n * (args.warmup + args.duration + 12) / 60:.0f})",
        file=sys.stderr,
    )
    workroot = Path(tempfile.mkdtemp(prefix="raftmq-bench-"))
    started = datetime.now()
    trials: list[dict[str, Any]] = []
    try:
        for run in range(1, args.runs + 1):
            for size in args.sizes:
                for name in brokers:  # alternate: RaftMQ, RabbitMQ, RaftMQ, RabbitMQ...
                    t = run_trial(name, size, args, workroot, run)
                    trials.append(t)
                    print(
                        f"[run {run}/{args.runs}] {name:<8} {size:>6} B: "
                        f"{t.get('consumed_per_s', 0):>9,.0f} msg/s consumed, "
                        f"confirm p50 {_fmt(t.get('confirm_p50_ms'), '.1f')} ms, "
                        f"longest pause {_fmt(t.get('max_deliver_gap_ms'), '.0f')} ms, "
                        f"other load {_fmt(t.get('other_cpu'), '.2f')} cores"
                        + (f"  ERRORS: {t['errors']}" if t.get("errors") else ""),
                        file=sys.stderr,
                    )
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: reporting the trials done so far", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(workroot, ignore_errors=True)
    rows = summarize(trials)
    print()
    print_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{started:%Y%m%d-%H%M%S}.json"
    doc = {
        "started": started.isoformat(timespec="seconds"),
        "versions": _versions(),
        "config": {
            "sizes": args.sizes,
            "duration": args.duration,
            "warmup": args.warmup,
            "runs": args.runs,
            "brokers": brokers,
            "raftmq_env": args.raftmq_env,
            "load": "1 producer (confirms, window 100, persistent, default exchange, durable queue), "
            "1 consumer (manual ack each, prefetch 100)",
        },
        "summary": rows,
        "trials": trials,
    }
    path.write_text(json.dumps(doc, indent=2))
    print(f"\nresults: {path}" + (f"\nbroker dirs kept in {workroot}" if args.keep else ""))
    if interrupted:
        return 130
    return 0 if trials and all(not t.get("stalled") for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
