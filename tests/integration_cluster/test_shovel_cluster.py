"""A dynamic shovel from Debian's RabbitMQ 3.10 into a 3-node RaftMQ cluster: the Raft
leader runs it (node/shovel/runner.py); the leader is killed mid-transfer and the next
leader takes over. Nothing is lost: every message published to RabbitMQ is in RaftMQ,
once or flagged as a possible duplicate (redelivered, or ``x-shovel-redelivered``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika

from harness.cluster import RaftMQCluster
from tests.harness.api import Api
from tests.integration.helpers import close_quietly, connect, wait_until

N = 4000


def _publish(url: str, queue: str, n: int) -> None:
    conn = connect(url)
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True)
        for i in range(n):
            ch.basic_publish("", queue, f"m{i}".encode(), pika.BasicProperties(delivery_mode=2))
        wait_until(lambda: ch.queue_declare(queue, passive=True).method.message_count == n)
    finally:
        close_quietly(conn)


def _depth(url: str, queue: str) -> int:
    conn = connect(url)
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker:
        return -1
    finally:
        close_quietly(conn)


def test_shovel_taken_over_when_its_node_dies(
        make_cluster: Callable[..., RaftMQCluster], tmp_path: Path) -> None:
    from harness.rabbitmq import RabbitMQ

    rabbit = RabbitMQ(tmp_path / "rabbitmq")
    rabbit.start()
    try:
        cluster = make_cluster(3)
        _publish(rabbit.url, "src", N)
        leader = cluster.leader()
        api = Api(leader.management_port)
        value = {"src-uri": rabbit.url, "src-queue": "src", "dest-uri": "amqp://",
                 "dest-queue": "dst", "src-prefetch-count": 50, "reconnect-delay": 0.2}
        # (the cluster enables command level 4 once every member announced it)
        wait_until(lambda: api("PUT", "/api/parameters/shovel/%2F/mig",
                               {"value": value})[0] in (201, 204), timeout=15)
        follower = cluster.others(leader)[0]
        # mid-transfer: some messages moved, most not
        wait_until(lambda: _depth(follower.url, "dst") >= 200, timeout=30)
        cluster.kill(leader)
        assert _depth(follower.url, "dst") < N, "the transfer ended before the kill"
        new = cluster.leader(timeout=20, among=cluster.alive())
        assert new is not leader
        api = Api(new.management_port)

        def taken_over() -> bool:
            status, st = api("GET", "/api/shovels/vhost/%2F/mig")
            return status == 200 and st["node"] == new.node_id and st["state"] == "running"

        wait_until(taken_over, timeout=20)
        # any member answers from its replica
        other = next(nd for nd in cluster.alive() if nd is not new)
        wait_until(lambda: Api(other.management_port).ok(
            "GET", "/api/shovels")[0]["node"] == new.node_id, timeout=10)
        # everything arrives: drain as it comes, until every message was seen
        seen: dict[bytes, int] = {}
        conn = connect(new.url)
        try:
            ch = conn.channel()
            deadline = time.monotonic() + 60
            for method, props, body in ch.consume("dst", auto_ack=True, inactivity_timeout=0.2):
                if len(seen) >= N or time.monotonic() > deadline:
                    break
                if method is None:
                    continue
                flagged = method.redelivered or \
                    bool((props.headers or {}).get("x-shovel-redelivered"))
                seen[body] = seen.get(body, 0) + 1
                assert seen[body] == 1 or flagged, f"{body!r} twice, unflagged"
        finally:
            close_quietly(conn)
        assert set(seen) == {f"m{i}".encode() for i in range(N)}
        assert _depth(rabbit.url, "src") == 0

        # the count goes on from the dead node's last report (made at most every 2 s: the
        # messages it moved since are moved again or not counted, never lost)
        def counted() -> Any:
            return api.ok("GET", "/api/shovels/vhost/%2F/mig")["messages_moved"] >= N // 2

        wait_until(counted, timeout=10)
    finally:
        with contextlib.suppress(Exception):
            rabbit.stop()
