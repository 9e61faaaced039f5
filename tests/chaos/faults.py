"""Injecting and healing the faults of a schedule on a :class:`~tests.chaos.cluster.ChaosCluster`.

Every call here blocks (signals, process starts, proxy commands, status polls); the runner calls
them from a worker thread while the clients keep running on the event loop.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import itertools
import json
import os
import random
import re
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.cluster import ClusterError
from harness.raftmq import RaftMQNode

from .cluster import ChaosCluster
from .powerloss import cut_back
from .schedule import Fault
from .slowdisk import DEFAULT_RANGE_MS, clear_delay, set_delay, shim_stats

HEAL_TIMEOUT_S = 30.0  # after a fault is healed, how long the cluster may take to be healthy
FILLER = "chaos-filler"  # the full-disk fault's file in the target's data directory
FILL_LEAVE = 8192  # bytes the full-disk fault leaves free
FILL_MAX = 1 << 34  # bound on what it writes, whatever statvfs says
CRASH_LINES = re.compile(r"Traceback|Error|error|SIGBUS|Bus error|No space|ENOSPC|corrupt|"
                         r"Fatal|CRITICAL")


def fill_disk(directory: Path, leave: int = FILL_LEAVE) -> tuple[int, int]:
    """Write ``directory/chaos-filler`` until the file system says ENOSPC, then give back
    ``leave`` bytes; returns (bytes written, bytes free after)."""
    path = directory / FILLER
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    written = 0
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 512):
            block = b"\0" * chunk
            while written < FILL_MAX:
                try:
                    n = os.write(fd, block)
                except OSError as e:
                    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    break
                written += n
                if n < chunk:
                    break
        os.ftruncate(fd, max(0, written - leave))
        os.fsync(fd)
    finally:
        os.close(fd)
    st = os.statvfs(directory)
    return written, st.f_bavail * st.f_frsize


def _crash_report(nd: RaftMQNode, lines: int = 200) -> str:
    """Exit code and the log lines that look like the reason, for a node that died."""
    code = nd.proc.returncode if nd.proc is not None else None
    how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    tail = nd.log_tail(lines).splitlines()
    since = max((i for i, line in enumerate(tail) if "##### chaos" in line and "inject" in line),
                default=0)
    hits = [line.strip() for line in tail[since:] if CRASH_LINES.search(line)]
    return f"{nd.node_id} crashed ({how})" + (": " + " | ".join(hits[-6:]) if hits else "")


@dataclass
class FaultRecord:
    """What one fault did, and when (``time.monotonic()``)."""

    fault: Fault
    targets: list[str] = field(default_factory=list)  # nodes hit, or cut pairs "a-b"
    leader_before: str | None = None
    started: float = 0.0
    healed: float | None = None
    recovered: float | None = None  # the cluster was healthy again
    notes: list[str] = field(default_factory=list)

    @property
    def recovery_s(self) -> float | None:
        if self.healed is None or self.recovered is None:
            return None
        return self.recovered - self.healed

    def describe(self) -> str:
        rec = "NO RECOVERY" if self.recovery_s is None else f"rec {self.recovery_s:.1f}s"
        return f"{self.fault.describe()} -> {','.join(self.targets)} ({rec})"


def _api(nd: RaftMQNode, method: str, path: str) -> dict[str, Any]:
    """The node's management API as guest (from loopback); errors are answers too."""
    req = urllib.request.Request(f"http://127.0.0.1:{nd.management_port}{path}", method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return dict(json.load(r))
    except urllib.error.HTTPError as e:
        return {"error": f"HTTP {e.code}"}
    except (OSError, ValueError) as e:
        return {"error": str(e)}


def _pick(nodes: list[str], pick: float) -> str:
    return sorted(nodes)[min(int(pick * len(nodes)), len(nodes) - 1)]


class Nemesis:
    def __init__(self, cc: ChaosCluster, power_loss_model: str = "journal") -> None:
        self.cc = cc
        self.model = power_loss_model
        self.killed: set[str] = set()
        self._shim_before = (0, 0)  # the slow-disk shim's counters when the fault started

    # ------------------------------------------------------------------ targets

    def _role(self, fault: Fault, leader: str | None) -> str:
        candidates = [n for n in self.cc.ids if n not in self.killed]
        if fault.role == "leader" and leader is not None:
            return leader
        if fault.role == "follower" and leader is not None:
            return _pick([n for n in candidates if n != leader], fault.pick)
        return _pick(candidates, fault.pick)

    def _partition_pairs(self, fault: Fault, victim: str | None) -> list[tuple[str, str]]:
        ids = sorted(self.cc.ids)
        shuffled = ids[:]
        rng = random.Random(fault.pick)
        rng.shuffle(shuffled)
        n = len(ids)
        if fault.kind == "isolate":
            assert victim is not None
            return [(victim, o) for o in ids if o != victim]
        if fault.kind == "halves":
            k = rng.randint(1, (n - 1) // 2)
            minority, majority = shuffled[:k], shuffled[k:]
            return [(a, b) for a in minority for b in majority]
        if fault.kind == "ring":
            if n < 5:  # a bridge: the middle node sees both ends, the ends not each other
                return [(shuffled[0], shuffled[2])]
            keep = {frozenset((shuffled[i], shuffled[(i + 1) % n])) for i in range(n)}
            return [(a, b) for a, b in itertools.combinations(ids, 2)
                    if frozenset((a, b)) not in keep]
        raise ValueError(fault.kind)

    # ------------------------------------------------------------------ inject / heal

    def inject(self, fault: Fault) -> FaultRecord:
        cc = self.cc
        rec = FaultRecord(fault)
        rec.leader_before = cc.leader_id()
        kind = fault.kind
        if kind in ("kill", "pause", "power-loss", "slow", "drain", "membership", "slow-disk",
                    "full-disk"):
            rec.targets = [self._role(fault, rec.leader_before)]
        elif kind == "transfer":
            followers = sorted(i for i in cc.ids if i != rec.leader_before)
            rec.targets = [_pick(followers, fault.pick)] if followers else []
        elif kind in ("kill-all", "power-loss-all", "rolling"):
            rec.targets = list(cc.ids)
        elif kind == "kill-minority":
            shuffled = sorted(cc.ids)
            random.Random(fault.pick).shuffle(shuffled)
            rec.targets = shuffled[: (cc.n - 1) // 2]
        cc.note_all(f"inject {fault.describe()} targets={rec.targets or '-'} "
                    f"leader={rec.leader_before}")
        if kind in ("isolate", "halves", "ring"):
            victim = self._role(fault, rec.leader_before) if kind == "isolate" else None
            pairs = self._partition_pairs(fault, victim)
            rec.targets = [f"{a}-{b}" for a, b in pairs] if kind != "isolate" else [str(victim)]
            assert cc.proxy is not None
            rec.started = time.monotonic()
            for a, b in pairs:
                cc.proxy.cut(a, b, fault.mode)
            return rec
        if kind == "slow":
            assert cc.proxy is not None
            latency = round(0.1 + 0.4 * fault.pick, 2)
            rec.notes.append(f"latency {latency}s")
            rec.started = time.monotonic()
            for other in cc.ids:
                if other != rec.targets[0]:
                    cc.proxy.slow(rec.targets[0], other, latency)
            return rec
        nodes = [cc.by_id[t] for t in rec.targets]
        if kind == "membership":
            rec.started = time.monotonic()
            answer, notes = cc.remove_member(nodes[0])
            rec.notes += notes
            rec.notes.append(f"removed {nodes[0].node_id}: "
                             f"{'ok' if (answer or {}).get('ok') else answer}")
            return rec
        if kind == "slow-disk":
            if cc.shim is None:
                raise RuntimeError(f"slow-disk needs the shim: {cc.shim_error}")
            control = cc.slowsync_file(nodes[0].node_id)
            self._shim_before = shim_stats(control.with_name(control.name + ".log")) or (0, 0)
            rec.started = time.monotonic()
            set_delay(control, *DEFAULT_RANGE_MS)
            rec.notes.append(f"syncs delayed {DEFAULT_RANGE_MS[0]}-{DEFAULT_RANGE_MS[1]} ms")
            return rec
        if kind == "full-disk":
            nd = nodes[0]
            if not cc.tmpfs_mib:
                raise RuntimeError("full-disk needs the data directories on tmpfs "
                                   "(ChaosCluster(tmpfs_mib=...))")
            rec.started = time.monotonic()
            written, free = fill_disk(nd.data_dir)
            rec.notes.append(f"filled {written / 2**20:.0f} MiB, {free // 1024} KiB free")
            return rec
        if kind == "transfer":
            rec.started = time.monotonic()
            leader = cc.by_id.get(rec.leader_before or "")
            if leader is not None and nodes:
                answer = _api(leader, "POST", "/api/cluster/transfer-leadership"
                              f"?to={nodes[0].node_id}")
                rec.notes.append(f"leader after: {answer.get('leader')}")
            return rec
        if kind in ("drain", "rolling"):
            rec.started = time.monotonic()
            for nd in nodes:
                _api(nd, "POST", f"/api/nodes/{nd.node_id}/drain")
                nd.stop()
                self.killed.add(nd.node_id)
                if kind == "rolling":
                    self._start(nd)
                    if cc.wait_healthy(HEAL_TIMEOUT_S) is None:
                        rec.notes.append(f"not healthy after restarting {nd.node_id}")
            return rec
        if kind == "pause":
            rec.started = time.monotonic()
            for nd in nodes:
                cc.signal(nd, signal.SIGSTOP)
                cc.paused.add(nd.node_id)
            return rec
        # kill -9 (and maybe power loss): all targets back to back
        rec.started = time.monotonic()
        for nd in nodes:
            cc.signal(nd, signal.SIGKILL)
        for nd in nodes:
            nd.kill(signal.SIGKILL)  # reap the group
            self.killed.add(nd.node_id)
        if kind.startswith("power-loss"):
            for nd in nodes:
                report = cut_back(nd.data_dir, self.model, cc.side_dir(nd.node_id))
                rec.notes.append(f"{nd.node_id} journal last entry {report['before']} -> "
                                 f"{report['after']}" + (f" removed {report['removed']}"
                                                         if report.get("removed") else ""))
                cc.note(nd, f"power loss: {rec.notes[-1]}")
        return rec

    def heal(self, rec: FaultRecord) -> None:
        cc = self.cc
        kind = rec.fault.kind
        cc.note_all(f"heal {rec.fault.describe()}")
        if kind in ("isolate", "halves", "ring", "slow"):
            assert cc.proxy is not None
            cc.proxy.heal_all()
        elif kind == "pause":
            for t in rec.targets:
                cc.signal(cc.by_id[t], signal.SIGCONT)
                cc.paused.discard(t)
        elif kind == "membership":
            try:
                nd = cc.add_member()
                rec.targets.append(f"+{nd.node_id}")
                rec.notes.append(f"added {nd.node_id}")
            except ClusterError as e:
                rec.notes.append(f"adding a node failed: {str(e).splitlines()[0]}")
                cc.note_all(f"adding a node failed: {e}")
        elif kind == "slow-disk":
            control = cc.slowsync_file(rec.targets[0])
            clear_delay(control)
            after = shim_stats(control.with_name(control.name + ".log")) or (0, 0)
            before = self._shim_before
            if after[0] < before[0]:  # the process restarted meanwhile: its counters too
                before = (0, 0)
            rec.notes.append(f"{after[0] - before[0]} syncs delayed, "
                             f"{(after[1] - before[1]) / 1000:.1f} s in all")
            nd = cc.by_id[rec.targets[0]]
            if not nd.is_running():
                rec.notes.append(_crash_report(nd))
                cc.note_all(f"slow disk: {rec.notes[-1]}; restarting it")
                self._start(nd)
        elif kind == "full-disk":
            nd = cc.by_id[rec.targets[0]]
            with contextlib.suppress(FileNotFoundError):
                (nd.data_dir / FILLER).unlink()
            if not nd.is_running():
                rec.notes.append(_crash_report(nd))
                cc.note_all(f"full disk: {rec.notes[-1]}; restarting it")
                self._start(nd)
        else:
            for t in rec.targets:
                self._start(cc.by_id[t])
        rec.healed = time.monotonic()

    def _start(self, nd: RaftMQNode) -> None:
        if not nd.is_running():
            nd.start(wait=False)
        self.killed.discard(nd.node_id)

    def heal_everything(self) -> None:
        """Whatever is still broken: links, paused and dead nodes."""
        cc = self.cc
        if cc.proxy is not None:
            cc.proxy.heal_all()
        for nd in cc.nodes:
            cc.signal(nd, signal.SIGCONT)
        cc.paused.clear()
        for nd in cc.nodes:
            with contextlib.suppress(OSError):
                clear_delay(cc.slowsync_file(nd.node_id))
            with contextlib.suppress(FileNotFoundError):
                (nd.data_dir / FILLER).unlink()
        for nd in cc.nodes:
            self._start(nd)

    def run_fault(self, fault: Fault, on_event: Any = None) -> FaultRecord:
        """Inject, wait ``duration``, heal, wait until healthy (bounded), then the gap."""
        rec = self.inject(fault)
        if on_event:
            on_event("inject", rec)
        time.sleep(fault.duration)
        self.heal(rec)
        rec.recovered = self.cc.wait_healthy(HEAL_TIMEOUT_S)
        if on_event:
            on_event("healed", rec)
        if rec.recovered is None:
            self.cc.note_all(f"NO RECOVERY within {HEAL_TIMEOUT_S}s after {fault.describe()}")
        time.sleep(fault.gap)
        return rec
