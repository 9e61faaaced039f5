"""The node's logic in-process: Broker, connections and sessions on the in-memory log."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pamqp import commands as spec
from pamqp import frame as pframe

from cluster import effects as E
from protocol.methods import build, encode_method
from tests.node.inproc import Client, InProcessNode, _header


@pytest.fixture
async def node() -> AsyncIterator[InProcessNode]:
    n = await InProcessNode(asyncio.get_running_loop()).start()
    yield n
    await n.stop()


def names(frames: list[tuple[int, Any]]) -> list[str]:
    return [f.name for _, f in frames]


async def declare(c: Client, queue: str, ch: int = 1) -> None:
    c.method(ch, build(spec.Queue.Declare, 0, queue))
    await c.node.settle()
    assert "Queue.DeclareOk" in names(c.frames())


async def test_publish_confirm_consume(node: InProcessNode) -> None:
    c = node.client()
    await c.open()
    await declare(c, "q")
    c.method(1, build(spec.Confirm.Select, False))
    for i in range(3):
        c.publish(1, b"m%d" % i, "q")
    await node.settle()
    frames = c.frames()
    assert names(frames) == ["Confirm.SelectOk", "Basic.Ack"]
    assert (frames[1][1].delivery_tag, frames[1][1].multiple) == (3, True)
    c.method(1, build(spec.Basic.Consume, 0, "q", "tag", False, True))
    await node.settle()
    frames = c.frames()
    assert names(frames)[0] == "Basic.ConsumeOk"
    assert names(frames).count("Basic.Deliver") == 3


async def test_one_connections_failure_does_not_touch_another(
    node: InProcessNode, caplog: pytest.LogCaptureFixture
) -> None:
    """Dispatch isolation: an effect that fails for one connection closes that one with
    541; the other gets its confirm and its delivery from the same dispatch."""
    bad, good = node.client(), node.client()
    await bad.open()
    await good.open()
    await declare(good, "shared")
    for c in (bad, good):
        c.method(1, build(spec.Basic.Consume, 0, "shared", "", False, True))
    good.method(1, build(spec.Confirm.Select, False))
    await node.settle()
    bad.frames(), good.frames()

    def broken(ef: E.Effect) -> None:
        raise RuntimeError("cannot encode this")

    bad.conn.session.run_effect = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        good.publish(1, b"one", "shared")
        good.publish(1, b"two", "shared")
        await node.settle()
    got = names(good.frames())
    assert "Basic.Ack" in got and got.count("Basic.Deliver") >= 1
    [close] = [f for _, f in bad.frames() if f.name == "Connection.Close"]
    assert close.reply_code == 541
    assert node.broker.metrics.faults == 1
    assert "while running Deliver" in caplog.text


async def test_paused_writing_stops_deliveries_at_the_source(node: InProcessNode) -> None:
    """A consumer whose socket takes no more writes gets no more deliveries; the
    messages stay ready (for other consumers) and flow again when it drains."""
    c, producer = node.client(), node.client()
    await c.open()
    await producer.open()
    await declare(producer, "slow")
    c.method(1, build(spec.Basic.Consume, 0, "slow", "t", False, True))  # no-ack
    await node.settle()
    c.frames()
    c.conn.pause_writing()
    for i in range(5):
        producer.publish(1, b"%d" % i, "slow")
    await node.settle()
    assert "Basic.Deliver" not in names(c.frames())
    q = node.raft.state.vhosts["/"].queues["slow"]
    assert q.ready_count() == 5
    c.conn.resume_writing()
    await node.settle()
    assert names(c.frames()).count("Basic.Deliver") == 5 and q.ready_count() == 0


async def test_fault_effect_is_logged_by_the_proposing_node(
    node: InProcessNode, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        node.broker.dispatch([E.Fault("n1", "QueuePurge(...)", "KeyError: 'x'"),
                              E.Fault("n2", "other node's", "not logged here")])
    assert "QueuePurge(...)" in caplog.text and "other node's" not in caplog.text
    assert node.broker.metrics.faults == 1


async def test_tx_commit_is_one_entry(node: InProcessNode) -> None:
    c = node.client()
    await c.open()
    await declare(c, "tx")
    c.method(1, build(spec.Tx.Select))
    await node.settle()
    c.frames()
    before = len(node.cluster.log)
    for i in range(4):
        c.publish(1, b"%d" % i, "tx")
    c.method(1, build(spec.Tx.Commit))
    await node.settle()
    assert names(c.frames()) == ["Tx.CommitOk"]
    assert len(node.cluster.log) == before + 1
    assert node.raft.state.vhosts["/"].queues["tx"].ready_count() == 4


async def test_select_ok_waits_behind_the_return_of_an_earlier_publish(
        node: InProcessNode) -> None:
    """A reply made by the node (confirm.select-ok, tx.select-ok) keeps its place among
    the channel's replies: the basic.return of a mandatory publish sent before it comes
    first, as from RabbitMQ."""
    c = node.client()
    await c.open((1, 2))
    for ch, select in ((1, build(spec.Confirm.Select, False)), (2, build(spec.Tx.Select))):
        c.method(ch, build(spec.Basic.Publish, 0, "", "nowhere", True, False))
        c.send(pframe.marshal(_header(1), ch))
        c.send(struct.pack(">BHI", 3, ch, 1) + b"x" + b"\xce")
        c.method(ch, select)
    await node.settle()
    by_channel: dict[int, list[str]] = {1: [], 2: []}
    for ch, f in c.frames():
        if f.name not in ("ContentHeader", "ContentBody"):
            by_channel[ch].append(f.name)
    assert by_channel == {1: ["Basic.Return", "Confirm.SelectOk"],
                          2: ["Basic.Return", "Tx.SelectOk"]}


async def test_a_select_on_an_idle_channel_is_answered_at_once(node: InProcessNode) -> None:
    c = node.client()
    await c.open()
    await node.settle()
    c.method(1, build(spec.Confirm.Select, False))
    assert names(c.frames()) == ["Confirm.SelectOk"]  # written before any Raft turn


async def test_delete_ok_comes_before_the_cancel_of_the_deleting_channels_consumer(
        node: InProcessNode) -> None:
    c = node.client()
    await c.open()
    await declare(c, "doomed")
    c.method(1, build(spec.Basic.Consume, 0, "doomed", "tag", False, False))
    await node.settle()
    assert names(c.frames()) == ["Basic.ConsumeOk"]
    c.method(1, build(spec.Queue.Delete, 0, "doomed", False, False, False))
    await node.settle()
    assert names(c.frames()) == ["Queue.DeleteOk", "Basic.Cancel"]


async def test_no_ack_consumer_window_is_refilled_as_deliveries_are_written(
        node: InProcessNode) -> None:
    """A no-ack consumer of a deep queue gets everything, NOACK_WINDOW at a time: the
    node reports what it wrote (Sent) and the machine hands out more. While its socket
    is paused the reports wait, so at most a window is on its way."""
    from cluster.machine.features import NOACK_WINDOW

    c, producer = node.client(), node.client()
    await c.open()
    await producer.open()
    await declare(producer, "deep")
    total = 3 * NOACK_WINDOW + 7
    for i in range(total):
        producer.publish(1, b"%d" % i, "deep")
    await node.settle()
    c.method(1, build(spec.Basic.Consume, 0, "deep", "t", False, True))  # no-ack
    await node.settle(20)
    assert names(c.frames()).count("Basic.Deliver") == total
    for i in range(total):
        producer.publish(1, b"again %d" % i, "deep")
    c.conn.pause_writing()  # a client that stopped reading
    await node.settle(20)
    got = names(c.frames()).count("Basic.Deliver")
    assert got <= NOACK_WINDOW
    q = node.raft.state.vhosts["/"].queues["deep"]
    assert q.ready_count() == total - got
    c.conn.resume_writing()
    await node.settle(20)
    assert names(c.frames()).count("Basic.Deliver") == total - got


async def test_state_machine_faults_are_logged_at_a_bounded_rate(
    node: InProcessNode, caplog: pytest.LogCaptureFixture
) -> None:
    """A poisoned item may fault on every tick: the log gets FAULT_LOG_MAX lines a
    window and a count of the rest, the metric counts every one."""
    from node import broker as B

    b = node.broker
    before = b.metrics.faults
    with caplog.at_level(logging.ERROR, logger="node.broker"):
        for i in range(200):
            b._log_fault(E.Fault("n1", f"expiring: queue {i}", "RuntimeError: boom"))
        b._fault_window -= B.FAULT_LOG_S  # the window is over
        b._log_fault(E.Fault("n1", "expiring: queue x", "RuntimeError: boom"))
    lines = [r.getMessage() for r in caplog.records]
    assert sum("failed in the state machine" in m for m in lines) == B.FAULT_LOG_MAX + 1
    assert any(f"{200 - B.FAULT_LOG_MAX} more state machine faults" in m for m in lines)
    assert b.metrics.faults - before == 201


async def test_a_connections_input_is_handled_a_budget_per_loop_turn(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """5,000 basic.consume in one read: handled over several loop turns with the
    connection's reading paused meanwhile (another client is served in between), and
    every one of them is answered in the end."""
    from node.amqp import connection as conn_mod

    monkeypatch.setattr(conn_mod, "TURN_BUDGET_S", 0.0)  # every TURN_CHECK_EVERY events
    node = await InProcessNode(asyncio.get_running_loop(),
                               max_consumers_per_channel=0).start()
    try:
        await _consume_5000_in_one_read(node)
    finally:
        await node.stop()


async def _consume_5000_in_one_read(node: InProcessNode) -> None:
    c = node.client()
    await c.open()
    await declare(c, "q")
    frames = []
    for i in range(5000):
        payload = encode_method(build(spec.Basic.Consume, 0, "q", f"t{i}", False, True))
        frames.append(struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce")
    c.send(b"".join(frames))
    assert not c.transport.reading  # the rest waits for the next turns
    other = node.client()
    await other.open()  # served while the big input is still being worked through
    for _ in range(200):
        await asyncio.sleep(0)
        if c.transport.reading:
            break
    assert c.transport.reading
    await node.settle()
    assert names(c.frames()).count("Basic.ConsumeOk") == 5000


async def test_a_dispatch_of_many_deliveries_reaches_the_socket_in_slices(
    node: InProcessNode
) -> None:
    """300 deliveries applied at once (a no-ack consumer on a full queue, as an entry of a
    burst does): written whenever FLUSH_EVERY frames are buffered, so the client gets the first
    while the rest are built (issue 22, bench/burst.py), in order, each once."""
    from node.amqp.connection import FLUSH_EVERY

    c = node.client()
    await c.open()
    await declare(c, "many")
    for i in range(300):
        c.publish(1, b"%d" % i, "many")
    await node.settle()
    c.frames()
    writes: list[int] = []
    write_all = c.transport.writelines

    def counting(lines: Any) -> None:
        lines = list(lines)
        writes.append(len(lines))
        write_all(lines)

    c.transport.writelines = counting  # type: ignore[method-assign]
    c.method(1, build(spec.Basic.Consume, 0, "many", "t", False, True))  # no-ack
    await node.settle()
    frames = c.frames()
    delivers = [f for _, f in frames if f.name == "Basic.Deliver"]
    assert [d.delivery_tag for d in delivers] == list(range(1, 301))
    assert len(writes) >= max(2, 300 // FLUSH_EVERY) and max(writes) < 2 * FLUSH_EVERY, writes
