"""The harness itself: a real RabbitMQ (and, once it exists, a RaftMQ node) started, used, stopped."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pika
import pytest

from bench.loadgen import LoadConfig, run_load
from harness.ports import free_port, wait_amqp, wait_port
from harness.procs import wait_gone
from harness.rabbitmq import RabbitMQ, RabbitMQCluster
from harness.raftmq import REPO_ROOT, RaftMQNode


def _publish_get(url: str) -> bytes | None:
    conn = pika.BlockingConnection(
        pika.URLParameters(url + "?connection_attempts=3&retry_delay=0.5")
    )
    try:
        ch = conn.channel()
        ch.queue_declare("harness-q", durable=True)
        ch.basic_publish("", "harness-q", b"hello", pika.BasicProperties(delivery_mode=2))
        for _ in range(50):  # basic.get may race the enqueue on a replicated broker
            _m, _p, body = ch.basic_get("harness-q", auto_ack=True)
            if body is not None:
                return body
            conn.sleep(0.05)
        return None
    finally:
        conn.close()


def test_free_port_and_wait_timeouts() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        wait_port("127.0.0.1", port, timeout=2)
        with pytest.raises(TimeoutError):  # listening, but never says connection.start
            wait_amqp("127.0.0.1", port, timeout=0.5)
    with pytest.raises(TimeoutError):
        wait_port("127.0.0.1", free_port(), timeout=0.3)


def test_rabbitmq_start_publish_get_stop(tmp_path: Path) -> None:
    rmq = RabbitMQ(tmp_path / "rmq")
    with rmq:
        assert rmq.beam_pid() is not None
        assert rmq.rss_bytes() > 10 * 2**20
        started = rmq.pids()
        assert _publish_get(rmq.url) == b"hello"
        res = run_load(LoadConfig(port=rmq.amqp_port, size=100, duration=1.5, warmup=0.5))
        assert res.errors == [] and not res.stalled
        assert res.confirmed > 100 and res.consumed > 100
        assert res.confirm_p50_ms is not None and res.e2e_p99_ms is not None
    assert wait_gone(started, timeout=5) == []


def test_loadgen_gives_up_on_a_silent_server() -> None:
    with socket.socket() as s:  # accepts connections (backlog) but never says a word
        s.bind(("127.0.0.1", 0))
        s.listen()
        t0 = time.monotonic()
        res = run_load(LoadConfig(port=s.getsockname()[1], duration=1, warmup=0, setup_timeout=1))
    assert res.stalled and res.errors and res.consumed_per_s == 0
    assert time.monotonic() - t0 < 15


@pytest.mark.skipif(
    not (REPO_ROOT / "node" / "__main__.py").exists(),
    reason="node CLI (python -m node) not there yet",
)
def test_raftmq_node_start_publish_get_stop(tmp_path: Path) -> None:
    node = RaftMQNode(tmp_path / "n1")
    with node:
        pid = node.pid
        assert pid is not None and node.rss_bytes() > 0
        assert _publish_get(node.url) == b"hello"
    assert wait_gone([pid], timeout=5) == []


@pytest.mark.slow
def test_rabbitmq_cluster_quorum_queue_and_load(tmp_path: Path) -> None:
    cluster = RabbitMQCluster(tmp_path / "cluster", n=3)
    with cluster:
        assert len(cluster.running_nodes()) == 3
        started = cluster.pids()
        a, b, c = cluster.nodes
        conn = pika.BlockingConnection(pika.URLParameters(a.url))
        conn.channel().queue_declare("bench", durable=True, arguments={"x-queue-type": "quorum"})
        conn.close()
        res = run_load(  # the queue's leader is on a, which declared it; the clients use b and c
            LoadConfig(
                port=b.amqp_port, consumer_port=c.amqp_port, queue_type="quorum",
                duration=2, warmup=0.5,
            )
        )  # fmt: skip
        assert res.errors == [] and res.confirmed > 100 and res.consumed > 100
        assert "quorum" in a.ctl("list_queues", "name", "type")
    assert wait_gone(started, timeout=5) == []
