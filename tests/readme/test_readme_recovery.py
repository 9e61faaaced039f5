"""The README's "Recovering from a lost majority", run as written on a 3-node cluster that lost
two nodes for good: the plan (whose output must match "The plan looks like this"), the same with
``--yes``, the survivor started, two fresh nodes added with the README's ``cluster add`` lines;
then every message confirmed before the loss is still there.

Substituted: the survivor's data directory (``/var/lib/raftmq``), the Raft and management
addresses (``nI:25672``, ``n1:15672``) and ``$RAFTMQ_CLUSTER_SECRET`` (exported in the shell).
``systemctl stop|start raftmq@n1`` stands for however the node is run: the test stops it
(SIGTERM) and starts it with its options, by its PID. The fresh nodes of step 4 are started by the
test with ``--peers`` as the README's comments say."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from harness.cluster import RaftMQCluster
from harness.raftmq import RaftMQNode
from tests.readme.readme import (
    README,
    Shell,
    block_with,
    clean_env,
    commands,
    mismatches,
    substitute,
)

pytestmark = pytest.mark.timeout(240)

SECTION = "Operating a cluster"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RaftMQCluster]:
    # snapshots every 60 entries, so the plan has one to rewrite (as an older cluster would)
    c = RaftMQCluster(tmp_path / "cluster", 3, extra_env={"RAFTMQ_SNAPSHOT_ENTRIES": "60"})
    c.start(timeout=45)
    try:
        yield c
    finally:
        c.stop()


def open_publisher(node: RaftMQNode) -> tuple[pika.BlockingConnection, Any]:
    """100 confirmed messages in queue 'orders'; returns the connection and a channel without
    confirms for one more publish later."""
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqp_port))
    ch = conn.channel()
    ch.queue_declare("orders", durable=True)
    ch.confirm_delivery()
    for i in range(100):
        ch.basic_publish("", "orders", b"m%d" % i, pika.BasicProperties(delivery_mode=2))
    return conn, conn.channel()


def test_recovery_walkthrough(cluster: RaftMQCluster, tmp_path: Path) -> None:
    readme = README.read_text()
    survivor = cluster.leader()  # its log holds every committed entry
    lost = [nd for nd in cluster.nodes if nd is not survivor]
    conn, unconfirmed = open_publisher(survivor)
    cluster.kill_all(lost)
    # in the survivor's log, never committed (before it sees it is cut off and closes clients)
    unconfirmed.basic_publish("", "orders", b"late", pika.BasicProperties(delivery_mode=2))
    conn.process_data_events(0.2)
    for nd in lost:
        shutil.rmtree(nd.data_dir)  # "the lost nodes must never come back with their old data"

    fresh: list[RaftMQNode] = []
    shell = Shell(tmp_path, {**clean_env(), "RAFTMQ_CLUSTER_SECRET": cluster.secret},
                  {"/var/lib/raftmq": str(survivor.data_dir),
                   "n1:25672": survivor.raft_address,
                   "n2:25672": lost[0].raft_address, "n3:25672": lost[1].raft_address,
                   "n1:15672": f"127.0.0.1:{survivor.management_port}"})
    steps = commands(block_with(readme, SECTION, "force-members", "sh").text)
    assert [s.split()[:3] for s in steps] == [
        ["systemctl", "stop", "raftmq@n1"], ["raftmq", "cluster", "force-members"],
        ["raftmq", "cluster", "force-members"], ["systemctl", "start", "raftmq@n1"],
        ["raftmq", "cluster", "add"], ["raftmq", "cluster", "add"]], steps
    try:
        survivor.stop()  # systemctl stop raftmq@n1
        shell.ran.append(steps[0])
        plan = shell.run(steps[1])
        sample = substitute(block_with(readme, SECTION, "what may be lost", "").text,
                            shell.subs)
        # which commands are past the journal's commit index depends on when pysyncobj last
        # wrote it: the kinds and counts of that tail vary from run to run
        problems = mismatches(sample, plan, {"(1 ChannelOpen, 1 Publish)": r"\(.+\)"})
        assert not problems, "\n".join(problems) + "\n--- printed:\n" + plan
        assert "membership forced to " + survivor.raft_address in shell.run(steps[2])
        cluster.nodes = [survivor]
        survivor.start(wait=False)  # systemctl start raftmq@n1
        shell.ran.append(steps[3])
        cluster.wait_ready([survivor], 30)
        for i, step in enumerate(steps[4:], 4):
            # "n4 started with --peers n1:25672", "n5 … with --peers n1:25672,n4:25672"
            nd = cluster._make_node(f"n{i}", peers=[survivor.raft_address,
                                                    *(f.raft_address for f in fresh)])
            nd.start(wait=False)
            fresh.append(nd)
            shell.subs[f"n{i}:25672"] = nd.raft_address
            shell.run(step)
            cluster.nodes.append(nd)
            cluster.wait_ready([nd], 60)
        assert cluster.members() == sorted(nd.raft_address for nd in cluster.nodes)
        queue = cluster.status(fresh[-1])
        assert queue["ready"]
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1",
                                                                 fresh[-1].amqp_port))
        declared = conn.channel().queue_declare("orders", passive=True)
        assert declared.method.message_count >= 100  # every confirmed one (+ the unconfirmed)
        conn.close()
    finally:
        shell.close()
