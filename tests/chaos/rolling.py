"""Rolling restart under load (``make rolling-restart``): a 3-node cluster with confirming
producers (``--rate`` msg/s in total) and a consumer on every node; each node in turn is
drained (raftmq node drain: leadership handed over, clients closed with 320 once their
publishes are confirmed), stopped with SIGTERM, started again and waited for. Reported
per node: the longest time any one producer went without a confirm while that node was
being restarted. At the end every confirmed message must have been consumed (the chaos
checker: lost = 0, unexpected = 0).

    python -m tests.chaos.rolling [--rate 1200] [--nodes 3] [--settle 3] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .checker import Verdict, check
from .clients import Consumer, History, Producer, declare_queues, sweep
from .cluster import ChaosCluster

GAP_LIMIT_S = 1.0  # the bound on one producer's wait between confirms
HEALTHY_TIMEOUT_S = 60.0


@dataclass
class NodeRestart:
    node: str
    was_leader: bool
    drain_s: float = 0.0
    down_s: float = 0.0  # SIGTERM .. healthy cluster again
    longest_gap_s: float = 0.0
    gap_producer: int = 0


@dataclass
class RollingResult:
    rate: float
    restarts: list[NodeRestart] = field(default_factory=list)
    verdict: Verdict | None = None
    confirmed_per_s: float = 0.0

    @property
    def ok(self) -> bool:
        v = self.verdict
        return (v is not None and v.lost == 0 and v.unexpected == 0
                and all(r.longest_gap_s <= GAP_LIMIT_S for r in self.restarts))

    def table(self) -> str:
        lines = ["node  was leader  drain s  restart s  longest confirm gap s (producer)"]
        for r in self.restarts:
            lines.append(f"{r.node:<5} {'yes' if r.was_leader else 'no':<11} {r.drain_s:7.2f}  "
                         f"{r.down_s:9.2f}  {r.longest_gap_s:5.2f} (p{r.gap_producer})")
        v = self.verdict
        if v is not None:
            lines.append(f"published={v.published} confirmed={v.confirmed} consumed={v.consumed} "
                         f"lost={v.lost} unexpected={v.unexpected} duplicated={v.duplicated} "
                         f"confirmed/s={self.confirmed_per_s:.0f} (asked {self.rate:.0f})")
        return "\n".join(lines)


def _drain(port: int) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/status")
    req.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest, from loopback
    with urllib.request.urlopen(req, timeout=5) as r:
        node = json.load(r)["node"]
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/nodes/{node}/drain",
                                 method="POST")
    req.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()


def _longest_gap(h: History, start: float, end: float) -> tuple[float, int]:
    """Per producer, the longest stretch in [start, end] without one of its confirms."""
    times: dict[int, list[float]] = {}
    for p in h.publishes.values():
        if p.confirmed_at is not None:
            times.setdefault(p.producer, []).append(p.confirmed_at)
    worst, who = 0.0, 0
    for producer, ts in times.items():
        ts.sort()
        inside = [start] + [t for t in ts if start < t < end] + [end]
        # the stretch before the first confirm counts from the last one before ``start``
        before = [t for t in ts if t <= start]
        if before:
            inside[0] = before[-1]
        after = [t for t in ts if t >= end]
        inside[-1] = after[0] if after else end
        gap = max(b - a for a, b in zip(inside, inside[1:], strict=False))
        if gap > worst:
            worst, who = gap, producer
    return worst, who


async def rolling_restart(base: Path, nodes: int = 3, rate: float = 1200.0,
                          producers: int = 3, settle: float = 3.0,
                          log: Callable[[str], None] = print) -> RollingResult:
    result = RollingResult(rate)
    cc = ChaosCluster(base, nodes, {"RAFTMQ_LOG_LEVEL": "info"})
    await asyncio.to_thread(cc.start)
    h = History(run=f"rolling-{int(time.time())}")
    queues = ["rolling-q0", "rolling-q1"]
    await declare_queues(cc.urls(), queues)
    prods = [Producer(p + 1, cc.urls, queues, h, rate / producers, 64, first_node=p % nodes)
             for p in range(producers)]
    cons = [Consumer(c + 1, cc.urls, queues, h, 200, first_node=c % nodes)
            for c in range(nodes)]
    p_tasks = [asyncio.create_task(p.run(30.0)) for p in prods]
    c_tasks = [asyncio.create_task(c.run()) for c in cons]
    began = time.monotonic()
    try:
        await asyncio.sleep(settle)
        for nd in cc.nodes:
            leader = cc.leader_id()
            r = NodeRestart(nd.node_id, leader == nd.node_id)
            t0 = time.monotonic()
            await asyncio.to_thread(_drain, nd.management_port)
            r.drain_s = time.monotonic() - t0
            t1 = time.monotonic()
            await asyncio.to_thread(nd.stop)
            await asyncio.to_thread(nd.start, False)
            if await asyncio.to_thread(cc.wait_healthy, HEALTHY_TIMEOUT_S) is None:
                raise RuntimeError(f"cluster not healthy after restarting {nd.node_id}")
            r.down_s = time.monotonic() - t1
            await asyncio.sleep(settle)
            r.longest_gap_s, r.gap_producer = _longest_gap(h, t0, time.monotonic())
            result.restarts.append(r)
            log(f"  {nd.node_id} (leader: {r.was_leader}) drained in {r.drain_s:.2f}s, back in "
                f"{r.down_s:.2f}s, longest confirm gap {r.longest_gap_s:.2f}s")
        elapsed = time.monotonic() - began
        result.confirmed_per_s = len(h.confirmed_ids()) / elapsed
        for p in prods:
            p.stopping = True
        await asyncio.wait(p_tasks, timeout=45)
        deadline = time.monotonic() + 30
        while h.unconsumed_confirmed() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for c in cons:
            c.stop.set()
        await asyncio.wait(c_tasks, timeout=15)
        residual = await sweep(cc.urls(), queues, h)
        result.verdict = check(h, residual)
        return result
    finally:
        for t in p_tasks + c_tasks:
            t.cancel()
        await asyncio.gather(*p_tasks, *c_tasks, return_exceptions=True)
        await asyncio.to_thread(cc.stop)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1200.0, help="msg/s, all producers")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--settle", type=float, default=3.0, help="s of traffic between restarts")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="raftmq-rolling-"))
    try:
        result = asyncio.run(rolling_restart(base, args.nodes, args.rate, settle=args.settle))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(result.table())
    print("OK" if result.ok else f"FAILED (gap limit {GAP_LIMIT_S}s, lost must be 0)")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
