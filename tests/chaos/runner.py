"""Run one schedule end to end: cluster up, workload on, faults in order, everything healed,
queues drained, history checked."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import time
import traceback
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .checker import Verdict, check, check_applied
from .clients import Consumer, History, Producer, declare_queues, publish_backlog, sweep
from .cluster import ChaosCluster
from .faults import FaultRecord, Nemesis
from .powerloss import APPLIED
from .schedule import Schedule

FINAL_HEAL_TIMEOUT_S = 45.0
TMPFS_MIB = 256  # data directory size when a schedule has full-disk faults
PRODUCER_RETRY_S = 30.0  # after the faults, how long producers keep retrying unconfirmed ones
DRAIN_QUIET_S = 4.0  # consumers are done when nothing arrived for this long...
DRAIN_TIMEOUT_S = 30.0  # ...or after this long
NODE_ENV = {"RAFTMQ_LOG_LEVEL": "info"}

Log = Callable[[str], None]


@dataclass
class FaultTiming:
    """Per fault: recovery (heal -> healthy cluster), first confirm after the heal, and the
    longest stretch without any confirm from the injection to the recovery."""

    what: str
    recovery_s: float | None
    first_confirm_s: float | None
    stall_s: float | None

    def text(self) -> str:
        def f(x: float | None) -> str:
            return "-" if x is None else f"{x:.1f}"

        return f"{self.what} rec={f(self.recovery_s)}s stall={f(self.stall_s)}s"


@dataclass
class RunResult:
    schedule: Schedule
    workdir: Path
    verdict: Verdict | None = None
    faults: list[FaultRecord] = field(default_factory=list)
    timings: list[FaultTiming] = field(default_factory=list)
    recovered: bool = False  # healthy after the final heal
    error: str | None = None  # the harness could not finish the run
    elapsed: float = 0.0
    publishing_s: float = 0.0  # from the producers' start to their stop (faults included)
    kept: bool = False

    @property
    def rate(self) -> float | None:
        """Confirmed messages a second while the producers ran (the faults included)."""
        if self.verdict is None or self.publishing_s <= 0:
            return None
        return self.verdict.confirmed / self.publishing_s

    def schedule_nodes(self) -> list[str]:
        return [f"n{i}" for i in range(1, self.schedule.nodes + 1)]

    @property
    def ok(self) -> bool:
        return self.error is None and self.recovered and self.verdict is not None \
            and self.verdict.ok

    @property
    def status(self) -> str:
        if self.verdict is not None and (self.verdict.lost or self.verdict.unexpected):
            return "FAIL"
        if self.verdict is not None and not self.verdict.ok:
            return "FAIL"
        if self.error is not None:
            return "ERROR"
        if not self.recovered:
            return "NO-RECOVERY"
        return "OK"

    def line(self) -> str:
        s, v = self.schedule, self.verdict
        counts = ("published=- confirmed=- consumed=- lost=- unexpected=- duplicated=-" if v is None
                  else f"published={v.published} confirmed={v.confirmed} consumed={v.consumed} "
                       f"lost={v.lost} unexpected={v.unexpected} duplicated={v.duplicated}"
                       f"(redelivered={v.dup_redelivered},retry={v.dup_retry},"
                       f"unexplained={v.dup_unexplained}) order={v.order_violations}")
        faults = "; ".join(t.text() for t in self.timings) or s.describe()
        rate = "" if self.rate is None else f" confirmed/s={self.rate:.0f}"
        out = (f"{self.status} seed={s.seed} nodes={s.nodes} faults={len(s.faults)} {counts}"
               f"{rate} time={self.elapsed:.0f}s [{faults}]")
        if self.status != "OK":
            out += f"\n    rerun: {s.rerun()}\n    logs: {self.workdir}"
            if self.error:
                out += f"\n    error: {self.error.splitlines()[-1] if self.error else ''}"
            if v is not None and v.problems():
                out += "\n    " + v.problems().replace("\n", "\n    ")
        return out


METRIC = re.compile(r'^raftmq_queue_(messages_ready|messages_unacked|consumers)\{([^}]*)\} ([0-9.e+]+)$')
QUEUE_LABEL = re.compile(r'(?:^|,)queue="([^"]*)"')


def queue_leftovers(cc: ChaosCluster, queues: list[str], timeout: float = 15.0) -> dict[str, int]:
    """Per node, messages ready / unacked and consumers its replica still holds for ``queues``
    (from ``/metrics``), polled until all are 0 or ``timeout``; only non-zero entries."""
    deadline = time.monotonic() + timeout
    while True:
        left: dict[str, int] = {}
        for nd in cc.nodes:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{nd.metrics_port}/metrics",
                                            timeout=3) as resp:
                    text = resp.read().decode()
            except OSError as e:
                left[f"{nd.node_id} /metrics: {type(e).__name__}"] = -1
                continue
            for line in text.splitlines():
                m = METRIC.match(line)
                q = QUEUE_LABEL.search(m.group(2)) if m else None
                if m and q and q.group(1) in queues and float(m.group(3)):
                    left[f"{nd.node_id} {q.group(1)} {m.group(1)}"] = int(float(m.group(3)))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def _timings(records: list[FaultRecord], confirms: list[float]) -> list[FaultTiming]:
    confirms = sorted(confirms)
    out = []
    for rec in records:
        first = next((t for t in confirms if rec.healed is not None and t > rec.healed), None)
        end = rec.recovered or rec.healed or rec.started
        times = [rec.started] + [t for t in confirms if rec.started < t <= end] + [end]
        stall = max((b - a for a, b in zip(times, times[1:], strict=False)), default=None)
        out.append(FaultTiming(
            f"{rec.fault.describe()}->{','.join(rec.targets)}", rec.recovery_s,
            None if first is None or rec.healed is None else first - rec.healed, stall))
    return out


async def _drive(cc: ChaosCluster, s: Schedule, result: RunResult, h: History,
                 model: str, log: Log) -> dict[str, int]:
    queues = [f"chaos-{s.seed}-q{k}" for k in range(s.queues)]
    await declare_queues(cc.urls(), queues)
    if s.backlog:
        await publish_backlog(cc.urls(), f"chaos-{s.seed}-backlog", s.backlog)
    producers = [Producer(p + 1, cc.urls, queues, h, s.rate, s.window, first_node=p % s.nodes)
                 for p in range(s.producers)]
    consumers = [Consumer(c + 1, cc.urls, queues, h, s.prefetch, first_node=(c + 1) % s.nodes)
                 for c in range(s.consumers)]
    p_tasks = [asyncio.create_task(p.run(PRODUCER_RETRY_S)) for p in producers]
    publishing_from = time.monotonic()
    c_tasks = [asyncio.create_task(c.run()) for c in consumers]
    try:
        await asyncio.sleep(s.warmup)
        nemesis = Nemesis(cc, model)

        def event(what: str, rec: FaultRecord) -> None:
            if what == "healed":
                rs = rec.recovery_s
                log(f"  {rec.fault.describe()} -> {','.join(rec.targets)}: "
                    f"{'no recovery' if rs is None else f'healthy {rs:.1f}s after heal'}"
                    + (f" ({'; '.join(rec.notes)})" if rec.notes else ""))

        for fault in s.faults:
            result.faults.append(await asyncio.to_thread(nemesis.run_fault, fault, event))
        await asyncio.to_thread(nemesis.heal_everything)
        cc.note_all("final heal")
        result.recovered = await asyncio.to_thread(cc.wait_healthy, FINAL_HEAL_TIMEOUT_S) \
            is not None
        if not result.recovered:
            log(f"  cluster not healthy {FINAL_HEAL_TIMEOUT_S:.0f}s after the final heal:\n"
                + cc.describe())
        # Producers: no new messages, retry the unconfirmed ones.
        for p in producers:
            p.stopping = True
        result.publishing_s = time.monotonic() - publishing_from
        done, pending = await asyncio.wait(p_tasks, timeout=PRODUCER_RETRY_S + 15)
        for t in pending:
            t.cancel()
        # Consumers: until every confirmed message arrived, or nothing arrives any more.
        start = time.monotonic()
        while time.monotonic() - start < DRAIN_TIMEOUT_S:
            if h.unconsumed_confirmed() == 0:
                break
            last = max((c.last_delivery for c in consumers), default=0.0)
            if time.monotonic() - max(last, start) > DRAIN_QUIET_S:
                break
            await asyncio.sleep(0.2)
        cc.note_all("drain: stopping consumers, sweeping the queues")
        for c in consumers:
            c.stop.set()
        await asyncio.wait(c_tasks, timeout=15)
        residual = await sweep(cc.urls(), queues, h)
        # Every node's own view (its replica) of the queues: nothing ready, unacked or consumed.
        residual.update(await asyncio.to_thread(queue_leftovers, cc, queues))
        return residual
    finally:
        for t in p_tasks + c_tasks:
            t.cancel()
        await asyncio.gather(*p_tasks, *c_tasks, return_exceptions=True)


def run_schedule(s: Schedule, root: Path, keep: str = "fail", model: str = "journal",
                 log: Log = print) -> RunResult:
    """Run ``s`` in a fresh directory under ``root``; keep it on failure (``keep="fail"``),
    always, or never."""
    # aiormq logs every broken connection with a traceback: broken connections are the point.
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = Path(root) / f"seed{s.seed}-n{s.nodes}-{stamp}"
    result = RunResult(s, workdir)
    h = History(run=f"s{s.seed}")
    t0 = time.monotonic()
    residual: dict[str, int] = {}
    cc: ChaosCluster | None = None
    try:
        cc = ChaosCluster(workdir, s.nodes, {**NODE_ENV, **s.env}, spare=s.spare_nodes,
                          tmpfs_mib=TMPFS_MIB if s.needs_tmpfs else 0)
        cc.start(timeout=90)
        residual = asyncio.run(_drive(cc, s, result, h, model, log))
        result.verdict = check(h, residual)
        # Every node that ever ran, removed members too.
        check_applied(result.verdict, {nd.node_id: cc.side_dir(nd.node_id) / APPLIED
                                       for nd in cc.all_nodes})
    except Exception:  # noqa: BLE001 - reported with the run
        result.error = traceback.format_exc()
        if h.publishes:
            result.verdict = check(h, residual)
    finally:
        if cc is not None:
            problems = cc.stop(keep_data=keep == "always" or (keep == "fail" and not result.ok))
            if problems:
                log("  " + "; ".join(problems))
    result.elapsed = time.monotonic() - t0
    result.timings = _timings(result.faults, h.confirm_times)
    if keep == "always" or (keep == "fail" and not result.ok):
        result.kept = True
        _save(result, h, residual)
    elif workdir.exists():
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _save(result: RunResult, h: History, residual: dict[str, int]) -> None:
    """The run's history and verdict next to the node logs, for post-mortems."""
    d = result.workdir
    d.mkdir(parents=True, exist_ok=True)
    (d / "result.txt").write_text(result.line() + "\n" + (result.error or "") + "\n")
    (d / "schedule.json").write_text(json.dumps(asdict(result.schedule), indent=1))
    with open(d / "history.jsonl", "w") as f:
        for mid, p in h.publishes.items():
            f.write(json.dumps({"publish": mid, **asdict(p)}) + "\n")
        for dl in h.deliveries:
            f.write(json.dumps({"delivery": dl.body[:40].decode(errors="replace"),
                                "session": dl.session, "queue": dl.queue,
                                "redelivered": dl.redelivered, "at": dl.at}) + "\n")
        for e in h.errors:
            f.write(json.dumps({"error": e}) + "\n")
        for rec in result.faults:
            f.write(json.dumps({"fault": rec.fault.describe(), "targets": rec.targets,
                                "leader_before": rec.leader_before, "started": rec.started,
                                "healed": rec.healed, "recovered": rec.recovered,
                                "notes": rec.notes}) + "\n")
        f.write(json.dumps({"residual": residual}) + "\n")
