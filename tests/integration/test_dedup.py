"""x-message-deduplication exchanges with pika (the rabbitmq-message-deduplication
plugin's interface: x-cache-size, x-cache-ttl, header x-deduplication-header). Debian's
RabbitMQ 3.10 has no such plugin: RaftMQ only."""

from __future__ import annotations

import pika
import pytest

from tests.integration.helpers import Names, expect_channel_error, queue_depth

pytestmark = [pytest.mark.raftmq_only, pytest.mark.timeout(60),
              pytest.mark.usefixtures("level_4")]


def test_a_duplicate_is_confirmed_and_dropped(conn: pika.BlockingConnection,
                                              names: Names) -> None:
    ch = conn.channel()
    x, q = names.exchange(), names.queue()
    ch.exchange_declare(x, "x-message-deduplication", arguments={"x-cache-size": 100})
    ch.queue_declare(q)
    ch.queue_bind(q, x)
    ch.confirm_delivery()  # (a nack would raise NackError)
    for i, key in enumerate(["order-1", "order-2", "order-1", "order-1", "order-3"]):
        ch.basic_publish(x, "", b"%d" % i, pika.BasicProperties(
            headers={"x-deduplication-header": key}))
    ch.basic_publish(x, "", b"no-key")  # without the header: never a duplicate
    ch.basic_publish(x, "", b"no-key")
    assert queue_depth(ch, q) == 5
    bodies = []
    for _ in range(5):
        _m, _p, body = ch.basic_get(q, auto_ack=True)
        bodies.append(body)
    assert bodies == [b"0", b"1", b"4", b"no-key", b"no-key"]


def test_declare_needs_a_cache_size(conn: pika.BlockingConnection, names: Names) -> None:
    err = expect_channel_error(406, lambda: conn.channel().exchange_declare(
        names.exchange(), "x-message-deduplication"))
    assert "'x-cache-size' must be an integer greater than 0" in err.reply_text


def test_a_queue_drops_a_value_it_holds_until_acked(conn: pika.BlockingConnection,
                                                    names: Names) -> None:
    ch = conn.channel()
    q = names.queue()
    ch.queue_declare(q, arguments={"x-message-deduplication": True})
    ch.confirm_delivery()

    def send(key: str) -> None:
        ch.basic_publish("", q, key.encode(), pika.BasicProperties(
            headers={"x-deduplication-header": key}), mandatory=True)  # never returned

    send("a")
    send("a")
    send("b")
    assert queue_depth(ch, q) == 2
    method, _p, body = ch.basic_get(q)
    assert body == b"a"
    send("a")  # unacked: still held
    assert queue_depth(ch, q) == 1
    ch.basic_ack(method.delivery_tag)
    send("a")  # acknowledged: free again
    assert queue_depth(ch, q) == 2
