"""bench.workloads and bench.loadgen's several-queue options, on one RaftMQ node: they count what
they should (no speed is asserted; that is the benchmark's job)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from pamqp import commands as cmd

from bench import workloads as W
from bench.loadgen import LoadConfig, run_load
from bench.run_bench import Broker
from cluster.machine.routing import topic_matches
from harness.raftmq import RaftMQNode


def test_topic_routes_agree_with_the_broker_matcher() -> None:
    pats = W.topic_patterns()
    assert len({p for p, _ in pats}) == W.TOPIC_BINDINGS  # distinct patterns
    routes = W.topic_routes()
    assert len(routes) == W.TOPIC_KEYS
    for key, queues in routes.items():
        assert 1 <= len(queues) <= 2, key
        assert queues == sorted({q for p, q in pats if topic_matches(p, key)}), key
    for pattern, key in (("#", ""), ("a.#", "a"), ("#.b", "a.b"), ("a.*.c", "a.b.c")):
        assert W.topic_match(pattern, key)
    assert not W.topic_match("a.*", "a.b.c") and not W.topic_match("*", "")


def test_several_queues_and_an_exchange(tmp_path: Path) -> None:
    with RaftMQNode(tmp_path / "n1") as node:
        port = node.amqp_port
        # 3 queues, a producer and a consumer connection each: every confirm is consumed
        res = run_load(LoadConfig(port=port, queue="m", queues=3, duration=1.5, warmup=0.5))
        assert res.errors == [] and not res.stalled
        # counted over the measured window: what was in flight when it began (a confirm window
        # and a prefetch per queue) may be consumed in it too
        assert 30 < res.consumed <= res.sent + 3 * (100 + 100)
        # fanout to 3 queues, consumed on one channel: 3 deliveries per confirmed publish
        steps: list[tuple[Any, type]] = [(cmd.Exchange.Declare(exchange="f", exchange_type="fanout", durable=True),
                  cmd.Exchange.DeclareOk)]  # fmt: skip
        for q in ("f0", "f1", "f2"):
            steps += [(cmd.Queue.Declare(queue=q, durable=True), cmd.Queue.DeclareOk),
                      (cmd.Queue.Bind(queue=q, exchange="f"), cmd.Queue.BindOk)]  # fmt: skip
        asyncio.run(W.declare_topology(port, steps))
        cfg = LoadConfig(port=port, queue="f0", exchange="f", routing_keys=("",),
                         consume=("f0", "f1", "f2"), duration=1.5, warmup=0.5, interval=0.5)
        res = run_load(cfg)
        assert res.errors == [] and not res.stalled
        assert res.consumed > 2 * res.confirmed > 0  # 3 copies, some still in flight at the end
        assert len(res.windows) == 3
        # idle connections and declares, scaled down
        assert node.pid is not None
        broker = Broker("raftmq", port, node.pid, node.stop, node.log_tail)
        args = argparse.Namespace(connections=20, hold_s=0.2, queues=150)
        idle = W.run_idle(broker, args)
        assert idle["opened"] == 20 and idle["alive_after_hold"] == 20 and "errors" not in idle
        dec = W.run_declare(broker, args)
        assert dec["declared"] == dec["deleted"] == 150 and "errors" not in dec
