"""Leader kill -9 over and over on ONE 3-node cluster: RaftMQ vs RabbitMQ's quorum queue.

    .venv/bin/python -m bench.failover [--kills 20] [--rabbitmq-kills 5] [--only raftmq|rabbitmq]
                                       [--rate 1000] [--size 100] [--kill-after 2]
                                       [--failover-observe 5] [--json PATH] ...

Target (issue 22): leader kill -9 -> next confirm <= 1 s at p99 over >= 20 kills.

Per broker one cluster (bench.run_bench_cluster.make_cluster: harness RaftMQCluster /
RabbitMQCluster), then ``--kills`` times (``--rabbitmq-kills`` for RabbitMQ, whose restart takes
~10 s):

1. wait until the cluster is healthy: every node running and ready, one agreed leader, every node
   has applied the leader's commit index (RabbitMQ: every node in ``running_nodes`` and the quorum
   queue's members all online);
2. one kill = bench.run_bench_cluster.failover_trial, unchanged: the clients connect afresh for
   every kill to the two nodes that are not the leader *at that moment* (producer on one, consumer
   on the other; so they never sit on the node that is killed, whichever node led after the
   previous kill), a rate-limited confirming producer (``--rate`` msg/s, ``--size`` B persistent,
   window ``--rate-window``) and an acking consumer on the durable quorum queue "failover";
   ``--kill-after`` s into the measured window (after ``warmup`` 2 s: the clients are flowing;
   each kill records how many confirms came before it) the leader's process group gets SIGKILL
   and we measure kill -> next confirm, next delivery, first confirm / delivery of a message
   published after the kill, for ``--failover-observe`` s; then the queue is drained: every
   message confirmed in the window must have been delivered (lost), duplicates counted;
3. restart the killed node on its data directory and wait (at most ``--catchup-timeout`` s) for
   it to rejoin and catch up (step 1's check); the next kill kills whoever leads then.

Printed: a line per kill, then per broker p50/p90/p99/max (nearest rank) of kill -> next confirm
(and the other three) over all kills, lost, duplicates, the CPU other processes used during the
run (bench.windows.CpuWindows, 1 s samples: machine busy time minus everything this benchmark
started), RaftMQ's p99 / RabbitMQ's. A kill with no confirm within the observed window counts as
infinite. JSON: ``--json`` (default bench/results/failover-<timestamp>.json). Every process started
is stopped on exit, Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import windows as win
from bench.run_bench import RESULTS_DIR, _fmt, _interrupt, _versions
from bench.run_bench_cluster import (
    BROKERS,
    N_NODES,
    Cluster,
    RabbitMQBench,
    RaftMQBench,
    _git_state,
    add_quiet_args,
    failover_trial,
    make_cluster,
)
from harness.cluster import ClusterError
from harness.rabbitmq import ensure_installed

TARGET_P99_MS = 1000.0
QUEUE = "failover"  # failover_trial's queue
METRICS = ("next_confirm_ms", "next_delivery_ms", "first_new_confirm_ms", "first_new_delivery_ms")
RUN_CAP_S = 6 * 3600  # CPU sampling stops here at the latest


# --------------------------------------------------------------------------- health and restart


def _rabbit_queue_online(cluster: RabbitMQBench) -> bool:
    """Every node is a member of the quorum queue and online (``list_queues members online``)."""
    for node in cluster.nodes:
        if node.proc is None or node.proc.poll() is not None:
            continue
        out = node.ctl("list_queues", "name", "members", "online", "--formatter", "json",
                       timeout=15)  # fmt: skip
        for row in json.loads(out):
            if row.get("name") == QUEUE:
                return len(row.get("online") or []) == N_NODES
        return True  # not declared yet (first kill): the cluster check is all there is
    return False


def wait_healthy(cluster: Cluster, timeout: float) -> None:
    """Step 1 of the module docstring; raises (ClusterError / RuntimeError) after ``timeout``."""
    if isinstance(cluster, RaftMQBench):
        c = cluster.cluster
        deadline = time.monotonic() + timeout
        c.wait_ready(c.nodes, timeout=timeout)
        c.leader(timeout=max(1.0, deadline - time.monotonic()))
        c.wait_converged(timeout=max(1.0, deadline - time.monotonic()))
        return
    cluster.cluster.wait_clustered(timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if _rabbit_queue_online(cluster):
                return
        except (RuntimeError, ValueError) as exc:  # rabbitmqctl failed or printed no JSON
            last = repr(exc)
        else:
            last = "members not all online"
        if time.monotonic() >= deadline:
            raise RuntimeError(f"quorum queue {QUEUE} not healthy after {timeout}s: {last}")
        time.sleep(0.5)


def restart(cluster: Cluster, i: int, timeout: float) -> float:
    """Start node ``i`` again on its data directory; seconds until it answers AMQP."""
    t0 = time.monotonic()
    if isinstance(cluster, RaftMQBench):
        cluster.cluster.restart(cluster.nodes[i], timeout=timeout)
    else:
        cluster.nodes[i].start(timeout=timeout)
    return time.monotonic() - t0


class LeaderWatch:
    """``--watch-ms``: a thread polls every RaftMQ node's ``GET /api/status`` every ``every_s``
    during a kill, so the report can say when each survivor learned the new leader, when the new
    leader said so itself, and when its commit index and last applied moved past the kill."""

    def __init__(self, cluster: RaftMQBench, every_s: float) -> None:
        self.cluster, self.every_s = cluster, every_s
        self.samples: list[tuple[int, int, dict[str, Any]]] = []  # (ns, node index, raft status)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="leader-watch")

    def __enter__(self) -> LeaderWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        c = self.cluster.cluster
        while not self._stop.wait(self.every_s):
            for i, nd in enumerate(c.nodes):
                st = c.try_status(nd, timeout=0.5)
                if st is not None:
                    self.samples.append((time.monotonic_ns(), i, st["raft"]))

    def after_kill(self, kill_ns: int, killed: int) -> dict[str, Any]:
        """Per surviving node: ms from the kill to its first status naming another leader
        (``leader_known_ms``), saying it leads (``leading_ms``), with commit index and last applied
        past their values at the kill; the term before and after."""
        dead = self.cluster.nodes[killed].raft_address
        out: dict[str, Any] = {}
        for i in range(N_NODES):
            if i == killed:
                continue
            mine = [(t, r) for t, j, r in self.samples if j == i]
            before = [r for t, r in mine if t <= kill_ns]
            after = [(t, r) for t, r in mine if t > kill_ns]
            if not before or not after:
                continue
            b = before[-1]

            def first(pred: Any, after: list[tuple[int, dict[str, Any]]] = after) -> float | None:
                t = next((t for t, r in after if pred(r)), None)
                return None if t is None else round((t - kill_ns) / 1e6, 1)

            out[f"n{i + 1}"] = {
                "term_before": b["term"],
                "term_after": after[-1][1]["term"],
                "leader_known_ms": first(lambda r: r["leader"] not in (None, dead)),
                "leading_ms": first(lambda r: r["state"] == "leader"),
                "commit_moved_ms": first(lambda r, b=b: r["commit_index"] > b["commit_index"]),
                "applied_moved_ms": first(lambda r, b=b: r["last_applied"] > b["last_applied"]),
                "last_sample_before_kill_ms": round(
                    (kill_ns - max(t for t, _ in mine if t <= kill_ns)) / 1e6, 1),
            }  # fmt: skip
        return out


# --------------------------------------------------------------------------- one broker


def run_broker(name: str, kills: int, args: argparse.Namespace, workroot: Path,
               log: Any) -> dict[str, Any]:  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workroot))
    cluster = make_cluster(name, workdir, args)
    out: dict[str, Any] = {"broker": name, "kills": [], "errors": []}
    cpu: win.CpuWindows | None = None
    t_run = time.monotonic()
    try:
        t0 = time.monotonic()
        cluster.start()
        out["startup_s"] = round(time.monotonic() - t0, 1)
        print(f"{name}: cluster up in {out['startup_s']:.1f} s", file=log)
        cpu = win.CpuWindows(cluster.pids, 1.0)
        now = time.monotonic_ns()
        cpu.start(now, now + int(RUN_CAP_S * 1e9))
        t_run = time.monotonic()
        for k in range(1, kills + 1):
            row: dict[str, Any] = {"kill": k}
            try:
                t0 = time.monotonic()
                wait_healthy(cluster, args.catchup_timeout)
                row["healthy_wait_s"] = round(time.monotonic() - t0, 2)
                if args.watch_ms > 0 and isinstance(cluster, RaftMQBench):
                    with LeaderWatch(cluster, args.watch_ms / 1000) as watch:
                        trial = failover_trial(cluster, args)
                    if trial.get("kill_offset_s") is not None:
                        kill_ns = trial["kill_at_ns"]
                        trial["watch"] = watch.after_kill(kill_ns, trial["leader"])
                else:
                    trial = failover_trial(cluster, args)
                row.update(trial)
                i = trial.get("leader")
                if i is not None and cluster.pids()[i] is None:  # killed: bring it back
                    row["restart_s"] = round(restart(cluster, i, args.catchup_timeout), 2)
                    t0 = time.monotonic()
                    wait_healthy(cluster, args.catchup_timeout)
                    row["catchup_s"] = round(time.monotonic() - t0, 2)
            except Exception as exc:  # noqa: BLE001 - a broken kill is a result too
                row.setdefault("errors", []).append(f"{type(exc).__name__}: {exc}"[:3000])
                out["kills"].append(row)
                print(f"{name} kill {k}: {str(exc)[:800]}", file=log)
                break  # the cluster is not in a state to go on
            out["kills"].append(row)
            print(f"{name} {kill_line(row)}", file=log)
    except (ClusterError, RuntimeError, OSError) as exc:
        out["errors"].append(f"{type(exc).__name__}: {exc}"[:3000])
        print(f"{name}: {str(exc)[:800]}", file=log)
    finally:
        wall = time.monotonic() - t_run
        if cpu is not None:
            samples = cpu.finish()
            other = sum(w["other_cpu_s"] for w in samples)
            out["other_cpu_s"] = round(other, 1)
            out["other_cpu_cores"] = round(other / max(wall, 1e-3), 3)
            out["broker_cpu_cores"] = round(
                sum(w["broker_cpu"] for w in samples) / max(len(samples), 1), 3)
        out["wall_s"] = round(wall, 1)
        cluster.stop()
        if args.keep:
            out["logs"] = cluster.log_paths()
            print(f"  {name} logs: {out['logs']}", file=log)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    out["summary"] = summarize(out["kills"])
    return out


# --------------------------------------------------------------------------- figures


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least ``q`` of the values at or below it."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def summarize(kills: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in kills if r.get("kill_offset_s") is not None]
    out: dict[str, Any] = {"kills": len(done), "attempted": len(kills)}
    for m in METRICS:
        vals = [math.inf if r.get(m) is None else float(r[m]) for r in done]
        out[m] = {
            q: percentile(vals, p) for q, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        } | {"max": max(vals) if vals else None, "none": sum(1 for v in vals if v == math.inf)}
    out["lost"] = sum(r.get("lost", 0) for r in done)
    out["duplicates"] = sum(r.get("duplicate_deliveries", 0) for r in done)
    out["not_flowing"] = sum(1 for r in done if not r.get("confirms_before_kill"))
    out["errors"] = sorted({e[:300] for r in kills for e in r.get("errors", [])})
    return out


def _ms(v: float | None) -> str:
    return "none" if v == math.inf else _fmt(v, ".0f")


def kill_line(r: dict[str, Any]) -> str:
    if r.get("kill_offset_s") is None:
        return f"kill {r['kill']:>2}: not done: {[e[:300] for e in r.get('errors', [])]}"
    lead, new = r["leader"], r.get("new_leader")
    return (
        f"kill {r['kill']:>2}: n{lead + 1} killed (producer n{r['producer_node'] + 1}, consumer "
        f"n{r['consumer_node'] + 1}, {r.get('confirms_before_kill', 0)} confirms before), "
        f"new leader {'-' if new is None else f'n{new + 1}'}; next confirm "
        f"{_ms(r.get('next_confirm_ms'))} ms, next delivery {_ms(r.get('next_delivery_ms'))} ms, "
        f"1st new confirm {_ms(r.get('first_new_confirm_ms'))} ms, 1st new delivery "
        f"{_ms(r.get('first_new_delivery_ms'))} ms; lost {r.get('lost', '-')}, dup "
        f"{r.get('duplicate_deliveries', '-')}; restart {_fmt(r.get('restart_s'), '.1f')} s, "
        f"caught up {_fmt(r.get('catchup_s'), '.1f')} s"
        + (f"  ERRORS {[e[:200] for e in r['errors']]}" if r.get("errors") else "")
    )


def print_report(results: list[dict[str, Any]], args: argparse.Namespace, out: Any) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"Leader kill -9 on one 3-node cluster per broker, {args.rate:,.0f} msg/s of {args.size} B "
      f"persistent with confirms through the non-leader nodes; ms from the kill")  # fmt: skip
    for r in results:
        p()
        p(f"{r['broker']}: {r['summary']['kills']} kills in {r.get('wall_s', 0):.0f} s")
        for k in r["kills"]:
            p(f"  {kill_line(k)}")
    p()
    head = f"{'broker':<9} {'metric':<22} {'p50':>6} {'p90':>6} {'p99':>6} {'max':>6} {'none':>4}"
    p(head)
    p("-" * len(head))
    for r in results:
        s = r["summary"]
        for m in METRICS:
            d = s[m]
            p(f"{r['broker']:<9} {m.removesuffix('_ms'):<22} {_ms(d['p50']):>6} {_ms(d['p90']):>6} "
              f"{_ms(d['p99']):>6} {_ms(d['max']):>6} {d['none']:>4}")  # fmt: skip
    p()
    for r in results:
        s = r["summary"]
        p(f"{r['broker']:<9} kills {s['kills']}, lost {s['lost']}, duplicates {s['duplicates']}, "
          f"kills without confirms before them {s['not_flowing']}; the nodes used "
          f"{_fmt(r.get('broker_cpu_cores'), '.2f')} cores, other processes "
          f"{_fmt(r.get('other_cpu_cores'), '.2f')} cores ({_fmt(r.get('other_cpu_s'), '.0f')} "
          f"CPU s over {r.get('wall_s', 0):.0f} s)")  # fmt: skip
        for e in s["errors"][:3] + r.get("errors", [])[:3]:
            p(f"! {r['broker']}: {e[:300]}")
    by = {r["broker"]: r["summary"] for r in results}
    if "raftmq" in by and "rabbitmq" in by:
        for m in ("next_confirm_ms", "first_new_confirm_ms"):
            a, b = by["raftmq"][m]["p99"], by["rabbitmq"][m]["p99"]
            if a is not None and b:
                p(f"RaftMQ/RabbitMQ kill -> {m.removesuffix('_ms').replace('_', ' ')} p99: "
                  f"{_ms(a)} / {_ms(b)} ms = {a / b:.2f}x (RabbitMQ over "
                  f"{by['rabbitmq']['kills']} kills)")  # fmt: skip
    for line in verdicts(results):
        p(line)
    if any((r.get("other_cpu_cores") or 0) > 0.25 for r in results):
        p("WARNING: other processes used more than 0.25 cores during the run: noisy numbers")


def verdicts(results: list[dict[str, Any]]) -> list[str]:
    """The target is judged on kill -> next confirm AND kill -> first confirm of a message
    published after the kill: the next confirm may be a message committed before the kill whose
    confirm was still on its way (measured: 0-60 ms "next confirm" in kills whose outage lasted
    over a second), so it alone would hide the outage."""
    lines = []
    for r in results:
        if r["broker"] != "raftmq":
            continue
        s = r["summary"]
        p99, new = s["next_confirm_ms"]["p99"], s["first_new_confirm_ms"]["p99"]
        if p99 is None or new is None:
            lines.append("n/a: no kill done")
            continue
        ok = max(p99, new) <= TARGET_P99_MS and s["kills"] >= 20 and s["lost"] == 0
        lines.append(f"{'MET' if ok else 'MISSED'}: kill -> next confirm p99 {_ms(p99)} ms, -> "
                     f"first confirm of a new message p99 {_ms(new)} ms, over {s['kills']} kills "
                     f"(target <= {TARGET_P99_MS:.0f} ms over >= 20 kills), lost {s['lost']} "
                     f"(target 0)")  # fmt: skip
    return lines


# --------------------------------------------------------------------------- main


def _finite(v: Any) -> Any:
    """``v`` with every infinite float (a kill with no confirm in its window) as null, for JSON."""
    if isinstance(v, float) and math.isinf(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--kills", type=int, default=20, help="RaftMQ leader kills")
    ap.add_argument("--rabbitmq-kills", type=int, default=5,
                    help="RabbitMQ quorum queue leader kills (its restart is slow)")  # fmt: skip
    ap.add_argument("--only", choices=BROKERS, help="run one broker only")
    ap.add_argument("--rate", type=float, default=1000.0, help="msg/s of the confirming producer")
    ap.add_argument("--rate-window", type=int, default=1000,
                    help="unconfirmed messages allowed in flight at that rate")  # fmt: skip
    ap.add_argument("--size", type=int, default=100, help="message body bytes")
    ap.add_argument("--kill-after", type=float, default=2.0,
                    help="seconds into the measured window (after 2 s of warm-up) of the kill")  # fmt: skip
    ap.add_argument("--failover-observe", type=float, default=5.0,
                    help="seconds the window lasts after the kill")  # fmt: skip
    ap.add_argument("--catchup-timeout", type=float, default=60.0,
                    help="at most this long for a restarted node to rejoin and catch up")  # fmt: skip
    add_quiet_args(ap, "each kill", 5.0)
    ap.add_argument("--raftmq-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra env for RaftMQ nodes")  # fmt: skip
    ap.add_argument("--watch-ms", type=float, default=0.0,
                    help="diagnosis (RaftMQ): poll every node's /api/status this often during "
                    "each kill and report when the survivors learned the new leader (0: off; "
                    "the polling itself loads the nodes)")  # fmt: skip
    ap.add_argument("--keep", action="store_true", help="keep broker data and logs")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the JSON results")
    ap.add_argument("--json", type=Path, help="JSON results file (default: in --out, timestamped)")
    args = ap.parse_args(argv)
    if args.kills < 1 or args.rabbitmq_kills < 0 or args.rate <= 0:
        ap.error("--kills must be >= 1, --rabbitmq-kills >= 0, --rate > 0")
    args.raftmq_env = dict(kv.split("=", 1) for kv in args.raftmq_env)
    args.size = max(8, args.size)
    args.sizes = [args.size]  # what failover_trial reads
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    plan = [("raftmq", args.kills), ("rabbitmq", args.rabbitmq_kills)]
    plan = [(b, n) for b, n in plan if n and (args.only is None or args.only == b)]
    if any(b == "rabbitmq" for b, _ in plan):
        ensure_installed()
    per_kill = {"raftmq": 22, "rabbitmq": 33}
    est = sum(n * per_kill[b] + 30 for b, n in plan)
    print(f"{' + '.join(f'{n} {b}' for b, n in plan)} kills, typically ~{est / 60:.0f} min",
          file=sys.stderr)  # fmt: skip
    workroot = Path(tempfile.mkdtemp(prefix="raftmq-bench-failover-"))
    started = datetime.now()
    results: list[dict[str, Any]] = []
    interrupted = False
    try:
        for name, n in plan:
            results.append(run_broker(name, n, args, workroot, sys.stderr))
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: reporting the kills done so far", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(workroot, ignore_errors=True)
    print()
    print_report(results, args, sys.stdout)
    path = args.json or args.out / f"failover-{started:%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now().isoformat(timespec="seconds"),
        "versions": _versions(),
        "git": _git_state(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "target": {"next_confirm_p99_ms": TARGET_P99_MS, "kills": 20, "lost": 0},
        "results": results,
        "verdicts": verdicts(results),
    }
    path.write_text(json.dumps(_finite(doc), indent=1))
    print(f"\nresults: {path}" + (f"\nbroker dirs kept in {workroot}" if args.keep else ""))
    if interrupted:
        return 130
    if not results or any(r["errors"] or r["summary"]["errors"] for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
