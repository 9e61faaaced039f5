"""Replication across nodes, whole-cluster crash recovery, and the cluster's start-up checks."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aio_pika
import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from harness.cluster import RaftMQCluster
from harness.ports import free_port
from harness.raftmq import REPO_ROOT
from tests.integration.helpers import (
    Collector,
    close_quietly,
    connect,
    consume_n,
    expect_channel_error,
    pump,
    queue_depth,
    unique,
    wait_until,
)
from tests.integration_cluster.streams import StreamLog, produce, wait_for

pytestmark = pytest.mark.timeout(150)

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def test_publish_on_follower_consume_on_other_follower(cluster: RaftMQCluster) -> None:
    """500 persistent messages confirmed on one follower arrive on the other follower in order,
    exactly once, and the queue is empty everywhere afterwards."""
    f1, f2 = cluster.followers()
    q = unique("repl")
    bodies = [b"msg-%04d" % i for i in range(500)]
    pconn = connect(f1.url)
    cconn = connect(f2.url)
    try:
        pch = pconn.channel()
        pch.queue_declare(q, durable=True)
        pch.confirm_delivery()
        t0 = time.monotonic()
        for body in bodies:
            pch.basic_publish("", q, body, PERSISTENT)  # raises unless acked
        print(f"500 confirmed publishes on a follower: {time.monotonic() - t0:.2f}s")
        cluster.wait_converged()
        cch = cconn.channel()
        assert queue_depth(cch, q) == 500
        cch.basic_qos(prefetch_count=100)
        got = consume_n(cconn, cch, q, 500, timeout=30)
        assert len(got) == 500
        assert [d.body for d in got] == bodies
        assert not any(d.method.redelivered for d in got)
        # the acks reach every replica: the queue is empty on all three nodes
        for nd in cluster.nodes:
            c = connect(nd.url)
            try:
                ch = c.channel()

                def empty(ch: BlockingChannel = ch) -> bool:
                    return queue_depth(ch, q) == 0

                wait_until(empty, 10, what=f"{q} empty on {nd.node_id}")
            finally:
                close_quietly(c)
    finally:
        close_quietly(pconn)
        close_quietly(cconn)


def test_whole_cluster_kill9_restart(cluster: RaftMQCluster) -> None:
    """kill -9 of all three nodes, restart of all three: every confirmed persistent message of a
    durable queue is back exactly once, in order (the ones a consumer held unacked first, marked
    redelivered); non-durable queues are gone."""
    n1, n2, n3 = cluster.nodes
    durable, transient = unique("durable"), unique("transient")
    bodies = [b"d-%04d" % i for i in range(300)]
    conn = connect(n1.url)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(durable, durable=True)
        for body in bodies:
            ch.basic_publish("", durable, body, PERSISTENT)
    finally:
        close_quietly(conn)
    conn = connect(n2.url)
    holder = connect(n3.url)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(transient, durable=False)
        for i in range(10):
            ch.basic_publish("", transient, b"t-%d" % i, PERSISTENT)
        # a consumer on n3 holds the first 5 unacked when everything dies
        hch = holder.channel()
        hch.basic_qos(prefetch_count=5)
        held = Collector(ack=False)
        hch.basic_consume(durable, held)
        pump(holder, lambda: len(held) >= 5, 10, what="5 deliveries on n3")
        assert held.bodies == bodies[:5]
        cluster.wait_converged()
        cluster.kill_all()
    finally:
        close_quietly(conn)
        close_quietly(holder)
    assert not any(nd.is_running() for nd in cluster.nodes)
    cluster.start_all()
    for nd in cluster.nodes:
        conn = connect(nd.url)
        try:
            ch = conn.channel()

            def all_back(ch: BlockingChannel = ch) -> bool:
                return queue_depth(ch, durable) == 300

            def declare_transient(ch: BlockingChannel = ch) -> Any:
                return ch.queue_declare(transient, passive=True)

            wait_until(all_back, 10, what=f"300 messages in {durable} on {nd.node_id}")
            expect_channel_error(404, declare_transient)
        finally:
            close_quietly(conn)
    conn = connect(n2.url)
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=100)
        got = consume_n(conn, ch, durable, 300, timeout=30)
        assert [d.body for d in got] == bodies
        assert [d.method.redelivered for d in got[:5]] == [True] * 5
        assert not any(d.method.redelivered for d in got[5:])
        assert queue_depth(ch, durable) == 0
    finally:
        close_quietly(conn)


def test_cross_node_effects(cluster: RaftMQCluster) -> None:
    """What one node does reaches clients of another: a queue deleted on one follower cancels
    its consumer on the other (basic.cancel); an unroutable mandatory publish is returned to its
    publisher while the queue's consumer lives on another node; a message published on the leader
    and consumed on a follower keeps its properties."""
    leader = cluster.leader()
    f1, f2 = cluster.followers()
    q = unique("xnode")
    c1, c2, c3 = connect(f1.url), connect(f2.url), connect(leader.url)
    try:
        ch1 = c1.channel()
        ch1.queue_declare(q, durable=True)
        cluster.wait_converged()
        ch2 = c2.channel()
        got = Collector(ack=True)
        cancelled: list[Any] = []
        ch2.add_on_cancel_callback(cancelled.append)
        tag = ch2.basic_consume(q, got)
        ch3 = c3.channel()
        ch3.confirm_delivery()
        props = pika.BasicProperties(delivery_mode=2, content_type="text/plain",
                                     headers={"k": "v"}, correlation_id="cid-1",
                                     message_id="mid-1", priority=3)
        ch3.basic_publish("", q, b"hello", props)
        with pytest.raises(pika.exceptions.UnroutableError):
            ch3.basic_publish("", q + "-nowhere", b"lost", props, mandatory=True)
        pump(c2, lambda: len(got) >= 1, 10, what="the message published on the leader")
        p = got.items[0].properties
        assert got.bodies == [b"hello"]
        assert (p.content_type, p.headers, p.correlation_id, p.message_id, p.priority,
                p.delivery_mode) == ("text/plain", {"k": "v"}, "cid-1", "mid-1", 3, 2)
        ch1.queue_delete(q)
        pump(c2, lambda: bool(cancelled), 10, what="basic.cancel on the other node")
        assert cancelled[0].method.consumer_tag == tag
    finally:
        for conn in (c1, c2, c3):
            close_quietly(conn)


def _serve_argv(tmp_path: Path) -> list[str]:
    return [sys.executable, "-m", "node", "serve", "--node-id", "n1",
            "--amqp-port", str(free_port()), "--metrics-port", str(free_port()),
            "--raft-address", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "data")]


@pytest.mark.parametrize("how", ["flag", "env", "empty-secret"])
def test_peers_without_secret_refuses_to_start(tmp_path: Path, how: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTMQ_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    argv = _serve_argv(tmp_path)
    peer = f"127.0.0.1:{free_port()}"
    if how == "flag":
        argv += ["--peers", peer]
    else:
        env["RAFTMQ_PEERS"] = peer
    if how == "empty-secret":
        env["RAFTMQ_CLUSTER_SECRET"] = ""
    r = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "--cluster-secret" in r.stderr, r.stderr
    assert not (tmp_path / "data" / "raft.journal").exists()


def test_raft_port_binds_only_the_configured_address(cluster: RaftMQCluster) -> None:
    """Every listener is bound to 127.0.0.1, not 0.0.0.0: on Linux any 127/8 address reaches a
    0.0.0.0 listener, so 127.0.0.2 must be refused."""
    for nd in cluster.nodes:
        for port in (nd.raft_port, nd.amqp_port, nd.metrics_port):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.2", port), timeout=2).close()
    # and the cluster is none the worse for the stray connections
    cluster.leader()


@pytest.mark.parametrize("restart", ["all", "followers-only"])
async def test_whole_cluster_kill9_mid_stream(cluster: RaftMQCluster, restart: str) -> None:
    """kill -9 of all three nodes at once while four producers (two on one follower, one on the
    other, one on the leader) publish with confirms: after the restart every confirmed message is
    there exactly once, each producer's in publish order, and nothing else but (at most) the
    messages whose confirms were still outstanding. ``followers-only``: only the two former
    followers come back (a majority): a confirm means a majority has the message, so they must
    have every confirmed one even without the old leader's log."""
    c = cluster
    leader = await asyncio.to_thread(c.leader)
    f1, f2 = [nd for nd in c.nodes if nd is not leader]
    q = unique("midstream")
    conn = await aio_pika.connect(f1.url, timeout=5)
    try:
        ch = await asyncio.wait_for(conn.channel(), 5)
        await asyncio.wait_for(ch.declare_queue(q, durable=True), 5)
    finally:
        await asyncio.wait_for(conn.close(), 5)
    await asyncio.to_thread(c.wait_converged)
    log = StreamLog()
    stop = asyncio.Event()
    producers = [asyncio.create_task(produce([nd.url], q, log, stop, prefix=prefix, interval=0))
                 for nd, prefix in ((f1, "a"), (f1, "b"), (f2, "c"), (leader, "d"))]
    try:
        await wait_for(lambda: len(log.confirmed) >= 600, 30, "600 confirms")
        await asyncio.to_thread(c.kill_all)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*producers), 20)
    finally:
        for task in producers:
            task.cancel()
    confirmed = set(log.confirmed)
    if restart == "all":
        await asyncio.to_thread(c.start_all)
        reader = c.node(2)
    else:
        for nd in (f1, f2):
            nd.start(wait=False)
        await asyncio.to_thread(c.wait_ready, [f1, f2], 45)
        await asyncio.to_thread(c.leader, 15, [f1, f2])
        reader = f2
    got: list[str] = []
    conn = await aio_pika.connect(reader.url, timeout=5)
    try:
        ch = await asyncio.wait_for(conn.channel(), 5)
        queue = await asyncio.wait_for(ch.declare_queue(q, passive=True), 5)
        while (msg := await asyncio.wait_for(queue.get(no_ack=True, fail=False), 5)) is not None:
            got.append(msg.body.decode())
    finally:
        await asyncio.wait_for(conn.close(), 5)
    print(f"mid-stream whole-cluster kill, restart {restart}: published {len(log.published)}, confirmed "
          f"{len(confirmed)}, back after restart {len(got)}")
    order = {mid: i for i, mid in enumerate(log.published)}
    assert not confirmed - set(got), f"confirmed, lost: {sorted(confirmed - set(got), key=order.__getitem__)}"
    assert len(got) == len(set(got)), "duplicates after restart"
    assert set(got) <= set(log.published)
    for prefix in "abcd":
        mine = [m for m in got if m.startswith(prefix + "-")]
        assert mine == sorted(mine, key=order.__getitem__), f"producer {prefix}: out of publish order"
    unconfirmed_back = set(got) - confirmed
    assert len(unconfirmed_back) <= len(producers), unconfirmed_back  # one in flight each


def test_replies_keep_request_order_on_a_follower(cluster: RaftMQCluster) -> None:
    """On a follower a confirm.select-ok made by the node waits behind the basic.return of
    the publish sent before it (it came first once the round trip to the leader was in
    the way), and a queue.delete-ok comes before the cancel of that channel's consumer."""
    from tests.integration.test_ordering import delete_ok_before_cancel, returns_before_select_ok

    follower = cluster.followers()[0]
    returns_before_select_ok(follower.host, follower.amqp_port)
    delete_ok_before_cancel(follower.host, follower.amqp_port, "order-q")
