"""The workloads users run, RaftMQ vs RabbitMQ side by side (issue 22, item 4).

    .venv/bin/python -m bench.workloads [--only NAME,...] [--duration 180] [--window-s 30]
                                        [--quick] [--sizes 100,4096,65536] [--json PATH]
                                        [--raftmq-env KEY=VALUE ...]

For each workload, a fresh broker of each kind, alternating (RaftMQ first): RaftMQ one node
(harness.raftmq.RaftMQNode, as bench.run_bench starts it), RabbitMQ 3.x one node
(harness.rabbitmq.RabbitMQ), durable classic queues, persistent messages, the reference of
``make bench``. The load is bench.loadgen's (raw frames on the hot path, pamqp for set-up):

* many-queues: 10 queues, each with its own confirming producer (100 in flight) and acking
  consumer (prefetch 100) connection, 100 B; judged by consumed msg/s, all queues together.
* fanout: one producer to a durable fanout exchange bound to 10 durable queues, one consumer per
  queue (10 basic.consume on one channel); published (confirmed) and delivered msg/s (10x).
* topic: a durable topic exchange with 1,000 bindings (distinct patterns "a.<i>.*", "b.*.<i>",
  "c.<i>.#" and "#.d<i>", binding i to queue topic-<i mod 100>); the producer cycles through 16
  routing keys that match 1 or 2 bindings each; consumers on the matched queues only.
* idle-connections: 1,000 AMQP connections (handshake, no heartbeats, one channel each), 50
  opening at once, held: the broker's RSS before and after (each after 2 s settling), RSS per
  connection, time to open them, the broker's CPU while they are held.
* declare-queues: 10,000 durable queues declared on one channel, pipelined in batches of 100 (a
  batch is sent when the previous one's declare-oks are in): time, rate and RSS after; then
  deleted the same way (time).
* sizes: bench.run_bench's single-queue load (1 producer, 1 consumer) at each of ``--sizes``.

Throughput workloads run ``--duration`` s of sustained load on one broker process cut into
``--window-s`` windows (bench.windows: medians, slowest/fastest window, first -> last change, the
CPU other processes used). Every workload prints RaftMQ, RabbitMQ and the ratio; JSON with every
window goes to ``--json`` (default bench/results/workloads-<timestamp>.json). Every phase has a
deadline; every process started is stopped on exit, Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from pamqp import commands as cmd
from pamqp import frame as pframe

from bench import run_bench
from bench import windows as win
from bench.loadgen import AmqpError, LeanClient, LoadConfig
from bench.run_bench import MiB
from harness.procs import cpu_seconds, rss_bytes, system_busy_seconds
from harness.rabbitmq import ensure_installed

BROKERS = ("raftmq", "rabbitmq")
THROUGHPUT = ("many-queues", "fanout", "topic")
WORKLOADS = (*THROUGHPUT, "idle-connections", "declare-queues", "sizes")
HOST = "127.0.0.1"
N_QUEUES = 10  # many-queues and fanout
TOPIC_BINDINGS = 1000
TOPIC_QUEUES = 100
TOPIC_KEYS = 16
IDLE_CONNECTIONS = 1000
IDLE_CONCURRENCY = 50  # connections being opened at once
DECLARE_QUEUES = 10_000
DECLARE_BATCH = 100
SETTLE_S = 2.0  # before an RSS reading
SETUP_TIMEOUT = 60.0  # one set-up step (declares, bindings)
PHASE_TIMEOUT = 300.0  # opening 1,000 connections; declaring or deleting 10,000 queues


# --------------------------------------------------------------------------- set-up client


async def open_channel(port: int, timeout: float) -> LeanClient:
    """A LeanClient (pamqp frames) with channel 1 open."""
    client = LeanClient(LoadConfig(port=port, setup_timeout=timeout))
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(loop.create_connection(lambda: client, HOST, port), timeout)
    try:
        await asyncio.wait_for(client.handshake(), timeout)
        client.send(cmd.Channel.Open())
        await asyncio.wait_for(client.expect(cmd.Channel.OpenOk), timeout)
    except BaseException:
        if client.transport is not None:
            client.transport.close()
        raise
    return client


async def pipelined(
    client: LeanClient, methods: Iterable[Any], ok: type, batch: int, deadline: float
) -> int:
    """Send ``methods`` in batches of ``batch``, each once the previous batch's ``ok`` replies
    are in; returns how many were answered (fewer if ``deadline``, monotonic s, passed)."""
    done = 0
    pending: list[Any] = []

    async def flush() -> bool:
        nonlocal done
        assert client.transport is not None
        client.transport.write(b"".join(_marshal(m) for m in pending))
        for _ in pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(client.expect(ok), left)
            except TimeoutError:
                return False
            done += 1
        pending.clear()
        return True

    for m in methods:
        pending.append(m)
        if len(pending) >= batch and not await flush():
            return done
    if pending:
        await flush()
    return done


def _marshal(method: Any) -> bytes:
    return pframe.marshal(method, 1)


async def declare_topology(port: int, steps: list[tuple[Any, type]]) -> None:
    """Send ``steps`` (method, expected reply) on one channel, pipelined, then close."""
    client = await open_channel(port, SETUP_TIMEOUT)
    try:
        deadline = time.monotonic() + SETUP_TIMEOUT
        i = 0  # runs of steps with the same reply, pipelined
        while i < len(steps):
            ok = steps[i][1]
            j = i
            while j < len(steps) and steps[j][1] is ok:
                j += 1
            n = await pipelined(client, (m for m, _ in steps[i:j]), ok, DECLARE_BATCH, deadline)
            if n != j - i:
                raise TimeoutError(f"set-up: {n} of {j - i} {ok.__name__} in {SETUP_TIMEOUT:.0f}s")
            i = j
    finally:
        await client.close()


# --------------------------------------------------------------------------- topic exchange


def topic_patterns() -> list[tuple[str, str]]:
    """(binding key, queue) of the topic workload's 1,000 bindings."""
    kinds = ("a.{i}.*", "b.*.{i}", "c.{i}.#", "#.d{i}")
    return [
        (kinds[i % 4].format(i=i), f"topic-{i % TOPIC_QUEUES}") for i in range(TOPIC_BINDINGS)
    ]


def topic_keys() -> list[str]:
    """Routing keys matching one or two bindings each: "a.<i>.d<j>" (a.<i>.* and #.d<j>),
    "b.x.<i>" (b.*.<i>), "c.<i>.y.d<j>" (c.<i>.# and #.d<j>), "c.<i>.z" (c.<i>.#)."""
    keys = []
    for n in range(TOPIC_KEYS):
        base = 4 * (n * 37 % (TOPIC_BINDINGS // 4))  # i = base + kind is binding i's pattern
        a, b, c, d = base, base + 1, base + 2, (base + 4 * 11 + 3) % TOPIC_BINDINGS
        keys.append((f"a.{a}.d{d}", f"b.x.{b}", f"c.{c}.y.d{d}", f"c.{c}.z")[n % 4])
    return keys


def topic_match(pattern: str, key: str) -> bool:
    """AMQP topic matching ("*" one word, "#" zero or more), for the expected routes."""
    p, k = pattern.split("."), key.split(".") if key else []

    def match(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(k)
        if p[i] == "#":
            return any(match(i + 1, jj) for jj in range(j, len(k) + 1))
        return j < len(k) and p[i] in ("*", k[j]) and match(i + 1, j + 1)

    return match(0, 0)


def topic_routes() -> dict[str, list[str]]:
    """Routing key -> the queues it reaches (distinct, sorted)."""
    pats = topic_patterns()
    return {k: sorted({q for p, q in pats if topic_match(p, k)}) for k in topic_keys()}


# --------------------------------------------------------------------------- CPU of the others


class CpuMark:
    """CPU seconds used between construction and ``done()``: by the broker, by every process
    we started (this one and its children), and by every other process on the machine."""

    def __init__(self, broker_pid: int) -> None:
        self.pid = broker_pid
        self.t0, self.busy0, self.own0, self.broker0 = self._read()

    def _read(self) -> tuple[float, float, float, float]:
        own = win.own_processes()
        own[self.pid] = own.get(self.pid, "?")
        return (
            time.monotonic(), system_busy_seconds(), sum(cpu_seconds(p) for p in own),
            cpu_seconds(self.pid),
        )  # fmt: skip

    def done(self) -> dict[str, float]:
        t1, busy1, own1, broker1 = self._read()
        wall = max(t1 - self.t0, 1e-3)
        broker = broker1 - self.broker0
        return {
            "wall_s": round(wall, 2),
            "broker_cpu": round(broker / wall, 3),
            "other_cpu_s": round(max(busy1 - self.busy0 - (own1 - self.own0), 0.0), 2),
            "other_cpu_cores": round(max(busy1 - self.busy0 - (own1 - self.own0), 0.0) / wall, 3),
        }


# --------------------------------------------------------------------------- workloads


def load_config(args: argparse.Namespace, port: int, **kw: Any) -> LoadConfig:
    return LoadConfig(
        port=port, size=100, duration=args.duration, warmup=args.warmup,
        interval=args.window_s, window=100, prefetch=100, **kw,
    )  # fmt: skip


def run_throughput(
    name: str, broker: run_bench.Broker, args: argparse.Namespace
) -> dict[str, Any]:
    """Set up the topology of ``name``, then run the load: windows, stats, RSS."""
    out: dict[str, Any] = {}
    if name == "many-queues":
        cfg = load_config(args, broker.port, queue="mq", queues=N_QUEUES)
    elif name == "fanout":
        queues = [f"fan-{i}" for i in range(N_QUEUES)]
        steps: list[tuple[Any, type]] = [
            (cmd.Exchange.Declare(exchange="fan", exchange_type="fanout", durable=True),
             cmd.Exchange.DeclareOk)
        ]  # fmt: skip
        steps += [(cmd.Queue.Declare(queue=q, durable=True), cmd.Queue.DeclareOk) for q in queues]
        steps += [(cmd.Queue.Bind(queue=q, exchange="fan"), cmd.Queue.BindOk) for q in queues]
        asyncio.run(declare_topology(broker.port, steps))
        cfg = load_config(
            args, broker.port, queue=queues[0], exchange="fan", routing_keys=("",),
            consume=tuple(queues),
        )  # fmt: skip
        out["copies_per_message"] = len(queues)
    else:  # topic
        routes = topic_routes()
        pats = topic_patterns()
        queues = sorted({q for _, q in pats})
        steps = [
            (cmd.Exchange.Declare(exchange="topics", exchange_type="topic", durable=True),
             cmd.Exchange.DeclareOk)
        ]  # fmt: skip
        steps += [(cmd.Queue.Declare(queue=q, durable=True), cmd.Queue.DeclareOk) for q in queues]
        steps += [
            (cmd.Queue.Bind(queue=q, exchange="topics", routing_key=p), cmd.Queue.BindOk)
            for p, q in pats
        ]
        t0 = time.monotonic()
        asyncio.run(declare_topology(broker.port, steps))
        out["setup_s"] = round(time.monotonic() - t0, 2)
        matched = sorted({q for qs in routes.values() for q in qs})
        cfg = load_config(
            args, broker.port, queue=matched[0], exchange="topics",
            routing_keys=tuple(routes), consume=tuple(matched),
        )  # fmt: skip
        out["bindings"] = len(pats)
        out["routing_keys"] = len(routes)
        out["consumed_queues"] = len(matched)
        out["copies_per_message"] = sum(len(q) for q in routes.values()) / len(routes)
    out["rss_idle_mib"] = rss_bytes(broker.pid) / MiB
    out.update(run_bench.windowed_load(cfg, broker.pid, args.window_s, "consumed_per_s",
                                       args.max_drop))
    if out["errors"]:
        out["log_tail"] = broker.log_tail()
    return out


async def _idle_connections(port: int, n: int, hold_s: float, pid: int) -> dict[str, Any]:
    out: dict[str, Any] = {"connections": n, "concurrency": IDLE_CONCURRENCY}
    await asyncio.sleep(SETTLE_S)
    before = rss_bytes(pid)
    clients: list[LeanClient] = []
    errors: list[str] = []
    sem = asyncio.Semaphore(IDLE_CONCURRENCY)
    deadline = time.monotonic() + PHASE_TIMEOUT

    async def one() -> None:
        async with sem:
            left = deadline - time.monotonic()
            if left <= 0:
                errors.append("deadline")
                return
            try:
                clients.append(await open_channel(port, min(left, 30.0)))
            except (TimeoutError, OSError, AmqpError) as exc:
                errors.append(repr(exc))

    mark = CpuMark(pid)
    t0 = time.monotonic()
    try:
        await asyncio.gather(*(one() for _ in range(n)))
        out["open_s"] = round(time.monotonic() - t0, 2)
        out["opened"] = len(clients)
        out["open_cpu"] = mark.done()
        await asyncio.sleep(SETTLE_S)
        out["rss_before_mib"] = before / MiB
        hold = CpuMark(pid)
        await asyncio.sleep(hold_s)
        out["hold"] = hold.done()
        after = rss_bytes(pid)
        out["rss_after_mib"] = after / MiB
        alive = sum(1 for c in clients if not c.closed.done())
        out["alive_after_hold"] = alive
        out["rss_per_connection_kib"] = (after - before) / max(len(clients), 1) / 1024
    finally:
        t1 = time.monotonic()
        for c in clients:  # connection.close to all, then wait (bounded) for the close-oks
            if c.transport is not None and not c.transport.is_closing():
                c.closing = c.fast = True
                c.send(cmd.Connection.Close(200, "bench done", 0, 0), 0)
        waiting = [c.closed for c in clients if not c.closed.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=30)
        for c in clients:
            if c.transport is not None:
                c.transport.close()
        out["close_s"] = round(time.monotonic() - t1, 2)
    if errors:
        out["errors"] = sorted(set(errors))[:5]
        out["failed"] = len(errors)
    return out


def run_idle(broker: run_bench.Broker, args: argparse.Namespace) -> dict[str, Any]:
    need = args.connections + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    out = asyncio.run(_idle_connections(broker.port, args.connections, args.hold_s, broker.pid))
    out["ulimit_n"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    time.sleep(SETTLE_S)
    out["rss_after_close_mib"] = rss_bytes(broker.pid) / MiB
    return out


async def _declare_queues(port: int, n: int, pid: int) -> dict[str, Any]:
    out: dict[str, Any] = {"queues": n, "batch": DECLARE_BATCH, "one_channel": True}
    await asyncio.sleep(SETTLE_S)
    out["rss_before_mib"] = rss_bytes(pid) / MiB
    client = await open_channel(port, SETUP_TIMEOUT)
    names = [f"dq-{i}" for i in range(n)]
    try:
        mark = CpuMark(pid)
        t0 = time.monotonic()
        done = await pipelined(
            client, (cmd.Queue.Declare(queue=q, durable=True) for q in names),
            cmd.Queue.DeclareOk, DECLARE_BATCH, t0 + PHASE_TIMEOUT,
        )  # fmt: skip
        out["declared"] = done
        out["declare_s"] = round(time.monotonic() - t0, 2)
        out["declare_per_s"] = done / max(time.monotonic() - t0, 1e-3)
        out["declare_cpu"] = mark.done()
        await asyncio.sleep(SETTLE_S)
        out["rss_after_mib"] = rss_bytes(pid) / MiB
        out["rss_per_queue_kib"] = (out["rss_after_mib"] - out["rss_before_mib"]) * 1024 / max(
            done, 1
        )
        mark = CpuMark(pid)
        t0 = time.monotonic()
        deleted = await pipelined(
            client, (cmd.Queue.Delete(queue=q) for q in names[:done]),
            cmd.Queue.DeleteOk, DECLARE_BATCH, t0 + PHASE_TIMEOUT,
        )  # fmt: skip
        out["deleted"] = deleted
        out["delete_s"] = round(time.monotonic() - t0, 2)
        out["delete_cpu"] = mark.done()
        await asyncio.sleep(SETTLE_S)
        out["rss_after_delete_mib"] = rss_bytes(pid) / MiB
        if done < n or deleted < done:
            out["errors"] = [f"{done} of {n} declared, {deleted} deleted within the deadline "
                             f"({PHASE_TIMEOUT:.0f}s each)" + (f": {client.error}"
                                                               if client.error else "")]
    finally:
        await client.close()
    return out


def run_declare(broker: run_bench.Broker, args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(_declare_queues(broker.port, args.queues, broker.pid))


def run_workload(
    name: str, broker_name: str, args: argparse.Namespace, workroot: Path
) -> dict[str, Any]:
    """One workload on a fresh broker; errors are results, not crashes."""
    trial: dict[str, Any] = {"workload": name, "broker": broker_name}
    workdir = Path(tempfile.mkdtemp(prefix=f"{broker_name}-{name}-", dir=workroot))
    broker: run_bench.Broker | None = None
    try:
        env = args.raftmq_env if broker_name == "raftmq" else {}
        broker = run_bench.STARTERS[broker_name](workdir, env)
        time.sleep(run_bench.IDLE_SETTLE_S)
        runner: Callable[[run_bench.Broker, argparse.Namespace], dict[str, Any]]
        if name in THROUGHPUT:
            trial.update(run_throughput(name, broker, args))
        else:
            runner = run_idle if name == "idle-connections" else run_declare
            trial.update(runner(broker, args))
    except Exception as exc:  # a broker that fails is a result too
        trial.setdefault("errors", []).append(f"{type(exc).__name__}: {exc}")
        if broker is not None:
            trial["log_tail"] = broker.log_tail()
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    trial["failed"] = bool(trial.get("errors")) or bool(trial.get("stalled"))
    return trial


# --------------------------------------------------------------------------- report


def _f(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _ratio(a: Any, b: Any) -> float | None:
    return a / b if isinstance(a, int | float) and isinstance(b, int | float) and b else None


def _get(trial: dict[str, Any] | None, path: str) -> Any:
    v: Any = trial
    for part in path.split("."):
        if not isinstance(v, dict):
            return None
        v = v.get(part)
    return v


# (workload, label, path in the trial, format, higher is better)
METRICS: tuple[tuple[str, str, str, str, bool], ...] = (
    ("many-queues", "consumed msg/s, 10 queues (median)", "stats.consumed_per_s", ",.0f", True),
    ("many-queues", "published msg/s (median)", "stats.confirmed_per_s", ",.0f", True),
    ("fanout", "published msg/s (median)", "stats.confirmed_per_s", ",.0f", True),
    ("fanout", "delivered msg/s, 10 queues (median)", "stats.consumed_per_s", ",.0f", True),
    ("topic", "published msg/s (median)", "stats.confirmed_per_s", ",.0f", True),
    ("topic", "delivered msg/s (median)", "stats.consumed_per_s", ",.0f", True),
    ("topic", "set-up: 100 queues + 1,000 bindings, s", "setup_s", ".2f", False),
    ("idle-connections", "time to open 1,000 connections, s", "open_s", ".2f", False),
    ("idle-connections", "RSS before, MiB", "rss_before_mib", ".1f", False),
    ("idle-connections", "RSS with them open, MiB", "rss_after_mib", ".1f", False),
    ("idle-connections", "RSS per connection, KiB", "rss_per_connection_kib", ".1f", False),
    ("idle-connections", "broker CPU while held, cores", "hold.broker_cpu", ".3f", False),
    ("declare-queues", "time to declare 10,000 queues, s", "declare_s", ".2f", False),
    ("declare-queues", "declares/s", "declare_per_s", ",.0f", True),
    ("declare-queues", "RSS before, MiB", "rss_before_mib", ".1f", False),
    ("declare-queues", "RSS after declaring, MiB", "rss_after_mib", ".1f", False),
    ("declare-queues", "RSS per queue, KiB", "rss_per_queue_kib", ".2f", False),
    ("declare-queues", "time to delete them, s", "delete_s", ".2f", False),
)


def _label(t: dict[str, Any]) -> str:
    return t["broker"]


def print_workload(name: str, trials: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n=== {name} ===")
    if name in THROUGHPUT:
        groups = [(_label(t), t.get("windows", []), t["stats"]) for t in trials if t.get("stats")]
        if groups:
            win.print_windows(groups, sys.stdout, args.max_drop)
        for t in trials:
            extra = ""
            if "copies_per_message" in t:
                extra = f", {t['copies_per_message']:.2f} copies per message routed"
            print(f"{t['broker']:<9} RSS idle / peak / after {_f(t.get('rss_idle_mib'), '.0f')} / "
                  f"{_f(t.get('rss_peak_mib'), '.0f')} / {_f(t.get('rss_after_mib'), '.0f')} MiB"
                  f"{extra}")  # fmt: skip
    else:
        phases = (("open_cpu", "opening"), ("hold", "holding"), ("declare_cpu", "declares"),
                  ("delete_cpu", "deletes"))  # fmt: skip
        for t in trials:
            used = [
                f"{what} {_f(t[k].get('other_cpu_s'), '.1f')} CPU s "
                f"({_f(t[k].get('other_cpu_cores'), '.2f')} cores)"
                for k, what in phases if isinstance(t.get(k), dict)
            ]  # fmt: skip
            print(f"{t['broker']:<9} other processes used: {'; '.join(used) or '-'}")
    by = {t["broker"]: t for t in trials}
    print(f"{'':<44} {'RaftMQ':>12} {'RabbitMQ':>12} {'ratio':>8}")
    for wl, label, path, spec, higher in METRICS:
        if wl != name:
            continue
        a, b = _get(by.get("raftmq"), path), _get(by.get("rabbitmq"), path)
        r = _ratio(a, b)
        better = "" if r is None else ("  (higher is better)" if higher else "  (lower is better)")
        ratio = "-" if r is None else f"{r:.2f}x"
        print(f"{label:<44} {_f(a, spec):>12} {_f(b, spec):>12} {ratio:>8}{better}")
    for t in trials:
        for e in (t.get("errors") or [])[:3]:
            print(f"! {t['broker']} {name}: {str(e)[:300]}")


def run_sizes(args: argparse.Namespace, brokers: list[str], workroot: Path) -> dict[str, Any]:
    """bench.run_bench's trials (fresh broker each, alternating) at ``--sizes``; its table."""
    rb = run_bench.parse_args([
        "--sizes", ",".join(map(str, args.sizes)), "--duration", str(args.duration),
        "--window-s", str(args.window_s), "--warmup", str(args.warmup),
        "--max-drop", str(args.max_drop),
    ])  # fmt: skip
    rb.raftmq_env = args.raftmq_env
    trials = []
    for size in rb.sizes:
        for name in brokers:
            t = run_bench.run_trial(name, size, rb, workroot, 1)
            trials.append(t)
            if t.get("stats"):
                label = f"sizes {run_bench._size(size):>6} {name}"
                print(win.verdict_line(label, t["stats"], args.max_drop), file=sys.stderr)
    rows = run_bench.summarize(trials, rb)
    print("\n=== sizes (bench.run_bench's load: 1 producer, 1 consumer, 1 queue) ===")
    run_bench.print_table(rows, trials, rb)
    return {"summary": rows, "trials": trials}


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", default="", help=f"comma-separated workloads of {', '.join(WORKLOADS)}")
    ap.add_argument("--brokers", default="raftmq,rabbitmq", help="raftmq, rabbitmq or both")
    ap.add_argument("--duration", type=float, default=180.0,
                    help="measured seconds of sustained load per throughput trial")
    ap.add_argument("--window-s", type=float, default=30.0, help="seconds per reported window")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before that")
    ap.add_argument("--quick", action="store_true",
                    help="--duration 20 --window-s 10 (unless given)")
    ap.add_argument("--sizes", default="100,4096,65536", help="body sizes of the sizes workload")
    ap.add_argument("--connections", type=int, default=IDLE_CONNECTIONS)
    ap.add_argument("--hold-s", type=float, default=10.0, help="idle connections held this long")
    ap.add_argument("--queues", type=int, default=DECLARE_QUEUES, help="declare-queues count")
    ap.add_argument("--max-drop", type=float, default=win.MAX_DROP)
    ap.add_argument("--raftmq-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra env for the RaftMQ node")
    ap.add_argument("--json", type=Path, help="JSON results (default bench/results/workloads-*)")
    args = ap.parse_args(argv)
    explicit = set(argv if argv is not None else sys.argv[1:])
    if args.quick:
        if not any(a.startswith("--duration") for a in explicit):
            args.duration = 20.0
        if not any(a.startswith("--window-s") for a in explicit):
            args.window_s = 10.0
    args.only = [w for w in args.only.split(",") if w] or list(WORKLOADS)
    bad = [w for w in args.only if w not in WORKLOADS]
    if bad:
        ap.error(f"unknown workload(s) {bad}; choose from {', '.join(WORKLOADS)}")
    args.brokers = [b for b in args.brokers.split(",") if b]
    if any(b not in BROKERS for b in args.brokers):
        ap.error("--brokers: raftmq and/or rabbitmq")
    args.sizes = [max(8, int(s)) for s in args.sizes.split(",") if s.strip()]
    args.raftmq_env = dict(kv.split("=", 1) for kv in args.raftmq_env)
    run_bench.whole_windows(ap, args)
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    if "rabbitmq" in args.brokers:
        ensure_installed()
    n_load = sum(1 for w in args.only if w in THROUGHPUT) + (
        len(args.sizes) if "sizes" in args.only else 0
    )
    typical = len(args.brokers) * (n_load * (args.duration + args.warmup + 15) + 2 * 60) / 60
    print(f"workloads {', '.join(args.only)}: {args.duration:.0f} s of load per throughput trial "
          f"in {args.window_s:.0f} s windows, typically ~{typical:.0f} min",
          file=sys.stderr)  # fmt: skip
    started = datetime.now()
    workroot = Path(tempfile.mkdtemp(prefix="raftmq-workloads-"))
    results: dict[str, Any] = {}
    interrupted = False
    try:
        for name in args.only:
            if name == "sizes":
                results[name] = run_sizes(args, args.brokers, workroot)
                continue
            trials = []
            for broker in args.brokers:  # alternating: a fresh broker per workload
                t = run_workload(name, broker, args, workroot)
                trials.append(t)
                if t.get("stats"):
                    print(win.verdict_line(f"{name} {broker}", t["stats"], args.max_drop),
                          file=sys.stderr)
            results[name] = {"trials": trials}
            print_workload(name, trials, args)
            sys.stdout.flush()
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: reporting the workloads done so far", file=sys.stderr)
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    path = args.json or run_bench.RESULTS_DIR / f"workloads-{started:%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "started": started.isoformat(timespec="seconds"),
        "versions": run_bench._versions(),
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "results": results,
    }
    path.write_text(json.dumps(doc, indent=2, default=str))
    print(f"\nresults: {path}")
    if interrupted:
        return 130
    failed = [
        f"{n} {t['broker']}" for n, r in results.items() for t in r.get("trials", [])
        if t.get("failed") or t.get("stalled")
    ]  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
