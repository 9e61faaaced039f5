"""Memory and disk alarms with real clients: publishers are blocked (connection.blocked
to those that ask for it, their input no longer read), consumers keep consuming and
acking, and everything flows again at connection.unblocked. The thresholds are changed
at run time over the management API, as ``raftmq set vm-memory-high-watermark`` does."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pika
import pytest

from harness.raftmq import RaftMQNode
from tests.harness.api import Api
from tests.integration.helpers import close_quietly

pytestmark = [pytest.mark.raftmq_only, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def alarm_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftMQNode]:
    base = tmp_path_factory.mktemp("alarms")
    with RaftMQNode(base / "data", log_path=base / "node.log") as node:
        yield node


@pytest.fixture
def api(alarm_node: RaftMQNode) -> Iterator[Api]:
    api = Api(alarm_node.management_port)
    yield api
    api.ok("PUT", "/api/nodes/n1/limits", {"vm_memory_high_watermark": "0.4",
                                          "disk_free_limit": "50MB"})


def set_limits(api: Api, **limits: str) -> dict[str, Any]:
    answer: dict[str, Any] = api.ok("PUT", "/api/nodes/n1/limits", limits)
    return answer


def pump_until(conn: pika.BlockingConnection, cond: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        conn.process_data_events(time_limit=0.1)


def test_memory_alarm_blocks_publishers_not_consumers(alarm_node: RaftMQNode,
                                                      api: Api) -> None:
    events: list[str] = []
    params = pika.URLParameters(alarm_node.url)
    publisher = pika.BlockingConnection(params)
    consumer = pika.BlockingConnection(params)
    try:
        publisher.add_on_connection_blocked_callback(
            lambda conn, frame: events.append("blocked: " + frame.method.reason))
        publisher.add_on_connection_unblocked_callback(lambda conn, frame: events.append("unblocked"))
        pch = publisher.channel()
        pch.queue_declare("alarm-q")
        pch.confirm_delivery()
        for i in range(3):
            pch.basic_publish("", "alarm-q", b"before %d" % i)  # confirmed: a publisher now

        status = set_limits(api, vm_memory_high_watermark="1MiB")
        assert status["mem_alarm"] and status["publishers_blocked"] == "low on memory"
        assert status["alarms"] == [{"node": "n1", "resource": "memory"}]
        pump_until(publisher, lambda: events)
        assert events == ["blocked: low on memory"]
        raw = pch._impl  # publish without waiting for the confirm: the node reads nothing
        for i in range(5):
            raw.basic_publish("", "alarm-q", b"during %d" % i)
        publisher.process_data_events(time_limit=0.2)

        # a consumer (it never published) consumes and acks meanwhile
        cch = consumer.channel()
        got: list[bytes] = []
        def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
            got.append(body)
            ch.basic_ack(method.delivery_tag)

        cch.basic_consume("alarm-q", on_message)
        pump_until(consumer, lambda: len(got) >= 3)
        consumer.process_data_events(time_limit=0.5)
        assert got == [b"before 0", b"before 1", b"before 2"]
        with urllib.request.urlopen(f"http://127.0.0.1:{alarm_node.metrics_port}/metrics",
                                    timeout=5) as r:
            metrics = r.read().decode()
        assert 'raftmq_alarm{resource="memory"} 1.0' in metrics
        assert "raftmq_alarms_in_cluster 1.0" in metrics

        set_limits(api, vm_memory_high_watermark="0.4")
        pump_until(publisher, lambda: "unblocked" in events)
        pump_until(consumer, lambda: len(got) == 8)
        assert got[3:] == [b"during %d" % i for i in range(5)]
    finally:
        close_quietly(publisher)
        close_quietly(consumer)


def test_disk_alarm_blocks_a_connection_at_its_first_publish(alarm_node: RaftMQNode,
                                                             api: Api) -> None:
    """A connection that has not published when the alarm starts is not blocked until it
    publishes; then it is, as RabbitMQ does."""
    events: list[str] = []
    conn = pika.BlockingConnection(pika.URLParameters(alarm_node.url))
    try:
        conn.add_on_connection_blocked_callback(
            lambda c, frame: events.append(frame.method.reason))
        ch = conn.channel()
        ch.queue_declare("disk-q")
        status = set_limits(api, disk_free_limit="1000000GB")
        assert status["disk_free_alarm"] and status["publishers_blocked"] == "low on disk"
        conn.process_data_events(time_limit=1.0)
        assert events == []  # not a publisher: still served
        ch.queue_declare("disk-q", passive=True)
        ch.basic_publish("", "disk-q", b"x")
        pump_until(conn, lambda: events)
        assert events == ["low on disk"]
        set_limits(api, disk_free_limit="50MB")
        conn.process_data_events(time_limit=1.0)
        assert ch.queue_declare("disk-q", passive=True).method.message_count == 1
    finally:
        close_quietly(conn)


async def test_aio_pika_publish_waits_while_blocked(alarm_node: RaftMQNode, api: Api,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    conn = await aio_pika.connect(alarm_node.url)
    try:
        ch = await conn.channel()  # publisher confirms
        q = await ch.declare_queue("aio-alarm-q")
        await ch.default_exchange.publish(aio_pika.Message(b"first"), "aio-alarm-q")
        with caplog.at_level(logging.WARNING, logger="aiormq.connection"):
            await asyncio.to_thread(set_limits, api, vm_memory_high_watermark="1MiB")
            await asyncio.sleep(1.0)
            publish = asyncio.ensure_future(
                ch.default_exchange.publish(aio_pika.Message(b"second"), "aio-alarm-q"))
            await asyncio.sleep(1.5)
            assert not publish.done()
            assert "was blocked by: 'low on memory'" in caplog.text
            await asyncio.to_thread(set_limits, api, vm_memory_high_watermark="0.4")
            await asyncio.wait_for(publish, 10)
        assert (await q.declare()).message_count == 2
    finally:
        await conn.close()


def test_bad_limit_is_refused_and_names_it(api: Api) -> None:
    status, answer = api("PUT", "/api/nodes/n1/limits", {"vm_memory_high_watermark": "2.5"})
    assert status == 400 and "not a memory watermark: '2.5'" in answer["reason"]
    status, _ = api("PUT", "/api/nodes/elsewhere/limits", {"disk_free_limit": "1GB"})
    assert status == 404


def test_cli_sets_the_watermark(alarm_node: RaftMQNode, api: Api, tmp_path: Path) -> None:
    import subprocess
    import sys

    from harness.raftmq import REPO_ROOT

    out = subprocess.run([sys.executable, "-m", "node", "set", "vm-memory-high-watermark",
                          "0.9", "--node", f"127.0.0.1:{alarm_node.management_port}"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "node n1: vm-memory-high-watermark 0.9" in out.stdout
    assert api.ok("GET", "/api/status")["vm_memory_high_watermark"] == "0.9"
