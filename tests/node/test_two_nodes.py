"""Two (or three) nodes in this process on one fake Raft log (tests/node/inproc.py
InProcessCluster): what a client does on one node reaches the clients of another only
through the log, each node applying it on its own replica. n1 leads unless a test says
otherwise. Outcomes are read from the frames clients receive and from the replicas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pamqp import commands as spec

from cluster import commands as C
from cluster.commands import decode_batch
from cluster.machine import queue_stats
from cluster.machine.state import entry_id
from protocol.methods import build
from tests.node.inproc import Client, InProcessCluster, InProcessNode

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def pair() -> AsyncIterator[InProcessCluster]:
    c = await InProcessCluster(asyncio.get_running_loop(), size=2).start()
    yield c
    await c.stop()


@pytest.fixture
async def trio() -> AsyncIterator[InProcessCluster]:
    c = await InProcessCluster(asyncio.get_running_loop(), size=3).start()
    yield c
    await c.stop()


def names(frames: list[tuple[int, Any]]) -> list[str]:
    return [f.name for _, f in frames]


def deliveries(frames: list[tuple[int, Any]]) -> list[tuple[int, bool, bytes]]:
    """(delivery tag, redelivered, body) of each Basic.Deliver / Basic.GetOk, in order."""
    out: list[list[Any]] = []
    for _, f in frames:
        if f.name in ("Basic.Deliver", "Basic.GetOk"):
            out.append([f.delivery_tag, f.redelivered, b""])
        elif f.name == "ContentBody":
            out[-1][2] += f.value
    return [(tag, redelivered, body) for tag, redelivered, body in out]


def confirmed(frames: list[tuple[int, Any]]) -> set[int]:
    """Publish sequence numbers the node confirmed (Basic.Ack, multiple or not)."""
    assert "Basic.Nack" not in names(frames)
    seqs: set[int] = set()
    for _, f in frames:
        if f.name == "Basic.Ack":
            seqs |= set(range(1, f.delivery_tag + 1)) if f.multiple else {f.delivery_tag}
    return seqs


async def client(node: InProcessNode) -> Client:
    c = node.client()
    await c.open()
    return c


async def declare(c: Client, queue: str, c_: InProcessCluster) -> None:
    c.method(1, build(spec.Queue.Declare, 0, queue, False, True))  # durable
    await c_.settle()
    assert names(c.frames()) == ["Queue.DeclareOk"]


async def publish_confirmed(c: Client, bodies: list[bytes], queue: str,
                            c_: InProcessCluster) -> None:
    c.method(1, build(spec.Confirm.Select, False))
    for body in bodies:
        c.publish(1, body, queue)
    await c_.settle()
    frames = c.frames()
    assert names(frames)[0] == "Confirm.SelectOk"
    assert confirmed(frames) == set(range(1, len(bodies) + 1))


def consume(c: Client, queue: str, tag: str) -> None:
    c.method(1, build(spec.Basic.Consume, 0, queue, tag, False, False))  # acks


def stats(node: InProcessNode, queue: str) -> tuple[int, int, int]:
    """(ready, unacked, consumers) of ``queue`` on the node's replica."""
    [found] = [s[2:] for s in queue_stats(node.raft.state) if s[1] == queue]
    return found


def bodies_ready(node: InProcessNode, queue: str) -> list[bytes]:
    """The bodies ``queue`` holds ready on the node's replica, read from its store."""
    q = node.raft.state.vhosts["/"].queues[queue]
    return [node.raft.read(entry_id(m))[3] for m in q.ready]


async def test_published_on_one_node_consumed_in_order_on_the_other(
        pair: InProcessCluster) -> None:
    n1, n2 = pair["n1"], pair["n2"]
    assert n1.raft.is_leader and not n2.raft.is_leader
    publisher, consumer = await client(n1), await client(n2)
    await declare(publisher, "orders", pair)
    sent = [b"m%d" % i for i in range(20)]
    await publish_confirmed(publisher, sent, "orders", pair)
    for node in (n1, n2):  # confirmed: durable and in both replicas, in order
        q = node.raft.state.vhosts["/"].queues["orders"]
        assert q.durable and bodies_ready(node, "orders") == sent
    consume(consumer, "orders", "c2")
    await pair.settle()
    frames = consumer.frames()
    assert names(frames)[0] == "Basic.ConsumeOk"
    got = deliveries(frames)
    assert [body for _, _, body in got] == sent
    assert [tag for tag, _, _ in got] == list(range(1, 21))
    assert not any(redelivered for _, redelivered, _ in got)
    assert stats(n1, "orders") == stats(n2, "orders") == (0, 20, 1)
    assert deliveries(publisher.frames()) == []  # n1's client consumes nothing
    consumer.method(1, build(spec.Basic.Ack, 20, True))
    await pair.settle()
    assert stats(n1, "orders") == stats(n2, "orders") == (0, 0, 1)
    assert n1.raft.applied == n2.raft.applied == pair.fake.commit


async def test_basic_get_on_one_node_of_a_message_published_on_the_other(
        pair: InProcessCluster) -> None:
    n1, n2 = pair["n1"], pair["n2"]
    publisher, getter = await client(n1), await client(n2)
    await declare(publisher, "jobs", pair)
    await publish_confirmed(publisher, [b"first", b"second"], "jobs", pair)
    getter.method(1, build(spec.Basic.Get, 0, "jobs", False))
    await pair.settle()
    frames = getter.frames()
    [ok] = [f for _, f in frames if f.name == "Basic.GetOk"]
    assert ok.message_count == 1 and deliveries(frames) == [(1, False, b"first")]
    assert stats(n1, "jobs") == stats(n2, "jobs") == (1, 1, 0)
    getter.method(1, build(spec.Basic.Ack, 1, False))
    getter.method(1, build(spec.Basic.Get, 0, "jobs", True))  # no-ack
    await pair.settle()
    assert deliveries(getter.frames()) == [(2, False, b"second")]
    getter.method(1, build(spec.Basic.Get, 0, "jobs", True))
    await pair.settle()
    assert names(getter.frames()) == ["Basic.GetEmpty"]
    assert stats(n1, "jobs") == stats(n2, "jobs") == (0, 0, 0)


async def test_consumers_on_both_nodes_share_a_queue_round_robin(
        pair: InProcessCluster) -> None:
    n1, n2 = pair["n1"], pair["n2"]
    publisher, c1, c2 = await client(n1), await client(n1), await client(n2)
    await declare(publisher, "shared", pair)
    consume(c1, "shared", "on-n1")
    await pair.settle()
    consume(c2, "shared", "on-n2")
    await pair.settle()
    assert names(c1.frames()) == ["Basic.ConsumeOk"] and names(c2.frames()) == [
        "Basic.ConsumeOk"]
    assert stats(n1, "shared") == stats(n2, "shared") == (0, 0, 2)
    sent = [b"m%d" % i for i in range(10)]
    await publish_confirmed(publisher, sent, "shared", pair)
    got1 = [body for _, _, body in deliveries(c1.frames())]
    got2 = [body for _, _, body in deliveries(c2.frames())]
    # in turn, in the order the consumers came: n1's gets the even ones, n2's the odd
    assert (got1, got2) == (sent[0::2], sent[1::2])
    c1.method(1, build(spec.Basic.Ack, 5, True))
    c2.method(1, build(spec.Basic.Ack, 5, True))
    await pair.settle()
    assert stats(n1, "shared") == stats(n2, "shared") == (0, 0, 2)


def published_by(c_: InProcessCluster, node: str) -> list[bytes]:
    """Bodies of the Publish commands ``node`` proposed that are in the log."""
    return [cmd.body for b in map(decode_batch, c_.fake.log) if b.node == node
            for cmd in b.commands if type(cmd) is C.Publish]


async def test_a_follower_forwards_its_proposals_and_proposes_again_to_a_new_leader(
        pair: InProcessCluster) -> None:
    """FakeCluster models pysyncobj's forwarding: a follower's proposal reaches the one
    log while there is a leader, and is lost when the leader fails before committing
    it (lose_proposals); the proposer then proposes it again, oldest first, to the next
    leader. The publisher's messages reach the queue once each and in order."""
    n1, n2 = pair["n1"], pair["n2"]
    assert not n2.raft.is_leader
    publisher, reader = await client(n2), await client(n1)
    await declare(publisher, "fwd", pair)
    await publish_confirmed(publisher, [b"a", b"b"], "fwd", pair)
    assert published_by(pair, "n2") == [b"a", b"b"]  # n2's entries, in the one log
    assert bodies_ready(n1, "fwd") == [b"a", b"b"]  # applied by the leader's replica

    pair.fake.lose_proposals = True  # n1 fails: what n2 forwards now is lost
    publisher.publish(1, b"c", "fwd")
    await pair.settle()
    assert confirmed(publisher.frames()) == set()
    assert bodies_ready(n1, "fwd") == bodies_ready(n2, "fwd") == [b"a", b"b"]

    pair.fake.lose_proposals, pair.fake.leader = False, "n2"  # n2 is elected
    publisher.publish(1, b"d", "fwd")
    await pair.settle()
    assert {3, 4} <= confirmed(publisher.frames())  # (acks may be multiple)
    assert published_by(pair, "n2") == [b"a", b"b", b"c", b"d"]  # c again, before d
    for node in (n1, n2):
        assert bodies_ready(node, "fwd") == [b"a", b"b", b"c", b"d"]
    assert n1.raft.applied == n2.raft.applied == pair.fake.commit
    reader.method(1, build(spec.Basic.Consume, 0, "fwd", "r", False, True))  # no-ack
    await pair.settle()
    assert [body for _, _, body in deliveries(reader.frames())] == [b"a", b"b", b"c", b"d"]
    assert stats(n1, "fwd") == stats(n2, "fwd") == (0, 0, 1)


async def test_a_node_that_goes_down_gives_its_unacked_messages_to_another_nodes_consumer(
        trio: InProcessCluster) -> None:
    """n2 dies with four messages delivered and not acked; the leader's membership watch
    finds it unreachable, records it down (NodeDown) after node_down_after, and its
    messages go to the consumer on n1, redelivered, in their order."""
    n1, n2, n3 = trio["n1"], trio["n2"], trio["n3"]
    publisher, c1, c2 = await client(n3), await client(n1), await client(n2)
    await declare(publisher, "work", trio)
    consume(c2, "work", "doomed")
    await trio.settle()
    sent = [b"w%d" % i for i in range(4)]
    await publish_confirmed(publisher, sent, "work", trio)
    assert [body for _, _, body in deliveries(c2.frames())] == sent
    consume(c1, "work", "survivor")
    await trio.settle()
    assert deliveries(c1.frames()) == []  # all four are n2's, unacked
    assert stats(n1, "work") == stats(n3, "work") == (0, 4, 2)

    await trio.crash("n2")
    assert n1.raft.has_quorum and not n1.raft.is_connected("n2")
    assert n1.raft.is_connected("n3")
    watch, now = n1.broker.membership, time.monotonic()
    watch._check_peers(now)  # unreachable since now: not down yet
    await trio.settle()
    assert deliveries(c1.frames()) == [] and not n1.raft.state.nodes["n2"].down
    watch._check_peers(now + n1.broker.cfg.node_down_after + 0.1)
    await trio.settle()
    got = deliveries(c1.frames())
    assert [body for _, _, body in got] == sent and all(redelivered for _, redelivered, _ in got)
    for node in (n1, n3):
        assert node.raft.state.nodes["n2"].down
        assert stats(node, "work") == (0, 4, 1)
    c1.method(1, build(spec.Basic.Ack, got[-1][0], True))
    await trio.settle()
    assert stats(n1, "work") == stats(n3, "work") == (0, 0, 1)
    assert n1.raft.applied == n3.raft.applied == trio.fake.commit


async def test_one_of_two_nodes_down_leaves_no_quorum_to_record_it(
        pair: InProcessCluster) -> None:
    """With one node of two gone there is no majority: the leader's watch records
    nothing (a leader cut off from the majority must not declare the others down)."""
    n1 = pair["n1"]
    await pair.crash("n2")
    assert not n1.raft.has_quorum
    length, now = len(pair.fake.log), time.monotonic()
    n1.broker.membership._check_peers(now)
    n1.broker.membership._check_peers(now + n1.broker.cfg.node_down_after + 0.1)
    await pair.settle()
    assert not any(type(cmd) is C.NodeDown
                   for b in map(decode_batch, pair.fake.log[length:]) for cmd in b.commands)
    assert not n1.raft.state.nodes["n2"].down
