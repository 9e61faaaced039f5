"""What one connection can make the node buffer, in-process on the in-memory log: its
input ahead of what the cluster applied (node/amqp/session.py INPUT_WINDOW), and a message
in progress during an alarm."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest
from pamqp import commands as spec
from pamqp import frame as pframe

from node.amqp import session
from protocol.methods import build
from tests.node.inproc import InProcessNode, _header


@pytest.fixture
async def node() -> AsyncIterator[InProcessNode]:
    n = await InProcessNode(asyncio.get_running_loop()).start()
    yield n
    await n.stop()


async def test_pipelined_input_past_the_window_pauses_reading_until_applied(
        node: InProcessNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """basic.gets pipelined past the window: the socket is paused at once (its
    replies not yet due), and read again once the entry carrying them is applied;
    every get is answered."""
    c = node.client()
    await c.open()
    c.method(1, build(spec.Queue.Declare, 0, "q"))
    await node.settle()
    c.frames()
    monkeypatch.setattr(session, "INPUT_WINDOW", 2000)
    gets = 0
    while c.transport.reading:
        c.method(1, build(spec.Basic.Get, 0, "q", True))
        gets += 1
        assert gets < 1000
    assert gets * 20 > 2000  # paused only past the window
    await node.settle(20)
    assert c.transport.reading
    answers = [f.name for _, f in c.frames()]
    assert answers == ["Basic.GetEmpty"] * gets


async def test_a_first_message_is_not_read_in_whole_during_an_alarm(
        node: InProcessNode) -> None:
    """During a memory alarm a connection that has not published yet is blocked at its
    first content frame (as rabbit_reader), not after a whole message of up to 128 MiB:
    otherwise many such connections fill the memory the alarm protects."""
    c = node.client()
    await c.open()
    node.broker.alarms.reason = "low on memory"
    try:
        c.method(1, build(spec.Basic.Qos, 0, 10, False))
        assert c.transport.reading  # not publishing: not blocked
        c.method(1, build(spec.Basic.Publish, 0, "", "nowhere", False, False))
        c.send(pframe.marshal(_header(100_000), 1))
        assert not c.transport.reading and c.conn.blocked
    finally:
        node.broker.alarms.reason = None
        node.broker._alarm_changed(None)
    assert c.transport.reading and not c.conn.blocked
    c.send(struct.pack(">BHI", 3, 1, 100_000) + b"z" * 100_000 + b"\xce")
    await node.settle()
    assert c.conn.session.last_publish  # the message went through
    assert [f.name for _, f in c.frames()] == ["Basic.QosOk"]
