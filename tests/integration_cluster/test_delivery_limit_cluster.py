"""x-delivery-limit across a node kill: the node whose consumer holds a message unacked
is killed (here the leader), and that counts as a return, as a quorum queue counts a
consumer lost with its node; the count is in the replicated state, so the new leader
applies the limit."""

from __future__ import annotations

from collections.abc import Callable

import pika
import pytest

from harness.cluster import RaftMQCluster
from tests.integration.helpers import (
    Collector,
    close_quietly,
    connect,
    pump,
    queue_depth,
    settle,
    unique,
    wait_depth,
)

pytestmark = pytest.mark.timeout(90)


def test_a_node_lost_with_the_message_unacked_counts(
        make_cluster: Callable[..., RaftMQCluster]) -> None:
    c = make_cluster(3, node_down_after=1.5)
    c.wait_level(4)
    victim = c.leader()
    other = c.others(victim)[0]
    q, dlq, dlx = unique("dl-limit"), unique("dl-limit-dlq"), unique("dl-limit-dlx")
    oconn = connect(other.url)
    vconn = connect(victim.url)
    try:
        och = oconn.channel()
        och.exchange_declare(dlx, "fanout")
        och.queue_declare(dlq, durable=True)
        och.queue_bind(dlq, dlx)
        och.queue_declare(q, durable=True, arguments={"x-delivery-limit": 1,
                                                      "x-dead-letter-exchange": dlx})
        och.confirm_delivery()
        for body in (b"a", b"b"):
            och.basic_publish("", q, body, pika.BasicProperties(delivery_mode=2))
        c.wait_converged()
        vch = vconn.channel()
        vch.basic_qos(prefetch_count=2)
        held = Collector()
        vch.basic_consume(q, held)
        pump(vconn, lambda: len(held) == 2, 10, what="deliveries on the victim")
        assert [d.properties.headers for d in held.items] == [None, None]
        cch = oconn.channel()
        got = Collector()
        cch.basic_consume(q, got)
        c.kill(victim)  # its consumer's two messages unacked: one return each
        pump(oconn, lambda: len(got) == 2, 20, what="redelivery on a surviving node")
        assert [(d.body, d.method.redelivered, d.properties.headers) for d in got.items] == [
            (b"a", True, {"x-delivery-count": 1}), (b"b", True, {"x-delivery-count": 1})]
        cch.basic_nack(got.items[0].method.delivery_tag, requeue=True)  # 2 > 1: dead
        cch.basic_ack(got.items[1].method.delivery_tag)
        wait_depth(och, dlq, 1, timeout=10)
        settle(oconn, 0.3)
        assert len(got) == 2, "returned past the limit, yet redelivered"
        assert queue_depth(och, q) == 0
        method, props, body = och.basic_get(dlq, auto_ack=True)
        assert body == b"a"
        (death,) = props.headers["x-death"]
        assert (death["reason"], death["queue"]) == ("delivery_limit", q)
        assert "x-delivery-count" not in props.headers
    finally:
        close_quietly(oconn)
        close_quietly(vconn)
