"""Alarms are cluster-wide: a disk alarm on one follower blocks the publishers of every
node, the leader's included, and lifting it (or the follower going down) unblocks them."""

from __future__ import annotations

import time
from typing import Any

import pika
import pytest

from harness.cluster import RaftMQCluster
from tests.harness.api import Api
from tests.integration.helpers import close_quietly

pytestmark = pytest.mark.timeout(120)


def pump_until(conn: pika.BlockingConnection, cond: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        conn.process_data_events(time_limit=0.1)


def test_an_alarm_on_a_follower_blocks_publishers_on_the_leader(
        cluster: RaftMQCluster) -> None:
    leader = cluster.leader()
    follower = cluster.followers()[0]
    events: list[str] = []
    conn = pika.BlockingConnection(pika.URLParameters(leader.url))
    try:
        conn.add_on_connection_blocked_callback(
            lambda c, frame: events.append(frame.method.reason))
        conn.add_on_connection_unblocked_callback(lambda c, frame: events.append("unblocked"))
        ch = conn.channel()
        ch.queue_declare("cw-q")
        ch.confirm_delivery()
        ch.basic_publish("", "cw-q", b"before")
        api = Api(follower.management_port)
        api.ok("PUT", f"/api/nodes/{follower.node_id}/limits",
               {"disk_free_limit": "1000000GB"})
        pump_until(conn, lambda: events)
        assert events == ["low on disk"]
        status = Api(leader.management_port).ok("GET", "/api/status")
        assert status["alarms"] == [{"node": follower.node_id, "resource": "disk"}]
        assert not status["disk_free_alarm"]  # the leader's own disk is fine
        api.ok("PUT", f"/api/nodes/{follower.node_id}/limits", {"disk_free_limit": "50MB"})
        pump_until(conn, lambda: "unblocked" in events)
        ch.basic_publish("", "cw-q", b"after")
        assert ch.queue_declare("cw-q", passive=True).method.message_count == 2
    finally:
        close_quietly(conn)
