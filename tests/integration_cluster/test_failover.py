"""Nodes dying: the leader mid-stream, a follower holding unacked messages, two of three
(isolation), two of five; and a killed node coming back and catching up."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import aio_pika
import pika
import pika.exceptions
import pytest

from harness.cluster import RaftMQCluster
from tests.integration.helpers import (
    Collector,
    close_quietly,
    connect,
    consume_n,
    expect_channel_error,
    pump,
    queue_depth,
    roundtrip_ok,
    settle,
    unique,
    wait_until,
)
from tests.integration_cluster.held import PERSISTENT, unacked_on
from tests.integration_cluster.streams import Stream

pytestmark = pytest.mark.timeout(150)

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
        before = await asyncio.to_thread(c.status, leader)
        assert before["raft"]["state"] == "leader", before
        t_kill = await asyncio.to_thread(c.kill, leader)
        await stream.wait_confirmed(300, timeout=30)
        await stream.drain(timeout=30)
    finally:
        await stream.stop()
    log = stream.log
    print(stream.summary())
    first = log.first_confirm_after(t_kill)
    stall = log.longest_pause(t_kill, t_kill + 10)
    assert first is not None and stall is not None
    print(f"leader kill -9 -> next confirm: {first - t_kill:.3f}s; longest confirm pause in the "
          f"10 s after the kill: {stall[1] - stall[0]:.3f}s (from {stall[0] - t_kill:+.3f}s to "
          f"{stall[1] - t_kill:+.3f}s)")
    # Without a leader nothing commits: a follower that sees its connection to the leader
    # close stands for election no sooner than 0.2 x the election timeout (0.5 s) later.
    premature = sorted((t - t_kill, mid, log.sent[mid] - t_kill) for mid, t in log.confirmed.items()
                       if log.sent[mid] > t_kill and t < t_kill + 0.1)
    assert not premature, f"confirmed with no leader alive (confirm, id, sent): {premature}"
    assert not log.missing(), f"confirmed but never consumed: {sorted(log.missing())[:20]}"
    assert not log.phantoms(), f"consumed but never published: {sorted(log.phantoms())[:20]}"
    # the consumer's node stayed up and its acks were confirmed by the new leader in the end
    assert not log.duplicates(), f"delivered twice to a surviving consumer: {log.duplicates()[:20]}"
    assert first - t_kill <= FAILOVER_BUDGET_S
    assert stall[1] - t_kill <= FAILOVER_BUDGET_S
    new_leader = await asyncio.to_thread(c.leader, 15.0, [p_node, c_node])
    assert new_leader is not leader


@pytest.mark.parametrize("victim_role", ["follower", "leader"])
def test_unacked_redelivered_after_node_killed(make_cluster: Callable[..., RaftMQCluster],
                                               victim_role: str) -> None:
    """A node whose consumer holds unacked messages is killed: once the leader (for a killed
    leader: the new one) records it down (NODE_DOWN_AFTER=1.5 s) they go, marked redelivered and
    in order, to a consumer on another node."""
    down_after = 1.5
    c = make_cluster(3, node_down_after=down_after)
    leader = c.leader()
    victim = leader if victim_role == "leader" else c.followers()[0]
    with unacked_on(c, victim, c.others(victim)[0], "unacked") as h:
        settle(h.other_conn, 0.3)
        assert len(h.got) == 0, "the other consumer got messages the victim holds"
        t_kill = c.kill(victim)
        budget = down_after + (3.5 if victim_role == "follower" else 5.0)  # + an election
        h.wait_redelivered(budget + 5, "redelivery to the consumer on a surviving node")
        elapsed = time.monotonic() - t_kill
        print(f"{victim_role} kill -9 -> its unacked messages redelivered elsewhere: "
              f"{elapsed:.2f}s (node_down_after={down_after}s)")
        assert sorted(h.got.bodies) == h.bodies
        assert h.all_redelivered_in_order(), "requeued messages lost their order or flag"
        settle(h.other_conn, 0.3)
        assert len(h.got) == len(h.bodies)
        assert elapsed <= budget


def test_fast_restart_releases_the_previous_lifes_unacked(
        make_cluster: Callable[..., RaftMQCluster]) -> None:
    """A follower killed and restarted before the leader would record it down (NODE_DOWN_AFTER
    30 s): its new life's NodeUp releases what the old life's consumer held, marked
    redelivered, to a consumer elsewhere."""
    c = make_cluster(3, node_down_after=30)
    victim, other = c.followers()
    with unacked_on(c, victim, other, "fastrestart") as h:
        t_kill = c.kill(victim)
        c.restart(victim)
        h.wait_redelivered(15, "the old life's unacked messages after the restart")
        print(f"kill -9 + restart -> old life's unacked redelivered: {time.monotonic() - t_kill:.2f}s")
        assert h.all_redelivered_in_order()
        assert not c.status(c.leader())["nodes"][victim.node_id]["down"]


def test_paused_node_declared_down_starts_a_new_life(
        make_cluster: Callable[..., RaftMQCluster]) -> None:
    """A follower frozen (SIGSTOP) past NODE_DOWN_AFTER is recorded down: its consumer's unacked
    messages go to a consumer elsewhere. When it thaws, its old clients are closed (320) and
    whatever they still sent (acks for those messages, publishes) must not lose or duplicate a
    message; the node serves again as a new incarnation."""
    down_after = 1.5
    c = make_cluster(3, node_down_after=down_after)
    victim, other = c.followers()
    leader = c.leader()
    late_confirmed: list[bytes] = []
    code = None
    with unacked_on(c, victim, other, "paused") as h:
        q, vconn = h.queue, h.victim_conn
        old_incarnation = c.status(victim)["incarnation"]
        vpub = vconn.channel()
        vpub.confirm_delivery()
        c.kill(victim, signal.SIGSTOP)
        h.wait_redelivered(down_after + 8, "redelivery of the frozen node's unacked messages")
        assert h.all_redelivered_in_order()
        assert c.status(leader)["nodes"][victim.node_id]["down"]
        c.kill(victim, signal.SIGCONT)
        # the old client goes on as if nothing happened: acks what it holds, publishes more
        try:
            for d in h.held.items:
                h.victim_channel.basic_ack(d.method.delivery_tag)
            for i in range(5):
                body = b"late-%d" % i
                vpub.basic_publish("", q, body, PERSISTENT)
                late_confirmed.append(body)
            pump(vconn, lambda: not vconn.is_open, 10, what="the thawed node to close its old clients")
        except pika.exceptions.ConnectionClosedByBroker as e:
            code = e.reply_code
        except pika.exceptions.AMQPError as e:
            code = repr(e)
        pump(h.other_conn, lambda: len(h.got) >= len(h.bodies) + len(late_confirmed), 10,
             what="the confirmed late publishes")
        settle(h.other_conn, 0.5)
        print(f"thawed node: old client closed with {code}; {len(late_confirmed)} of its late "
              f"publishes confirmed; other consumer got {len(h.got)}")
        assert h.got.bodies == h.bodies + late_confirmed, \
            "lost or duplicated across the node's two lives"
        assert code == 320, code
        st = c.wait_for(lambda: (s := c.try_status(victim)) and s["incarnation"] != old_incarnation
                        and s["ready"] and s, 10, "a new incarnation of the thawed node")
        assert not c.status(leader)["nodes"][victim.node_id]["down"]
        assert st["incarnation"] > old_incarnation
    roundtrip_ok(victim.url)
    c.wait_converged()
    conn = connect(victim.url)
    try:
        assert queue_depth(conn.channel(), q) == 0
    finally:
        close_quietly(conn)


def test_exclusive_queue_of_a_killed_node_is_released(
        make_cluster: Callable[..., RaftMQCluster]) -> None:
    """An exclusive queue belongs to its connection: when the connection's node is killed and
    recorded down, the queue is deleted and a client on another node can declare it."""
    c = make_cluster(3, node_down_after=1)
    victim, other = c.followers()
    q = unique("excl")
    vconn = connect(victim.url)
    oconn = connect(other.url)
    try:
        vconn.channel().queue_declare(q, exclusive=True)
        c.wait_converged()
        expect_channel_error(405, lambda: oconn.channel().queue_declare(q, exclusive=True))
        c.kill(victim)

        def declared() -> bool:
            try:
                oconn.channel().queue_declare(q, exclusive=True)
                return True
            except pika.exceptions.ChannelClosedByBroker as e:
                assert e.reply_code == 405, e
                return False

        wait_until(declared, 10, interval=0.2, what="the exclusive queue to be released")
    finally:
        close_quietly(vconn)
        close_quietly(oconn)


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
