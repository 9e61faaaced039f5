"""Crash (kill -9) and restart on the same data directory and ports.

RaftMQ; on RabbitMQ only with BROKER_RESTARTS=1 (a RabbitMQ per test, slow), which is how these
expectations were checked against the reference.

Durable queues, exchanges and bindings and persistent messages that were confirmed must all
be back, in order; transient entities (non-durable and exclusive queues, non-durable
exchanges) must be gone; messages that were delivered but not acked are ready again, marked
redelivered.
"""

from __future__ import annotations

import pika
import pytest

from tests.integration.helpers import (
    Collector,
    close_quietly,
    connect,
    expect_channel_error,
    get_all,
    pump,
    queue_depth,
    roundtrip_ok,
    unique,
)

pytestmark = [pytest.mark.restart, pytest.mark.timeout(180)]

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def crash_and_restart(broker) -> None:
    node = broker.node
    old_pid = node.pid
    node.kill()  # SIGKILL to the whole process group, reaped
    assert node.proc.poll() is not None
    node.start()  # same data dir, same ports; returns once AMQP answers
    assert node.pid != old_pid


def test_kill9_restart_keeps_durable_state_and_drops_transient(fresh_broker):
    b = fresh_broker
    durable_q, transient_q, excl_q = unique("durable"), unique("transient"), unique("excl")
    durable_x, transient_x = unique("dx"), unique("tx")

    conn = connect(b.url)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(durable_q, durable=True)
    ch.queue_declare(transient_q, durable=False)
    ch.queue_declare(excl_q, exclusive=True)
    ch.exchange_declare(durable_x, "topic", durable=True)
    ch.exchange_declare(transient_x, "fanout", durable=False)
    ch.queue_bind(durable_q, durable_x, routing_key="orders.#")
    for i in range(200):
        ch.basic_publish("", durable_q, b"msg-%03d" % i, PERSISTENT)  # each confirmed
    ch.basic_publish("", transient_q, b"t", PERSISTENT)
    ch.basic_publish("", excl_q, b"e", PERSISTENT)
    assert queue_depth(ch, durable_q) == 200

    crash_and_restart(b)
    close_quietly(conn)  # its socket died with the node

    conn = connect(b.url)
    try:
        ch = conn.channel()
        ok = ch.queue_declare(durable_q, passive=True).method
        assert (ok.message_count, ok.consumer_count) == (200, 0)
        got = get_all(ch, durable_q)
        assert [d.body for d in got] == [b"msg-%03d" % i for i in range(200)]
        assert all(d.properties.delivery_mode == 2 for d in got)

        expect_channel_error(404, lambda: conn.channel().queue_declare(transient_q, passive=True))
        expect_channel_error(404, lambda: conn.channel().queue_declare(excl_q, passive=True))
        expect_channel_error(404, lambda: conn.channel().exchange_declare(transient_x, passive=True))

        # the durable exchange and its binding survived
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare(durable_x, passive=True)
        ch.basic_publish(durable_x, "orders.new", b"routed-after-restart", PERSISTENT, mandatory=True)
        assert [d.body for d in get_all(ch, durable_q)] == [b"routed-after-restart"]
    finally:
        close_quietly(conn)
    roundtrip_ok(b.url)


def test_kill9_with_unacked_messages_makes_them_ready_again(fresh_broker):
    b = fresh_broker
    q = unique("unacked")
    conn = connect(b.url)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(q, durable=True)
    for i in range(10):
        ch.basic_publish("", q, b"u%d" % i, PERSISTENT)
    cons = conn.channel()
    got = Collector()
    cons.basic_consume(q, got)  # never acks
    pump(conn, lambda: len(got) == 10, what="10 unacked deliveries")
    ack_ch = conn.channel()
    m, _, _ = ack_ch.basic_get(q)
    assert m is None  # everything is out, unacked

    crash_and_restart(b)
    close_quietly(conn)

    conn = connect(b.url)
    try:
        ch = conn.channel()
        assert queue_depth(ch, q) == 10
        again = get_all(ch, q)
        assert [d.body for d in again] == [b"u%d" % i for i in range(10)]
        assert all(d.method.redelivered for d in again)
        assert queue_depth(ch, q) == 0
    finally:
        close_quietly(conn)


def test_unacked_survive_kill9_and_acked_do_not_duplicate(fresh_broker):
    """Acked messages may come back after a crash (RabbitMQ writes acks lazily, so at-least-once
    is all AMQP promises), but nothing unacked is lost, order holds and nothing is doubled."""
    b = fresh_broker
    q = unique("acked")
    conn = connect(b.url)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(q, durable=True)
    for i in range(6):
        ch.basic_publish("", q, b"a%d" % i, PERSISTENT)
    for _ in range(4):
        m, _, _ = ch.basic_get(q)
        ch.basic_ack(m.delivery_tag)
    # a synchronous round trip after the acks, so the broker has processed them
    assert queue_depth(ch, q) == 2

    crash_and_restart(b)
    close_quietly(conn)

    conn = connect(b.url)
    try:
        got = [d.body for d in get_all(conn.channel(), q)]
        assert got[-2:] == [b"a4", b"a5"]
        assert got == sorted(set(got)), got  # in order, no duplicates
        assert set(got) <= {b"a%d" % i for i in range(6)}
    finally:
        close_quietly(conn)


def test_graceful_restart_keeps_durable_queue(fresh_broker):
    b = fresh_broker
    q = unique("graceful")
    conn = connect(b.url)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(q, durable=True)
    for i in range(20):
        ch.basic_publish("", q, b"g%d" % i, PERSISTENT)
    close_quietly(conn)
    b.node.stop()  # SIGTERM
    b.node.start()
    conn = connect(b.url)
    try:
        assert [d.body for d in get_all(conn.channel(), q)] == [b"g%d" % i for i in range(20)]
    finally:
        close_quietly(conn)


def test_repeated_crashes_do_not_lose_or_duplicate(fresh_broker):
    b = fresh_broker
    q = unique("repeat")
    expected: list[bytes] = []
    for round_no in range(3):
        conn = connect(b.url)
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(q, durable=True)
        for i in range(10):
            body = b"r%d-%d" % (round_no, i)
            ch.basic_publish("", q, body, PERSISTENT)
            expected.append(body)
        crash_and_restart(b)
        close_quietly(conn)
    conn = connect(b.url)
    try:
        assert [d.body for d in get_all(conn.channel(), q)] == expected
    finally:
        close_quietly(conn)
