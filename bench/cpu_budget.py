"""CPU per message, per node and per stage (issue 22, item 5): the figure scale-out is planned from.

    .venv/bin/python -m bench.cpu_budget [--rate 5000] [--warmup 60] [--duration 60]
                                         [--spy-rate 200] [--only single|cluster] [--quick]
                                         [--json PATH]

Two parts, each on fresh brokers: one RaftMQ node (harness.raftmq.RaftMQNode), then a 3-node
cluster (harness.cluster.RaftMQCluster through bench.run_bench_cluster.RaftMQBench) with the
producer on one follower and the consumer on the other, as bench.run_bench_cluster does. The load
is bench.loadgen's at a FIXED rate below saturation (``--rate`` msg/s, 100 B persistent messages,
confirms with window 100, a manual-ack consumer with prefetch 100): what is measured is the CPU a
message costs, not how many messages fit in a core.

Per node, over the measured interval (after ``--warmup`` s of the same load):

* CPU µs per message = the process's CPU seconds (/proc/PID/stat utime + stime, every thread)
  / the messages consumed in the interval (publish + deliver + ack of one message);
  the loop's thread and the other threads apart
  (/proc/PID/task/TID/stat);
* the stages: ``py-spy record --format raw --gil --idle --nonblocking`` for the whole interval.
  ``--gil`` keeps the samples in which a thread holds the GIL: Python work, i.e. CPU
  (``--idle`` so that a GIL holder py-spy thinks is not running is kept too). A thread that waits
  (the loop in epoll or in fdatasync) holds no GIL and gives no sample. Each sample goes
  to ONE stage: the innermost frame on its stack that :data:`RULES` gives a stage (stdlib and
  third-party frames are neutral: msgpack under ``encode_batch`` is encoding, under
  ``decode_batch`` applying). Stage µs = the stage's share of the samples x the main thread's
  CPU µs per message (the fdatasync runs on the loop's thread: its kernel CPU is in that thread's
  CPU, spread over the stages); the other threads' CPU is added to "Raft append + fsync" as its
  own line. The time spent waiting for the disk is latency, not CPU: it is not
  in the budget; it is reported beside it, from the nodes' thread states read every 20 ms
  (state D: fdatasync, a page fault on the mmap'd journal).

Reports per node role (single node; cluster leader; the follower with the producer; the follower
with the consumer): CPU µs per message, the stages with their top frames (the Raft stage in
parts: :data:`RAFT_PARTS`), the GIL-held time over the main thread's CPU (far above 100 %: the
loop waited for a core holding the GIL, the shares are of wall time), the disk wait, and the CPU
other processes used meanwhile (the machine is shared: a noisy figure says so); a part that
consumed under 95 % of the offered rate is flagged. Then all of it as one markdown table
(docs/performance.md's). JSON goes to ``--json`` (default
bench/results/cpu-budget-<timestamp>.json), py-spy's raw profiles beside it. Every process started is stopped on exit.

py-spy needs ptrace on the node (root, or ``kernel.yama.ptrace_scope`` 0); without it the CPU
figures are still measured and the stages are left out.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.loadgen import LoadConfig, LoadResult, run_load
from bench.run_bench import RESULTS_DIR, _interrupt, _versions
from bench.run_bench_cluster import RaftMQBench, add_quiet_args, queue_op, wait_quiet
from bench.windows import own_processes
from harness.procs import cpu_seconds, system_busy_seconds
from harness.raftmq import RaftMQNode

STAGES = {
    "parse": "AMQP parse",
    "propose": "propose / encode",
    "raft": "Raft append + fsync",
    "apply": "apply",
    "store": "store",
    "deliver": "deliver",
    "other": "other",
    "unattributed": "unattributed",
}
NEUTRAL = None

# (file pattern, function pattern, stage): the first row matching a frame gives its stage (NEUTRAL:
# none, the caller's frame decides). Patterns are fnmatch's, on py-spy's short file name (the
# package part: "cluster/store.py", "asyncio/runners.py") and on the qualified function name
# ("Class.method"). A frame no row matches is neutral. Read from the code (docs/architecture.md,
# "One published message"):
RULES: tuple[tuple[str, str, str | None], ...] = (
    # AMQP parse: bytes in -> events (frames split, methods decoded, content assembled, checked)
    ("node/amqp/connection.py", "AMQPConnection.data_received", "parse"),
    ("node/amqp/connection.py", "AMQPConnection._process", "parse"),
    ("protocol/connection.py", "ServerConnection.receive_data", "parse"),
    ("protocol/connection.py", "ServerConnection.next_event", "parse"),
    ("protocol/connection.py", "ServerConnection._read_header", "parse"),
    ("protocol/connection.py", "ServerConnection._on_*", "parse"),
    ("protocol/connection.py", "ServerConnection._check_channel", "parse"),
    ("protocol/connection.py", "ServerConnection._decode*", "parse"),
    ("protocol/content.py", "*", "parse"),
    ("protocol/methods.py", "*decode*", "parse"),
    ("protocol/fields.py", "encode_*", "deliver"),
    ("protocol/fields.py", "*", "parse"),
    ("pamqp/*", "*", NEUTRAL),
    # deliver: effects -> frames -> the socket (and confirms to the publisher)
    ("protocol/connection.py", "*", "deliver"),  # the server's encoders (deliver, get_ok, ...)
    ("protocol/frames.py", "*", "deliver"),
    ("protocol/methods.py", "*", "deliver"),
    ("node/amqp/connection.py", "AMQPConnection.run_effect", "deliver"),
    ("node/amqp/connection.py", "AMQPConnection.effects_done", "deliver"),
    ("node/amqp/connection.py", "AMQPConnection._write", "deliver"),
    ("node/amqp/connection.py", "AMQPConnection._flush_writes", "deliver"),
    ("node/amqp/connection.py", "AMQPConnection._drain", "deliver"),
    ("node/amqp/session.py", "Session.run_effect", "deliver"),
    ("node/amqp/session.py", "Session.effects_done", "deliver"),
    ("node/amqp/session.py", "Session._report_sent", "deliver"),
    ("node/amqp/session.py", "Session._send_confirm_acks", "deliver"),
    ("node/amqp/session.py", "Session.write_content", "deliver"),
    ("node/amqp/session.py", "_deliver", "deliver"),
    ("node/amqp/session.py", "_get_ok", "deliver"),
    ("node/amqp/session.py", "_return", "deliver"),
    ("node/amqp/session.py", "_confirm", "deliver"),
    ("node/amqp/session.py", "_reply*", "deliver"),
    ("node/broker.py", "Broker.dispatch", "deliver"),
    ("cluster/proposer.py", "Proposer._dispatch", "deliver"),
    ("cluster/proposer.py", "Proposer._mine", "deliver"),
    ("cluster/proposer.py", "target", "deliver"),
    # propose / encode: events -> commands -> one encoded Batch handed to Raft
    ("node/amqp/session.py", "*", "propose"),  # on_event, _on_publish, _propose, ...
    ("node/broker.py", "Broker.propose*", "propose"),
    ("node/broker.py", "Broker._flush", "propose"),
    ("node/broker.py", "Broker._schedule_flush", "propose"),
    ("cluster/commands.py", "encode_*", "propose"),
    ("cluster/commands.py", "check_encodable", "propose"),
    ("cluster/commands.py", "_encoder*", "propose"),
    ("cluster/commands.py", "decode_*", "apply"),
    ("cluster/commands.py", "_ext_hook", "apply"),
    ("cluster/commands.py", "*", NEUTRAL),  # a command built: by the session or by decode
    ("cluster/proposer.py", "Proposer.run", "raft"),  # the tick loop: ticks, syncs
    ("cluster/proposer.py", "*", "propose"),
    # apply: the replicated state machine and what it hands back
    ("cluster/machine/*", "*", "apply"),
    ("cluster/effects.py", "*", NEUTRAL),  # effects are built by apply, run by deliver
    ("cluster/raft/node.py", "_Replica.apply_batch", "apply"),
    ("cluster/raft/node.py", "RaftNode._on_applied", "apply"),
    ("cluster/raft/node.py", "RaftNode.take_*", "apply"),
    # store: message bytes on disk (records written, flushed, read for delivery, released)
    ("cluster/store.py", "*", "store"),
    ("cluster/records.py", "*", "store"),
    ("cluster/raft/snapshots.py", "Snapshots.run", "store"),
    ("cluster/raft/node.py", "_Replica.read", "store"),
    ("cluster/raft/node.py", "RaftNode.read", "store"),
    ("cluster/raft/node.py", "RaftNode.collect", "store"),
    # Raft append + fsync: pysyncobj (append, replicate, commit, pickling of entries), its journal
    # and transport, our patches, the journal's fdatasync (on the loop: RaftNode.flush)
    ("cluster/raft/*", "*", "raft"),
    ("pysyncobj/*", "*", "raft"),
    ("node/broker.py", "Broker.wake", "raft"),
    # a worker thread's frames (a management listing's pool ends deeper, in node/mgmt)
    ("concurrent/futures/thread.py", "_worker", "raft"),
    ("concurrent/futures/thread.py", "_WorkItem.run", "raft"),
    # other: the loop's turns, timers, flow control, metrics, management, housekeeping
    ("node/*", "*", "other"),
    ("asyncio/*", "*", "other"),
    ("uvloop/*", "*", "other"),
    ("aiohttp/*", "*", "other"),
)

# The Raft stage in parts, by the frame that decided (first match; the rest: RAFT_CORE). transport:
# messages between members pickled, zlib'd (cluster/raft/tcp.py) and their sockets; entry
# pickling: pysyncobj's pickle of each replicated call; other threads: the CPU of the threads
# other than the loop's.
RAFT_PARTS: tuple[tuple[str, str, str], ...] = (
    ("cluster/raft/node.py", "RaftNode.*sync*", "fsync call"),
    ("cluster/raft/node.py", "RaftNode.flush", "fsync call"),
    ("cluster/raft/node.py", "RaftNode._release_held", "fsync call"),
    ("cluster/raft/node.py", "RaftNode._journal", "fsync call"),
    ("concurrent/futures/*", "*", "fsync call"),
    ("cluster/raft/tcp.py", "*", "transport"),
    ("pysyncobj/tcp_*", "*", "transport"),
    ("pysyncobj/transport.py", "*", "transport"),
    ("pysyncobj/poller.py", "*", "transport"),
    ("cluster/raft/node.py", "_LoopPoller.*", "transport"),
    ("node/broker.py", "Broker.wake", "transport"),
    ("pysyncobj/pickle.py", "*", "entry pickling"),
    ("pysyncobj/serializer.py", "*", "entry pickling"),
    ("cluster/raft/patches.py", "_journal_add", "journal append"),
    ("cluster/raft/patches.py", "_reserving_write", "journal append"),
    ("cluster/raft/patches.py", "Durability._add_entry", "journal append"),
    ("pysyncobj/journal.py", "*", "journal append"),
)
RAFT_CORE = "pysyncobj core"
FSYNC_THREAD = "other threads"

RAFT_PART_ORDER = ("transport", "entry pickling", "journal append", RAFT_CORE, "fsync call",
                   FSYNC_THREAD)

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*):(?P<line>\d+)\)$")


def frame_stage(filename: str, func: str) -> str | None:
    """The stage of one frame (None: neutral)."""
    for file_pat, func_pat, stage in RULES:
        if fnmatch.fnmatchcase(filename, file_pat) and fnmatch.fnmatchcase(func, func_pat):
            return stage
    return NEUTRAL


def raft_part(where: str) -> str:
    """The part of the Raft stage a deciding frame ("file:function") belongs to."""
    filename, _, func = where.partition(":")
    for file_pat, func_pat, part in RAFT_PARTS:
        if fnmatch.fnmatchcase(filename, file_pat) and fnmatch.fnmatchcase(func, func_pat):
            return part
    return RAFT_CORE


def parse_raw(text: str) -> Counter[tuple[tuple[str, str], ...]]:
    """py-spy's ``--format raw`` (collapsed stacks: ``f (file:line);...;g (file:line) COUNT``,
    outermost first) -> {stack: samples}, each frame as (file, function)."""
    stacks: Counter[tuple[tuple[str, str], ...]] = Counter()
    for line in text.splitlines():
        head, _, count = line.rstrip().rpartition(" ")
        if not count.isdigit():
            continue
        frames = []
        for part in head.split(";") if head else []:
            m = _FRAME.match(part)
            frames.append((m["file"], m["func"]) if m else ("", part))
        stacks[tuple(frames)] += int(count)
    return stacks


@dataclass
class Attribution:
    samples: int = 0
    by_stage: Counter[str] = field(default_factory=Counter)
    # the frame that decided, per stage: "file:function" -> samples
    frames: dict[str, Counter[str]] = field(default_factory=dict)

    def share(self, stage: str) -> float:
        return self.by_stage[stage] / self.samples if self.samples else 0.0


def attribute(stacks: Counter[tuple[tuple[str, str], ...]]) -> Attribution:
    """Each sample to ONE stage: the innermost frame that has one; a stack with none is
    "unattributed" (py-spy's --nonblocking reads can give truncated stacks)."""
    out = Attribution()
    for stack, n in stacks.items():
        stage, where = "unattributed", stack[-1] if stack else ("", "")
        for filename, func in reversed(stack):
            found = frame_stage(filename, func)
            if found is not None:
                stage, where = found, (filename, func)
                break
        out.samples += n
        out.by_stage[stage] += n
        out.frames.setdefault(stage, Counter())[f"{where[0]}:{where[1]}"] += n
    return out


# --------------------------------------------------------------------------- measuring


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds per thread of ``pid`` (/proc/PID/task/TID/stat), {} if it is gone."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                f = raw[raw.rindex(")") + 2 :].split()
                out[int(tid)] = (int(f[11]) + int(f[12])) / tick
    return out


def thread_states(pid: int) -> dict[int, str]:
    """The scheduler state of every thread of ``pid`` (R running, S sleeping, D waiting on the
    disk...), {} if it is gone."""
    out = {}
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                out[int(tid)] = raw[raw.rindex(")") + 2]
    return out


def _own_cpu() -> float:
    return sum(cpu_seconds(p) for p in own_processes())


def py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


STATE_PERIOD = 0.02  # s between two reads of the nodes' thread states


class Recorder:
    """From the start of the measured window to its end: CPU per thread of every node, the
    machine's busy time, every ``STATE_PERIOD`` s the state of every node thread (how long they
    wait on the disk: fdatasync), and (if py-spy runs) one py-spy per node."""

    def __init__(self, pids: dict[str, int], workdir: Path, spy_rate: int) -> None:
        self.pids = pids
        self.workdir = workdir
        self.spy_rate = spy_rate
        self.spy = py_spy()
        self.errors: list[str] = []
        self.before: dict[str, dict[int, float]] = {}
        self.after: dict[str, dict[int, float]] = {}
        self.wall = 0.0
        self.spy_seconds = 0
        self.other_cpu_s = 0.0
        self.raw: dict[str, Path] = {}
        self.state_samples = 0
        self.disk_waits: dict[str, Counter[int]] = {role: Counter() for role in pids}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, t_begin: int, t_end: int) -> None:
        self._thread = threading.Thread(target=self._run, args=(t_begin, t_end), daemon=True,
                                        name="cpu-budget")  # fmt: skip
        self._thread.start()

    def _run(self, t_begin: int, t_end: int) -> None:
        if self._stop.wait(max(0.0, (t_begin - time.monotonic_ns()) / 1e9)):
            return
        seconds = self.spy_seconds = max(1, int((t_end - t_begin) / 1e9))
        spies: dict[str, subprocess.Popen[bytes]] = {}
        busy0, own0, w0 = system_busy_seconds(), _own_cpu(), time.monotonic()
        self.before = {role: thread_cpu(pid) for role, pid in self.pids.items()}
        if self.spy:
            for role, pid in self.pids.items():
                out = self.workdir / f"py-spy-{role}.txt"
                argv = [self.spy, "record", "--format", "raw", "--rate", str(self.spy_rate),
                        "--nonblocking", "--gil", "--idle", "-p", str(pid), "-d", str(seconds),
                        "-o", str(out)]  # fmt: skip
                spies[role] = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.PIPE)  # fmt: skip
                self.raw[role] = out
        while time.monotonic_ns() < t_end and not self._stop.wait(STATE_PERIOD):
            self.state_samples += 1
            for role, pid in self.pids.items():
                for tid, state in thread_states(pid).items():
                    if state == "D":
                        self.disk_waits[role][tid] += 1
        self.after = {role: thread_cpu(pid) for role, pid in self.pids.items()}
        self.wall = time.monotonic() - w0
        # busy minus everything this benchmark started (nodes, clients, py-spy): other processes
        self.other_cpu_s = system_busy_seconds() - busy0 - (_own_cpu() - own0)
        for role, proc in spies.items():
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate(timeout=5)
            if proc.returncode:
                self.errors.append(f"py-spy on {role}: exit {proc.returncode}: "
                                   f"{err.decode(errors='replace')[-300:]}")  # fmt: skip

    def finish(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=120)


def node_budget(role: str, pid: int, rec: Recorder, messages: int) -> dict[str, Any]:
    """One node's CPU µs per message, split by thread and by stage."""
    before, after = rec.before.get(role, {}), rec.after.get(role, {})
    main = after.get(pid, 0.0) - before.get(pid, 0.0)
    others = sum(cpu - before.get(tid, 0.0) for tid, cpu in after.items() if tid != pid)
    per = 1e6 / messages if messages else 0.0
    out: dict[str, Any] = {
        "role": role, "pid": pid, "messages": messages,
        "cpu_s": round(main + others, 3), "cpu_cores": round((main + others) / rec.wall, 3)
        if rec.wall else None,
        "us_per_msg": round((main + others) * per, 2),
        "main_thread_us": round(main * per, 2), "other_threads_us": round(others * per, 2),
    }  # fmt: skip
    if rec.state_samples:
        # threads waiting on the disk (state D: fdatasync, a page fault on the mmap'd journal), as
        # thread-seconds per second and as wall µs per message: latency, not CPU, not in the
        # budget
        waits = rec.disk_waits.get(role, Counter())
        share = sum(waits.values()) / rec.state_samples
        out["disk_wait_share"] = round(share, 3)
        out["disk_wait_us"] = round(share * rec.wall * per, 2)
        out["disk_wait_main_thread_share"] = round(waits[pid] / rec.state_samples, 3)
    raw = rec.raw.get(role)
    if raw is None or not raw.exists():
        return out
    att = attribute(parse_raw(raw.read_text(errors="replace")))
    out["gil_samples"] = att.samples
    # GIL-held time per second (from the samples) over the main thread's CPU per second: how
    # much of that CPU the samples stand for (1.0: all of it)
    held = att.samples / rec.spy_rate / rec.spy_seconds if rec.spy_seconds else 0.0
    out["gil_coverage"] = round(held / (main / rec.wall), 2) if main and rec.wall else None
    stages: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        us = att.share(stage) * main * per
        if stage == "raft":
            us += others * per
        if not us and not att.by_stage[stage]:
            continue
        frames = att.frames.get(stage, Counter())
        stages[stage] = {
            "samples": att.by_stage[stage], "share": round(att.share(stage), 4),
            "us_per_msg": round(us, 2), "top": [[k, v] for k, v in frames.most_common(4)],
        }  # fmt: skip
        if stage == "raft":
            parts: Counter[str] = Counter()
            for where, n in frames.items():
                parts[raft_part(where)] += n
            scale = main * per / att.samples
            stages[stage]["parts"] = {part: round(n * scale, 2) for part, n in parts.most_common()}
            stages[stage]["parts"][FSYNC_THREAD] = round(others * per, 2)
    out["stages"] = stages
    out["raw_profile"] = str(raw)
    return out


# --------------------------------------------------------------------------- the two parts


def _config(args: argparse.Namespace, queue: str, queue_type: str) -> LoadConfig:
    return LoadConfig(size=args.size, duration=args.duration, warmup=args.warmup, queue=queue,
                      queue_type=queue_type, rate=args.rate, window=100, prefetch=100)  # fmt: skip


def measure(cfg: LoadConfig, pids: dict[str, int], workdir: Path,
            args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    rec = Recorder(pids, workdir, args.spy_rate)
    try:
        res: LoadResult = run_load(cfg, on_start=rec.start)
    finally:
        rec.finish()
    part: dict[str, Any] = {
        "rate": cfg.rate, "size": cfg.size, "duration": cfg.duration, "warmup": cfg.warmup,
        "load": {k: v for k, v in res.as_dict().items() if k != "windows"},
        "wall_s": round(rec.wall, 2),
        "other_cpu_cores": round(rec.other_cpu_s / rec.wall, 2) if rec.wall else None,
        "errors": res.errors + rec.errors,
        "warnings": [] if res.consumed_per_s >= 0.95 * cfg.rate else [
            f"consumed {res.consumed_per_s:,.0f} msg/s of the {cfg.rate:,.0f} offered: the "
            "node(s) could not keep up (saturated, or starved by other processes), so this is "
            "not the fixed-rate figure"],
        "nodes": [node_budget(role, pid, rec, res.consumed) for role, pid in pids.items()],
    }  # fmt: skip
    return part


def single_part(args: argparse.Namespace, workroot: Path) -> dict[str, Any]:
    node = RaftMQNode(workroot / "single" / "n1", extra_env=args.raftmq_env)
    try:
        node.start(timeout=30)
        assert node.pid is not None
        cfg = replace(_config(args, "cpu-budget", "classic"), port=node.amqp_port)
        quiet = wait_quiet(args, [node.pid])
        part = measure(cfg, {"single": node.pid}, args.profile_dir, args)
        part["quiet"] = quiet
        return part
    finally:
        node.stop()


def cluster_part(args: argparse.Namespace, workroot: Path) -> dict[str, Any]:
    bench = RaftMQBench(workroot / "cluster", args.raftmq_env)
    try:
        bench.start()
        cfg = _config(args, "cpu-budget", "quorum")
        lead = bench.prepare_queue(cfg)
        prod, cons = [i for i in range(len(bench.nodes)) if i != lead][:2]
        cfg = replace(cfg, port=bench.ports[prod], consumer_port=bench.ports[cons])
        pids = bench.pids()
        roles = {"leader": pids[lead], "follower-producer": pids[prod],
                 "follower-consumer": pids[cons]}  # fmt: skip
        if not all(roles.values()):
            raise RuntimeError(f"a node is not running: {roles}")
        quiet = wait_quiet(args, list(pids))
        part = measure(cfg, {r: p for r, p in roles.items() if p}, args.profile_dir, args)
        part["quiet"] = quiet
        part["nodes_by_role"] = {"leader": bench.labels()[lead],
                                 "follower-producer": bench.labels()[prod],
                                 "follower-consumer": bench.labels()[cons]}  # fmt: skip
        after = bench.current_leader(timeout=5)
        if after != lead:
            part["errors"].append(f"the leader moved during the run (node {lead + 1} -> "
                                  f"{None if after is None else after + 1})")  # fmt: skip
        with contextlib.suppress(Exception):
            queue_op(replace(cfg, port=bench.ports[prod]), delete=True)
        return part
    finally:
        bench.stop()


# --------------------------------------------------------------------------- report

ROLE_TITLES = {"single": "one node", "leader": "leader", "follower-producer":
               "follower (producer)", "follower-consumer": "follower (consumer)"}  # fmt: skip


def markdown(results: dict[str, Any]) -> str:
    """The budget as one markdown table (µs CPU per message; docs/performance.md's form)."""
    nodes = [n for part in results.values() for n in part["nodes"]]
    if not nodes:
        return ""
    head = "| µs CPU / message | " + " | ".join(ROLE_TITLES.get(n["role"], n["role"])
                                               for n in nodes) + " |"  # fmt: skip
    rows = [head, "|---" * (len(nodes) + 1) + "|"]

    def row(label: str, values: list[Any]) -> None:
        rows.append(f"| {label} | " + " | ".join("–" if v is None else f"{v:.1f}"
                                                  for v in values) + " |")  # fmt: skip

    for stage, title in STAGES.items():
        values = [n.get("stages", {}).get(stage, {}).get("us_per_msg") for n in nodes]
        if any(values):
            row(title, values)
        if stage == "raft":
            seen = {p for n in nodes for p in n.get("stages", {}).get("raft", {}).get("parts", {})}
            for part in [p for p in RAFT_PART_ORDER if p in seen]:
                row(f"&nbsp;&nbsp;of it: {part}",
                    [n.get("stages", {}).get("raft", {}).get("parts", {}).get(part)
                     for n in nodes])  # fmt: skip
    row("**total**", [n["us_per_msg"] for n in nodes])
    row("disk wait, not CPU (wall µs / message)", [n.get("disk_wait_us") for n in nodes])
    cover = ["–" if n.get("gil_coverage") is None else f"{n['gil_coverage']:.0%}" for n in nodes]
    rows.append("| GIL samples / main thread's CPU | " + " | ".join(cover) + " |")
    rates = ", ".join(f"{ROLE_TITLES.get(k, k)} part: {p['load']['consumed_per_s']:,.0f} msg/s "
                      f"consumed, other processes {p['other_cpu_cores']} cores"
                      for k, p in results.items())  # fmt: skip
    return "\n".join(rows) + f"\n\n({rates})"



def print_part(name: str, part: dict[str, Any], out: Any = sys.stdout) -> None:
    load = part["load"]
    print(f"\n== {name}: {part['rate']:,.0f} msg/s offered, {part['size']} B; "
          f"measured {part['duration']:.0f} s after {part['warmup']:.0f} s warm-up: "
          f"{load['consumed']:,} consumed ({load['consumed_per_s']:,.0f}/s), "
          f"e2e p50 {load['e2e_p50_ms'] or 0:.1f} ms; other processes used "
          f"{part['other_cpu_cores']} cores", file=out)  # fmt: skip
    for err in part["errors"] + part.get("warnings", []):
        print(f"   ! {err}", file=out)
    for node in part["nodes"]:
        cov = node.get("gil_coverage")
        print(f"\n  {node['role']}: {node['us_per_msg']:.1f} µs CPU/msg "
              f"({node['cpu_cores']} cores; main thread {node['main_thread_us']:.1f}, other "
              f"threads {node['other_threads_us']:.1f})"
              + (f"; {node['gil_samples']} GIL samples = {cov:.0%} of the main thread's CPU"
                 if cov is not None else ""), file=out)  # fmt: skip
        if "disk_wait_us" in node:
            print(f"    disk wait (not CPU): threads in state D (fdatasync, page faults) "
                  f"{node['disk_wait_share']:.0%} of the time, {node['disk_wait_us']:.1f} µs "
                  f"of wall per message (the loop's thread: "
                  f"{node['disk_wait_main_thread_share']:.0%})", file=out)  # fmt: skip
        if "stages" not in node:
            print("    (no profile: stages not measured)", file=out)
            continue
        print(f"    {'stage':<22} {'share':>6} {'µs/msg':>7}  top frames (samples)", file=out)
        for stage, s in node["stages"].items():
            top = ", ".join(f"{k.split('/')[-1]} {v}" for k, v in s["top"][:3])
            print(f"    {STAGES[stage]:<22} {s['share']:>6.1%} {s['us_per_msg']:>7.1f}  {top}",
                  file=out)  # fmt: skip
            for part, us in s.get("parts", {}).items():
                print(f"      {part:<27} {us:>7.1f}", file=out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=5000.0,
                    help="offered msg/s, below saturation (default 5000)")  # fmt: skip
    ap.add_argument("--size", type=int, default=100, help="body bytes (default 100)")
    ap.add_argument("--warmup", type=float, default=60.0,
                    help="seconds of load before the measured interval (default 60)")
    ap.add_argument("--duration", type=float, default=60.0,
                    help="seconds measured (CPU and profile) per part (default 60)")
    ap.add_argument("--spy-rate", type=int, default=200, help="py-spy samples/s (default 200)")
    ap.add_argument("--only", choices=("single", "cluster"), help="run one part only")
    ap.add_argument("--quick", action="store_true",
                    help="smoke check: 10 s warm-up, 20 s measured per part")  # fmt: skip
    add_quiet_args(ap, "each part", 10.0)
    ap.add_argument("--raftmq-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra env for RaftMQ nodes")  # fmt: skip
    ap.add_argument("--keep", action="store_true", help="keep node data and logs")
    ap.add_argument("--json", type=Path, help="JSON results (default: bench/results/, "
                    "timestamped)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.quick:
        args.warmup, args.duration = 10.0, 20.0
    if args.rate <= 0 or args.duration < 1 or args.warmup < 0:
        ap.error("--rate must be > 0, --duration >= 1, --warmup >= 0")
    args.size = max(8, args.size)
    args.raftmq_env = dict(kv.split("=", 1) for kv in args.raftmq_env)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    if py_spy() is None:
        print("py-spy not found (pip install py-spy): CPU per message only, no stages",
              file=sys.stderr)  # fmt: skip
    parts = ["single", "cluster"] if args.only is None else [args.only]
    workroot = Path(tempfile.mkdtemp(prefix="raftmq-cpu-budget-"))
    started = datetime.now()
    path = args.json or RESULTS_DIR / f"cpu-budget-{started:%Y%m%d-%H%M%S}.json"
    args.profile_dir = path.parent / f"{path.stem}-profiles"  # py-spy's raw output, kept
    args.profile_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    try:
        for name in parts:
            (workroot / name).mkdir(parents=True, exist_ok=True)
            results[name] = (single_part if name == "single" else cluster_part)(args, workroot)
            print_part("one node" if name == "single" else "3 nodes, clients on followers",
                       results[name])  # fmt: skip
            sys.stdout.flush()
    except KeyboardInterrupt:
        print("interrupted: reporting the parts done so far", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(workroot, ignore_errors=True)
    doc = {"started": started.isoformat(timespec="seconds"),
           "finished": datetime.now().isoformat(timespec="seconds"),
           "versions": _versions(), "argv": sys.argv,
           "config": {k: v for k, v in vars(args).items() if k != "json"},
           "stages": STAGES, "parts": results}  # fmt: skip
    path.write_text(json.dumps(doc, indent=1, default=str))
    print("\n" + markdown(results))
    print(f"\nresults: {path}\nprofiles (py-spy raw): {args.profile_dir}"
          + (f"\nnode data and logs kept in {workroot}" if args.keep else ""))
    bad = [p for p in results.values() if p["errors"] or not p["load"]["consumed"]]
    return 1 if bad or len(results) < len(parts) else 0


if __name__ == "__main__":
    sys.exit(main())
