"""The set-up several node-loss tests share: a consumer on the node about to be lost holds
unacked messages while a consumer on another node waits for them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pika
from pika.adapters.blocking_connection import BlockingChannel

from harness.cluster import RaftMQCluster
from harness.raftmq import RaftMQNode
from tests.integration.helpers import Collector, close_quietly, connect, pump, unique

PERSISTENT = pika.BasicProperties(delivery_mode=2)


@dataclass
class Held:
    queue: str
    bodies: list[bytes]
    held: Collector  # the victim's consumer (no acks)
    got: Collector  # the consumer on the other node (acks)
    other_conn: pika.BlockingConnection
    victim_conn: pika.BlockingConnection
    victim_channel: BlockingChannel  # where ``held`` consumes

    def wait_redelivered(self, timeout: float, what: str) -> None:
        """Until the other node's consumer got every held message."""
        pump(self.other_conn, lambda: len(self.got) >= len(self.bodies), timeout, what=what)

    def all_redelivered_in_order(self) -> bool:
        return self.got.bodies == self.bodies and all(d.method.redelivered for d in self.got.items)


@contextmanager
def unacked_on(cluster: RaftMQCluster, victim: RaftMQNode, other: RaftMQNode, prefix: str,
               count: int = 10) -> Iterator[Held]:
    """``count`` persistent messages published (confirmed) on ``other``, all delivered to a
    consumer on ``victim`` that does not ack them, and a consuming (acking) channel on
    ``other`` that got none of them yet."""
    q = unique(prefix)
    bodies = [b"%s-%02d" % (prefix.encode(), i) for i in range(count)]
    oconn = connect(other.url)
    vconn = connect(victim.url)
    try:
        och = oconn.channel()
        och.queue_declare(q, durable=True)
        och.confirm_delivery()
        for body in bodies:
            och.basic_publish("", q, body, PERSISTENT)
        cluster.wait_converged()
        vch = vconn.channel()
        vch.basic_qos(prefetch_count=count)
        held = Collector(ack=False)
        vch.basic_consume(q, held)
        pump(vconn, lambda: len(held) >= count, 10, what="deliveries on the victim")
        assert held.bodies == bodies
        got = Collector(ack=True)
        och.basic_consume(q, got)
        yield Held(q, bodies, held, got, oconn, vconn, vch)
    finally:
        close_quietly(oconn)
        close_quietly(vconn)
