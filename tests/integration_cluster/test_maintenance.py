"""Drain and leadership transfer on a 3-node cluster with traffic running: a publisher with
confirms (reconnecting to another node when its node closes it) and a consumer on another
node. Every confirmed message is consumed; the drained node takes no new connections and
is not ready; leadership moves where it is asked to."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pika
import pika.exceptions
import pytest

from harness.cluster import RaftMQCluster
from harness.raftmq import RaftMQNode
from tests.harness.api import Api, q

pytestmark = pytest.mark.timeout(180)

QUEUE = "maint"


class Publisher(threading.Thread):
    """Publishes 0, 1, 2, ... with confirms to the first node of ``nodes`` that takes it,
    moving on when a node closes the connection; records what was confirmed and the
    longest time between two confirms."""

    def __init__(self, nodes: Callable[[], list[RaftMQNode]]) -> None:
        super().__init__(daemon=True)
        self.nodes = nodes
        self.confirmed: list[int] = []
        self.closed_with: list[int] = []
        self.longest_gap = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        n, last = 0, time.monotonic()
        while not self.stop.is_set():
            for node in self.nodes():
                try:
                    conn = pika.BlockingConnection(pika.ConnectionParameters(
                        "127.0.0.1", node.amqp_port, connection_attempts=1, socket_timeout=2))
                    break
                except pika.exceptions.AMQPConnectionError:
                    continue
            else:
                time.sleep(0.05)
                continue
            try:
                ch = conn.channel()
                ch.confirm_delivery()
                while not self.stop.is_set():
                    ch.basic_publish("", QUEUE, str(n).encode(),
                                     pika.BasicProperties(delivery_mode=2))
                    self.confirmed.append(n)
                    now = time.monotonic()
                    self.longest_gap = max(self.longest_gap, now - last)
                    last = now
                    n += 1
            except pika.exceptions.ConnectionClosedByBroker as e:
                self.closed_with.append(e.reply_code)
            except (pika.exceptions.AMQPError, OSError):
                pass
            finally:
                if conn.is_open:
                    with contextlib.suppress(pika.exceptions.AMQPError):
                        conn.close()
            n += 1  # the one in flight when the node closed us: maybe lost, never confirmed


def drain_queue(node: RaftMQNode, expect: set[int], timeout: float = 30) -> set[int]:
    got: set[int] = set()
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqp_port))
    try:
        ch = conn.channel()
        deadline = time.monotonic() + timeout
        for method, _props, body in ch.consume(QUEUE, inactivity_timeout=2):
            if method is None:
                if expect <= got or time.monotonic() > deadline:
                    break
                continue
            got.add(int(body))
            ch.basic_ack(method.delivery_tag)
        ch.cancel()
    finally:
        conn.close()
    return got


@pytest.fixture
def cluster(make_cluster: Callable[..., RaftMQCluster]) -> Iterator[RaftMQCluster]:
    c = make_cluster(3)
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", c.nodes[0].amqp_port))
    conn.channel().queue_declare(QUEUE, durable=True)
    conn.close()
    yield c


def test_drain_the_leader_with_traffic(cluster: RaftMQCluster) -> None:
    leader = cluster.leader()
    others = [nd for nd in cluster.nodes if nd is not leader]
    drained = threading.Event()
    # the publisher starts on the leader, and goes elsewhere once it is drained
    pub = Publisher(lambda: others if drained.is_set() else [leader, *others])
    pub.start()
    time.sleep(1.5)
    before = len(pub.confirmed)
    out = subprocess.run([sys.executable, "-m", "node", "node", "drain", "--node",
                          f"127.0.0.1:{leader.management_port}"],
                         capture_output=True, text=True, timeout=60)
    drained.set()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "drained" in out.stdout
    new_leader = cluster.leader(among=others)
    assert new_leader is not leader
    time.sleep(1.5)
    pub.stop.set()
    pub.join(10)
    assert 320 in pub.closed_with  # closed by the drain, then reconnected elsewhere
    assert len(pub.confirmed) > before + 10  # traffic went on through the others
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", leader.amqp_port,
                                                          connection_attempts=1))
    health = Api(leader.management_port)("GET", "/api/health/checks/alarms")
    assert health[0] == 200  # the API still answers on a drained node
    got = drain_queue(others[0], set(pub.confirmed))
    missing = set(pub.confirmed) - got
    assert not missing, f"{len(missing)} confirmed messages lost, e.g. {sorted(missing)[:5]}"


def test_transfer_leadership_to_a_chosen_node(cluster: RaftMQCluster) -> None:
    leader = cluster.leader()
    target = next(nd for nd in cluster.nodes if nd is not leader)
    via = next(nd for nd in cluster.nodes if nd is not leader and nd is not target)
    pub = Publisher(lambda: [via])
    pub.start()
    time.sleep(1.0)
    out = subprocess.run([sys.executable, "-m", "node", "cluster", "transfer-leadership",
                          "--to", target.node_id, "--node", f"127.0.0.1:{via.management_port}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert target.raft_address in out.stdout
    assert cluster.leader() is target
    time.sleep(1.0)
    pub.stop.set()
    pub.join(10)
    assert pub.longest_gap < 1.0, f"confirms stopped for {pub.longest_gap:.2f}s"
    status, answer = Api(via.management_port)("POST",
                                              f"/api/cluster/transfer-leadership?to={q('x:1')}")
    assert status == 400 and "not a member" in answer["reason"]
    got = drain_queue(via, set(pub.confirmed))
    assert set(pub.confirmed) <= got
