"""Quorum-loss recovery (``raftmq cluster force-members``), with traffic running: two of three
nodes lost for good, the survivor recovered and two fresh nodes added, every message confirmed
before the loss consumed; a refusal while a more advanced member is still running; a single
node whose membership was corrupted (a member that does not exist) recovered."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import pika
import pika.exceptions
import pytest

from harness.cluster import RaftMQCluster
from harness.raftmq import RaftMQNode
from tests.integration_cluster.test_maintenance import QUEUE, Publisher, drain_queue

pytestmark = pytest.mark.timeout(240)


def force_members(node: RaftMQNode, keep: list[str], *extra: str, secret: str = "test-secret",
                  peers: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAFTMQ_PEERS"}
    return subprocess.run(
        [sys.executable, "-m", "node", "cluster", "force-members", "--data-dir",
         str(node.data_dir), "--raft-address", node.raft_address,
         *(["--peers", ",".join(node.peers)] if peers else []),
         "--cluster-secret", secret, "--keep", *keep, *extra],
        capture_output=True, text=True, timeout=60, env=env)


def declare(node: RaftMQNode) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqp_port))
    conn.channel().queue_declare(QUEUE, durable=True)
    conn.close()


def test_lost_majority_recovered_then_grown_back(
        make_cluster: Callable[..., RaftMQCluster]) -> None:
    cluster = make_cluster(3, snapshot_entries="300")  # a snapshot to rewrite as well
    survivor = cluster.leader()  # a leader's log holds every committed entry
    lost = [nd for nd in cluster.nodes if nd is not survivor]
    declare(survivor)
    pub = Publisher(lambda: [survivor])
    pub.start()
    time.sleep(2.0)
    assert len(pub.confirmed) > 50
    cluster.kill_all(lost)  # for good: their disks are gone too
    for nd in lost:
        shutil.rmtree(nd.data_dir)
    time.sleep(1.0)
    pub.stop.set()
    pub.join(15)
    confirmed = set(pub.confirmed)
    survivor.stop()
    assert not survivor.is_running()

    plan = force_members(survivor, [survivor.raft_address])
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "snapshot at" in plan.stdout and "what may be lost" in plan.stdout and "nothing written" in plan.stdout
    assert not (survivor.data_dir / "members.forced").exists()
    done = force_members(survivor, [survivor.raft_address], "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "membership forced to " + survivor.raft_address in done.stdout

    cluster.nodes = [survivor]
    survivor.start(wait=False)  # (still with the old --peers: members.forced wins)
    cluster.wait_ready([survivor], 30)
    assert cluster.members() == [survivor.raft_address]
    added = [cluster.add_node(), cluster.add_node()]
    assert cluster.members() == sorted(nd.raft_address for nd in [survivor, *added])
    # the new cluster works as a cluster: it keeps going without the survivor
    got = drain_queue(added[0], confirmed)
    missing = confirmed - got
    assert not missing, f"{len(missing)} confirmed messages lost, e.g. {sorted(missing)[:5]}"
    cluster.kill(survivor)
    leader = cluster.leader(among=added, timeout=20)
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", leader.amqp_port))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", QUEUE, b"after", pika.BasicProperties(delivery_mode=2))
    conn.close()


def test_refused_while_a_more_advanced_member_runs(
        make_cluster: Callable[..., RaftMQCluster]) -> None:
    cluster = make_cluster(3)
    leader = cluster.leader()
    follower = next(nd for nd in cluster.nodes if nd is not leader)
    declare(leader)
    busy = force_members(follower, [follower.raft_address])
    assert busy.returncode == 2 and "in use by a running node" in busy.stderr
    pub = Publisher(lambda: [leader])
    pub.start()
    time.sleep(0.5)
    follower.stop()
    time.sleep(1.0)  # the others commit more meanwhile
    out = force_members(follower, [follower.raft_address], "--yes")
    pub.stop.set()
    pub.join(15)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "highest commit index seen" in out.stderr
    assert "still works" in out.stderr
    assert not (follower.data_dir / "members.forced").exists()
    cluster.restart(follower)  # untouched: it rejoins as before
    got = drain_queue(follower, set(pub.confirmed))
    assert set(pub.confirmed) <= got


def test_single_node_with_a_corrupted_membership(
        make_cluster: Callable[..., RaftMQCluster]) -> None:
    cluster = make_cluster(1)
    (node,) = cluster.nodes
    declare(node)
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqp_port))
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(100):
        ch.basic_publish("", QUEUE, str(i).encode(), pika.BasicProperties(delivery_mode=2))
    conn.close()
    # a member that will never answer (added with --force): no majority any more
    bogus = f"127.0.0.1:{cluster._port()}"
    cluster._change(node, "POST", bogus, lambda: True, force=True)
    deadline = time.monotonic() + 15
    while not cluster.status(node)["isolated"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cluster.status(node)["isolated"] and cluster.status(node)["raft"]["leader"] is None
    node.stop()
    out = force_members(node, [node.raft_address], "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert bogus in out.stdout  # shown in the old membership
    node.start(wait=False)
    cluster.wait_ready([node], 30)
    assert cluster.members() == [node.raft_address]
    assert drain_queue(node, set(range(100))) == set(range(100))


def test_two_survivors_of_five(make_cluster: Callable[..., RaftMQCluster]) -> None:
    """Three of five lost: each survivor is stopped and forced to the same two members, and
    they elect a leader between them (the more advanced log wins the election)."""
    cluster = make_cluster(5)
    leader = cluster.leader()
    survivors = [leader, next(nd for nd in cluster.nodes if nd is not leader)]
    lost = [nd for nd in cluster.nodes if nd not in survivors]
    declare(leader)
    pub = Publisher(lambda: [leader])
    pub.start()
    time.sleep(1.5)
    cluster.kill_all(lost)
    time.sleep(0.5)
    pub.stop.set()
    pub.join(15)
    for nd in survivors:
        nd.stop()
    keep = [nd.raft_address for nd in survivors]
    for nd in survivors:
        out = force_members(nd, keep, "--yes")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "run the same command on" in out.stdout
    cluster.nodes = survivors
    for nd in survivors:
        nd.start(wait=False)
    cluster.wait_ready(survivors, 30)
    assert cluster.members() == sorted(keep)
    confirmed = set(pub.confirmed)
    assert confirmed <= drain_queue(survivors[1], confirmed)


@pytest.mark.timeout(60)
def test_without_peers_refused_on_a_young_cluster(
        make_cluster: Callable[..., RaftMQCluster]) -> None:
    """The README's command once had no --peers: on a survivor that never took a snapshot the
    plan took the membership to be this node alone, asked nobody, and went ahead while the
    other two still had a quorum. Now it refuses and asks for --peers; with them, the plan
    lists and asks the old members and refuses because the old cluster still works."""
    cluster = make_cluster(3)
    leader = cluster.leader()
    follower = next(nd for nd in cluster.nodes if nd is not leader)
    follower.stop()
    assert not (follower.data_dir / "raft.dump").exists()  # young: no snapshot
    out = force_members(follower, [follower.raft_address], "--yes", peers=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "cannot be known" in out.stderr and "Pass --peers" in out.stderr
    out = force_members(follower, [follower.raft_address], "--yes")
    assert out.returncode == 2, out.stdout + out.stderr
    members = sorted(nd.raft_address for nd in cluster.nodes)
    assert f"  membership: {', '.join(members)}\n" in out.stdout
    for nd in cluster.nodes:
        if nd is not follower:
            assert f"  {nd.raft_address:<28} commit" in out.stdout  # asked, and answered
    assert "still works" in out.stderr
    assert not (follower.data_dir / "members.forced").exists()
    cluster.restart(follower)  # untouched: it rejoins as before
