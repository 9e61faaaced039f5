"""A burst of 1,024 messages through a cluster: the longest gap between two deliveries.

    .venv/bin/python -m bench.burst [--trials 5] [--count 1024] [--size 100] [--quick]
                                    [--only raftmq|rabbitmq] [--no-single] [--json PATH]

What a client library's own test does: a consumer is already consuming (prefetch 100 and a
manual ack of every delivery; no basic.qos at all; or no-ack), then a producer publishes ``--count`` persistent messages as
fast as it can write them (one socket write per message, as a client library does), without
publisher confirms or with confirms and at most ``--window`` (100) unconfirmed; the test waits for
every message with a per-message receive timeout (200 ms in the library that reported issue 22).

Brokers, side by side in one run (each stopped before the next starts): a 3-node RaftMQ cluster
(harness.cluster) and a 3-node RabbitMQ cluster with a quorum queue (harness.rabbitmq), as
bench/run_bench_cluster.py makes them; then a single RaftMQ node and a single RabbitMQ node
(quorum queue) for the "all on one node" placement. "Leader" is the Raft leader for RaftMQ and
the quorum queue's leader for RabbitMQ (its queue is declared through node 1, where its leader
starts; checked with rabbitmqctl). Placements on the clusters: producer and consumer on the two
followers; producer on the leader, consumer on a follower; producer on a follower, consumer on
the leader.

Per trial (fresh connections, one queue per broker purged between trials), measured by the
client at each read of its socket (CLOCK_MONOTONIC): time from the first publish to the last
delivery, the wait for the first delivery, the longest gap between two consecutive deliveries
("max gap"; the target of issue 22 is <= 100 ms), the p99 of those gaps, and whether every
message arrived exactly once. Per case: the median over trials and the max. The client is one
uvloop process with raw frames (bench.loadgen's LeanClient), far cheaper per message than the
broker. The CPU that other processes used during each broker's trials is printed: the machine
is shared, and a busy neighbour makes gaps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pamqp import commands as cmd

from bench.loadgen import (
    _ACK_OR_NACK,
    _CLASS_METHOD,
    _U64,
    AmqpError,
    Consumer,
    LeanClient,
    LoadConfig,
    ack_frame,
    publish_template,
)
from bench.run_bench import RESULTS_DIR, _interrupt, start_rabbitmq, start_raftmq
from bench.run_bench_cluster import RabbitMQBench, RaftMQBench
from harness.procs import cpu_seconds, system_busy_seconds

TARGET_GAP_MS = 100.0
RECEIVE_TIMEOUT_MS = 200.0  # the reporting client library's per-message receive timeout
TRIAL_LIMIT_S = 15.0  # a trial that has not received everything by then is reported as such
BROKERS = ("raftmq", "rabbitmq")
QUEUE = "burst"


# --------------------------------------------------------------------------- clients


class BurstConsumer(Consumer):
    """loadgen's consumer (raw frames), recording (sequence number, arrival ns) per delivery;
    manual ack of each delivery, or no-ack."""

    def __init__(self, cfg: LoadConfig, no_ack: bool, expect: int) -> None:
        super().__init__(cfg)
        self.no_ack = no_ack
        self.want = expect
        self.arrivals: list[tuple[int, int]] = []
        self.all_in: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def setup(self) -> None:
        await LeanClient.setup(self)
        if not self.no_ack and self.cfg.prefetch:
            self.send(cmd.Basic.Qos(prefetch_count=self.cfg.prefetch))
            await self.expect(cmd.Basic.QosOk)
        self.switch_after = cmd.Basic.ConsumeOk
        self.send(cmd.Basic.Consume(queue=self.cfg.queue, consumer_tag="burst",
                                    no_ack=self.no_ack))  # fmt: skip
        await self.expect(cmd.Basic.ConsumeOk)

    def delivered(self, now: int) -> None:
        if not self.no_ack:
            self.out.append(ack_frame(self.tag))
        self.remaining = -1
        self.arrivals.append((self.sent_ts, now))  # the body's first 8 bytes: its number
        self.sent_ts = 0
        if len(self.arrivals) >= self.want and not self.all_in.done():
            self.all_in.set_result(None)


class BurstProducer(LeanClient):
    """Publishes ``count`` persistent messages, message i's body starting with i; one socket
    write per message. With confirms: at most ``window`` unconfirmed."""

    def __init__(self, cfg: LoadConfig, count: int, confirms: bool) -> None:
        super().__init__(cfg)
        self.count = count
        self.confirms = confirms
        self.head = self.tail = b""
        self.next = 0  # messages written
        self.confirmed = 0  # every tag up to this one is confirmed (or nacked, counted apart)
        self.nacked = 0
        self.early: set[int] = set()  # single confirms above ``confirmed``
        self.started = False  # publish() was called: confirms refill the window
        self.all_confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def setup(self) -> None:
        await super().setup()
        if self.confirms:
            self.send(cmd.Confirm.Select())
            self.switch_after = cmd.Confirm.SelectOk
            await self.expect(cmd.Confirm.SelectOk)
        else:
            self.fast = True
        self.head, self.tail = publish_template(self.cfg.queue, self.cfg.size, self.frame_max)

    def publish(self) -> None:
        """Write what may be written now (everything without confirms)."""
        assert self.transport is not None
        self.started = True
        limit = self.count if not self.confirms else min(self.count,
                                                         self.confirmed + self.cfg.window)
        write = self.transport.write
        while self.next < limit:
            write(self.head + _U64.pack(self.next) + self.tail)
            self.next += 1

    def on_fast_frame(self, ftype: int, buf: bytearray, start: int, end: int, now: int) -> None:
        if ftype == 1:
            cm = _CLASS_METHOD.unpack_from(buf, start)
            if cm in ((60, 80), (60, 120)):  # basic.ack / basic.nack
                tag, bits = _ACK_OR_NACK.unpack_from(buf, start + 4)
                if cm[1] == 120:
                    self.nacked += 1
                if bits & 1:
                    self.confirmed = max(self.confirmed, tag)
                else:
                    self.early.add(tag)
                while self.confirmed + 1 in self.early:
                    self.confirmed += 1
                    self.early.discard(self.confirmed)
                return
        super().on_fast_frame(ftype, buf, start, end, now)

    def after_data(self, now: int) -> None:
        if self.confirms and self.started and self.transport is not None:
            self.publish()
            if self.confirmed >= self.count and not self.all_confirmed.done():
                self.all_confirmed.set_result(None)


async def _connect(client: LeanClient) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(loop.create_connection(lambda: client, client.cfg.host, client.cfg.port),
                           client.cfg.setup_timeout)  # fmt: skip
    await asyncio.wait_for(client.setup(), client.cfg.setup_timeout)


async def _close(client: LeanClient) -> None:
    with contextlib.suppress(Exception):
        await client.close()
    if client.transport is not None:
        client.transport.close()


async def _purge(cfg: LoadConfig) -> None:
    client = LeanClient(cfg)
    try:
        await _connect(client)
        client.send(cmd.Queue.Purge(queue=cfg.queue))
        await asyncio.wait_for(client.expect(cmd.Queue.PurgeOk), cfg.setup_timeout)
    finally:
        await _close(client)


def gap_stats(t0: int, arrivals: list[int]) -> dict[str, float | None]:
    """ms: first delivery after ``t0``, total, longest and p99 gap between consecutive ones, and
    when (after ``t0``) the longest began; ``t0_ns`` to find it in the nodes' logs."""
    if not arrivals:
        return {"first_ms": None, "total_ms": None, "max_gap_ms": None, "p99_gap_ms": None,
                "max_gap_after_ms": None, "t0_ns": t0}
    times = sorted(arrivals)
    pairs = list(zip(times, times[1:], strict=False)) or [(times[0], times[0])]
    gaps = sorted(b - a for a, b in pairs)
    p99 = gaps[min(len(gaps) - 1, round(0.99 * (len(gaps) - 1)))]
    at = max(pairs, key=lambda p: p[1] - p[0])[0]
    return {"first_ms": (times[0] - t0) / 1e6, "total_ms": (times[-1] - t0) / 1e6,
            "max_gap_ms": gaps[-1] / 1e6, "p99_gap_ms": p99 / 1e6,
            "max_gap_after_ms": (at - t0) / 1e6, "t0_ns": t0}  # fmt: skip


async def burst_trial(prod_port: int, cons_port: int, count: int, size: int, confirms: bool,
                      no_ack: bool, window: int = 100, prefetch: int = 100,
                      limit_s: float = TRIAL_LIMIT_S, queue_type: str = "quorum",
                      queue: str = QUEUE) -> dict[str, Any]:
    """One burst: consumer consuming on ``cons_port`` first, then ``count`` publishes through
    ``prod_port``; returns the figures (gap_stats) and what arrived."""
    base = LoadConfig(port=cons_port, size=max(8, size), window=window, prefetch=prefetch,
                      queue=queue, queue_type=queue_type)  # fmt: skip
    consumer = BurstConsumer(base, no_ack, count)
    producer = BurstProducer(replace(base, port=prod_port), count, confirms)
    out: dict[str, Any] = {"error": None}
    try:
        await _connect(consumer)
        await _connect(producer)
        t0 = time.monotonic_ns()
        producer.publish()
        waits: list[asyncio.Future[None]] = [consumer.all_in]
        if confirms:
            waits.append(producer.all_confirmed)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), limit_s)
        seqs = [s for s, _ in consumer.arrivals]
        out.update(gap_stats(t0, [t for _, t in consumer.arrivals]))
        out.update(received=len(seqs), distinct=len(set(seqs)), nacked=producer.nacked,
                   all_arrived=set(seqs) == set(range(count)) and len(seqs) == count,
                   confirmed=producer.confirmed if confirms else None)  # fmt: skip
        if consumer.error or producer.error:
            out["error"] = consumer.error or producer.error
    except (OSError, TimeoutError, AmqpError) as exc:
        out.update(error=repr(exc), all_arrived=False)
    finally:
        await _close(producer)
        await _close(consumer)
    return out


# --------------------------------------------------------------------------- cases and trials


@dataclass(frozen=True)
class Variant:
    confirms: bool
    no_ack: bool
    prefetch: int = 100  # manual ack only; 0: no basic.qos (unlimited)

    @property
    def label(self) -> str:
        acks = "no-ack" if self.no_ack else f"ack p{self.prefetch or 'inf'}"
        return f"{'confirms w100' if self.confirms else 'no confirms'}, {acks}"


VARIANTS = [Variant(False, False), Variant(False, True), Variant(False, False, 0),
            Variant(True, False), Variant(True, True)]


@dataclass
class Target:
    """One broker under test: its AMQP ports, its placements, its pids, how to stop it."""

    broker: str
    setup: str  # "3 nodes" / "1 node"
    placements: list[tuple[str, int, int]]  # (label, producer port, consumer port)
    pids: Callable[[], list[int]]
    stop: Callable[[], object]
    cases: list[dict[str, Any]] = field(default_factory=list)


def _cluster_placements(ports: list[int], lead: int) -> list[tuple[str, int, int]]:
    f1, f2 = [i for i in range(len(ports)) if i != lead][:2]
    return [("follower -> follower", ports[f1], ports[f2]),
            ("leader -> follower", ports[lead], ports[f2]),
            ("follower -> leader", ports[f1], ports[lead])]  # fmt: skip


@contextlib.contextmanager
def started(name: str, nodes: int, workdir: Path, env: dict[str, str]) -> Iterator[Target]:
    """Start a broker (3-node cluster or single node); stop it whatever happens."""
    workdir.mkdir(parents=True, exist_ok=True)
    base = LoadConfig(queue=QUEUE, queue_type="quorum")
    stop: Callable[[], object]
    if nodes == 1:
        b = start_raftmq(workdir, env) if name == "raftmq" else start_rabbitmq(workdir, env)
        stop = b.stop
        try:
            asyncio.run(_declare(replace(base, port=b.port)))
            pid = b.pid
            yield Target(name, "1 node", [("all on one node", b.port, b.port)], lambda: [pid], stop)
        finally:
            stop()
        return
    cluster: RaftMQBench | RabbitMQBench = (RaftMQBench(workdir, env) if name == "raftmq"
                                            else RabbitMQBench(workdir, {}))  # fmt: skip
    try:
        cluster.start()
        lead = cluster.prepare_queue(base)  # RaftMQ: the Raft leader; RabbitMQ: the queue's

        def pids() -> list[int]:
            return [p for p in cluster.pids() if p]

        yield Target(name, "3 nodes", _cluster_placements(cluster.ports, lead), pids, cluster.stop)
    finally:
        cluster.stop()


async def _declare(cfg: LoadConfig) -> None:
    client = LeanClient(cfg)
    try:
        await _connect(client)
    finally:
        await _close(client)


def run_target(t: Target, args: argparse.Namespace, out: Any) -> None:
    own = 0.0
    for label, prod, cons in t.placements:
        for v in VARIANTS:
            if args.variants and v.label not in args.variants:
                continue
            case: dict[str, Any] = {"broker": t.broker, "setup": t.setup, "placement": label,
                                    "variant": v.label, "trials": []}  # fmt: skip
            pids = t.pids()
            for _ in range(args.trials):
                with contextlib.suppress(Exception):
                    asyncio.run(_purge(LoadConfig(port=prod, queue=QUEUE, queue_type="quorum")))
                cpu0 = sum(cpu_seconds(p) for p in pids)
                sys0, w0, me0 = system_busy_seconds(), time.monotonic(), time.process_time()
                r = _run(burst_trial(prod, cons, args.count, args.size, v.confirms, v.no_ack,
                                     window=args.window, prefetch=v.prefetch))  # fmt: skip
                wall = time.monotonic() - w0
                node_cpu = sum(cpu_seconds(p) for p in pids) - cpu0
                me = time.process_time() - me0
                r["node_cpu"] = round(node_cpu / wall, 3)
                r["other_cpu"] = round((system_busy_seconds() - sys0 - node_cpu - me) / wall, 3)
                own += wall
                case["trials"].append(r)
                time.sleep(args.pause)
            summarize_case(case)
            t.cases.append(case)
            print_case(case, out)


def _run(coro: Any) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        result: dict[str, Any] = asyncio.run(coro)
        return result
    return uvloop.run(coro)


def _stat(values: list[float | None]) -> tuple[float | None, float | None]:
    nums = [v for v in values if v is not None]
    return (statistics.median(nums), max(nums)) if nums else (None, None)


def summarize_case(case: dict[str, Any]) -> None:
    trials = case["trials"]
    for key in ("total_ms", "first_ms", "max_gap_ms", "p99_gap_ms", "other_cpu"):
        case[key] = _stat([t.get(key) for t in trials])
    case["all_arrived"] = sum(1 for t in trials if t.get("all_arrived"))
    case["over_target"] = sum(1 for t in trials if (t.get("max_gap_ms") or 0) > TARGET_GAP_MS)
    case["over_receive_timeout"] = sum(
        1 for t in trials
        if max(t.get("max_gap_ms") or 0, t.get("first_ms") or 0) > RECEIVE_TIMEOUT_MS
        or not t.get("all_arrived"))  # fmt: skip
    case["errors"] = [t["error"] for t in trials if t.get("error")]


def _f(pair: tuple[float | None, float | None], spec: str = ".0f") -> str:
    def one(v: float | None) -> str:
        return "-" if v is None else format(v, spec)

    return f"{one(pair[0])}/{one(pair[1])}"


HEAD = (f"{'broker':<8} {'setup':<7} {'placement':<20} {'variant':<26} {'total ms':>11} "
        f"{'first ms':>9} {'max gap ms':>11} {'p99 gap':>9} {'all in':>6} {'>100':>4} "
        f"{'>200':>4} {'other cpu':>9}")  # fmt: skip


def print_case(c: dict[str, Any], out: Any) -> None:
    n = len(c["trials"])
    print(f"{c['broker']:<8} {c['setup']:<7} {c['placement']:<20} {c['variant']:<26} "
          f"{_f(c['total_ms']):>11} {_f(c['first_ms']):>9} {_f(c['max_gap_ms']):>11} "
          f"{_f(c['p99_gap_ms'], '.1f'):>9} {c['all_arrived']:>3}/{n:<2} {c['over_target']:>4} "
          f"{c['over_receive_timeout']:>4} {_f(c['other_cpu'], '.2f'):>9}", file=out, flush=True)  # fmt: skip
    for e in c["errors"][:2]:
        print(f"   ! {e}", file=out)


def verdicts(cases: list[dict[str, Any]]) -> list[str]:
    lines = []
    raft = [c for c in cases if c["broker"] == "raftmq"]
    if raft:
        worst = max(raft, key=lambda c: c["max_gap_ms"][1] or 0)
        med = max(raft, key=lambda c: c["max_gap_ms"][0] or 0)
        ok = all(c["all_arrived"] == len(c["trials"]) for c in raft) and \
            (worst["max_gap_ms"][1] or 0) <= TARGET_GAP_MS
        lines.append(f"{'MET' if ok else 'MISSED'}: RaftMQ longest gap between two deliveries "
                     f"<= {TARGET_GAP_MS:.0f} ms in every trial: worst "
                     f"{_f((worst['max_gap_ms'][1], None))[:-2]} ms ({worst['setup']}, "
                     f"{worst['placement']}, {worst['variant']}); worst case median "
                     f"{_f((med['max_gap_ms'][0], None))[:-2]} ms ({med['placement']}, "
                     f"{med['variant']})")  # fmt: skip
    for broker in BROKERS:
        mine = [c for c in cases if c["broker"] == broker]
        if mine:
            lost = sum(len(c["trials"]) - c["all_arrived"] for c in mine)
            late = sum(c["over_receive_timeout"] for c in mine)
            n = sum(len(c["trials"]) for c in mine)
            lines.append(f"{broker}: {n - lost}/{n} trials received every message; {late} "
                         f"would fail a {RECEIVE_TIMEOUT_MS:.0f} ms receive timeout")  # fmt: skip
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--trials", type=int, default=5, help="bursts per case")
    ap.add_argument("--count", type=int, default=1024, help="messages per burst")
    ap.add_argument("--size", type=int, default=100, help="body bytes (>= 8)")
    ap.add_argument("--window", type=int, default=100, help="unconfirmed messages (confirms)")
    ap.add_argument("--pause", type=float, default=0.3, help="seconds between bursts")
    ap.add_argument("--only", choices=BROKERS, help="run one broker only")
    ap.add_argument("--no-single", action="store_true", help="skip the single-node brokers")
    ap.add_argument("--variant", dest="variants", action="append", default=[],
                    choices=[v.label for v in VARIANTS], help="only these variants")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="2 trials per case")
    ap.add_argument("--raftmq-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra env for RaftMQ nodes")  # fmt: skip
    ap.add_argument("--json", type=Path, help="JSON results (default bench/results/burst-*.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.trials = 2
    args.raftmq_env = dict(kv.split("=", 1) for kv in args.raftmq_env)
    if args.trials < 1 or args.count < 1:
        ap.error("--trials and --count must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    brokers = [args.only] if args.only else list(BROKERS)
    setups = [3] if args.no_single else [3, 1]
    workroot = Path(tempfile.mkdtemp(prefix="raftmq-bench-burst-"))
    started_at = datetime.now()
    cases: list[dict[str, Any]] = []
    out = sys.stdout
    print(f"burst of {args.count} x {args.size} B persistent messages, quorum queue; per case "
          f"median/max over {args.trials} trials; target: max gap <= {TARGET_GAP_MS:.0f} ms; "
          f">200 = trials that would fail a {RECEIVE_TIMEOUT_MS:.0f} ms receive timeout "
          f"(first delivery or a gap, or a message missing)", file=out)  # fmt: skip
    print(HEAD, file=out)
    print("-" * len(HEAD), file=out)
    interrupted = False
    try:
        for nodes in setups:
            for name in brokers:
                try:
                    with started(name, nodes, workroot / f"{name}-{nodes}", args.raftmq_env) as t:
                        run_target(t, args, out)
                        cases.extend(t.cases)
                except (RuntimeError, AssertionError, OSError) as exc:
                    print(f"! {name} ({nodes} node(s)) failed: {exc!r}"[:2000], file=out)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: reporting the cases done so far", file=out)
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    print(file=out)
    for line in verdicts(cases):
        print(line, file=out)
    worst = max((c["other_cpu"][0] or 0.0 for c in cases), default=0.0)
    if worst > 0.25:
        print(f"WARNING: other processes used ~{worst:.2f} cores during trials: noisy", file=out)
    path = args.json or RESULTS_DIR / f"burst-{started_at:%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"started": started_at.isoformat(timespec="seconds"),
                                "config": {k: v for k, v in vars(args).items() if k != "json"},
                                "target_gap_ms": TARGET_GAP_MS, "cases": cases,
                                "verdicts": verdicts(cases)}, indent=1))  # fmt: skip
    print(f"results: {path}", file=out)
    if interrupted:
        return 130
    return 0 if cases else 1


if __name__ == "__main__":
    sys.exit(main())
