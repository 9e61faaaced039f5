"""x-delayed-message exchanges with pika (the rabbitmq-delayed-message-exchange plugin's
interface: type x-delayed-message, argument x-delayed-type, header x-delay in ms).
Debian's RabbitMQ 3.10 has no such plugin: RaftMQ only."""

from __future__ import annotations

import time

import pika
import pytest

from tests.integration.helpers import (
    Collector,
    Names,
    expect_channel_error,
    pump,
    queue_depth,
)

pytestmark = [pytest.mark.raftmq_only, pytest.mark.timeout(60),
              pytest.mark.usefixtures("level_4")]


def test_delayed_then_delivered_in_due_order(conn: pika.BlockingConnection,
                                             names: Names) -> None:
    ch = conn.channel()
    x, q = names.exchange(), names.queue()
    ch.exchange_declare(x, "x-delayed-message", arguments={"x-delayed-type": "direct"})
    ch.queue_declare(q)
    ch.queue_bind(q, x, "k")
    ch.confirm_delivery()
    t0 = time.monotonic()
    for body, delay in ((b"slow", 1200), (b"fast", 600)):
        ch.basic_publish(x, "k", body, pika.BasicProperties(headers={"x-delay": delay}))
    ch.basic_publish(x, "k", b"now")  # no x-delay: routed at once
    depth = queue_depth(ch, q)
    if time.monotonic() - t0 < 0.55:  # (on a loaded machine "fast" may be due already)
        assert depth == 1
    got = Collector(ack=True)
    ch.basic_consume(q, got)
    pump(conn, lambda: len(got) == 3, 10, what="the delayed messages")
    assert got.bodies == [b"now", b"fast", b"slow"]
    elapsed = time.monotonic() - t0
    assert elapsed >= 1.2
    assert [d.properties.headers for d in got.items[1:]] == [{"x-delay": -600},
                                                              {"x-delay": -1200}]


def test_declare_needs_x_delayed_type(conn: pika.BlockingConnection, names: Names) -> None:
    x = names.exchange()
    err = expect_channel_error(406, lambda: conn.channel().exchange_declare(
        x, "x-delayed-message"))
    assert "'x-delayed-type' must be an existing exchange type" in err.reply_text
