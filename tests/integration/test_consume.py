"""Consuming: prefetch (per consumer and global), ack/nack/reject, recover, redelivery."""

from __future__ import annotations

import pytest

from tests.integration.helpers import (
    Collector,
    connect,
    consume_n,
    get_all,
    pump,
    queue_depth,
    settle,
    wait_depth,
)

pytestmark = pytest.mark.timeout(30)


def fill(conn, queue, n, prefix="m"):
    """Declare ``queue`` and put ``n`` messages in it (confirmed, so they are there on return)."""
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(queue)
    for i in range(n):
        ch.basic_publish("", queue, f"{prefix}{i}".encode())
    ch.close()


def test_prefetch_count_limits_unacked_deliveries(conn, names):
    q = names.queue()
    fill(conn, q, 10)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=3)
    got = Collector()
    ch.basic_consume(q, got)
    pump(conn, lambda: len(got) >= 3, what="3 deliveries")
    settle(conn)
    assert got.bodies == [b"m0", b"m1", b"m2"]  # exactly the window, in order

    ch.basic_ack(got.items[0].method.delivery_tag)
    pump(conn, lambda: len(got) >= 4, what="4th delivery after one ack")
    settle(conn)
    assert len(got) == 4 and got.bodies[3] == b"m3"

    # a multiple ack frees the whole window
    ch.basic_ack(got.items[3].method.delivery_tag, multiple=True)
    pump(conn, lambda: len(got) >= 7, what="3 more deliveries after multiple ack")
    settle(conn)
    assert got.bodies == [f"m{i}".encode() for i in range(7)]
    assert [d.method.delivery_tag for d in got.items] == list(range(1, 8))


def test_prefetch_is_per_consumer_and_set_before_consume(conn, names):
    qa, qb = names.queue("a"), names.queue("b")
    fill(conn, qa, 10)
    fill(conn, qb, 10)
    ch = conn.channel()
    a, b = Collector(), Collector()
    ch.basic_qos(prefetch_count=2)
    ch.basic_consume(qa, a)
    ch.basic_qos(prefetch_count=5)  # applies to consumers created from now on
    ch.basic_consume(qb, b)
    pump(conn, lambda: len(a) >= 2 and len(b) >= 5, what="both windows full")
    settle(conn)
    assert (len(a), len(b)) == (2, 5)


def test_global_qos_is_shared_by_the_channels_consumers(conn, names):
    qa, qb = names.queue("a"), names.queue("b")
    fill(conn, qa, 10)
    fill(conn, qb, 10)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=4, global_qos=True)
    a, b = Collector(), Collector()
    ch.basic_consume(qa, a)
    ch.basic_consume(qb, b)
    pump(conn, lambda: len(a) + len(b) >= 4, what="4 deliveries over both consumers")
    settle(conn)
    assert len(a) + len(b) == 4
    first = (a.items or b.items)[0]
    ch.basic_ack(first.method.delivery_tag)
    pump(conn, lambda: len(a) + len(b) >= 5, what="one more after an ack")
    settle(conn)
    assert len(a) + len(b) == 5


def test_prefetch_zero_means_unlimited(conn, names):
    q = names.queue()
    fill(conn, q, 25)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=0)
    got = Collector()
    ch.basic_consume(q, got)
    pump(conn, lambda: len(got) >= 25, what="all 25")
    assert got.bodies == [f"m{i}".encode() for i in range(25)]


def test_auto_ack_consumer_ignores_prefetch(conn, names):
    q = names.queue()
    fill(conn, q, 10)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1)
    got = Collector()
    ch.basic_consume(q, got, auto_ack=True)
    pump(conn, lambda: len(got) >= 10, what="all 10 with auto-ack")
    wait_depth(conn.channel(), q, 0)


def test_two_consumers_share_a_queue(conn, names):
    q = names.queue()
    ch = conn.channel()
    ch.queue_declare(q)
    a, b = Collector(ack=True), Collector(ack=True)
    ch.basic_consume(q, a)
    ch.basic_consume(q, b)
    fill(conn, q, 20)
    pump(conn, lambda: len(a) + len(b) >= 20, what="20 deliveries")
    settle(conn, 0.2)
    assert sorted(a.bodies + b.bodies) == sorted(f"m{i}".encode() for i in range(20))
    assert len(a) >= 5 and len(b) >= 5, (len(a), len(b))  # round robin, not one hogging


@pytest.mark.parametrize("how", ["nack", "reject"])
def test_requeue_redelivers_with_redelivered_flag(ch, names, how):
    q = names.queue()
    ch.queue_declare(q)
    ch.confirm_delivery()
    for body in (b"a", b"b", b"c"):
        ch.basic_publish("", q, body)
    method, _, body = ch.basic_get(q)
    assert (body, method.redelivered) == (b"a", False)
    if how == "nack":
        ch.basic_nack(method.delivery_tag, requeue=True)
    else:
        ch.basic_reject(method.delivery_tag, requeue=True)
    # back at the head of the queue, marked redelivered
    method, _, body = ch.basic_get(q)
    assert (body, method.redelivered) == (b"a", True)
    ch.basic_ack(method.delivery_tag)
    rest = get_all(ch, q)
    assert [(d.body, d.method.redelivered) for d in rest] == [(b"b", False), (b"c", False)]


@pytest.mark.parametrize("how", ["nack", "reject"])
def test_reject_without_requeue_drops(ch, names, how):
    q = names.queue()
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    ch.basic_publish("", q, b"y")
    method, _, body = ch.basic_get(q)
    assert body == b"x"
    if how == "nack":
        ch.basic_nack(method.delivery_tag, requeue=False)
    else:
        ch.basic_reject(method.delivery_tag, requeue=False)
    assert [d.body for d in get_all(ch, q)] == [b"y"]
    assert queue_depth(ch, q) == 0


def test_nack_multiple_requeues_in_original_order(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, b"%d" % i)
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(3)]
    assert tags == [1, 2, 3]
    ch.basic_nack(tags[-1], multiple=True, requeue=True)
    got = get_all(ch, q)
    assert [d.body for d in got] == [b"0", b"1", b"2", b"3", b"4"]
    assert [d.method.redelivered for d in got] == [True, True, True, False, False]


def test_ack_multiple(conn, names):
    ch = conn.channel()
    q = names.queue()
    ch.queue_declare(q)
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, b"%d" % i)
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(4)]
    ch.basic_ack(tags[2], multiple=True)  # acks 1..3, leaves 4 unacked
    ch.close()  # unacked tag 4 goes back
    got = get_all(conn.channel(), q)
    assert [(d.body, d.method.redelivered) for d in got] == [(b"3", True), (b"4", False)]


def test_basic_recover_redelivers_unacked_to_consumer(conn, names):
    q = names.queue()
    fill(conn, q, 3)
    ch = conn.channel()
    got = Collector()
    ch.basic_consume(q, got)
    pump(conn, lambda: len(got) >= 3, what="3 deliveries")
    assert not any(d.method.redelivered for d in got.items)
    ch.basic_recover(requeue=True)
    pump(conn, lambda: len(got) >= 6, what="3 redeliveries after basic.recover")
    redelivered = got.items[3:]
    assert sorted(d.body for d in redelivered) == [b"m0", b"m1", b"m2"]
    assert all(d.method.redelivered for d in redelivered)
    for d in redelivered:
        ch.basic_ack(d.method.delivery_tag)
    ch.close()
    assert queue_depth(conn.channel(), q) == 0


def test_unacked_messages_return_when_channel_closes(conn, names):
    q = names.queue()
    fill(conn, q, 4)
    ch = conn.channel()
    got = consume_n(conn, ch, q, 4, ack=False)
    assert len(got) == 4
    assert queue_depth(conn.channel(), q) == 0  # all 4 are out, unacked
    ch.close()
    check = conn.channel()
    wait_depth(check, q, 4)
    again = get_all(check, q)
    assert [d.body for d in again] == [b"m0", b"m1", b"m2", b"m3"]
    assert all(d.method.redelivered for d in again)


def test_unacked_messages_return_when_connection_closes(broker, conn, names):
    q = names.queue()
    fill(conn, q, 3)
    other = connect(broker.url)
    och = other.channel()
    got = consume_n(other, och, q, 3, ack=False)
    assert [d.body for d in got] == [b"m0", b"m1", b"m2"]
    other.close()
    check = conn.channel()
    wait_depth(check, q, 3)
    assert all(d.method.redelivered for d in get_all(check, q))


def test_cancel_stops_deliveries(conn, names):
    q = names.queue()
    ch = conn.channel()
    ch.queue_declare(q)
    got = Collector(ack=True)
    tag = ch.basic_consume(q, got, consumer_tag="my-tag")
    assert tag == "my-tag"
    fill(conn, q, 2)
    pump(conn, lambda: len(got) >= 2, what="2 deliveries")
    assert all(d.method.consumer_tag == "my-tag" for d in got.items)
    ch.basic_cancel(tag)
    fill(conn, q, 2, prefix="late")
    settle(conn)
    assert len(got) == 2
    assert queue_depth(ch, q) == 2


def test_delivery_tags_are_per_channel(conn, names):
    q = names.queue()
    fill(conn, q, 4)
    a, b = conn.channel(), conn.channel()
    ta = [a.basic_get(q)[0].delivery_tag for _ in range(2)]
    tb = [b.basic_get(q)[0].delivery_tag for _ in range(2)]
    assert ta == [1, 2] and tb == [1, 2]
    a.basic_ack(2, multiple=True)
    b.basic_ack(2, multiple=True)
    assert queue_depth(a, q) == 0
