"""Direct reply-to across a 3-node cluster: requester and responder on different nodes;
a third node's connection holding a forged token receives nothing."""

from __future__ import annotations

from typing import Any

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from harness.cluster import RaftMQCluster
from tests.integration.helpers import close_quietly, connect, pump, settle, unique, wait_until

pytestmark = pytest.mark.timeout(90)

RT = "amq.rabbitmq.reply-to"


def _consume_replies(conn: pika.BlockingConnection, into: list[bytes]) -> BlockingChannel:
    """A reply consumer, once the cluster's command level allows direct reply-to."""
    holder: list[Any] = []

    def attempt() -> bool:
        try:
            ch = conn.channel()
            ch.basic_consume(RT, lambda _c, _m, _p, b: into.append(b), auto_ack=True)
        except pika.exceptions.ChannelClosedByBroker:  # 404 until level 4 is enabled
            return False
        holder.append(ch)
        return True

    wait_until(attempt, timeout=15)
    return holder[0]


def test_reply_crosses_nodes(cluster: RaftMQCluster) -> None:
    a, b, c = (connect(cluster.node(i).url) for i in range(3))
    try:
        replies: list[bytes] = []
        req = _consume_replies(a, replies)
        queue = unique("rpc")
        resp = b.channel()
        resp.queue_declare(queue)
        seen: list[str] = []
        resp.basic_consume(queue, lambda _c, _m, p, _b: seen.append(p.reply_to), auto_ack=True)
        stolen: list[bytes] = []
        thief_ch = _consume_replies(c, stolen)
        for i in range(5):
            req.basic_publish("", queue, b"req%d" % i, pika.BasicProperties(reply_to=RT))
            pump(b, lambda: bool(seen), what="a request on node 2")
            token = seen.pop()
            resp.basic_publish("", token, b"rep%d" % i)
        pump(a, lambda: len(replies) == 5, what="5 replies on node 1")
        assert replies == [b"rep%d" % i for i in range(5)]
        # node 3's connection: the victim's token with a key of its own, and replies to
        # its own channel part with the victim's key: nothing arrives anywhere
        thief_ch.basic_publish("", queue, b"q", pika.BasicProperties(reply_to=RT))
        pump(b, lambda: bool(seen), what="the thief's request")
        thief_token = seen.pop()
        resp.basic_publish("", token.rpartition(".")[0] + "." + thief_token.rpartition(".")[2],
                           b"forged")
        resp.basic_publish("", thief_token.rpartition(".")[0] + "." + token.rpartition(".")[2],
                           b"forged")
        resp.basic_publish("", token, b"last")
        pump(a, lambda: len(replies) == 6, what="the last reply")
        settle(c)
        assert replies[-1] == b"last" and stolen == []
    finally:
        for conn in (a, b, c):
            close_quietly(conn)
