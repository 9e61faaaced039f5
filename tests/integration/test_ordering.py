"""Replies on a channel keep the order of its requests, as RabbitMQ sends them: checked
with the clients that depend on it (py-amqp, kombu's transport, raises if a consumer's
cancel overtakes the queue.delete-ok it is waiting for) and frame by frame."""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import amqp
import pika
import pytest
from pamqp import commands, header
from pamqp import frame as pframe

from tests.integration.rawclient import RawClient

pytestmark = pytest.mark.timeout(60)


def delete_ok_before_cancel(host: str, port: int, queue: str) -> None:
    """py-amqp: consume from ``queue``, delete it on the same channel."""
    events: list[str] = []
    conn = amqp.Connection(f"{host}:{port}", userid="guest", password="guest",
                           connect_timeout=5)
    conn.connect()
    try:
        ch = conn.channel()
        ch.queue_declare(queue)
        ch.basic_consume(queue, callback=lambda msg: None,
                         on_cancel=lambda tag: events.append("cancel"))
        ch.queue_delete(queue)  # the cancel arriving first would be handled inside this call
        events.append("delete-ok")
        for _ in range(20):
            if "cancel" in events:
                break
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.25)
        assert events == ["delete-ok", "cancel"]
    finally:
        conn.collect()


def test_py_amqp_queue_delete_ok_before_the_consumer_cancel(broker: Any, names: Any) -> None:
    delete_ok_before_cancel(broker.host, broker.port, names.queue())


def test_pika_consumer_cancelled_by_queue_delete(broker: Any, names: Any) -> None:
    queue = names.queue()
    cancelled: list[str] = []
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        ch = conn.channel()
        ch.queue_declare(queue)
        ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
        tag = ch.basic_consume(queue, lambda *a: None)
        ok = ch.queue_delete(queue)
        assert isinstance(ok.method, pika.spec.Queue.DeleteOk)
        conn.process_data_events(time_limit=0.5)
        assert cancelled == [tag]
        assert ch.is_open
    finally:
        conn.close()


def _methods(c: RawClient, until: type, limit: int = 20) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for _ in range(limit):
        ch, m = c.recv_frame()
        if m.name in ("ContentHeader", "ContentBody", "Heartbeat"):
            continue
        out.append((ch, m.name))
        if isinstance(m, until):
            return out
    raise AssertionError(f"no {until.__name__} in {out}")


def unroutable(channel: int) -> bytes:
    """A mandatory publish to a routing key no queue is bound with."""
    return (pframe.marshal(commands.Basic.Publish(exchange="", routing_key="no-such-queue",
                                                  mandatory=True), channel)
            + pframe.marshal(header.ContentHeader(0, 1, commands.Basic.Properties()), channel)
            + struct.pack(">BHI", 3, channel, 1) + b"x" + b"\xce")


def returns_before_select_ok(host: str, port: int) -> None:
    """A mandatory publish to an unroutable key, then confirm.select (and tx.select on
    another channel), pipelined: the basic.return comes first."""
    with RawClient(host, port, timeout=10) as c:
        c.handshake()
        for number in (1, 2):
            c.send_frame(number, commands.Channel.Open())
            assert c.recv_method()[1].name == "Channel.OpenOk"
        # one write, as a client's buffered output goes (two small writes would be split
        # by Nagle's algorithm, and the broker would see the second only later)
        c.send(unroutable(1) + pframe.marshal(commands.Confirm.Select(), 1))
        assert _methods(c, commands.Confirm.SelectOk) == [(1, "Basic.Return"),
                                                           (1, "Confirm.SelectOk")]
        c.send(unroutable(2) + pframe.marshal(commands.Tx.Select(), 2))
        assert _methods(c, commands.Tx.SelectOk) == [(2, "Basic.Return"), (2, "Tx.SelectOk")]


def test_return_before_select_ok(broker: Any) -> None:
    returns_before_select_ok(broker.host, broker.port)
