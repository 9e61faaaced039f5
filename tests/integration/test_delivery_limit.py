"""x-delivery-limit with pika: returns counted (nack / reject with requeue, a channel
closed with the message unacked), past the limit dead-lettered with reason
delivery_limit or dropped, x-delivery-count on redeliveries.

The same tests run against RabbitMQ 3.10 (``BROKER=rabbitmq``), where the queues are
quorum queues (x-delivery-limit is a quorum-queue argument; a classic queue refuses it
with 406). RaftMQ's queues are replicated as quorum queues are and follow them: they
take the argument whatever ``x-queue-type`` says. One difference, allowed below: a quorum
queue's basic.get-ok of a message never returned carries ``x-delivery-count: 0``;
RaftMQ's carries no header (a first delivery is the message as published, without a
rewrite of its properties)."""

from __future__ import annotations

from typing import Any

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from tests.integration.helpers import (
    Collector,
    Names,
    close_quietly,
    connect,
    expect_channel_error,
    pump,
    queue_depth,
    wait_depth,
)

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("level_4")]


def declare(ch: BlockingChannel, name: str, limit: Any, dlx: str | None = None) -> None:
    args: dict[str, Any] = {"x-queue-type": "quorum", "x-delivery-limit": limit}
    if dlx is not None:
        args["x-dead-letter-exchange"] = dlx
    ch.queue_declare(name, durable=True, arguments=args)


def publish(ch: BlockingChannel, queue: str, body: bytes, **props: Any) -> None:
    ch.confirm_delivery()  # (a quorum queue enqueues asynchronously: the confirm says it did)
    ch.basic_publish("", queue, body, pika.BasicProperties(**props))


def count(props: pika.BasicProperties) -> Any:
    return (props.headers or {}).get("x-delivery-count")


def test_nack_requeue_past_the_limit_dead_letters(conn: pika.BlockingConnection,
                                                  names: Names) -> None:
    ch = conn.channel()
    q, dlq, dlx = names.queue(), names.queue("dlq"), names.exchange("dlx")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    declare(ch, q, 2, dlx)
    publish(ch, q, b"poison", headers={"app": "x"}, expiration="60000")
    got = Collector()

    def nack_all(c: BlockingChannel, method: Any, props: pika.BasicProperties,
                 body: bytes) -> None:
        got(c, method, props, body)
        c.basic_nack(method.delivery_tag, requeue=True)

    cch = conn.channel()
    cch.basic_consume(q, nack_all)
    pump(conn, lambda: queue_depth(ch, dlq) == 1, what="the message dead-lettered")
    # delivered limit + 1 times: x-delivery-count absent at first, then 1, 2
    assert [(d.body, d.method.redelivered, count(d.properties)) for d in got.items] == [
        (b"poison", False, None), (b"poison", True, 1), (b"poison", True, 2)]
    assert got.items[1].properties.headers["app"] == "x"
    method, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"poison"
    h = props.headers
    assert "x-delivery-count" not in h
    (death,) = h["x-death"]
    assert (death["reason"], death["queue"], death["count"]) == ("delivery_limit", q, 1)
    assert death["original-expiration"] == "60000" and props.expiration is None
    assert (h["x-first-death-reason"], h["x-first-death-queue"]) == ("delivery_limit", q)
    assert h["app"] == "x"
    assert queue_depth(ch, q) == 0


def test_without_a_dead_letter_exchange_it_is_dropped(conn: pika.BlockingConnection,
                                                      names: Names) -> None:
    ch = conn.channel()
    q = names.queue()
    declare(ch, q, 1)
    publish(ch, q, b"a")
    seen = []
    for _ in range(3):
        method, props, _body = ch.basic_get(q)
        if method is None:
            break
        seen.append((method.redelivered, count(props)))
        ch.basic_reject(method.delivery_tag, requeue=True)
    assert seen[0][1] in (None, 0)  # (RabbitMQ's basic.get says 0: see the docstring)
    assert seen[1:] == [(True, 1)]
    wait_depth(ch, q, 0)


def test_a_closed_channel_counts_as_a_return(broker: Any, conn: pika.BlockingConnection,
                                             names: Names) -> None:
    ch = conn.channel()
    q = names.queue()
    declare(ch, q, 1)
    publish(ch, q, b"a")
    for expected in (None, 1):
        holder = connect(broker.url)  # takes it unacked, then goes away
        try:
            hch = holder.channel()
            hch.basic_qos(prefetch_count=1)
            got = Collector()
            hch.basic_consume(q, got)
            pump(holder, lambda: len(got) == 1)  # noqa: B023 (used within the iteration)
            assert count(got.items[0].properties) == expected
            if expected is None:
                hch.close()  # the channel: one return
        finally:
            close_quietly(holder)  # the connection: the second return, past the limit
    wait_depth(ch, q, 0)


def test_a_limit_that_is_not_an_integer_limits_nothing(conn: pika.BlockingConnection,
                                                       names: Names) -> None:
    ch = conn.channel()
    q = names.queue()
    declare(ch, q, "abc")
    publish(ch, q, b"a")
    counts = []
    for _ in range(4):
        method, props, _body = ch.basic_get(q)
        assert method is not None
        counts.append(count(props))
        ch.basic_nack(method.delivery_tag, requeue=True)
    assert counts[1:] == [1, 2, 3]


@pytest.mark.raftmq_only
def test_any_queue_takes_the_argument(conn: pika.BlockingConnection, names: Names) -> None:
    """RabbitMQ 3.10 refuses x-delivery-limit on a classic queue (406 "invalid arg
    'x-delivery-limit' ... of queue type rabbit_classic_queue"); RaftMQ's queues are all
    replicated, as quorum queues, and take it."""
    ch = conn.channel()
    q = names.queue()
    ch.queue_declare(q, arguments={"x-delivery-limit": 0})
    publish(ch, q, b"a")
    method, _props, _body = ch.basic_get(q)
    ch.basic_nack(method.delivery_tag, requeue=True)
    wait_depth(ch, q, 0)


def test_a_classic_queue_refuses_it_on_rabbitmq(broker: Any, conn: pika.BlockingConnection,
                                                names: Names) -> None:
    if broker.is_raftmq:
        pytest.skip("RabbitMQ's classic queues only (RaftMQ follows quorum queues)")
    q = names.queue()
    expect_channel_error(406, lambda: conn.channel().queue_declare(
        q, arguments={"x-queue-type": "classic", "x-delivery-limit": 1}))
