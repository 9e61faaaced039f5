"""RaftMQ vs RabbitMQ on 3-node clusters: the load of ``make bench``, clients on non-leader nodes.

    .venv/bin/python -m bench.run_bench_cluster [--sizes 100,4096] [--duration 180]
                                                [--window-s 30] [--latency-duration 90]
                                                [--runs 1] [--strict] [--json PATH]
                                                [--quick] [--only raftmq|rabbitmq] ...

Every run starts one fresh 3-node cluster per broker (the brokers alternate: which one goes first
changes from run to run) and on it, in this order:

1. idle RSS of every node;
2. throughput, per size: bench.loadgen's confirming producer (window 100) and acking consumer
   (prefetch 100) on a durable quorum queue (``x-queue-type: quorum``; RaftMQ accepts and ignores
   it, every RaftMQ queue is replicated), producer on one non-leader node, consumer on the other,
   for ``--duration`` s of sustained load on the same cluster, reported per ``--window-s`` window
   (bench.windows: rates, latency, the nodes' and the clients' CPU, the CPU seconds of other
   processes; per broker the median of the windows, slowest/fastest, first -> last change, a
   drop past ``--max-drop`` flagged; ``--strict``: a RaftMQ drop makes the exit status 3);
   RSS of every node sampled during the run and read right after it;
3. latency, per size: the same clients, the producer limited to ``--rate`` msg/s (1,000), still
   with confirms (window ``--rate-window``, so the window does not set the pace), for
   ``--latency-duration`` s, in windows too;
4. failover (while ``--failovers`` allows): the rate-limited producer publishes 100 B messages,
   ``--kill-after`` s into the measured window the leader is killed with SIGKILL, and we measure
   from the kill to the next confirm / delivery the clients receive (and to the first confirm /
   delivery of a message published after the kill). The clients are never on the killed node.
   Extra RaftMQ-only failover trials (fresh cluster each) run when ``--failovers`` > ``--runs``.

"Leader" is, for RaftMQ, the Raft leader (``GET /api/status`` -> ``raft.leader``) and, for
RabbitMQ 3.10, the node hosting the quorum queue's leader (``rabbitmqctl list_queues name
leader``); every RabbitMQ queue is declared through node 1 first, so its leader starts there.
Each trial uses its own queue, deleted afterwards. Rates are medians over windows (of all runs),
failover figures medians over trials; JSON with every trial and window goes to ``--json``
(default bench/results/cluster-<timestamp>.json). Every process started is stopped on exit, Ctrl-C or
error. All clocks are CLOCK_MONOTONIC, shared by every process on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pamqp import commands as cmd

from bench import windows as win
from bench.loadgen import Consumer, LeanClient, LoadConfig, LoadResult, run_load
from bench.run_bench import (
    RESULTS_DIR,
    RssSampler,
    _fmt,
    _interrupt,
    _median,
    _versions,
    whole_windows,
)
from harness.cluster import ClusterError, RaftMQCluster
from harness.procs import cpu_seconds, rss_bytes, system_busy_seconds
from harness.rabbitmq import RabbitMQCluster, ensure_installed
from harness.raftmq import REPO_ROOT

MiB = 2**20
N_NODES = 3
IDLE_SETTLE_S = 2.0
CLUSTER_SECRET = "bench"
BROKERS = ("raftmq", "rabbitmq")
TARGETS = {"ratio": 1.0, "lat_p50_ms": 5.0, "lat_p99_ms": 100.0, "failover_s": 2.0}


# --------------------------------------------------------------------------- clusters under test


async def _queue_op(cfg: LoadConfig, delete: bool) -> None:
    """Declare ``cfg.queue`` (as the loadgen does) through ``cfg.port``; then delete it if asked."""
    loop = asyncio.get_running_loop()
    client = LeanClient(cfg)
    await asyncio.wait_for(
        loop.create_connection(lambda: client, cfg.host, cfg.port), cfg.setup_timeout
    )
    try:
        await asyncio.wait_for(client.setup(), cfg.setup_timeout)
        if delete:
            client.send(cmd.Queue.Delete(queue=cfg.queue))
            await asyncio.wait_for(client.expect(cmd.Queue.DeleteOk), cfg.setup_timeout)
    finally:
        await client.close()
        if client.transport is not None:
            client.transport.close()


def queue_op(cfg: LoadConfig, delete: bool = False) -> None:
    asyncio.run(_queue_op(cfg, delete))


async def _drain(cfg: LoadConfig, idle_s: float, limit_s: float) -> list[int]:
    consumer = Consumer(replace(cfg, record=True))
    consumer.t_begin, consumer.t_end = 0, 2**63  # count everything
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(
        loop.create_connection(lambda: consumer, cfg.host, cfg.port), cfg.setup_timeout
    )
    try:
        await asyncio.wait_for(consumer.setup(), cfg.setup_timeout)
        deadline = time.monotonic() + limit_s
        seen, last = -1, time.monotonic()
        while time.monotonic() < deadline and not consumer.closed.done():
            await asyncio.sleep(0.2)
            if consumer.consumed != seen:
                seen, last = consumer.consumed, time.monotonic()
            elif time.monotonic() - last >= idle_s:
                break
    finally:
        await consumer.close()
        if consumer.transport is not None:
            consumer.transport.close()
    return [p for p, _ in consumer.times]


def drain(cfg: LoadConfig, idle_s: float = 3.0, limit_s: float = 60.0) -> list[int]:
    """Consume (and ack) what is left in ``cfg.queue`` through ``cfg.port`` until nothing came for
    ``idle_s``; returns the publish timestamps of the messages received."""
    return asyncio.run(_drain(cfg, idle_s, limit_s))


class RaftMQBench:
    """harness.cluster.RaftMQCluster: three RaftMQ nodes on loopback, Raft secret set."""

    name = "raftmq"

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.cluster = RaftMQCluster(workdir, n=N_NODES, extra_env=env, secret=CLUSTER_SECRET)
        self.nodes = self.cluster.nodes

    @property
    def ports(self) -> list[int]:
        return [n.amqp_port for n in self.nodes]

    def labels(self) -> list[str]:
        return [n.node_id for n in self.nodes]

    def start(self, timeout: float = 60) -> None:
        self.cluster.start(timeout=timeout)  # stops itself when it fails

    def current_leader(self, cfg: LoadConfig | None = None, timeout: float = 2.0) -> int | None:
        """Index of the Raft leader every running node agrees on (``raft.leader`` of
        ``GET /api/status``), or None."""
        try:
            return self.nodes.index(self.cluster.leader(timeout=timeout))
        except (ClusterError, ValueError):
            return None

    def prepare_queue(self, cfg: LoadConfig) -> int:
        """Declare the queue; return the index of the leader (the node the clients avoid)."""
        lead = self.current_leader(timeout=15)
        if lead is None:
            raise RuntimeError(f"no agreed Raft leader\n{self.cluster.describe()}")
        queue_op(replace(cfg, port=self.ports[lead]))
        return lead

    def pids(self) -> list[int | None]:
        return [n.pid if n.is_running() else None for n in self.nodes]

    def kill(self, i: int) -> int:
        """SIGKILL node ``i``'s process group; returns the monotonic ns just before the signal."""
        node = self.nodes[i]
        assert node.proc is not None
        t = time.monotonic_ns()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.proc.pid, signal.SIGKILL)
        self.cluster.kill(node)  # the rest of the group, and reap
        return t

    def log_tail(self, i: int, lines: int = 30) -> str:
        return self.nodes[i].log_tail(lines)

    def log_paths(self) -> list[str]:
        return [str(n.log_path) for n in self.nodes]

    def stop(self) -> None:
        self.cluster.stop()


class RabbitMQBench:
    """harness.rabbitmq.RabbitMQCluster (3 nodes, quorum queues)."""

    name = "rabbitmq"

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.cluster = RabbitMQCluster(workdir / "rabbitmq", n=N_NODES)
        self.nodes = self.cluster.nodes

    @property
    def ports(self) -> list[int]:
        return [n.amqp_port for n in self.nodes]

    def labels(self) -> list[str]:
        return [f"node{i + 1}" for i in range(N_NODES)]

    def start(self, timeout: float = 120) -> None:
        self.cluster.start(timeout=timeout)  # stops itself when it fails

    def leader_of(self, queue: str) -> int | None:
        for node in self.nodes:  # ask a node that is still running
            if node.proc is None or node.proc.poll() is not None:
                continue
            rows = json.loads(node.ctl("list_queues", "name", "leader", "--formatter", "json"))
            for row in rows:
                if row.get("name") == queue:
                    names = [n.nodename for n in self.nodes]
                    leader = row.get("leader")
                    return names.index(leader) if leader in names else None
            return None
        return None

    def prepare_queue(self, cfg: LoadConfig) -> int:
        queue_op(replace(cfg, port=self.ports[0]))  # through node 1: its leader starts there
        deadline = time.monotonic() + 15
        while (lead := self.leader_of(cfg.queue)) is None:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no leader for quorum queue {cfg.queue}")
            time.sleep(0.5)
        return lead

    def current_leader(self, cfg: LoadConfig) -> int | None:
        try:
            return self.leader_of(cfg.queue)
        except (RuntimeError, ValueError, subprocess.TimeoutExpired):
            return None

    def pids(self) -> list[int | None]:
        return [n.beam_pid() if n.proc and n.proc.poll() is None else None for n in self.nodes]

    def kill(self, i: int) -> int:
        proc = self.nodes[i].proc
        assert proc is not None
        t = time.monotonic_ns()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.nodes[i].kill()  # reap the group and anything that left it (erl_child_setup)
        return t

    def log_tail(self, i: int, lines: int = 30) -> str:
        return self.nodes[i].log_tail(lines)

    def log_paths(self) -> list[str]:
        return [str(n.base_dir / "log") for n in self.nodes]

    def stop(self) -> None:
        self.cluster.stop()


Cluster = RaftMQBench | RabbitMQBench


def make_cluster(name: str, workdir: Path, args: argparse.Namespace) -> Cluster:
    if name == "raftmq":
        return RaftMQBench(workdir, args.raftmq_env)
    return RabbitMQBench(workdir, {})


# --------------------------------------------------------------------------- trials


def _clients(lead: int) -> tuple[int, int]:
    others = [i for i in range(N_NODES) if i != lead]
    return others[0], others[1]


def add_quiet_args(ap: argparse.ArgumentParser, before: str, wait_s: float) -> None:
    """``--quiet-wait`` and ``--quiet-cores``, which :func:`wait_quiet` reads; ``before``
    names what waits ("each trial")."""
    ap.add_argument("--quiet-wait", type=float, default=wait_s,
                    help=f"before {before}, wait up to this many s for other processes to calm "
                    "down (they share the CPUs)")  # fmt: skip
    ap.add_argument("--quiet-cores", type=float, default=0.3,
                    help="'calm' = other processes use fewer cores than this")  # fmt: skip


def wait_quiet(args: argparse.Namespace, own: list[int | None]) -> dict[str, float]:
    """Wait (at most ``--quiet-wait`` s) until processes other than the cluster's nodes use less
    than ``--quiet-cores`` cores, measured over 1 s; returns what was seen, for the record."""
    deadline = time.monotonic() + args.quiet_wait
    t0 = time.monotonic()
    while True:
        cpu0 = sum(cpu_seconds(p) for p in own if p)
        sys0, w0 = system_busy_seconds(), time.monotonic()
        time.sleep(1.0)
        wall = time.monotonic() - w0
        busy = (
            system_busy_seconds() - sys0 - (sum(cpu_seconds(p) for p in own if p) - cpu0)
        ) / wall
        if busy < args.quiet_cores or time.monotonic() >= deadline:
            return {"waited_s": round(time.monotonic() - t0, 1), "other_cpu_before": round(busy, 2)}


def _rss_mib(pids: list[int | None]) -> list[float | None]:
    return [round(rss_bytes(p) / MiB, 1) if p else None for p in pids]


def load_trial(cluster: Cluster, kind: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    """A throughput (``kind`` == "throughput") or fixed-rate latency ("latency") trial."""
    rate = args.rate if kind == "latency" else 0.0
    duration = args.latency_duration if kind == "latency" else args.duration
    cfg = LoadConfig(
        size=size, duration=duration, warmup=args.warmup, queue=f"{kind}-{size}",
        queue_type="quorum", rate=rate, window=args.rate_window if rate else 100,
        interval=min(args.window_s, duration),
    )  # fmt: skip
    trial: dict[str, Any] = {"kind": kind, "size": size, "rate": rate, "window": cfg.window}
    lead = cluster.prepare_queue(cfg)
    prod, cons = _clients(lead)
    trial.update(leader=lead, producer_node=prod, consumer_node=cons)
    cfg = replace(cfg, port=cluster.ports[prod], consumer_port=cluster.ports[cons])
    pids = cluster.pids()
    trial["quiet"] = wait_quiet(args, pids)
    samplers = [RssSampler(p) for p in pids if p]
    cpu0 = [cpu_seconds(p) if p else 0.0 for p in pids]
    sys0, wall0 = system_busy_seconds(), time.monotonic()
    cpu = win.CpuWindows(cluster.pids, cfg.interval)
    with contextlib.ExitStack() as stack:
        for s in samplers:
            stack.enter_context(s)
        res = run_load(cfg, on_start=cpu.start)
    cpu_windows = cpu.finish()
    wall = time.monotonic() - wall0
    trial["rss_after_mib"] = _rss_mib(pids)
    trial["rss_peak_mib"] = [round(s.peak / MiB, 1) for s in samplers]
    node_cpu = [
        round(((cpu_seconds(p) if p else 0.0) - c) / wall, 3)
        for p, c in zip(pids, cpu0, strict=True)
    ]
    trial["node_cpu"] = node_cpu
    system = (system_busy_seconds() - sys0) / wall
    trial["other_cpu"] = round(system - sum(node_cpu) - res.producer_cpu - res.consumer_cpu, 3)
    trial.update(res.as_dict())
    trial["windows"] = win.merge(res.windows, cpu_windows)
    trial["stats"] = win.window_stats(trial["windows"], "consumed_per_s", args.max_drop)
    trial["leader_after"] = cluster.current_leader(cfg)
    if trial["leader_after"] != lead:
        trial.setdefault("notes", []).append(
            f"leader moved from node {lead + 1} to {trial['leader_after']} during the trial"
        )
    if res.errors:
        trial["log_tails"] = {str(i + 1): cluster.log_tail(i) for i in range(N_NODES)}
    with contextlib.suppress(Exception):  # a leftover queue only costs memory
        queue_op(replace(cfg, port=cluster.ports[prod]), delete=True)
    return trial


def _first_after(pairs: list[tuple[int, int]], kill: int, by_publish: bool) -> float | None:
    """ms from ``kill`` to the first (publish, receive) pair received after it (or, with
    ``by_publish``, the first whose message was published after it)."""
    times = [r for p, r in pairs if (p >= kill if by_publish else r > kill)]
    return round((min(times) - kill) / 1e6, 1) if times else None


def failover_trial(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    size = min(args.sizes)
    observe = args.failover_observe
    cfg = LoadConfig(
        size=size, duration=args.kill_after + observe, warmup=2.0, queue="failover",
        queue_type="quorum", rate=args.rate, window=args.rate_window, record=True,
    )  # fmt: skip
    trial: dict[str, Any] = {"kind": "failover", "size": size, "rate": args.rate}
    lead = cluster.prepare_queue(cfg)
    prod, cons = _clients(lead)
    trial.update(leader=lead, producer_node=prod, consumer_node=cons)
    cfg = replace(cfg, port=cluster.ports[prod], consumer_port=cluster.ports[cons])
    trial["quiet"] = wait_quiet(args, cluster.pids())
    killed: dict[str, Any] = {}
    timers: list[threading.Timer] = []

    def kill() -> None:
        # RaftMQ: check the leader again right before (cheap); RabbitMQ: rabbitmqctl takes ~0.5 s
        now_lead = cluster.current_leader(cfg) if isinstance(cluster, RaftMQBench) else lead
        if now_lead is not None and now_lead != lead:
            killed["error"] = f"leader moved to node {now_lead + 1} before the kill; not killed"
            return
        killed["at"] = cluster.kill(lead)

    def on_start(t_begin: int, t_end: int) -> None:
        killed["window"] = (t_begin, t_end)
        delay = (t_begin - time.monotonic_ns()) / 1e9 + args.kill_after
        timer = threading.Timer(max(delay, 0.0), kill)
        timer.daemon = True
        timers.append(timer)
        timer.start()

    try:
        res: LoadResult = run_load(cfg, on_start=on_start)
    finally:
        for t in timers:
            t.cancel()
            t.join(timeout=30)
    trial.update(res.as_dict())
    if "at" not in killed:
        trial["errors"] = [*trial.get("errors", []), killed.get("error", "the kill did not happen")]
        return trial
    k = killed["at"]
    t_begin, t_end = killed["window"]
    confirms, delivers = res.confirm_times or [], res.deliver_times or []
    trial["kill_offset_s"] = round((k - t_begin) / 1e9, 3)
    trial["kill_at_ns"] = k  # CLOCK_MONOTONIC, for callers that watched the cluster meanwhile
    trial["next_confirm_ms"] = _first_after(confirms, k, by_publish=False)
    trial["next_delivery_ms"] = _first_after(delivers, k, by_publish=False)
    trial["first_new_confirm_ms"] = _first_after(confirms, k, by_publish=True)
    trial["first_new_delivery_ms"] = _first_after(delivers, k, by_publish=True)
    trial["confirms_before_kill"] = sum(1 for _, r in confirms if r <= k)
    trial["confirms_after_kill"] = sum(1 for _, r in confirms if r > k)
    trial["deliveries_after_kill"] = sum(1 for _, r in delivers if r > k)
    # Every message published in the window and confirmed must reach the consumer: in the window,
    # or later (drained from the queue once the clients are gone); confirmed and never delivered
    # is a lost message.
    confirmed = {p for p, _ in confirms if p >= t_begin}
    seen: set[int] = set()
    dups = 0
    for p, _ in delivers:
        dups += p in seen
        seen.add(p)
    trial["confirmed_not_delivered_in_window"] = len(confirmed - seen)
    try:
        late = drain(replace(cfg, port=cluster.ports[cons]))
    except Exception as exc:
        trial.setdefault("errors", []).append(f"drain after the trial: {exc!r}")
        late = []
    late_set = {p for p in late if p >= t_begin}
    dups += len(late_set & seen)
    trial["delivered_after_window"] = len(confirmed & late_set)
    trial["lost"] = len(confirmed - seen - late_set)
    trial["duplicate_deliveries"] = dups
    # confirm latency of messages published in the second after the kill vs before it
    after = sorted(r - p for p, r in confirms if k <= p < k + 1_000_000_000)
    trial["new_leader"] = None
    with contextlib.suppress(Exception):
        trial["new_leader"] = cluster.current_leader(cfg)
    trial["confirms_published_1s_after_kill"] = len(after)
    trial["log_tails"] = {str(i + 1): cluster.log_tail(i, 25) for i in range(N_NODES) if i != lead}
    return trial


def run_cluster(
    name: str, args: argparse.Namespace, workroot: Path, run: int, tasks: list[str],
    trials: list[dict[str, Any]], log: Any,
) -> None:  # fmt: skip
    """One fresh cluster of ``name``; ``tasks`` among "throughput", "latency", "failover"."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-r{run}-", dir=workroot))
    cluster = make_cluster(name, workdir, args)
    base: dict[str, Any] = {"broker": name, "run": run}
    try:
        t0 = time.monotonic()
        try:
            cluster.start()
        except Exception as exc:
            trials.append({**base, "kind": "start", "stalled": True, "errors": [f"{exc}"[:4000]]})
            print(f"[run {run}] {name}: cluster did not start: {str(exc)[:500]}", file=log)
            return
        startup = round(time.monotonic() - t0, 2)
        time.sleep(IDLE_SETTLE_S)
        idle = _rss_mib(cluster.pids())
        trials.append({**base, "kind": "idle", "startup_s": startup, "rss_idle_mib": idle})
        print(f"[run {run}] {name}: cluster up in {startup:.1f}s, idle RSS {idle} MiB", file=log)
        steps: list[tuple[str, int]] = []
        for kind in ("throughput", "latency"):
            if kind in tasks:
                steps += [(kind, s) for s in args.sizes]
        if "failover" in tasks:
            steps.append(("failover", min(args.sizes)))
        for kind, size in steps:
            try:
                if kind == "failover":
                    t = failover_trial(cluster, args)
                else:
                    t = load_trial(cluster, kind, size, args)
            except Exception as exc:  # a broken trial is a result too
                t = {"kind": kind, "size": size, "stalled": True,
                     "errors": [f"{type(exc).__name__}: {exc}"[:2000]]}  # fmt: skip
            t = {**base, **t}
            trials.append(t)
            print(f"[run {run}] {name:<8} {_one_line(t)}", file=log)
    finally:
        cluster.stop()
        if args.keep:
            print(f"  {name} logs: {cluster.log_paths()}", file=log)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _one_line(t: dict[str, Any]) -> str:
    err = f"  ERRORS: {[e[:200] for e in t['errors']]}" if t.get("errors") else ""
    where = (
        f"[leader n{t['leader'] + 1}, producer n{t['producer_node'] + 1}, "
        f"consumer n{t['consumer_node'] + 1}]"
        if "leader" in t
        else ""
    )
    if t["kind"] == "failover":
        return (
            f"failover {where}: next confirm {_fmt(t.get('next_confirm_ms'), '.0f')} ms, "
            f"next delivery {_fmt(t.get('next_delivery_ms'), '.0f')} ms, first confirm of a "
            f"new message {_fmt(t.get('first_new_confirm_ms'), '.0f')} ms; "
            f"confirmed: {t.get('delivered_after_window', '-')} delivered only after the window, "
            f"{t.get('lost', '-')} lost" + err
        )
    return (
        f"{t['kind']:<10} {t['size']:>5} B {where}: {t.get('published_per_s', 0):>8,.0f} pub/s "
        f"{t.get('consumed_per_s', 0):>8,.0f} cons/s, e2e p50/p99 "
        f"{_fmt(t.get('e2e_p50_ms'), '.1f')}/{_fmt(t.get('e2e_p99_ms'), '.1f')} ms, confirm "
        f"p50/p99 {_fmt(t.get('confirm_p50_ms'), '.1f')}/{_fmt(t.get('confirm_p99_ms'), '.1f')} "
        f"ms, RSS after {t.get('rss_after_mib')}, other load {_fmt(t.get('other_cpu'), '.2f')}"
        + _windows_note(t.get("stats"))
        + err
    )


def _windows_note(st: dict[str, Any] | None) -> str:
    if not st:
        return ""
    drop = "  DROP" if st.get("drop") else ""
    change = st.get("first_to_last")
    return (
        f"; {st['windows']} windows: slowest/fastest {_fmt(st.get('slowest_vs_fastest'), '.2f')}, "
        f"first->last {'-' if change is None else f'{change * 100:+.0f} %'}{drop}"
    )


# --------------------------------------------------------------------------- summary


LOAD_METRICS = (
    "published_per_s", "consumed_per_s", "confirm_p50_ms", "confirm_p99_ms", "e2e_p50_ms",
    "e2e_p99_ms", "max_confirm_gap_ms", "max_deliver_gap_ms", "other_cpu",
)  # fmt: skip
FAILOVER_METRICS = (
    "next_confirm_ms",
    "next_delivery_ms",
    "first_new_confirm_ms",
    "first_new_delivery_ms",
)


def _per_node_median(lists: list[list[float | None]]) -> list[float | None]:
    if not lists:
        return []
    return [_median([lst[i] for lst in lists if i < len(lst)]) for i in range(N_NODES)]


def summarize(trials: list[dict[str, Any]], max_drop: float = win.MAX_DROP) -> dict[str, Any]:
    out: dict[str, Any] = {"load": [], "failover": [], "idle": []}
    for broker in BROKERS:
        idle = [t for t in trials if t["broker"] == broker and t["kind"] == "idle"]
        if idle:
            out["idle"].append({
                "broker": broker, "runs": len(idle),
                "startup_s": _median([t["startup_s"] for t in idle]),
                "rss_idle_mib": _per_node_median([t["rss_idle_mib"] for t in idle]),
            })  # fmt: skip
    keys = sorted(
        {(t["kind"], t["size"]) for t in trials if t["kind"] in ("throughput", "latency")}
    )
    for kind, size in sorted(keys, key=lambda k: (k[0] != "throughput", k[1])):
        for broker in BROKERS:
            ts = [
                t for t in trials if (t["broker"], t["kind"], t.get("size")) == (broker, kind, size)
            ]
            if not ts:
                continue
            row: dict[str, Any] = {"kind": kind, "size": size, "broker": broker, "runs": len(ts)}
            for m in LOAD_METRICS:
                default = 0.0 if m.endswith("_per_s") else None
                row[m] = _median([t.get(m, default) for t in ts])
            row["rss_after_mib"] = _per_node_median([t.get("rss_after_mib", []) for t in ts])
            row["rss_peak_mib"] = _per_node_median([t.get("rss_peak_mib", []) for t in ts])
            row["node_cpu"] = _per_node_median([t.get("node_cpu", []) for t in ts])
            row["errors"] = sorted({e[:300] for t in ts for e in t.get("errors", [])})
            # rates: medians of the windows of every run (latency percentiles stay per trial:
            # over every message of the trial, medians over runs)
            st = win.pooled_stats(ts, "consumed_per_s", max_drop)
            row["window_stats"] = st
            if st["windows"]:
                row["published_per_s"] = st["confirmed_per_s"]
                row["consumed_per_s"] = st["consumed_per_s"]
            out["load"].append(row)
    for row in out["load"]:
        if row["broker"] == "raftmq":
            other = next((r for r in out["load"] if r["broker"] == "rabbitmq"
                          and (r["kind"], r["size"]) == (row["kind"], row["size"])), None)  # fmt: skip
            if other:
                for m in ("published_per_s", "consumed_per_s"):
                    if other[m]:
                        row[m.replace("_per_s", "_vs_rabbitmq")] = row[m] / other[m]
    for broker in BROKERS:
        ts = [t for t in trials if t["broker"] == broker and t["kind"] == "failover"]
        if not ts:
            continue
        row = {"broker": broker, "trials": len(ts)}
        for m in FAILOVER_METRICS:
            vals = [t.get(m) for t in ts]
            nums = [v for v in vals if v is not None]
            row[m] = {
                "median": statistics.median(nums) if nums else None,
                "max": max(nums) if nums else None,
                "missing": len(vals) - len(nums),  # no confirm / delivery in the window at all
            }
        row["late"] = sum(t.get("delivered_after_window", 0) for t in ts)
        row["lost"] = sum(t.get("lost", 0) for t in ts)
        row["duplicate_deliveries"] = sum(t.get("duplicate_deliveries", 0) for t in ts)
        row["errors"] = sorted({e[:300] for t in ts for e in t.get("errors", [])})
        out["failover"].append(row)
    return out


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n // 1024} KiB"


def _nodes(vals: list[float | None]) -> str:
    return "/".join(_fmt(v, ".0f") for v in vals) if vals else "-"


def print_windows(
    summary: dict[str, Any], trials: list[dict[str, Any]], kind: str, args: argparse.Namespace,
    out: Any,
) -> None:  # fmt: skip
    """bench.windows' table for the ``kind`` trials: a row per broker x window (x run)."""
    groups = []
    for r in summary["load"]:
        if r["kind"] != kind or not r.get("window_stats", {}).get("windows"):
            continue
        ws = []
        for t in trials:
            if (t["broker"], t["kind"], t.get("size")) == (r["broker"], kind, r["size"]):
                tag = f" r{t['run']}" if args.runs > 1 else ""
                ws += [{**w, "tag": tag} for w in t.get("windows", [])]
        groups.append((f"{_size(r['size']):>6} {r['broker']}", ws, r["window_stats"]))
    if groups:
        win.print_windows(groups, out, args.max_drop)


def print_report(
    summary: dict[str, Any], args: argparse.Namespace, out: Any = sys.stdout,
    trials: list[dict[str, Any]] | None = None,
) -> None:  # fmt: skip
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"3-node clusters on 127.0.0.1; clients on the two non-leader nodes; quorum queue; "
      f"{os.cpu_count()} CPUs shared by everything; rates: medians of "
      f"{args.window_s:.0f} s windows")  # fmt: skip
    p()
    p(f"1. Throughput (1 producer with confirms, window 100; 1 consumer, manual acks, prefetch "
      f"100), {args.duration:.0f} s of sustained load per size on one cluster")  # fmt: skip
    print_windows(summary, trials or [], "throughput", args, out)
    p()
    head = (f"{'size':>6}  {'broker':<9} {'pub msg/s':>10} {'cons msg/s':>10}  "
            f"{'confirm p50/p99 ms':>18}  {'e2e p50/p99 ms':>16}  {'node CPU':>14}  "
            f"{'RSS after (peak) MiB per node':<30}")  # fmt: skip
    p(head)
    p("-" * len(head))
    for r in summary["load"]:
        if r["kind"] != "throughput":
            continue
        p(f"{_size(r['size']):>6}  {r['broker']:<9} {_fmt(r['published_per_s'], ',.0f'):>10} "
          f"{_fmt(r['consumed_per_s'], ',.0f'):>10}  "
          f"{_fmt(r['confirm_p50_ms'], '.1f'):>8} / {_fmt(r['confirm_p99_ms'], '.1f'):<7}  "
          f"{_fmt(r['e2e_p50_ms'], '.1f'):>7} / {_fmt(r['e2e_p99_ms'], '.1f'):<6}  "
          f"{'/'.join(_fmt(c, '.2f') for c in r['node_cpu']):>14}  "
          f"{_nodes(r['rss_after_mib'])} ({_nodes(r['rss_peak_mib'])})")  # fmt: skip
    for r in summary["load"]:
        if r["kind"] == "throughput" and "consumed_vs_rabbitmq" in r:
            p(f"   RaftMQ/RabbitMQ at {_size(r['size'])}: published "
              f"{r.get('published_vs_rabbitmq', 0):.2f}x, consumed {r['consumed_vs_rabbitmq']:.2f}x"
              f"   (target >= {TARGETS['ratio']:.1f}x)")  # fmt: skip
    p()
    p(f"2. Latency at {args.rate:,.0f} msg/s (rate-limited producer with confirms, window "
      f"{args.rate_window}), {args.latency_duration:.0f} s per size; e2e = publish -> deliver; "
      f"the summary's percentiles are over every message of a trial")  # fmt: skip
    print_windows(summary, trials or [], "latency", args, out)
    p()
    head = (f"{'size':>6}  {'broker':<9} {'pub msg/s':>10} {'e2e p50 ms':>10} {'e2e p99 ms':>10}  "
            f"{'confirm p50/p99 ms':>18}  {'longest pause ms':>16}")  # fmt: skip
    p(head)
    p("-" * len(head))
    for r in summary["load"]:
        if r["kind"] != "latency":
            continue
        pause = max((v for v in (r["max_confirm_gap_ms"], r["max_deliver_gap_ms"]) if v is not None),
                    default=None)  # fmt: skip
        p(f"{_size(r['size']):>6}  {r['broker']:<9} {_fmt(r['published_per_s'], ',.0f'):>10} "
          f"{_fmt(r['e2e_p50_ms'], '.1f'):>10} {_fmt(r['e2e_p99_ms'], '.1f'):>10}  "
          f"{_fmt(r['confirm_p50_ms'], '.1f'):>8} / {_fmt(r['confirm_p99_ms'], '.1f'):<7}  "
          f"{_fmt(pause, '.0f'):>16}")  # fmt: skip
    p(
        f"   targets: e2e p50 <= {TARGETS['lat_p50_ms']:.0f} ms, p99 <= {TARGETS['lat_p99_ms']:.0f} ms"
    )
    p()
    p(f"3. Failover: kill -9 of the leader while publishing {args.rate:,.0f} msg/s of "
      f"{_size(min(args.sizes))}; time from the kill (ms), median / max over trials")  # fmt: skip
    head = (f"{'broker':<9} {'n':>2}  {'next confirm':>14}  {'next delivery':>14}  "
            f"{'1st new confirm':>15}  {'1st new deliv.':>14}  {'late':>5} {'lost':>4} {'dup':>4}")  # fmt: skip
    p(head)
    p("-" * len(head))
    for r in summary["failover"]:

        def mm(m: str, r: dict[str, Any] = r) -> str:
            d = r[m]
            s = f"{_fmt(d['median'], '.0f')} / {_fmt(d['max'], '.0f')}"
            return s + (f" ({d['missing']} none)" if d["missing"] else "")

        p(f"{r['broker']:<9} {r['trials']:>2}  {mm('next_confirm_ms'):>14}  "
          f"{mm('next_delivery_ms'):>14}  {mm('first_new_confirm_ms'):>15}  "
          f"{mm('first_new_delivery_ms'):>14}  {r['late']:>5} {r['lost']:>4} "
          f"{r['duplicate_deliveries']:>4}")  # fmt: skip
    p(
        f"   '1st new' = first confirm / delivery of a message published after the kill; late = "
        f"confirmed, delivered only after the {args.kill_after + args.failover_observe:.0f} s window "
        f"(drained afterwards); lost = confirmed, never delivered; target <= "
        f"{TARGETS['failover_s']:.0f} s"
    )
    p()
    p("4. RSS per node (MiB)")
    for r in summary["idle"]:
        p(f"   {r['broker']:<9} idle {_nodes(r['rss_idle_mib'])}   (cluster start "
          f"{_fmt(r['startup_s'], '.1f')} s)")  # fmt: skip
    for r in summary["load"]:
        if r["kind"] == "throughput":
            p(f"   {r['broker']:<9} after throughput at {_size(r['size'])}: "
              f"{_nodes(r['rss_after_mib'])} (peak {_nodes(r['rss_peak_mib'])})")  # fmt: skip
    p()
    p("Targets (RaftMQ):")
    for line in target_lines(summary):
        p(f"   {line}")
    for r in summary["load"] + summary["failover"]:
        for e in r.get("errors", [])[:3]:
            label = f"{r.get('kind', 'failover')} {_size(r['size'])}" if "size" in r else "failover"
            p(f"! {r['broker']} {label}: {e}")
    worst = max((r.get("other_cpu") or 0.0 for r in summary["load"]), default=0.0)
    if worst > 0.25:
        p(f"WARNING: other processes used ~{worst:.2f} cores during trials: noisy numbers")


def target_lines(summary: dict[str, Any]) -> list[str]:
    lines = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("MET" if ok else "MISSED")

    for r in summary["load"]:
        if r["broker"] != "raftmq":
            continue
        if r["kind"] == "throughput":
            ratio = r.get("consumed_vs_rabbitmq")
            lines.append(f"{verdict(None if ratio is None else ratio >= TARGETS['ratio'])}: "
                         f"msg/s at {_size(r['size'])} = {_fmt(ratio, '.2f')}x RabbitMQ (>= 1.0x)")  # fmt: skip
        else:
            p50, p99 = r["e2e_p50_ms"], r["e2e_p99_ms"]
            ok = None if p50 is None or p99 is None else (
                p50 <= TARGETS["lat_p50_ms"] and p99 <= TARGETS["lat_p99_ms"])  # fmt: skip
            lines.append(f"{verdict(ok)}: latency at {_size(r['size'])} p50 {_fmt(p50, '.1f')} ms "
                         f"(<= 5), p99 {_fmt(p99, '.1f')} ms (<= 100)")  # fmt: skip
    for r in summary["failover"]:
        if r["broker"] != "raftmq":
            continue
        # "next confirm" may be a message committed just before the kill whose confirm was still
        # on its way; the first confirm of a message published after the kill is the outage
        d, dd = r["first_new_confirm_ms"], r["first_new_delivery_ms"]
        worst = None if d["missing"] or d["max"] is None else d["max"]
        ok = (
            None
            if d["max"] is None
            else (not d["missing"] and d["max"] <= TARGETS["failover_s"] * 1000)
        )
        lines.append(f"{verdict(ok)}: failover, kill -> first confirm of a new message: median "
                     f"{_fmt(d['median'], '.0f')} ms, max {_fmt(worst, '.0f')} ms over "
                     f"{r['trials']} (<= 2000 ms); -> first delivery of one: median "
                     f"{_fmt(dd['median'], '.0f')} ms, max {_fmt(dd['max'], '.0f')} ms")  # fmt: skip
    return lines


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="100,4096", help="message body sizes, comma-separated")
    ap.add_argument("--duration", type=float, default=180.0,
                    help="measured seconds of sustained throughput load per size, on one cluster "
                    "(rounded to whole windows)")  # fmt: skip
    ap.add_argument("--window-s", type=float, default=30.0, help="seconds per reported window")
    ap.add_argument("--latency-duration", type=float, default=90.0,
                    help="measured seconds of each fixed-rate latency trial")  # fmt: skip
    ap.add_argument("--max-drop", type=float, default=win.MAX_DROP,
                    help="flag a first -> last window drop larger than this fraction")  # fmt: skip
    ap.add_argument("--strict", action="store_true",
                    help="exit status 3 when a RaftMQ trial dropped more than --max-drop")  # fmt: skip
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before that")
    ap.add_argument("--runs", type=int, default=1,
                    help="clusters per broker; medians over all their windows")  # fmt: skip
    ap.add_argument("--rate", type=float, default=1000.0, help="msg/s of the latency/failover load")
    ap.add_argument("--rate-window", type=int, default=1000,
                    help="unconfirmed messages allowed in flight at that rate")  # fmt: skip
    ap.add_argument("--failovers", type=int, default=3,
                    help="RaftMQ failover trials (one per run; more on fresh clusters); "
                    "RabbitMQ gets one per run up to this many")  # fmt: skip
    ap.add_argument("--kill-after", type=float, default=3.0,
                    help="seconds into the failover window when the leader is killed")  # fmt: skip
    ap.add_argument("--failover-observe", type=float, default=9.0,
                    help="seconds the failover window lasts after the kill")  # fmt: skip
    add_quiet_args(ap, "each trial", 10.0)
    ap.add_argument("--quick", action="store_true",
                    help="smoke check: 1 run, 100 B only, 2 x 5 s windows per trial, failover "
                    "once")  # fmt: skip
    ap.add_argument("--only", choices=BROKERS, help="run one broker only")
    ap.add_argument("--raftmq-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra env for RaftMQ nodes")  # fmt: skip
    ap.add_argument("--keep", action="store_true", help="keep broker data and logs")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the JSON results")
    ap.add_argument("--json", type=Path, help="JSON results file (default: in --out, timestamped)")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.duration, args.warmup, args.sizes, args.failovers = 1, 10.0, 1.0, "100", 1
        args.window_s, args.latency_duration = 5.0, 10.0
    whole_windows(ap, args)
    if args.latency_duration <= 0:
        ap.error("--latency-duration must be > 0")
    args.sizes = [max(8, int(s)) for s in str(args.sizes).split(",") if s.strip()]
    args.raftmq_env = dict(kv.split("=", 1) for kv in args.raftmq_env)
    if args.runs < 1 or args.rate <= 0:
        ap.error("--runs must be >= 1 and --rate > 0")
    return args


def _git_state() -> dict[str, Any]:
    def run(*a: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO_ROOT), *a], capture_output=True,
                                  text=True, timeout=10).stdout.strip()  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return ""

    dirty = [ln[3:] for ln in run("status", "--porcelain", "--untracked-files=no").splitlines()]
    return {"repo": str(REPO_ROOT), "head": run("rev-parse", "HEAD"), "modified_files": dirty}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    brokers = [args.only] if args.only else list(BROKERS)
    if "rabbitmq" in brokers:
        ensure_installed()
    trial_s = 2 * args.warmup + args.duration + args.latency_duration + 16
    per_run = len(args.sizes) * trial_s + args.kill_after + args.failover_observe + 15
    extra = max(0, args.failovers - args.runs) if "raftmq" in brokers else 0
    est = args.runs * (per_run * len(brokers) + 30) + extra * 30
    print(f"{args.runs} run(s) x {len(brokers)} broker(s), typically ~{est / 60:.0f} min",
          file=sys.stderr)  # fmt: skip
    workroot = Path(tempfile.mkdtemp(prefix="raftmq-bench-cluster-"))
    started = datetime.now()
    trials: list[dict[str, Any]] = []
    interrupted = False
    try:
        for run in range(1, args.runs + 1):
            order = brokers if run % 2 else brokers[::-1]  # alternate who goes first
            for name in order:
                tasks = ["throughput", "latency"]
                if run <= args.failovers:
                    tasks.append("failover")
                run_cluster(name, args, workroot, run, tasks, trials, sys.stderr)
        for i in range(extra):
            run_cluster("raftmq", args, workroot, args.runs + i + 1, ["failover"], trials,
                        sys.stderr)  # fmt: skip
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: reporting the trials done so far", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(workroot, ignore_errors=True)
    summary = summarize(trials, args.max_drop)
    print()
    print_report(summary, args, trials=trials)
    path = args.json or args.out / f"cluster-{started:%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now().isoformat(timespec="seconds"),
        "versions": _versions(),
        "git": _git_state(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        | {
            "nodes": N_NODES,
            "load": "throughput: 1 producer (confirms, window 100, persistent, default exchange), "
            "1 consumer (manual ack each, prefetch 100), durable quorum queue, producer and "
            "consumer on the two non-leader nodes; latency/failover: same, producer limited to "
            "--rate msg/s with window --rate-window",
        },
        "targets": TARGETS,
        "summary": summary,
        "target_verdicts": target_lines(summary),
        "trials": trials,
    }
    path.write_text(json.dumps(doc, indent=1))
    print(f"\nresults: {path}" + (f"\nbroker dirs kept in {workroot}" if args.keep else ""))
    if interrupted:
        return 130
    bad = [t for t in trials if t.get("stalled") or t.get("kind") == "start"]
    if not trials or bad:
        return 1
    dropped = [r for r in summary["load"]
               if r["broker"] == "raftmq" and r.get("window_stats", {}).get("drop")]  # fmt: skip
    if args.strict and dropped:
        where = ", ".join(f"{r['kind']} {_size(r['size'])}" for r in dropped)
        print(f"--strict: RaftMQ slowed down by more than {args.max_drop:.0%} from the first "
              f"window to the last: {where}")  # fmt: skip
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
