"""A connection cannot send unboundedly far ahead of what the cluster applied
(node/session.py INPUT_WINDOW), in-process on the in-memory log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pamqp import commands as spec

from node import session
from protocol.methods import build
from tests.node.inproc import InProcessNode


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
