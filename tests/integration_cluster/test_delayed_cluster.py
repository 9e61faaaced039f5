"""Delayed messages (x-delayed-message) across a leader kill: they are in the replicated
state, so none is lost, and none is delayed by more than a failover beyond its due time
(the new leader's Tick releases them)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pika
import pytest

from harness.cluster import RaftMQCluster
from tests.integration.helpers import Collector, close_quietly, connect, pump, unique

pytestmark = pytest.mark.timeout(90)

FAILOVER_BUDGET_S = 5.0


def test_delayed_messages_survive_a_leader_kill(
        make_cluster: Callable[..., RaftMQCluster]) -> None:
    c = make_cluster(3)
    c.wait_level(4)
    leader = c.leader()
    p_node, c_node = c.others(leader)
    x, q = unique("delayed-x"), unique("delayed-q")
    pconn = connect(p_node.url)
    cconn = connect(c_node.url)
    try:
        pch = pconn.channel()
        pch.exchange_declare(x, "x-delayed-message", durable=True,
                             arguments={"x-delayed-type": "fanout"})
        pch.queue_declare(q, durable=True)
        pch.queue_bind(q, x)
        pch.confirm_delivery()
        due: dict[bytes, float] = {}
        for i in range(20):
            delay = 1500 + 150 * i
            body = b"d%02d" % i
            pch.basic_publish(x, "", body, pika.BasicProperties(
                delivery_mode=2, headers={"x-delay": delay}))
            due[body] = time.monotonic() + delay / 1000  # (confirmed: held from now on)
        arrived: dict[bytes, float] = {}
        got = Collector(ack=True)

        def note(ch: object, method: object, props: pika.BasicProperties,
                 body: bytes) -> None:
            arrived.setdefault(body, time.monotonic())
            got(ch, method, props, body)

        cch = cconn.channel()
        cch.basic_consume(q, note)
        c.kill(leader)  # before the first is due
        pump(cconn, lambda: len(arrived) == len(due), 30, what="every delayed message")
        assert sorted(arrived) == sorted(due)
        assert len(got) == len(due), "one delivery each"
        for body, t in arrived.items():
            late = t - due[body]
            assert late > -0.25, f"{body!r} released {-late:.2f}s early"
            assert late < FAILOVER_BUDGET_S, f"{body!r} released {late:.2f}s late"
        print(f"latest release after due: {max(arrived[b] - due[b] for b in due):.2f}s")
    finally:
        close_quietly(pconn)
        close_quietly(cconn)
