"""node/mgmt/framework.py propose_and_wait: what the API proposes is applied, or the request
is told why not (issue 19 item 6: an unencodable command was left out of its Raft entry
by the proposer and the API answered 201 all the same). On an in-process node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cluster import commands as C
from node.mgmt.framework import Refusal, propose_and_wait
from tests.node.inproc import InProcessNode

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def node() -> AsyncIterator[InProcessNode]:
    n = await InProcessNode(asyncio.get_running_loop()).start()
    try:
        yield n
    finally:
        await n.stop()


async def test_applied_commands_answer_nothing(node):
    await propose_and_wait(node.broker, C.VHostPut("v1", "", ()))
    assert "v1" in node.broker.raft.state.vhosts


async def test_an_unencodable_command_is_a_400_and_nothing_is_proposed(node):
    entries = len(node.cluster.log)
    with pytest.raises(Refusal) as refused:
        await propose_and_wait(node.broker, C.VHostPut("v2", "", ()),
                               C.LimitsSet("vhost", "v2", {"max-queues": 1 << 64}))
    assert refused.value.response.status == 400
    assert b"LimitsSet cannot be encoded" in refused.value.response.body  # type: ignore[operator]
    await node.settle()
    assert len(node.cluster.log) == entries and "v2" not in node.broker.raft.state.vhosts


async def test_a_command_the_proposer_left_out_is_a_500_not_a_success(node, monkeypatch):
    """Should a command get past the check and not encode, the proposer leaves it out of
    the entry; the request learns it (Proposer.dropped) instead of answering 201."""
    monkeypatch.setattr(C, "check_encodable", lambda cmd: None)
    with pytest.raises(Refusal) as refused:
        await propose_and_wait(node.broker, C.VHostPut("v3", "", ()),
                               C.LimitsSet("vhost", "v3", {"max-queues": 1 << 64}))
    assert refused.value.response.status == 500
    assert b"LimitsSet could not be encoded" in refused.value.response.body  # type: ignore[operator]
    state = node.broker.raft.state
    assert "v3" in state.vhosts and not state.vhosts["v3"].limits  # the rest went on
