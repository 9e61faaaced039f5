"""Membership changes under load: a fourth node joins, a follower or the leader leaves, while a
producer and a consumer keep running on nodes that stay; ``raftmq cluster status`` shows the
result."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable

import aio_pika
import pytest

from harness.cluster import RaftMQCluster, http_json
from harness.raftmq import REPO_ROOT, RaftMQNode
from tests.integration.helpers import (
    roundtrip_ok,
    unique,
)
from tests.integration_cluster.held import unacked_on
from tests.integration_cluster.streams import Stream

pytestmark = pytest.mark.timeout(150)

def cli_status(node: RaftMQNode) -> str:
    r = subprocess.run([sys.executable, "-m", "node", "cluster", "status", "--node",
                        f"127.0.0.1:{node.management_port}"], cwd=REPO_ROOT, capture_output=True,
                       text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


async def _declare(url: str, queue: str) -> None:
    conn = await aio_pika.connect(url, timeout=5)
    try:
        ch = await asyncio.wait_for(conn.channel(), 5)
        await asyncio.wait_for(ch.declare_queue(queue, durable=True), 5)
    finally:
        await asyncio.wait_for(conn.close(), 5)


@pytest.mark.parametrize("victim_role", ["follower", "leader"])
async def test_add_and_remove_under_load(make_cluster: Callable[..., RaftMQCluster],
                                         victim_role: str) -> None:
    c = await asyncio.to_thread(make_cluster, 3)
    leader = await asyncio.to_thread(c.leader)
    followers = [nd for nd in c.nodes if nd is not leader]
    if victim_role == "leader":
        victim = leader
        p_node, c_node = followers
    else:
        victim = followers[0]
        p_node, c_node = followers[1], leader
    q = unique(f"members-{victim_role}")
    await _declare(p_node.url, q)
    await asyncio.to_thread(c.wait_converged)
    stream = Stream([p_node.url, c_node.url], [c_node.url, p_node.url], q)
    try:
        await stream.wait_confirmed(100)
        # the follower case adds the new node right after it starts, the leader case before
        new = await asyncio.to_thread(c.add_node, 30.0, victim_role == "leader")
        assert c.add_result.get("ok"), c.add_result
        await stream.wait_confirmed(100)
        answer = await asyncio.to_thread(c.remove_node, victim)
        assert answer and answer.get("ok"), answer
        await stream.wait_confirmed(100)
        await stream.drain(timeout=30)
    finally:
        await stream.stop()
    log = stream.log
    print(stream.summary())
    assert not log.missing(), f"confirmed but never consumed: {sorted(log.missing())[:20]}"
    assert not log.phantoms()
    assert not log.duplicates(), "a consumer on a node that stayed up got a message twice"
    assert not log.producer_errors and not log.consumer_errors

    members = sorted(nd.raft_address for nd in c.nodes)
    assert new in c.nodes and victim not in c.nodes and len(members) == 3
    await asyncio.to_thread(c.wait_members, members)
    assert not victim.is_running()
    new_leader = await asyncio.to_thread(c.leader)
    assert new_leader is not victim
    await asyncio.to_thread(roundtrip_ok, new.url)
    # the new node has the whole state: the queue declared before it joined, now drained
    conn = await aio_pika.connect(new.url, timeout=5)
    try:
        ch = await asyncio.wait_for(conn.channel(), 5)
        declared = await asyncio.wait_for(ch.declare_queue(q, passive=True), 5)
        assert declared.declaration_result.message_count == 0
    finally:
        await asyncio.wait_for(conn.close(), 5)
    await asyncio.to_thread(c.wait_converged)

    out = await asyncio.to_thread(cli_status, c_node)
    print(out)
    assert "members: 3" in out
    assert f"leader: {new_leader.raft_address}" in out
    lines = out.splitlines()
    for nd in c.nodes:
        row = next((ln for ln in lines if ln.startswith(nd.raft_address)), None)
        assert row is not None, f"{nd.node_id} missing from cluster status"
        assert row.split()[1] == nd.node_id and row.rstrip().endswith("ok"), row
    gone = [ln for ln in lines if ln.startswith(victim.raft_address)]
    assert all("not a member" in ln for ln in gone), gone


def test_cli_remove_leader_reports_success(cluster: RaftMQCluster) -> None:
    """``raftmq cluster remove <leader address> --node <any node>``: the CLI sends the change to
    the leader, which hands leadership over and is removed; the CLI should say so (exit 0)."""
    leader = cluster.leader()
    via = cluster.followers()[0]
    rest = sorted(nd.raft_address for nd in cluster.nodes if nd is not leader)
    r = subprocess.run([sys.executable, "-m", "node", "cluster", "remove", leader.raft_address,
                        "--node", f"127.0.0.1:{via.management_port}"], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=40, stdin=subprocess.DEVNULL)
    print(r.returncode, r.stdout, r.stderr)
    cluster.nodes.remove(leader)
    cluster.wait_members(rest)  # the removal itself works
    leader.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{leader.raft_address} removed" in r.stdout


@pytest.mark.parametrize("victim_role, via_role", [
    ("follower", "other-follower"),
    ("follower", "itself"),
    ("leader", "follower"),
])
def test_remove_via_any_node(cluster: RaftMQCluster, victim_role: str, via_role: str) -> None:
    """``DELETE /api/members`` works whichever member's HTTP API receives it."""
    leader = cluster.leader()
    f1, f2 = cluster.followers()
    victim, via = {("follower", "other-follower"): (f1, f2), ("follower", "itself"): (f1, f1),
                   ("leader", "follower"): (leader, f1)}[(victim_role, via_role)]
    rest = sorted(nd.raft_address for nd in cluster.nodes if nd is not victim)
    answer = http_json(f"{cluster.http_url(via)}/api/members?address={victim.raft_address}",
                       method="DELETE", timeout=30)
    assert answer.get("ok"), answer
    cluster.nodes.remove(victim)
    cluster.wait_members(rest)
    victim.stop()
    assert cluster.leader() is not victim


def test_removed_nodes_consumer_messages_go_elsewhere(cluster: RaftMQCluster) -> None:
    """Removing a member whose consumer holds unacked messages: the leader records it down at
    once, and the messages go, marked redelivered, to a consumer on a remaining node."""
    victim, other = cluster.followers()
    with unacked_on(cluster, victim, other, "removed") as h:
        t0 = time.monotonic()
        answer = cluster.remove_node(victim)  # also stops it
        assert answer and answer.get("ok"), answer
        h.wait_redelivered(10, "redelivery after the removal")
        print(f"member removal -> its unacked redelivered elsewhere: {time.monotonic() - t0:.2f}s")
        assert h.all_redelivered_in_order()


def test_removed_member_procedure_as_the_readme_says(cluster: RaftMQCluster) -> None:
    """README "Membership": a removed member that keeps running is cut off and closes its
    clients with 320; stopped, its data directory deleted, started empty with --peers set to the
    current members and added again (`raftmq cluster add`), it is a member serving clients."""
    import shutil

    import pika
    import pika.exceptions

    victim = cluster.followers()[0]
    leader = cluster.leader()
    client = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", victim.amqp_port))
    rest = sorted(nd.raft_address for nd in cluster.nodes if nd is not victim)
    http_json(f"{cluster.http_url(leader)}/api/members?address={victim.raft_address}",
              method="DELETE", timeout=30)
    cluster.nodes.remove(victim)
    cluster.wait_members(rest)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        for _ in range(400):  # --isolation-timeout (3 s) and slack: at most 20 s
            client.process_data_events(0.05)
    assert closed.value.reply_code == 320, closed.value
    assert victim.is_running()  # it does not stop by itself

    victim.stop()
    shutil.rmtree(victim.data_dir)
    victim.peers = rest
    victim.start(wait=False)
    added = subprocess.run([sys.executable, "-m", "node", "cluster", "add", victim.raft_address,
                            "--node", f"127.0.0.1:{leader.management_port}"], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert added.returncode == 0, added.stdout + added.stderr
    cluster.nodes.append(victim)
    cluster.wait_members(sorted([*rest, victim.raft_address]))
    cluster.wait_ready([victim], 30)
    roundtrip_ok(victim.url)
