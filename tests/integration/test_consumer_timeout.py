"""The consumer timeout (RabbitMQ's consumer_timeout; here --consumer-timeout, and the
queue argument x-consumer-timeout of RabbitMQ 3.12) with pika, against a broker of this
module's own with a 1 s timeout: RaftMQ, or with ``BROKER=rabbitmq`` RabbitMQ 3.10 with
consumer_timeout = 1000 (and its channel tick at 200 ms, so that it checks as often)."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from tests.integration.conftest import BROKER_KIND
from tests.integration.helpers import (
    close_quietly,
    connect,
    expect_channel_error,
    pump,
    queue_depth,
    unique,
    wait_until,
)

TIMEOUT_MS = 1000
pytestmark = pytest.mark.timeout(60)
MGMT: dict[str, str] = {}  # RaftMQ's management API address, for the policy case


def _text(channel: int) -> str:
    return (f"PRECONDITION_FAILED - delivery acknowledgement on channel {channel} timed out. "
            f"Timeout value used: {TIMEOUT_MS} ms. This timeout value can be configured, see "
            "consumers doc guide to learn more")


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("consumer_timeout")
    if BROKER_KIND == "rabbitmq":
        from harness.rabbitmq import RabbitMQ

        class Short(RabbitMQ):
            def _write_config(self) -> None:
                super()._write_config()
                (Path(self.base_dir) / "advanced.config").write_text(
                    f"[{{rabbit,[{{consumer_timeout,{TIMEOUT_MS}}},"
                    "{channel_tick_interval,200}]}].\n")

        server = Short(base)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()
        return
    from harness.raftmq import RaftMQNode

    (base / "data").mkdir()
    node = RaftMQNode(base / "data", log_path=base / "node.log",
                      extra_env={"RAFTMQ_CONSUMER_TIMEOUT": str(TIMEOUT_MS)})
    node.start(wait=True, timeout=30)
    MGMT["url"] = f"http://127.0.0.1:{node.management_port}"
    try:
        yield node.url
    finally:
        node.stop()


@pytest.fixture
def conn(url: str) -> Iterator[pika.BlockingConnection]:
    c = connect(url)
    yield c
    close_quietly(c)


def _closed_by(ch: Any) -> list[Any]:
    reasons: list[Any] = []
    ch._impl.add_on_close_callback(lambda _c, exc: reasons.append(exc))
    return reasons


def test_unacked_delivery_closes_channel_and_requeues(conn: Any) -> None:
    queue = unique("ct")
    ch = conn.channel()
    ch.queue_declare(queue, auto_delete=False)
    ch.basic_publish("", queue, b"m1")
    ch.basic_publish("", queue, b"m2")
    closed = _closed_by(ch)
    got: list[bytes] = []
    ch.basic_consume(queue, lambda _c, _m, _p, b: got.append(b))
    started = time.monotonic()
    pump(conn, lambda: bool(closed), timeout=10, what="the channel's close")
    waited = time.monotonic() - started
    assert got == [b"m1", b"m2"]
    assert TIMEOUT_MS / 1000 <= waited < TIMEOUT_MS / 1000 + 3
    assert (closed[0].reply_code, closed[0].reply_text) == (406, _text(ch.channel_number))
    other = conn.channel()
    assert queue_depth(other, queue) == 2  # requeued
    method, _p, body = other.basic_get(queue, auto_ack=True)
    assert body == b"m1" and method.redelivered
    other.queue_delete(queue)


def test_acked_in_time_keeps_channel(conn: Any) -> None:
    queue = unique("ct")
    ch = conn.channel()
    ch.queue_declare(queue, auto_delete=True)
    got: list[Any] = []
    ch.basic_consume(queue, lambda c, m, _p, _b: got.append(m.delivery_tag))
    deadline = time.monotonic() + 1.6 * TIMEOUT_MS / 1000
    n = 0
    while time.monotonic() < deadline:  # a message every 0.3 s, each acked 0.3 s later
        ch.basic_publish("", queue, b"m%d" % n)
        n += 1
        pump(conn, lambda k=n: len(got) >= k, what="a delivery")  # type: ignore[misc]
        conn.process_data_events(0.3)
        ch.basic_ack(got[-1])
    conn.process_data_events(0.5)
    assert ch.is_open and n >= 3


def test_basic_get_unacked_times_out(conn: Any) -> None:
    queue = unique("ct")
    ch = conn.channel()
    ch.queue_declare(queue, auto_delete=False)
    ch.basic_publish("", queue, b"g")
    closed = _closed_by(ch)
    assert ch.basic_get(queue)[2] == b"g"
    pump(conn, lambda: bool(closed), timeout=10, what="the channel's close")
    assert closed[0].reply_code == 406
    other = conn.channel()
    wait_until(lambda: queue_depth(other, queue) == 1)
    other.queue_delete(queue)


@pytest.mark.raftmq_only  # x-consumer-timeout is RabbitMQ 3.12's (3.10 ignores it)
def test_queue_argument(conn: Any) -> None:
    queue = unique("ct")
    ch = conn.channel()
    ch.queue_declare(queue, auto_delete=True, arguments={"x-consumer-timeout": 60000})
    ch.basic_publish("", queue, b"m")
    got: list[bytes] = []
    ch.basic_consume(queue, lambda _c, _m, _p, b: got.append(b))
    pump(conn, lambda: bool(got), what="the delivery")
    conn.process_data_events(1.6 * TIMEOUT_MS / 1000)
    assert ch.is_open  # the queue's minute, not the node's second
    short = unique("ct")
    ch2 = conn.channel()
    ch2.queue_declare(short, auto_delete=True, arguments={"x-consumer-timeout": 300})
    ch2.basic_publish("", short, b"m")
    closed = _closed_by(ch2)
    ch2.basic_consume(short, lambda *_a: None)
    pump(conn, lambda: bool(closed), timeout=5, what="the channel's close")
    assert "Timeout value used: 300 ms" in closed[0].reply_text
    for bad in ("abc", -1, True):
        ch3 = conn.channel()
        err = expect_channel_error(406, lambda b=bad, c=ch3: c.queue_declare(  # type: ignore[misc]
            unique("ct"), arguments={"x-consumer-timeout": b}))
        assert "invalid arg 'x-consumer-timeout'" in err.reply_text


@pytest.mark.skipif(BROKER_KIND == "rabbitmq", reason="the policy key is RabbitMQ 3.12's")
def test_policy_key(conn: Any) -> None:
    """A policy's consumer-timeout (RabbitMQ 3.12's key) applies to the queues it matches;
    a queue's own x-consumer-timeout wins over it."""
    name = unique("ctp")
    req = urllib.request.Request(
        f"{MGMT['url']}/api/policies/%2F/{name}", method="PUT",
        data=json.dumps({"pattern": f"^{name}", "apply-to": "queues",
                         "definition": {"consumer-timeout": 300}}).encode())
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status in (201, 204)
    ch = conn.channel()
    own = f"{name}.own"  # its argument wins over the policy
    ch.queue_declare(own, auto_delete=True, arguments={"x-consumer-timeout": 60000})
    ch.basic_publish("", own, b"m")
    got: list[bytes] = []
    ch.basic_consume(own, lambda _c, _m, _p, b: got.append(b))
    ch2 = conn.channel()
    ch2.queue_declare(f"{name}.q", auto_delete=True)
    ch2.basic_publish("", f"{name}.q", b"m")
    closed = _closed_by(ch2)
    ch2.basic_consume(f"{name}.q", lambda *_a: None)
    pump(conn, lambda: bool(closed), timeout=5, what="the channel's close")
    assert "Timeout value used: 300 ms" in closed[0].reply_text
    conn.process_data_events(1.6 * TIMEOUT_MS / 1000)
    assert got and ch.is_open
