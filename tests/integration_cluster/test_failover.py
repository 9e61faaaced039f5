"""Nodes dying: the leader mid-stream, a follower holding unacked messages, two of three
(isolation), two of five; and a killed node coming back and catching up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aio_pika
import pika
import pika.exceptions
import pytest

from tests.harness.cluster import RaftMQCluster
from tests.integration.helpers import (
    Collector,
    close_quietly,
    connect,
    consume_n,
    pump,
    queue_depth,
    roundtrip_ok,
    settle,
    unique,
    wait_until,
)
from tests.integration_cluster.streams import Stream

pytestmark = pytest.mark.timeout(150)

PERSISTENT = pika.BasicProperties(delivery_mode=2)
FAILOVER_BUDGET_S = 5.0


async def _declare(url: str, queue: str) -> None:
    conn = await aio_pika.connect(url, timeout=5)
    try:
        ch = await asyncio.wait_for(conn.channel(), 5)
        await asyncio.wait_for(ch.declare_queue(queue, durable=True), 5)
    finally:
        await asyncio.wait_for(conn.close(), 5)


async def test_kill_leader_mid_stream(cluster: RaftMQCluster) -> None:
    """kill -9 of the leader while a producer on a follower publishes with confirms and a
    consumer on the other follower acks: every confirmed message is consumed, nothing that was
    never published is, and confirms resume within the failover budget."""
    c = cluster
    leader = await asyncio.to_thread(c.leader)
    p_node, c_node = [nd for nd in c.nodes if nd is not leader]
    q = unique("failover")
    await _declare(p_node.url, q)
    await asyncio.to_thread(c.wait_converged)
    stream = Stream([p_node.url, c_node.url, leader.url], [c_node.url, p_node.url, leader.url], q)
    try:
        await stream.wait_confirmed(300)
        t_kill = time.monotonic()
        await asyncio.to_thread(c.kill, leader)
        await stream.wait_confirmed(300, timeout=30)
        await stream.drain(timeout=30)
    finally:
        await stream.stop()
    log = stream.log
    print(stream.summary())
    first = log.first_confirm_after(t_kill)
    gap = log.largest_gap_around(t_kill)
    assert first is not None and gap is not None
    print(f"leader kill -9 -> next confirm: {first - t_kill:.3f}s; confirm pause spanning the "
          f"kill: {gap[1] - gap[0]:.3f}s (resumed {gap[1] - t_kill:.3f}s after the kill)")
    assert not log.missing(), f"confirmed but never consumed: {sorted(log.missing())[:20]}"
    assert not log.phantoms(), f"consumed but never published: {sorted(log.phantoms())[:20]}"
    assert first - t_kill <= FAILOVER_BUDGET_S
    assert gap[1] - t_kill <= FAILOVER_BUDGET_S
    new_leader = await asyncio.to_thread(c.leader, 15.0, [p_node, c_node])
    assert new_leader is not leader


def test_unacked_redelivered_after_follower_killed(make_cluster: Callable[..., RaftMQCluster]) -> None:
    """A follower whose consumer holds unacked messages is killed: once the leader records it
    down (NODE_DOWN_AFTER=1.5 s) they go, marked redelivered, to a consumer on another node."""
    down_after = 1.5
    c = make_cluster(3, node_down_after=down_after)
    victim, other = c.followers()
    q = unique("unacked")
    bodies = [b"u-%02d" % i for i in range(10)]
    oconn = connect(other.url)
    vconn = connect(victim.url)
    try:
        och = oconn.channel()
        och.queue_declare(q, durable=True)
        och.confirm_delivery()
        for body in bodies:
            och.basic_publish("", q, body, PERSISTENT)
        c.wait_converged()
        vch = vconn.channel()
        vch.basic_qos(prefetch_count=len(bodies))
        held = Collector(ack=False)
        vch.basic_consume(q, held)
        pump(vconn, lambda: len(held) >= len(bodies), 10, what="deliveries on the victim")
        assert held.bodies == bodies
        got = Collector(ack=True)
        och.basic_consume(q, got)
        settle(oconn, 0.3)
        assert len(got) == 0, "the other consumer got messages the victim holds"
        t_kill = time.monotonic()
        c.kill(victim)
        pump(oconn, lambda: len(got) >= len(bodies), down_after + 8,
             what="redelivery to the consumer on the surviving node")
        elapsed = time.monotonic() - t_kill
        print(f"follower kill -9 -> unacked messages redelivered elsewhere: {elapsed:.2f}s "
              f"(node_down_after={down_after}s)")
        assert sorted(got.bodies) == bodies
        assert got.bodies == bodies, "requeued messages lost their order"
        assert all(d.method.redelivered for d in got.items)
        settle(oconn, 0.3)
        assert len(got) == len(bodies)
        assert elapsed <= down_after + 3.5
    finally:
        close_quietly(oconn)
        close_quietly(vconn)


@pytest.mark.parametrize("snapshots", [False, True], ids=["journal", "snapshot"])
def test_killed_node_restarts_and_catches_up(make_cluster: Callable[..., RaftMQCluster],
                                             snapshots: bool) -> None:
    """A follower killed long enough to be recorded down restarts on the same data directory and
    ports, applies everything committed meanwhile (with ``snapshot``: the log is compacted every
    20 entries, so it catches up from a snapshot), serves AMQP, and sees what was declared while
    it was down."""
    env = {"node_down_after": "1"}
    if snapshots:
        env["snapshot_entries"] = "20"
    c = make_cluster(3, **env)
    leader = c.leader()
    victim, other = c.followers()
    old_q, new_q = unique("before"), unique("during")
    conn = connect(other.url)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(old_q, durable=True)
        ch.basic_publish("", old_q, b"before", PERSISTENT)
        c.wait_converged()
        c.kill(victim)
        ch.queue_declare(new_q, durable=True)
        for i in range(100):
            ch.basic_publish("", new_q, b"n-%03d" % i, PERSISTENT)
        ch.basic_get(old_q, auto_ack=True)
        c.wait_for(lambda: c.status(leader)["nodes"][victim.node_id]["down"], 10,
                   f"{victim.node_id} recorded down")
    finally:
        close_quietly(conn)
    commit_while_down = c.status(leader)["raft"]["commit_index"]
    c.restart(victim)
    converged = c.wait_converged(20)
    st = c.status(victim)
    assert st["raft"]["last_applied"] >= commit_while_down
    assert converged >= commit_while_down
    assert not st["nodes"][victim.node_id]["down"]
    conn = connect(victim.url)
    try:
        ch = conn.channel()
        assert queue_depth(ch, new_q) == 100
        assert queue_depth(ch, old_q) == 0
        got = consume_n(conn, ch, new_q, 100, timeout=15)
        assert [d.body for d in got] == [b"n-%03d" % i for i in range(100)]
    finally:
        close_quietly(conn)
    roundtrip_ok(victim.url)


@pytest.mark.parametrize("survivor_role", ["follower", "leader"])
def test_isolated_survivor_closes_and_refuses_clients(
        make_cluster: Callable[..., RaftMQCluster], survivor_role: str) -> None:
    """Two of three nodes killed: the survivor closes its clients with 320 within
    isolation_timeout (+ the time to notice the lost leader or quorum), refuses new ones, and
    accepts clients again once the other two are back."""
    isolation = 1.0
    c = make_cluster(3, isolation_timeout=isolation)
    leader = c.leader()
    survivor = leader if survivor_role == "leader" else c.followers()[0]
    others = c.others(survivor)
    conn = connect(survivor.url)
    code = None
    try:
        ch = conn.channel()
        ch.queue_declare("", exclusive=True)
        t_kill = time.monotonic()
        for nd in others:
            c.kill(nd)
        try:
            pump(conn, lambda: not conn.is_open, isolation + 10, what="the survivor to close us")
        except pika.exceptions.ConnectionClosedByBroker as e:
            code = e.reply_code
        elapsed = time.monotonic() - t_kill
    finally:
        close_quietly(conn)
    print(f"{survivor_role} survivor closed its clients {elapsed:.2f}s after the kills "
          f"(isolation_timeout={isolation}s), code {code}")
    assert code == 320
    assert elapsed <= isolation + 4.0
    st = c.status(survivor)
    assert st["isolated"] is True
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        close_quietly(connect(survivor.url))
    for nd in others:
        nd.start(wait=False)
    c.wait_ready(others, timeout=30)

    def serves() -> bool:
        try:
            roundtrip_ok(survivor.url)
            return True
        except (pika.exceptions.AMQPError, AssertionError):
            return False

    wait_until(serves, 20, interval=0.3, what="the survivor to accept clients again")
    assert c.status(survivor)["isolated"] is False


def test_five_nodes_survive_two_kills(make_cluster: Callable[..., RaftMQCluster]) -> None:
    """5 nodes; publish on one and consume on another; kill -9 the leader and one more
    follower: the remaining three elect a leader and keep serving, and every confirmed message
    is consumed once, in order."""
    c = make_cluster(5)
    leader = c.leader()
    p_node, c_node, extra, spare = c.followers()
    q = unique("five")
    bodies = [b"f-%03d" % i for i in range(200)]
    pconn = connect(p_node.url)
    cconn = connect(c_node.url)
    try:
        pch = pconn.channel()
        pch.queue_declare(q, durable=True)
        pch.confirm_delivery()
        c.wait_converged()
        cch = cconn.channel()
        cch.basic_qos(prefetch_count=50)
        got = Collector(ack=True)
        cch.basic_consume(q, got)
        for body in bodies[:100]:
            pch.basic_publish("", q, body, PERSISTENT)
        pump(cconn, lambda: len(got) >= 100, 15, what="the first 100")
        t_kill = time.monotonic()
        c.kill(leader)
        c.kill(extra)
        survivors = [p_node, c_node, spare]
        new_leader = c.leader(15, among=survivors)
        print(f"5 nodes, leader + 1 follower killed: new leader {new_leader.node_id} agreed "
              f"{time.monotonic() - t_kill:.2f}s after the kill")
        for body in bodies[100:]:
            pch.basic_publish("", q, body, PERSISTENT)
        pump(cconn, lambda: len(got) >= 200, 20, what="the second 100")
        settle(cconn, 0.3)
        assert got.bodies == bodies
        assert not any(d.method.redelivered for d in got.items)
    finally:
        close_quietly(pconn)
        close_quietly(cconn)
    roundtrip_ok(spare.url)
    c.wait_converged()
