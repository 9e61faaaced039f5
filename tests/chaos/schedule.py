"""Seeded fault schedules: everything random about a run is drawn here, from
``random.Random(seed)``, before the run starts, so ``--seed N`` (with the same ``--nodes`` and
``--fault-seconds``) replays the same faults with the same timings and the same node tunables.

Which node is "the leader" can only be known at run time; a fault names a *role* and a number in
[0, 1) (``pick``) that chooses among the nodes of that role, sorted by id, when it is injected.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

# kind -> weight. Kinds:
#   kill            kill -9 of one node (the leader or a follower), restarted after `duration`
#   kill-minority   kill -9 of a minority (5 nodes: 2), restarted after `duration`
#   pause           SIGSTOP of one node (leader or follower), SIGCONT after `duration`
#   isolate         one node's Raft links cut from every other node
#   halves          a random minority | majority split of the Raft links
#   ring            5 nodes: every node reaches only its two ring neighbours (each sees a
#                   majority, no two the same); 3 nodes: a bridge (one pair cut, the third
#                   node sees both)
#   kill-all        kill -9 of every node, all restarted after `duration`
#   power-loss      kill -9 of one node, journal cut back to its last fdatasync, restarted
#   power-loss-all  the same for every node at once
FAULT_WEIGHTS: dict[str, int] = {
    "kill": 18,
    "kill-minority": 6,
    "pause": 14,
    "isolate": 14,
    "halves": 12,
    "ring": 10,
    "kill-all": 8,
    "power-loss": 10,
    "power-loss-all": 8,
}
# Kinds only drawn when asked for (--kinds): adding them to FAULT_WEIGHTS would change what
# every existing seed means.
#   slow            one node's Raft links get 0.1-0.5 s of latency each way
#   transfer        Raft leadership moved to a follower (raftmq cluster transfer-leadership)
#   drain           one node drained (raftmq node drain), stopped, started after `duration`
#   rolling         every node in turn drained, stopped, started and waited for
#   membership      one member (leader or follower) removed (raftmq cluster remove) and stopped;
#                   after `duration` a fresh node (new id, data directory, ports) is started and
#                   added (raftmq cluster add), so the cluster is back to its size
#   slow-disk       one node's fsync / fdatasync / msync each delayed 50-500 ms (an LD_PRELOAD
#                   shim, slowsync.c) for `duration`
#   full-disk       one node's data directory (a small tmpfs) filled up to a few KiB for
#                   `duration`, then the filler deleted (a node that crashed is restarted)
EXTRA_KINDS = ("slow", "transfer", "drain", "rolling", "membership", "slow-disk", "full-disk")
ALL_KINDS = (*FAULT_WEIGHTS, *EXTRA_KINDS)
PARTITIONS = ("isolate", "halves", "ring")
ROLE_FAULTS = ("kill", "pause", "isolate", "power-loss", "slow", "drain",  # at the leader or
               "membership", "slow-disk", "full-disk")  # a follower
EST_RECOVERY_S = 4.0  # budget per fault for the harness to see the cluster healthy again


@dataclass(frozen=True)
class Fault:
    kind: str
    duration: float  # how long the fault lasts before it is healed
    gap: float  # calm after the cluster is healthy again, before the next fault
    role: str = "any"  # leader / follower / any
    pick: float = 0.0  # which node of that role; for partitions, the shuffle
    mode: str = "refuse"  # partitions: refuse (close + refuse connections) or drop (black hole)

    def describe(self) -> str:
        what = self.kind
        if self.kind in ROLE_FAULTS:
            what += f"({self.role})"
        if self.kind in PARTITIONS:
            what += f"[{self.mode}]"
        return f"{what} {self.duration:.1f}s"


@dataclass(frozen=True)
class Schedule:
    seed: int
    nodes: int
    faults: tuple[Fault, ...]
    env: dict[str, str] = field(default_factory=dict)  # RAFTMQ_* tunables for every node
    producers: int = 3
    consumers: int = 3
    queues: int = 2
    rate: float = 25.0  # msg/s per producer
    window: int = 8  # unconfirmed messages per producer
    prefetch: int = 20
    warmup: float = 2.0
    fault_seconds: float = 30.0
    backlog: int = 0  # 1 KiB messages left in a queue nobody consumes (bigger snapshots)

    def describe(self) -> str:
        return " ; ".join(f.describe() for f in self.faults)

    @property
    def spare_nodes(self) -> int:
        """Node ids to provision beyond ``nodes``: one per membership change."""
        return sum(1 for f in self.faults if f.kind == "membership")

    @property
    def needs_tmpfs(self) -> bool:
        """Data directories on small tmpfs mounts (the full-disk fault fills one)."""
        return any(f.kind == "full-disk" for f in self.faults)

    kinds: tuple[str, ...] = ()  # restricted to these kinds (empty: all)
    env_override: tuple[tuple[str, str], ...] = ()

    def at_total_rate(self, rate: float) -> Schedule:
        """The same schedule with its producers sharing ``rate`` msg/s (``--rate``); each
        may have 50 ms of its rate unconfirmed at once."""
        per = rate / self.producers
        return dataclasses.replace(self, rate=per, window=max(self.window, int(per / 20)))

    def rerun(self) -> str:
        cmd = (f"python -m tests.chaos --seed {self.seed} --nodes {self.nodes} "
               f"--fault-seconds {self.fault_seconds:g}")
        if self.kinds:
            cmd += f" --kinds {','.join(self.kinds)}"
        for k, v in self.env_override:
            cmd += f" --env {k}={v}"
        if self.rate != 25.0:
            cmd += f" --rate {self.rate * self.producers:g}"
        return cmd


def _pick_kind(rng: random.Random, nodes: int) -> str:
    kinds = [k for k in FAULT_WEIGHTS if not (k == "kill-minority" and nodes < 5)]
    return rng.choices(kinds, weights=[FAULT_WEIGHTS[k] for k in kinds])[0]


def make_schedule(seed: int, nodes: int, fault_seconds: float = 30.0,
                  kinds: tuple[str, ...] | None = None,
                  env: dict[str, str] | None = None) -> Schedule:
    """Faults back to back until their durations, gaps and an estimate of each recovery fill
    ``fault_seconds`` (at least one fault). ``kinds`` restricts the fault kinds; ``env``
    overrides node tunables (``RAFTMQ_...``) drawn from the seed."""
    rng = random.Random(seed)
    env_drawn = {
        # Tunables drawn per schedule, so faults land on both sides of the timeouts.
        "RAFTMQ_NODE_DOWN_AFTER": rng.choice(["2", "5"]),
        "RAFTMQ_ISOLATION_TIMEOUT": rng.choice(["1.5", "3"]),
        # Small values make compaction (and snapshot transfer to lagging nodes) happen mid-run.
        "RAFTMQ_SNAPSHOT_ENTRIES": rng.choice(["100000", "400"]),
    }
    faults: list[Fault] = []
    used = 0.0
    while not faults or used < fault_seconds:
        kind = _pick_kind(rng, nodes) if kinds is None else rng.choice(kinds)
        duration = round(rng.uniform(1.0, 8.0), 1)
        if kind in ("kill-all", "power-loss-all"):
            duration = round(rng.uniform(0.5, 3.0), 1)
        gap = round(rng.uniform(0.5, 3.0), 1)
        role = rng.choice(["leader", "follower"]) if kind in ROLE_FAULTS else "any"
        fault = Fault(kind, duration, gap, role=role, pick=round(rng.random(), 4),
                      mode=rng.choice(["refuse", "drop"]))
        faults.append(fault)
        used += duration + gap + EST_RECOVERY_S
    overrides = tuple(sorted((env or {}).items()))
    return Schedule(seed=seed, nodes=nodes, faults=tuple(faults), env={**env_drawn, **dict(overrides)},
                    fault_seconds=fault_seconds, kinds=tuple(kinds or ()),
                    env_override=overrides)
