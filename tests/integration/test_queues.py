"""Queue lifecycle: get/get-empty, declare-ok counts, passive declare, server-named,
exclusive and auto-delete queues, exclusive consumers, purge, delete (if-unused/if-empty),
consumer cancel notification on queue deletion."""

from __future__ import annotations

import pika.exceptions
import pytest

from tests.integration.helpers import (
    Collector,
    close_quietly,
    connect,
    expect_channel_error,
    get_all,
    pump,
    queue_depth,
    settle,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)


def passive_code(conn, queue) -> int:
    """Passive declare on a throwaway channel: 200 if it succeeds, else the channel-close code."""
    ch = conn.channel()
    try:
        ch.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code
    ch.close()
    return 200


def exists(conn, queue) -> bool:
    """True if the queue exists (and is accessible to ``conn``), False on 404."""
    code = passive_code(conn, queue)
    assert code in (200, 404), f"passive declare of {queue}: unexpected {code}"
    return code == 200


def put(ch, queue, n, prefix="m"):
    ch.confirm_delivery()
    for i in range(n):
        ch.basic_publish("", queue, f"{prefix}{i}".encode())


# ------------------------------------------------------------------ get / declare-ok


def test_basic_get_empty(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    assert ch.basic_get(q) == (None, None, None)


def test_get_ok_reports_remaining_message_count(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    put(ch, q, 3)
    counts, bodies = [], []
    for _ in range(3):
        method, props, body = ch.basic_get(q, auto_ack=True)
        counts.append(method.message_count)
        bodies.append(body)
        assert method.exchange == "" and method.routing_key == q
    assert counts == [2, 1, 0]
    assert bodies == [b"m0", b"m1", b"m2"]
    assert ch.basic_get(q) == (None, None, None)


def test_get_with_auto_ack_removes_and_without_ack_keeps_out(conn, names):
    ch = conn.channel()
    q = names.queue()
    ch.queue_declare(q)
    put(ch, q, 2)
    m1, _, _ = ch.basic_get(q, auto_ack=False)
    m2, _, _ = ch.basic_get(q, auto_ack=True)
    assert (m1.delivery_tag, m2.delivery_tag) == (1, 2)
    assert queue_depth(ch, q) == 0
    ch.close()  # only the un-acked one comes back
    got = get_all(conn.channel(), q)
    assert [(d.body, d.method.redelivered) for d in got] == [(b"m0", True)]


def test_declare_ok_message_and_consumer_counts(conn, names):
    ch = conn.channel()
    q = names.queue()
    ok = ch.queue_declare(q).method
    assert (ok.queue, ok.message_count, ok.consumer_count) == (q, 0, 0)
    put(ch, q, 5)
    ok = ch.queue_declare(q).method  # non-passive redeclare also reports counts
    assert (ok.message_count, ok.consumer_count) == (5, 0)

    cons = conn.channel()
    cons.basic_qos(prefetch_count=1)
    a, b = Collector(), Collector()
    cons.basic_consume(q, a)
    cons.basic_consume(q, b)
    pump(conn, lambda: len(a) == 1 and len(b) == 1, what="one delivery per consumer")
    ok = ch.queue_declare(q, passive=True).method
    assert (ok.message_count, ok.consumer_count) == (3, 2)  # unacked are not "ready"
    cons.close()
    wait_until(lambda: ch.queue_declare(q, passive=True).method.consumer_count == 0,
               what="consumers gone after channel close")
    assert queue_depth(ch, q) == 5


def test_passive_declare_of_existing_queue_changes_nothing(ch, names):
    q = names.queue()
    ch.queue_declare(q, durable=False, auto_delete=False)
    put(ch, q, 2)
    # passive ignores the other flags entirely
    ok = ch.queue_declare(q, passive=True, durable=True, exclusive=True, auto_delete=True).method
    assert ok.queue == q and ok.message_count == 2


def test_passive_declare_of_existing_exchange(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "topic")
    ch.exchange_declare(x, "fanout", passive=True)  # type is not checked when passive
    ch.exchange_declare("amq.topic", "topic", passive=True)


def test_server_named_queues(conn, names):
    ch = conn.channel()
    q1 = ch.queue_declare("", exclusive=True).method.queue
    q2 = ch.queue_declare("", exclusive=True).method.queue
    assert q1.startswith("amq.gen-") and q2.startswith("amq.gen-")
    assert q1 != q2
    assert len(q1) > len("amq.gen-") + 8
    ch.confirm_delivery()
    ch.basic_publish("", q1, b"hello")
    assert [d.body for d in get_all(ch, q1)] == [b"hello"]


# ------------------------------------------------------------------ exclusive / auto-delete


@pytest.mark.parametrize("op", ["declare", "passive", "consume", "get", "purge", "delete", "bind"])
def test_exclusive_queue_is_locked_to_its_connection(broker, conn, names, op):
    q = names.queue("excl")
    conn.channel().queue_declare(q, exclusive=True)
    other = connect(broker.url)
    try:
        och = other.channel()
        calls = {
            "declare": lambda: och.queue_declare(q, exclusive=True),
            "passive": lambda: och.queue_declare(q, passive=True),
            "consume": lambda: och.basic_consume(q, lambda *a: None),
            "get": lambda: och.basic_get(q),
            "purge": lambda: och.queue_purge(q),
            "delete": lambda: och.queue_delete(q),
            "bind": lambda: och.queue_bind(q, "amq.fanout"),
        }
        expect_channel_error(405, calls[op])
        assert other.is_open  # a channel error, not a connection error
        other.channel().queue_declare("", exclusive=True)
    finally:
        close_quietly(other)
    assert exists(conn, q)  # the owner is unaffected


def test_exclusive_queue_usable_from_other_channels_of_owner(conn, names):
    q = names.queue("excl")
    conn.channel().queue_declare(q, exclusive=True)
    ch2 = conn.channel()
    put(ch2, q, 1)
    assert [d.body for d in get_all(conn.channel(), q)] == [b"m0"]


def test_exclusive_queue_deleted_when_owner_connection_closes(broker, conn, names):
    q = names.queue("excl")
    owner = connect(broker.url)
    owner.channel().queue_declare(q, exclusive=True)
    assert passive_code(conn, q) == 405  # exists, locked to its owner
    owner.close()
    wait_until(lambda: not exists(conn, q), what="exclusive queue to disappear")
    # and the name is free for someone else now
    conn.channel().queue_declare(q, exclusive=True)


def test_auto_delete_queue_deleted_after_last_consumer_cancels(conn, names):
    q = names.queue("ad")
    ch = conn.channel()
    ch.queue_declare(q, auto_delete=True)
    t1 = ch.basic_consume(q, lambda *a: None)
    t2 = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(t1)
    settle(conn, 0.2)
    assert exists(conn, q)  # one consumer left
    ch.basic_cancel(t2)
    wait_until(lambda: not exists(conn, q), what="auto-delete queue to disappear")


def test_auto_delete_queue_deleted_when_consumer_channel_closes(conn, names):
    q = names.queue("ad")
    ch = conn.channel()
    ch.queue_declare(q, auto_delete=True)
    ch.basic_consume(q, lambda *a: None)
    ch.close()
    wait_until(lambda: not exists(conn, q), what="auto-delete queue to disappear")


def test_auto_delete_queue_without_consumers_stays(conn, names):
    q = names.queue("ad")
    ch = conn.channel()
    ch.queue_declare(q, auto_delete=True)
    put(ch, q, 1)
    settle(conn, 0.2)
    assert exists(conn, q)
    assert queue_depth(conn.channel(), q) == 1


def test_exclusive_consumer_refuses_second_consumer(broker, conn, names):
    q = names.queue()
    ch = conn.channel()
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None, exclusive=True)
    other = connect(broker.url)
    try:
        expect_channel_error(403, lambda: other.channel().basic_consume(q, lambda *a: None))
        # same connection, other channel: refused as well
        expect_channel_error(403, lambda: conn.channel().basic_consume(q, lambda *a: None))
    finally:
        close_quietly(other)


def test_exclusive_consume_refused_while_queue_has_consumers(conn, names):
    q = names.queue()
    ch = conn.channel()
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None)
    expect_channel_error(403, lambda: conn.channel().basic_consume(q, lambda *a: None, exclusive=True))


def test_exclusive_consumer_released_on_cancel(conn, names):
    q = names.queue()
    ch = conn.channel()
    ch.queue_declare(q)
    tag = ch.basic_consume(q, lambda *a: None, exclusive=True)
    ch.basic_cancel(tag)
    conn.channel().basic_consume(q, lambda *a: None)  # no 403 now


# ------------------------------------------------------------------ purge / delete


def test_purge_removes_ready_but_not_unacked(conn, names):
    ch = conn.channel()
    q = names.queue()
    ch.queue_declare(q)
    put(ch, q, 5)
    held = conn.channel()
    m, _, _ = held.basic_get(q)
    purged = ch.queue_purge(q).method.message_count
    assert purged == 4
    assert queue_depth(ch, q) == 0
    held.basic_nack(m.delivery_tag, requeue=True)
    got = get_all(ch, q)
    assert [(d.body, d.method.redelivered) for d in got] == [(b"m0", True)]
    assert ch.queue_purge(q).method.message_count == 0


def test_delete_reports_message_count(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    put(ch, q, 3)
    assert ch.queue_delete(q).method.message_count == 3
    assert not exists(ch.connection, q)


def test_delete_if_unused_refused_while_consumed(conn, names):
    q = names.queue()
    ch = conn.channel()
    ch.queue_declare(q)
    tag = ch.basic_consume(q, lambda *a: None)
    expect_channel_error(406, lambda: conn.channel().queue_delete(q, if_unused=True))
    assert exists(conn, q)
    ch.basic_cancel(tag)
    conn.channel().queue_delete(q, if_unused=True)
    assert not exists(conn, q)


def test_delete_if_empty_refused_while_holding_messages(conn, names):
    q = names.queue()
    ch = conn.channel()
    ch.queue_declare(q)
    put(ch, q, 1)
    expect_channel_error(406, lambda: conn.channel().queue_delete(q, if_empty=True))
    assert queue_depth(conn.channel(), q) == 1
    conn.channel().queue_purge(q)
    conn.channel().queue_delete(q, if_empty=True)
    assert not exists(conn, q)


def test_delete_of_missing_queue_is_ok(ch, names):
    assert ch.queue_delete(names.queue("never")).method.message_count == 0


def test_exchange_delete_if_unused(conn, names):
    x, q = names.exchange(), names.queue()
    ch = conn.channel()
    ch.exchange_declare(x, "direct")
    ch.queue_declare(q)
    ch.queue_bind(q, x, routing_key="k")
    expect_channel_error(406, lambda: conn.channel().exchange_delete(x, if_unused=True))
    ch.queue_unbind(q, x, routing_key="k")
    conn.channel().exchange_delete(x, if_unused=True)
    expect_channel_error(404, lambda: conn.channel().exchange_declare(x, passive=True))


def test_deleting_queue_removes_its_bindings(conn, names):
    x, q = names.exchange(), names.queue()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare(x, "fanout")
    ch.queue_declare(q)
    ch.queue_bind(q, x)
    ch.queue_delete(q)
    ch.queue_declare(q)  # same name: fresh queue, no binding
    ch.basic_publish(x, "", b"m")
    assert queue_depth(ch, q) == 0


def test_consumer_cancelled_by_broker_when_queue_deleted(conn, names):
    q = names.queue()
    ch = conn.channel()
    ch.queue_declare(q)
    cancels = []
    ch.add_on_cancel_callback(lambda frame: cancels.append(frame.method))
    got = Collector(ack=True)
    tag = ch.basic_consume(q, got)
    put(conn.channel(), q, 1)
    pump(conn, lambda: len(got) == 1, what="delivery before deletion")
    conn.channel().queue_delete(q)
    pump(conn, lambda: bool(cancels), what="basic.cancel from the broker")
    assert cancels[0].consumer_tag == tag
    assert ch.is_open  # the channel survives the cancel
    assert tag not in ch.consumer_tags
