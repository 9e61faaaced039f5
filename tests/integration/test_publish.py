"""Publishing: mandatory/basic.return, publisher confirms, message properties and bodies."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pika
import pika.exceptions
import pytest
from pamqp import commands, header
from pamqp import frame as pframe

from tests.integration.helpers import consume_n, get_all, pump, queue_depth, settle
from tests.integration.rawclient import RawClient

pytestmark = pytest.mark.timeout(60)


def test_mandatory_unroutable_is_returned(conn, names):
    ch = conn.channel()
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    returned = []
    ch.add_on_return_callback(lambda _ch, method, props, body: returned.append((method, props, body)))
    props = pika.BasicProperties(message_id="m-1", headers={"h": "v"}, content_type="text/plain")
    ch.basic_publish(x, "no.such.key", b"bounce", props, mandatory=True)
    pump(conn, lambda: bool(returned), what="basic.return")
    method, rprops, body = returned[0]
    assert method.reply_code == 312
    assert method.reply_text == "NO_ROUTE"
    assert method.exchange == x
    assert method.routing_key == "no.such.key"
    assert body == b"bounce"
    assert rprops.message_id == "m-1"
    assert rprops.headers == {"h": "v"}
    assert rprops.content_type == "text/plain"


def test_mandatory_via_default_exchange_to_missing_queue_is_returned(conn, names):
    ch = conn.channel()
    returned = []
    ch.add_on_return_callback(lambda _c, m, _p, b: returned.append((m, b)))
    missing = names.queue("missing")
    ch.basic_publish("", missing, b"x", mandatory=True)
    pump(conn, lambda: bool(returned), what="basic.return")
    assert returned[0][0].reply_code == 312
    assert returned[0][0].routing_key == missing


def test_non_mandatory_unroutable_is_dropped_silently(conn, names):
    ch = conn.channel()
    x = names.exchange()
    ch.exchange_declare(x, "fanout")
    returned = []
    ch.add_on_return_callback(lambda *a: returned.append(a))
    ch.basic_publish(x, "", b"dropped")
    settle(conn, 0.3)
    assert returned == []
    assert ch.is_open


def test_mandatory_routable_is_not_returned(conn, names):
    ch = conn.channel()
    ch.confirm_delivery()
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"kept", mandatory=True)  # no UnroutableError
    assert [d.body for d in get_all(ch, q)] == [b"kept"]


def test_mandatory_unroutable_with_confirms_is_returned_then_acked(conn, names):
    ch = conn.channel()
    ch.confirm_delivery()
    x = names.exchange()
    ch.exchange_declare(x, "topic")
    # pika raises UnroutableError only if basic.return arrived *and* the publish was then acked
    # (a nack would raise NackError instead)
    with pytest.raises(pika.exceptions.UnroutableError) as info:
        ch.basic_publish(x, "nobody.home", b"r", mandatory=True)
    (msg,) = info.value.messages
    assert msg.body == b"r"
    assert msg.method.reply_code == 312
    # the channel stays usable and confirms keep flowing
    q = names.queue()
    ch.queue_declare(q)
    ch.queue_bind(q, x, routing_key="#")
    ch.basic_publish(x, "nobody.home", b"ok", mandatory=True)
    assert queue_depth(ch, q) == 1


def test_non_mandatory_unroutable_with_confirms_is_acked(conn, names):
    ch = conn.channel()
    ch.confirm_delivery()
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    for _ in range(5):
        ch.basic_publish(x, "nowhere", b"x")  # raises NackError if nacked


def test_raw_return_precedes_ack_and_tags_count_up(broker, names):
    """On the wire: confirm.select-ok, then for a mandatory unroutable publish basic.return
    (+ header + body) strictly before basic.ack with the publish's sequence number."""
    x = names.exchange()
    with RawClient(broker.host, broker.port) as c:
        c.handshake()
        c.send_frame(1, commands.Channel.Open())
        assert isinstance(c.recv_method()[1], commands.Channel.OpenOk)
        c.send_frame(1, commands.Exchange.Declare(exchange=x, exchange_type="fanout"))
        assert isinstance(c.recv_method()[1], commands.Exchange.DeclareOk)
        c.send_frame(1, commands.Confirm.Select())
        assert isinstance(c.recv_method()[1], commands.Confirm.SelectOk)
        for i in range(2):
            body = f"m{i}".encode()
            c.send(pframe.marshal(commands.Basic.Publish(exchange=x, routing_key="k", mandatory=True), 1)
                   + pframe.marshal(header.ContentHeader(0, len(body), commands.Basic.Properties()), 1)
                   + pframe.marshal(_body(body), 1))
        seen: list[Any] = []
        while len([f for f in seen if isinstance(f, commands.Basic.Ack)]) < 2 and len(seen) < 10:
            ch_no, f = c.recv_method()
            assert ch_no == 1
            seen.append(f)
        kinds = [type(f).__name__ for f in seen]
        assert kinds == ["Return", "ContentHeader", "ContentBody", "Ack",
                         "Return", "ContentHeader", "ContentBody", "Ack"] or kinds == [
            # the broker may coalesce the two acks into one "multiple" ack after both returns
            "Return", "ContentHeader", "ContentBody", "Return", "ContentHeader", "ContentBody", "Ack"]
        acks = [f for f in seen if isinstance(f, commands.Basic.Ack)]
        assert acks[-1].delivery_tag == 2
        if len(acks) == 2:
            assert acks[0].delivery_tag == 1
        else:
            assert acks[0].multiple
        returns = [f for f in seen if isinstance(f, commands.Basic.Return)]
        assert all(r.reply_code == 312 and r.exchange == x for r in returns)


def _body(data: bytes):
    from pamqp import body

    return body.ContentBody(data)


def test_publisher_confirms_1000_messages(conn, names):
    ch = conn.channel()
    ch.confirm_delivery()
    q = names.queue()
    ch.queue_declare(q)
    t0 = time.monotonic()
    for i in range(1000):
        ch.basic_publish("", q, str(i).encode())  # blocks until acked; NackError on nack
    assert time.monotonic() - t0 < 30
    assert queue_depth(ch, q) == 1000
    got = consume_n(conn, ch, q, 1000, timeout=20)
    assert [d.body for d in got] == [str(i).encode() for i in range(1000)]


def test_confirm_select_on_two_channels_independent(conn, names):
    q = names.queue()
    a, b = conn.channel(), conn.channel()
    a.confirm_delivery()
    b.confirm_delivery()
    a.queue_declare(q)
    for i in range(10):
        a.basic_publish("", q, b"a%d" % i)
        b.basic_publish("", q, b"b%d" % i)
    assert queue_depth(a, q) == 20


def test_properties_and_headers_round_trip(conn, names):
    ch = conn.channel()
    ch.confirm_delivery()
    q = names.queue()
    ch.queue_declare(q)
    props = pika.BasicProperties(
        content_type="application/json", content_encoding="utf-8",
        headers={"str": "s", "int": 42, "neg": -7, "bool": True, "list": [1, "two"],
                 "nested": {"a": {"b": "c"}}, "bytes": b"\x00\xff", "dec": Decimal("1.5"),
                 "big": 2**40, "none": None, "when": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)},
        delivery_mode=2, priority=3, correlation_id="corr", reply_to="amq.rabbitmq.reply-to.x",
        expiration="60000", message_id="mid", timestamp=1_700_000_000, type="t",
        user_id="guest", app_id="app")
    ch.basic_publish("", q, b'{"k": 1}', props)
    (d,) = get_all(ch, q)
    p = d.properties
    assert d.body == b'{"k": 1}'
    for attr in ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id",
                 "reply_to", "expiration", "message_id", "timestamp", "type", "user_id", "app_id"):
        assert getattr(p, attr) == getattr(props, attr), attr
    h = p.headers
    assert h["str"] == "s" and h["int"] == 42 and h["neg"] == -7 and h["bool"] is True
    assert h["list"] == [1, "two"]
    assert h["nested"] == {"a": {"b": "c"}}
    assert h["bytes"] == b"\x00\xff"
    assert h["dec"] == Decimal("1.5")
    assert h["big"] == 2**40
    assert h["none"] is None
    assert h["when"] == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert d.method.exchange == "" and d.method.routing_key == q
    assert d.method.redelivered is False


@pytest.mark.parametrize("size", [0, 1, 131_072 - 8, 131_072, 1_000_000])
def test_body_sizes_round_trip(conn, names, size):
    """Empty bodies, bodies around frame_max (split across body frames) and a 1 MB body."""
    ch = conn.channel()
    ch.confirm_delivery()
    q = names.queue()
    ch.queue_declare(q)
    body = bytes((i * 7 + size) % 256 for i in range(size))
    ch.basic_publish("", q, body)
    got = consume_n(conn, ch, q, 1, timeout=10)
    assert len(got[0].body) == size
    assert got[0].body == body


def test_user_id_must_match_login(conn, names):
    from tests.integration.helpers import expect_channel_error

    ch = conn.channel()
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="somebody-else"))
    expect_channel_error(406, lambda: ch.queue_declare(q, passive=True))
    assert queue_depth(conn.channel(), q) == 0
