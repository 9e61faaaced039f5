"""node/shovel/runner.py without brokers: "amqp://" as the local node, passwords kept out
of statuses, when a status is replicated, and which node runs the shovels (the leader
only, and none once it is not)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from cluster import commands as C
from cluster.machine import apply, new_state
from cluster.machine.shovels import Shovel, redact
from node.config import Config
from node.shovel.runner import REPORT_S, Shovels, Worker, local_uri

pytestmark = [pytest.mark.timeout(30)]

VALUE = {"src-uri": "amqp://u:secret@127.0.0.1:1/", "src-queue": "q", "dest-uri": "amqp://",
         "dest-queue": "d", "reconnect-delay": 0.05}


def test_local_uri() -> None:
    cfg = Config(amqp_host="0.0.0.0", amqp_port=5999, default_user="ad min",  # noqa: S104
                 default_pass="p@ss")
    assert local_uri("amqp://", cfg) == "amqp://ad%20min:p%40ss@127.0.0.1:5999/%2F"
    assert local_uri("amqp:///v1", cfg) == "amqp://ad%20min:p%40ss@127.0.0.1:5999/v1"
    assert local_uri("amqp://me:pw@/v1?heartbeat=5", cfg) == \
        "amqp://me:pw@127.0.0.1:5999/v1?heartbeat=5"
    assert local_uri("amqp://h:1/x", cfg) == "amqp://h:1/x"  # a host: as given


def test_redact() -> None:
    assert redact("amqp://u:secret@h:1/v") == "amqp://u:***@h:1/v"
    assert redact("amqp://h/v") == "amqp://h/v"


@dataclass
class FakeRaft:
    state: Any
    is_leader: bool = True


@dataclass
class FakeHost:
    raft: FakeRaft
    cfg: Config = field(default_factory=Config)
    node_id: str = "n1"
    ready: bool = True
    draining: bool = False
    proposed: list[C.Command] = field(default_factory=list)

    def propose(self, cmd: C.Command) -> None:
        self.proposed.append(cmd)


def test_report_on_change_and_when_the_replica_disagrees() -> None:
    host = FakeHost(FakeRaft(None))
    w = Worker(host, Shovel("/", "s", dict(VALUE), moved=7), lambda _: None)  # type: ignore[arg-type]
    first = w.report(100.0)
    assert first == C.ShovelStatus("/", "s", "n1", "starting", "", 7)
    assert w.report(100.1) is None
    w.state = "running"
    assert w.report(100.2) == C.ShovelStatus("/", "s", "n1", "running", "", 7)
    w.moved = 3  # counts: at most every REPORT_S
    assert w.report(100.3) is None
    assert w.report(100.2 + REPORT_S) == C.ShovelStatus("/", "s", "n1", "running", "", 10)
    # the replica shows another node's late report: said again, at most every REPORT_S
    other = Shovel("/", "s", dict(VALUE), state="running", node="n2")
    assert w.report(100.3 + REPORT_S, other) is None
    assert w.report(100.2 + 2 * REPORT_S, other) is not None
    mine = Shovel("/", "s", dict(VALUE), state="running", node="n1")
    assert w.report(100.2 + 4 * REPORT_S, mine) is None


async def test_only_the_leader_runs_shovels() -> None:
    st = new_state()
    st.level = 4
    apply(st, 1, C.ShovelSet("/", "s", dict(VALUE)), [])
    host = FakeHost(FakeRaft(st, is_leader=False))
    shovels = Shovels(host)  # type: ignore[arg-type]
    await shovels.reconcile()
    assert shovels.workers == {} and host.proposed == []
    host.raft.is_leader = True
    await shovels.reconcile()
    assert list(shovels.workers) == [("/", "s")]
    # the source refuses connections: terminated with the reason, then tried again
    for _ in range(100):
        await asyncio.sleep(0.02)
        await shovels.reconcile()
        if any(isinstance(c, C.ShovelStatus) and c.state == "terminated"
               for c in host.proposed):
            break
    bad = [c for c in host.proposed if isinstance(c, C.ShovelStatus) and c.state == "terminated"]
    assert bad and "secret" not in bad[0].reason, host.proposed
    worker = shovels.workers[("/", "s")]
    assert worker.attempt >= 1
    # a worker whose task ended by itself (a bug) is started again
    assert worker._task is not None
    worker._task.cancel()
    await asyncio.sleep(0)
    await shovels.reconcile()
    assert shovels.workers[("/", "s")] is not worker
    worker = shovels.workers[("/", "s")]
    # a new definition restarts it; leadership lost stops it
    apply(st, 2, C.ShovelSet("/", "s", {**VALUE, "src-prefetch-count": 5}), [])
    await shovels.reconcile()
    assert shovels.workers[("/", "s")] is not worker
    host.raft.is_leader = False
    await shovels.reconcile()
    assert shovels.workers == {}
    await shovels.stop()
