"""Upgrades from the previous release (tests/harness/releases.py: its code, from a pinned git
revision of this repository): this release reads the data directory (snapshot and journal)
the previous one wrote, and a 3-node cluster is upgraded one node at a time with traffic
running, the two releases side by side meanwhile; the new command level is enabled only once
every member runs this release."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import pytest

from cluster.commands import LEVEL
from harness.cluster import RaftMQCluster
from harness.raftmq import REPO_ROOT, RaftMQNode
from node.services.membership import LEVELS_EVERY_S
from tests.harness.releases import previous_release
from tests.integration_cluster.test_maintenance import QUEUE, Publisher, drain_queue

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def old_code() -> Path:
    return previous_release()


def on_release(cluster: RaftMQCluster, code: Path) -> None:
    for nd in cluster.nodes:
        nd.code_root = code


def levels(cluster: RaftMQCluster, node: RaftMQNode) -> dict[str, Any]:
    return dict(cluster.status(node).get("levels") or {})


def wait_level(cluster: RaftMQCluster, node: RaftMQNode, level: int, timeout: float = 30) -> None:
    # Levels are looked at every 2 s; a member whose announcement a replica lost announces
    # again at its next look after news (node/services/membership.py): enabled at most 1.9 s after the
    # last node was up in 20 runs under nice on 2 shared cores. The deadline is a bound only.
    cluster.wait_for(lambda: levels(cluster, node).get("cluster") == level, timeout,
                     f"command level {level} enabled")


def test_reads_the_previous_release_data_directory(
        make_cluster: Callable[..., RaftMQCluster], old_code: Path) -> None:
    # small snapshots: the old node leaves a snapshot *and* a journal after it
    cluster = make_cluster(1, start=False, snapshot_entries="200")
    on_release(cluster, old_code)
    cluster.start()
    (node,) = cluster.nodes
    assert "levels" not in cluster.status(node)  # really the previous release
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqp_port))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("up.x", "topic", durable=True)
    ch.queue_declare(QUEUE, durable=True)
    ch.queue_bind(QUEUE, "up.x", "k.#")
    for i in range(1000):
        ch.basic_publish("up.x", "k.1", str(i).encode(), pika.BasicProperties(delivery_mode=2))
    for _ in range(100):  # the first 100 consumed and acked
        method, _props, _body = ch.basic_get(QUEUE)
        assert method is not None
        ch.basic_ack(method.delivery_tag)
    conn.close()
    cluster.kill(node)  # kill -9: what is after the last snapshot is only in the journal
    node.code_root = REPO_ROOT
    cluster.restart(node)
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqp_port))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("up.x", "k.2", b"1000", pika.BasicProperties(delivery_mode=2))  # binding kept
    conn.close()
    assert drain_queue(node, set(range(100, 1001))) == set(range(100, 1001))
    wait_level(cluster, node, LEVEL)  # alone on this release: the new level is enabled


def test_rolling_upgrade_with_both_releases_running(
        make_cluster: Callable[..., RaftMQCluster], old_code: Path) -> None:
    cluster = make_cluster(3, start=False, snapshot_entries="400")
    on_release(cluster, old_code)
    cluster.start()
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1",
                                                             cluster.nodes[0].amqp_port))
    conn.channel().queue_declare(QUEUE, durable=True)
    conn.close()
    pub = Publisher(lambda: [nd for nd in cluster.nodes if nd.is_running()])
    pub.start()
    cluster.wait_for(lambda: len(pub.confirmed) > 20, 20, "traffic flows")
    gaps = []
    try:
        for i, nd in enumerate(cluster.nodes):
            before = len(pub.confirmed)
            nd.stop()
            nd.code_root = REPO_ROOT
            restarted = time.monotonic()
            cluster.restart(nd)
            cluster.wait_converged(30)
            def flowing(b: int = before) -> bool:
                return len(pub.confirmed) > b + 20

            cluster.wait_for(flowing, 20, "traffic goes on")
            gaps.append(pub.longest_gap)
            if i < 2:  # a member of the previous release remains: level 1 stays
                upgraded = cluster.nodes[:i + 1]
                def announced(nd: RaftMQNode = nd) -> bool:
                    return levels(cluster, nd)["members"].get(nd.raft_address) == LEVEL

                cluster.wait_for(announced, 20, f"{nd.node_id} announces level {LEVEL}")
                # a negative: give every member of this release a look at its levels
                time.sleep(LEVELS_EVERY_S + 0.5)
                for up in upgraded:
                    seen = levels(cluster, up)
                    assert seen["node"] == LEVEL and seen["cluster"] == 1, (up.node_id, seen)
        for nd in cluster.nodes:
            wait_level(cluster, nd, LEVEL)
        enabled_after = time.monotonic() - restarted  # since the last node was started
    finally:
        pub.stop.set()
        pub.join(15)
    # level 2 commands flow now: a drained node is shown as such on every member
    drained = cluster.nodes[0]
    others = cluster.others(drained)
    out = subprocess.run([sys.executable, "-m", "node", "node", "drain", "--node",
                          f"127.0.0.1:{drained.management_port}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    cluster.wait_for(lambda: cluster.status(others[0])["nodes"][drained.node_id]["draining"],
                     10, "the drain is replicated")
    confirmed = set(pub.confirmed)
    got = drain_queue(others[0], confirmed)
    missing = confirmed - got
    assert not missing, f"{len(missing)} confirmed messages lost, e.g. {sorted(missing)[:5]}"
    print(f"confirmed={len(confirmed)} level {LEVEL} on every member {enabled_after:.1f}s after "
          "the last upgrade; longest confirm gap so far after each upgrade: "
          + ", ".join(f"{g:.2f}s" for g in gaps))
