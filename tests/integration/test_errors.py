"""Error handling: channel-level (404/403/405/406) and connection-level (503/530/540) errors.

After every test an observer connection opened *before* the test must still publish and
consume, and a brand-new connection must work too: an error on one channel/connection never
affects anyone else.
"""

from __future__ import annotations

import pika
import pika.exceptions
import pytest

from tests.integration.helpers import (
    close_quietly,
    connect,
    consume_n,
    expect_channel_error,
    expect_connection_error,
    get_all,
    queue_depth,
    roundtrip_ok,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def observer(broker):
    """A bystander connection that must be unaffected by whatever the test provokes."""
    obs = connect(broker.url)
    och = obs.channel()
    q = och.queue_declare("", exclusive=True).method.queue
    yield
    try:
        assert obs.is_open, "observer connection was closed by someone else's error"
        och.basic_publish("", q, b"still-here")
        got = consume_n(obs, och, q, 1)
        assert got[0].body == b"still-here"
    finally:
        close_quietly(obs)
    roundtrip_ok(broker.url)


def assert_connection_usable(conn):
    assert conn.is_open
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.confirm_delivery()
    ch.basic_publish("", q, b"ok")
    assert [d.body for d in get_all(ch, q)] == [b"ok"]


# ------------------------------------------------------------------ 404


def test_passive_declare_missing_queue_404_connection_survives(conn, names):
    ch = conn.channel()
    exc = expect_channel_error(404, lambda: ch.queue_declare(names.queue("missing"), passive=True))
    assert "NOT_FOUND" in exc.reply_text
    assert not ch.is_open
    assert_connection_usable(conn)


def test_passive_declare_missing_exchange_404(conn, names):
    expect_channel_error(404, lambda: conn.channel().exchange_declare(names.exchange("missing"), passive=True))
    assert_connection_usable(conn)


def test_publish_to_missing_exchange_closes_channel_404(conn, names):
    ch = conn.channel()
    ch.basic_publish(names.exchange("missing"), "k", b"lost")  # async: no reply to publish
    # the channel.close arrives asynchronously; the next synchronous call reports it
    expect_channel_error(404, lambda: ch.queue_declare("", exclusive=True))
    assert not ch.is_open
    assert_connection_usable(conn)


def test_publish_to_missing_exchange_in_confirm_mode(conn, names):
    ch = conn.channel()
    ch.confirm_delivery()
    expect_channel_error(404, lambda: ch.basic_publish(names.exchange("missing"), "k", b"lost"))
    assert_connection_usable(conn)


@pytest.mark.parametrize("op", ["consume", "get", "purge", "bind_missing_queue",
                                "bind_missing_exchange", "exchange_bind_missing_source"])
def test_operations_on_missing_entities_404(conn, names, op):
    ch = conn.channel()
    existing = ch.queue_declare("", exclusive=True).method.queue
    missing_q, missing_x = names.queue("missing"), names.exchange("missing")
    calls = {
        "consume": lambda: ch.basic_consume(missing_q, lambda *a: None),
        "get": lambda: ch.basic_get(missing_q),
        "purge": lambda: ch.queue_purge(missing_q),
        "bind_missing_queue": lambda: ch.queue_bind(missing_q, "amq.direct", "k"),
        "bind_missing_exchange": lambda: ch.queue_bind(existing, missing_x, "k"),
        "exchange_bind_missing_source": lambda: ch.exchange_bind("amq.fanout", missing_x),
    }
    expect_channel_error(404, calls[op])
    assert_connection_usable(conn)


# ------------------------------------------------------------------ 406 inequivalent / preconditions


@pytest.mark.parametrize("change", ["type", "durable", "auto_delete", "internal"])
def test_inequivalent_exchange_redeclare_406(conn, names, change):
    x = names.exchange()
    conn.channel().exchange_declare(x, "direct")
    kwargs: dict[str, str | bool] = {"exchange_type": "direct"}
    if change == "type":
        kwargs["exchange_type"] = "fanout"
    else:
        kwargs[change] = True
    exc = expect_channel_error(406, lambda: conn.channel().exchange_declare(x, **kwargs))
    assert "PRECONDITION_FAILED" in exc.reply_text
    # the original survives untouched; an equivalent redeclare is fine
    conn.channel().exchange_declare(x, "direct")
    assert_connection_usable(conn)


@pytest.mark.parametrize("change", ["durable", "auto_delete", "x-max-length"])
def test_inequivalent_queue_redeclare_406(conn, names, change):
    q = names.queue()
    ch = conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"keep")
    if change == "x-max-length":
        def redeclare():
            return conn.channel().queue_declare(q, arguments={"x-max-length": 10})
    else:
        def redeclare():
            return conn.channel().queue_declare(q, **{change: True})
    expect_channel_error(406, redeclare)
    assert queue_depth(conn.channel(), q) == 1  # the queue and its message are untouched
    conn.channel().queue_declare(q)  # equivalent redeclare works


def test_redeclare_builtin_exchange_equivalently_is_ok(conn):
    ch = conn.channel()
    ch.exchange_declare("amq.direct", "direct", durable=True)
    ch.exchange_declare("amq.topic", "topic", durable=True)
    expect_channel_error(406, lambda: conn.channel().exchange_declare("amq.fanout", "fanout", durable=False))


def test_ack_unknown_delivery_tag_406(conn):
    ch = conn.channel()
    ch.basic_ack(delivery_tag=42)
    exc = expect_channel_error(406, lambda: ch.queue_declare("", exclusive=True))
    assert "unknown delivery tag" in exc.reply_text.lower()
    assert_connection_usable(conn)


def test_double_ack_406(conn, names):
    ch = conn.channel()
    q = names.queue()
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    method, _, _ = ch.basic_get(q)
    ch.basic_ack(method.delivery_tag)
    ch.basic_ack(method.delivery_tag)
    expect_channel_error(406, lambda: ch.queue_declare("", exclusive=True))
    assert queue_depth(conn.channel(), q) == 0  # the first ack counted


def test_nack_unknown_delivery_tag_406(conn):
    ch = conn.channel()
    ch.basic_nack(delivery_tag=7, requeue=True)
    expect_channel_error(406, lambda: ch.queue_declare("", exclusive=True))
    assert_connection_usable(conn)


def test_user_id_mismatch_406(conn, names):
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("", exclusive=True).method.queue
    expect_channel_error(406, lambda: ch.basic_publish(
        "", q, b"x", pika.BasicProperties(user_id="mallory")))
    assert_connection_usable(conn)


# ------------------------------------------------------------------ 403 access refused


@pytest.mark.parametrize("kind", ["exchange", "queue"])
def test_declaring_amq_prefixed_name_403(conn, kind):
    ch = conn.channel()
    if kind == "exchange":
        exc = expect_channel_error(403, lambda: ch.exchange_declare("amq.foo", "direct"))
    else:
        exc = expect_channel_error(403, lambda: ch.queue_declare("amq.foo"))
    assert "ACCESS_REFUSED" in exc.reply_text
    # nothing was created
    expect_channel_error(404, lambda: conn.channel().exchange_declare("amq.foo", passive=True))
    expect_channel_error(404, lambda: conn.channel().queue_declare("amq.foo", passive=True))
    assert_connection_usable(conn)


def test_deleting_builtin_exchange_403(conn):
    expect_channel_error(403, lambda: conn.channel().exchange_delete("amq.direct"))
    conn.channel().exchange_declare("amq.direct", passive=True)  # still there


def test_binding_to_default_exchange_403(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    expect_channel_error(403, lambda: ch.queue_bind(q, "", "some-key"))
    assert_connection_usable(conn)


def test_publish_to_internal_exchange_403(conn, names):
    x = names.exchange()
    ch = conn.channel()
    ch.exchange_declare(x, "fanout", internal=True)
    ch.basic_publish(x, "", b"x")
    expect_channel_error(403, lambda: ch.queue_declare("", exclusive=True))
    assert_connection_usable(conn)


# ------------------------------------------------------------------ connection-level errors


def test_unknown_exchange_type_closes_connection_503(broker, names):
    c = connect(broker.url)
    try:
        exc = expect_connection_error(503, lambda: c.channel().exchange_declare(names.exchange(), "no-such-type"))
        assert "COMMAND_INVALID" in exc.reply_text
        assert not c.is_open
    finally:
        close_quietly(c)


def test_qos_prefetch_size_not_implemented_540(broker):
    c = connect(broker.url)
    try:
        expect_connection_error(540, lambda: c.channel().basic_qos(prefetch_size=4096))
    finally:
        close_quietly(c)


def test_closed_channel_number_can_be_reused(conn, names):
    ch = conn.channel()
    number = ch.channel_number
    expect_channel_error(404, lambda: ch.queue_declare(names.queue("missing"), passive=True))
    again = conn.channel(channel_number=number)
    q = again.queue_declare("", exclusive=True).method.queue
    assert q.startswith("amq.gen-")


def test_many_errors_in_a_row_keep_broker_healthy(conn, names):
    for _ in range(20):
        expect_channel_error(404, lambda: conn.channel().queue_declare(names.queue("m"), passive=True))
    assert_connection_usable(conn)
