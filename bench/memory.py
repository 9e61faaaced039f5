"""Memory with a deep backlog, RaftMQ beside RabbitMQ, in one run (``make bench-memory``).

    .venv/bin/python -m bench.memory [--counts 100000,1000000] [--size 1024]
                                     [--only raftmq|quorum|lazy] [--window 500]

For each broker and each count: a fresh single node; idle RSS; publish COUNT persistent
messages of SIZE bytes with confirms into a durable queue without consumers (RaftMQ's
queue; RabbitMQ 3.10: a quorum queue, and a classic lazy queue); RSS with the backlog;
``kill -9`` and start again on the same data: RSS once it accepts connections, time until
a consumer gets the first message; drain everything with acks (prefetch 1000), timed. RSS is the
broker process's (RaftMQ's Python process, RabbitMQ's beam.smp). Results as a table and
as JSON in bench/results/memory-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import backlog
from bench.loadgen import LoadConfig
from harness.rabbitmq import RabbitMQ, ensure_installed
from harness.raftmq import RaftMQNode

RESULTS = Path(__file__).resolve().parent / "results"
MiB = 2**20
SETTLE_S = 2.0


@dataclass
class Trial:
    broker: str
    count: int
    size: int
    idle_rss_mib: float = 0.0
    publish_s: float = 0.0
    publish_per_s: float = 0.0
    backlog_rss_mib: float = 0.0
    restart_s: float = 0.0  # kill -9 .. first delivery after the restart
    restart_rss_mib: float = 0.0
    drain_s: float = 0.0
    drain_per_s: float = 0.0
    error: str = ""


class Broker:
    """One fresh single-node broker of a kind: start, kill -9, start again, RSS."""

    def __init__(self, kind: str, base: Path) -> None:
        self.kind = kind
        self.node: RaftMQNode | RabbitMQ
        if kind == "raftmq":
            self.node = RaftMQNode(base / "data", log_path=base / "node.log")
        else:
            self.node = RabbitMQ(base / "rabbitmq")

    @property
    def port(self) -> int:
        return self.node.amqp_port

    def start(self) -> None:
        self.node.start(wait=False)

    def wait(self, timeout: float = 300) -> None:
        if isinstance(self.node, RaftMQNode):
            self.node.wait_ready(timeout)
        else:
            self.node.wait_ready(timeout)

    def kill(self) -> None:
        if isinstance(self.node, RaftMQNode):
            self.node.kill()
        else:
            self.node.kill()

    def stop(self) -> None:
        self.node.stop()

    def rss_mib(self) -> float:
        return self.node.rss_bytes() / MiB


def load_config(kind: str, port: int, size: int, window: int) -> LoadConfig:
    return LoadConfig(port=port, size=size, window=window, queue="backlog",
                      queue_type="quorum" if kind == "quorum" else "classic",
                      queue_mode="lazy" if kind == "lazy" else "", setup_timeout=60.0)


def trial(kind: str, count: int, size: int, window: int) -> Trial:
    t = Trial(kind, count, size)
    base = Path(tempfile.mkdtemp(prefix=f"bench-memory-{kind}-"))
    broker = Broker(kind, base)
    try:
        broker.start()
        broker.wait()
        time.sleep(SETTLE_S)
        t.idle_rss_mib = broker.rss_mib()
        cfg = load_config(kind, broker.port, size, window)
        t.publish_s = backlog.publish(cfg, count)
        t.publish_per_s = count / t.publish_s
        time.sleep(SETTLE_S)
        t.backlog_rss_mib = broker.rss_mib()
        broker.kill()
        killed = time.monotonic()
        broker.start()
        broker.wait()
        t.restart_rss_mib = broker.rss_mib()
        connecting = time.monotonic()
        first, last = backlog.drain(cfg, count)
        t.restart_s = connecting - killed + first  # until the first delivery
        t.drain_s = last - first
        t.drain_per_s = (count - 1) / t.drain_s
    except Exception as e:  # one broker's failure is reported, the others still run
        t.error = f"{type(e).__name__}: {e}"
    finally:
        broker.stop()
        shutil.rmtree(base, ignore_errors=True)
    return t


def table(trials: list[Trial]) -> str:
    cols = ("broker", "count", "idle MiB", "publish/s", "backlog MiB", "restart s",
            "restart MiB", "drain/s")
    rows = [cols]
    for t in trials:
        rows.append((t.broker, f"{t.count:,}", f"{t.idle_rss_mib:.0f}",
                     f"{t.publish_per_s:,.0f}", f"{t.backlog_rss_mib:.0f}",
                     f"{t.restart_s:.1f}", f"{t.restart_rss_mib:.0f}",
                     f"{t.drain_per_s:,.0f}") if not t.error else
                    (t.broker, f"{t.count:,}", "ERROR", t.error[:60], "", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True))
                     for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="100000,1000000")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--window", type=int, default=500)
    ap.add_argument("--only", choices=("raftmq", "quorum", "lazy"), action="append")
    args = ap.parse_args(argv)
    kinds = args.only or ["raftmq", "quorum", "lazy"]
    if any(k != "raftmq" for k in kinds):
        ensure_installed()
    counts = [int(c) for c in args.counts.split(",")]
    trials: list[Trial] = []
    for count in counts:
        for kind in kinds:
            print(f"... {kind}: {count:,} x {args.size} B", file=sys.stderr, flush=True)
            trials.append(trial(kind, count, args.size, args.window))
            print(table(trials[-1:]), file=sys.stderr, flush=True)
    print(table(trials))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"memory-{datetime.now():%Y%m%d-%H%M%S}.json"
    doc: dict[str, Any] = {"argv": sys.argv, "trials": [asdict(t) for t in trials]}
    out.write_text(json.dumps(doc, indent=1))
    print(f"results: {out}")
    return 1 if any(t.error for t in trials) else 0


if __name__ == "__main__":
    sys.exit(main())
