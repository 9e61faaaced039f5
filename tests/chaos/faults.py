"""Injecting and healing the faults of a schedule on a :class:`~tests.chaos.cluster.ChaosCluster`.

Every call here blocks (signals, process starts, proxy commands, status polls); the runner calls
them from a worker thread while the clients keep running on the event loop.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from tests.harness.raftmq import RaftMQNode

from .cluster import ChaosCluster
from .powerloss import cut_back
from .schedule import Fault

HEAL_TIMEOUT_S = 30.0  # after a fault is healed, how long the cluster may take to be healthy


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
        if kind in ("kill", "pause", "power-loss", "slow", "drain"):
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
                report = cut_back(nd.data_dir, self.model)
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
