"""RaftMQ vs RabbitMQ under sustained load: alternating brokers within one run.

    .venv/bin/python -m bench.run_bench [--sizes 100,4096] [--duration 180] [--window-s 30]
                                        [--runs 1] [--strict] [--json PATH]
                                        [--only raftmq|rabbitmq] [--raftmq-env KEY=VALUE ...]
                                        [--no-consumer --inflight 500 --rabbitmq-queue-type quorum]

Each trial: start a fresh broker (RaftMQ: one node via harness.raftmq.RaftMQNode; RabbitMQ 3.x:
harness.rabbitmq.RabbitMQ, durable classic queue unless --rabbitmq-queue-type), note its idle RSS,
run bench.loadgen (one confirming producer, one acking consumer) on that same broker process for
``--duration`` seconds cut into ``--window-s`` windows (bench.windows), sample its RSS during the
load, note RSS after, stop it. Per window: messages written, confirmed and consumed per second,
e2e latency, the broker's and the clients' CPU, and the CPU seconds other processes on the machine
used. Per broker: the median of the windows, slowest/fastest window, and the change from the first
window to the last; a drop of more than ``--max-drop`` (20 %) is flagged, and with ``--strict`` a
RaftMQ drop makes the exit status 3. RaftMQ/RabbitMQ is the ratio of the medians. JSON with every
window goes to ``--json`` (default bench/results/<timestamp>.json). ``--no-consumer`` measures the
producer alone (the queue grows; ``--inflight`` unconfirmed messages). Every process started is
stopped on exit, Ctrl-C or error.
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

from bench import windows as win
from bench.loadgen import LoadConfig, run_load
from harness.procs import rss_bytes
from harness.rabbitmq import RabbitMQ, ensure_installed
from harness.raftmq import REPO_ROOT, RaftMQNode

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MiB = 2**20
IDLE_SETTLE_S = 1.0
RSS_METRICS = ("rss_idle_mib", "rss_peak_mib", "rss_after_mib")


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
        cfg = LoadConfig(
            port=broker.port, size=size, duration=args.duration, warmup=args.warmup,
            interval=args.window_s, window=args.inflight, consumer=not args.no_consumer,
            queue_type=args.rabbitmq_queue_type if broker_name == "rabbitmq" else "classic",
        )  # fmt: skip
        trial.update(windowed_load(cfg, broker.pid, args.window_s, rate_key(args), args.max_drop))
        if trial["errors"]:
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


def windowed_load(cfg: LoadConfig, pid: int, window_s: float, rate: str,
                  max_drop: float) -> dict[str, Any]:
    """bench.loadgen's load on one broker process, its CPU read per window and its RSS sampled:
    RSS peak and after, the LoadResult's figures, the windows (load and CPU) and their stats,
    judged by ``rate``."""
    cpu = win.CpuWindows(lambda: [pid], window_s)
    with RssSampler(pid) as rss:
        res = run_load(cfg, on_start=cpu.start)
    cpu_windows = cpu.finish()
    out: dict[str, Any] = {"rss_peak_mib": rss.peak / MiB, "rss_after_mib": rss_bytes(pid) / MiB}
    out.update(res.as_dict())
    out["windows"] = win.merge(res.windows, cpu_windows)
    out["stats"] = win.window_stats(out["windows"], rate, max_drop)
    return out


def rate_key(args: argparse.Namespace) -> str:
    """The rate the windows are judged by: consumed, or confirmed without a consumer."""
    return "confirmed_per_s" if args.no_consumer else "consumed_per_s"


def summarize(trials: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per (size, broker): bench.windows.pooled_stats over the windows of its trials,
    RSS medians over trials, and for RaftMQ the ratio of its median to RabbitMQ's."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for t in trials:
        groups.setdefault((t["size"], t["broker"]), []).append(t)
    key = rate_key(args)
    rows = []
    for (size, broker), ts in groups.items():
        row: dict[str, Any] = {"size": size, "broker": broker, "runs": len(ts)}
        row.update(win.pooled_stats(ts, key, args.max_drop))
        for m in RSS_METRICS:
            row[m] = _median([t.get(m) for t in ts])
        row["stalled"] = sum(1 for t in ts if t.get("stalled"))
        row["errors"] = sorted({e for t in ts for e in t.get("errors", [])})
        rows.append(row)
    for row in rows:
        if row["broker"] == "raftmq":
            other = next(
                (r for r in rows if r["size"] == row["size"] and r["broker"] == "rabbitmq"), None
            )
            if other and other.get(key) and row.get(key) is not None:
                row["vs_rabbitmq"] = row[key] / other[key]
    return rows


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n // 1024} KiB"


def print_table(
    rows: list[dict[str, Any]],
    trials: list[dict[str, Any]],
    args: argparse.Namespace,
    out: Any = sys.stdout,
) -> None:
    """One row per broker x window (x run), a median row per broker, then verdicts, RSS and the
    ratio of the medians."""
    groups = []
    for r in rows:
        label = f"{_size(r['size']):>6} {r['broker']}"
        ws = []
        for t in trials:
            if (t["size"], t["broker"]) == (r["size"], r["broker"]):
                tag = f" r{t['run']}" if args.runs > 1 else ""
                ws += [{**w, "tag": tag} for w in t.get("windows", [])]
        groups.append((label, ws, r))
    win.print_windows(groups, out, args.max_drop)
    for r in rows:
        print(
            f"{_size(r['size']):>6} {r['broker']:<15} RSS idle / peak / after "
            f"{_fmt(r['rss_idle_mib'], '.0f')} / {_fmt(r['rss_peak_mib'], '.0f')} / "
            f"{_fmt(r['rss_after_mib'], '.0f')} MiB",
            file=out,
        )
    what = rate_key(args).replace("_per_s", "")
    for r in rows:
        if "vs_rabbitmq" in r:
            print(
                f"RaftMQ/RabbitMQ {what} msg/s at {_size(r['size'])} (medians of windows): "
                f"{r['vs_rabbitmq']:.2f}x",
                file=out,
            )
    for r in rows:
        for e in r["errors"][:3]:
            print(f"! {r['broker']} {r['size']} B: {e[:300]}", file=out)
    worst = max((r.get("other_cpu_cores") or 0.0 for r in rows), default=0.0)
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
    ap.add_argument(
        "--duration", type=float, default=180.0,
        help="measured seconds of sustained load per trial, on one broker process (rounded to "
        "whole windows)",
    )  # fmt: skip
    ap.add_argument("--window-s", type=float, default=30.0, help="seconds per reported window")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before that")
    ap.add_argument(
        "--runs", type=int, default=1,
        help="trials per (size, broker), each on a fresh broker; medians over all their windows",
    )  # fmt: skip
    ap.add_argument(
        "--max-drop", type=float, default=win.MAX_DROP,
        help="flag a first -> last window drop larger than this fraction (0.2 = 20 %%)",
    )  # fmt: skip
    ap.add_argument(
        "--strict", action="store_true",
        help="exit status 3 when a RaftMQ trial dropped more than --max-drop",
    )  # fmt: skip
    ap.add_argument("--only", choices=sorted(STARTERS), help="run one broker only")
    ap.add_argument(
        "--no-consumer", action="store_true",
        help="producer only (the queue grows); windows are judged by confirmed msg/s",
    )  # fmt: skip
    ap.add_argument("--inflight", type=int, default=100, help="unconfirmed publishes in flight")
    ap.add_argument(
        "--rabbitmq-queue-type", choices=("classic", "quorum"), default="classic",
        help="RabbitMQ's queue (RaftMQ's is always its own replicated queue)",
    )  # fmt: skip
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
    ap.add_argument("--json", type=Path, help="JSON results file (default: in --out, timestamped)")
    args = ap.parse_args(argv)
    args.sizes = [max(8, int(s)) for s in str(args.sizes).split(",") if s.strip()]
    args.raftmq_env = dict(kv.split("=", 1) for kv in args.raftmq_env)
    whole_windows(ap, args)
    return args


def whole_windows(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--duration`` rounded to a whole number (>= 1) of ``--window-s`` windows."""
    if args.window_s <= 0 or args.duration <= 0:
        ap.error("--duration and --window-s must be > 0")
    args.window_s = min(args.window_s, args.duration)
    args.duration = args.window_s * max(1, round(args.duration / args.window_s))


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
    typical = n * (args.warmup + args.duration + 12) / 60
    print(
        f"{n} trials of {args.duration:.0f} s ({args.duration / args.window_s:.0f} x "
        f"{args.window_s:.0f} s windows), at most ~{n * per_trial / 60:.0f} min "
        f"(typically ~{typical:.0f})",
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
                    label = f"[run {run}/{args.runs}] {_size(size):>6} {name}"
                    if t.get("stats"):
                        print(win.verdict_line(label, t["stats"], args.max_drop), file=sys.stderr)
                    if t.get("errors"):
                        print(f"{label} ERRORS: {t['errors']}", file=sys.stderr)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: reporting the trials done so far", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(workroot, ignore_errors=True)
    rows = summarize(trials, args)
    print()
    print_table(rows, trials, args)
    path = args.json or args.out / f"{started:%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "started": started.isoformat(timespec="seconds"),
        "versions": _versions(),
        "config": {
            "sizes": args.sizes,
            "duration": args.duration,
            "window_s": args.window_s,
            "warmup": args.warmup,
            "max_drop": args.max_drop,
            "no_consumer": args.no_consumer,
            "inflight": args.inflight,
            "rabbitmq_queue_type": args.rabbitmq_queue_type,
            "runs": args.runs,
            "brokers": brokers,
            "raftmq_env": args.raftmq_env,
            "load": f"1 producer (confirms, {args.inflight} in flight, persistent, default "
            "exchange, durable queue)"
            + ("" if args.no_consumer else ", 1 consumer (manual ack each, prefetch 100)"),
        },
        "summary": rows,
        "trials": trials,
    }
    path.write_text(json.dumps(doc, indent=2))
    print(f"\nresults: {path}" + (f"\nbroker dirs kept in {workroot}" if args.keep else ""))
    if interrupted:
        return 130
    if not trials or any(t.get("stalled") for t in trials):
        return 1
    dropped = [r for r in rows if r["broker"] == "raftmq" and r.get("drop")]
    if args.strict and dropped:
        print(f"--strict: RaftMQ slowed down by more than {args.max_drop:.0%} from the first "
              f"window to the last at {', '.join(_size(r['size']) for r in dropped)}")  # fmt: skip
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
