"""Publish deduplication on 3 nodes: the caches are replicated, so a duplicate published
on another node, after the leader is killed, is still recognised (the plugin's caches
are one node's)."""

from __future__ import annotations

from collections.abc import Callable

import pika
import pytest

from harness.cluster import RaftMQCluster
from tests.integration.helpers import close_quietly, connect, queue_depth, unique, wait_until

pytestmark = pytest.mark.timeout(90)


def test_a_duplicate_on_another_node_after_a_leader_kill(
        make_cluster: Callable[..., RaftMQCluster]) -> None:
    c = make_cluster(3)
    c.wait_level(4)
    leader = c.leader()
    a, b = c.others(leader)
    x, q, dq = unique("dedup-x"), unique("dedup-q"), unique("dedup-dq")
    aconn = connect(a.url)
    try:
        ach = aconn.channel()
        ach.exchange_declare(x, "x-message-deduplication", durable=True,
                             arguments={"x-cache-size": 1000})
        ach.queue_declare(q, durable=True)
        ach.queue_bind(q, x)
        ach.queue_declare(dq, durable=True, arguments={"x-message-deduplication": True})
        ach.confirm_delivery()
        for key in ("k1", "k2"):
            props = pika.BasicProperties(headers={"x-deduplication-header": key})
            ach.basic_publish(x, "", key.encode(), props)
            ach.basic_publish("", dq, key.encode(), props)
    finally:
        close_quietly(aconn)
    c.wait_converged()
    c.kill(leader)
    bconn = None
    try:
        # the next publishes go through the new leader, on the other node
        bconn = wait_until(lambda: connect(b.url), 20, what="a connection to another node")
        bch = bconn.channel()
        bch.confirm_delivery()
        for key in ("k1", "k2", "k3"):
            props = pika.BasicProperties(headers={"x-deduplication-header": key})
            bch.basic_publish(x, "", key.encode(), props)
            bch.basic_publish("", dq, key.encode(), props)
        assert queue_depth(bch, q) == 3  # k1, k2 from a; k3 from b
        assert queue_depth(bch, dq) == 3
    finally:
        close_quietly(bconn)
