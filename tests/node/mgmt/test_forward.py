"""Requests one node answers by asking another (node/mgmt/framework.py forward): two
in-process nodes on one fake Raft log, each API on its own 127.0.0.1 port, the address
each announced in its NodeUp. A node that does not answer is "not running" in /api/nodes
and a 503 for what must be done there."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from cluster.replica import MembershipResult
from tests.cluster.fake_raft import FakeCluster, FakeRaft
from tests.node.mgmt.conftest import Api, start_node, until

pytestmark = pytest.mark.timeout(60)


def _members(raft: FakeRaft, other: str) -> None:
    """The fake Raft of one node of two, connected to the other (else each node's
    membership watch would find the other removed, and record it down)."""
    status = raft.status
    raft.status = lambda: dataclasses.replace(  # type: ignore[method-assign]
        status(), members=(raft.node_id, other), connected=(other,))
    raft.peers = lambda: [other]  # type: ignore[method-assign]
    raft.is_connected = lambda peer: peer == other  # type: ignore[method-assign]


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Api, Api]]:
    cluster = FakeCluster()
    _members(cluster.node("n1"), "n2")
    _members(cluster.node("n2"), "n1")
    n1, api1 = await start_node(cluster, "n1")
    n2, api2 = await start_node(cluster, "n2")
    try:
        await until(lambda: "n2" in n1.broker.raft.state.nodes)  # (n1's next tick)
        yield api1, api2
    finally:
        for api in (api2, api1):
            await api.client.close()
            await api.node.stop()


async def test_every_node_reports_itself(pair):
    api1, api2 = pair
    nodes = await api1.ok("GET", "/api/nodes")
    assert [(n["name"], n["running"]) for n in nodes] == [("n1", True), ("n2", True)]
    assert nodes[1]["raft"]["role"] == "follower"
    assert (await api1.ok("GET", "/api/nodes/n2"))["name"] == "n2"
    assert await api1("GET", "/api/nodes/n2?local=true") == (
        404, {"error": "Object Not Found", "reason": "Not Found"})


async def test_a_connection_is_closed_by_its_own_node(pair):
    api1, api2 = pair
    client = api2.node.client()
    await client.open()
    name = f"n2:{client.conn.conn_no}"
    await until(lambda: ("n2", client.conn.conn_no) in api1.node.broker.raft.state.conns)
    assert [c["name"] for c in await api1.ok("GET", "/api/connections")] == [name]
    assert await api1("DELETE", f"/api/connections/{name}", headers={"X-Reason": "moving"}) == (
        204, None)
    await api2.node.settle()
    assert client.transport.closed or any(
        f.name == "Connection.Close" and "moving" in f.reply_text for _, f in client.frames())


async def test_drain_goes_to_the_node_drained(pair):
    api1, api2 = pair
    answer = await api1.ok("POST", "/api/nodes/n2/drain")
    assert (answer["node"], answer["ok"]) == ("n2", True)
    assert api2.node.broker.draining and not api1.node.broker.draining


async def test_leadership_and_removals_go_to_the_leader(pair):
    api1, api2 = pair
    assert await api2.ok("POST", "/api/cluster/transfer-leadership?to=n1") == {
        "ok": True, "leader": "n1"}  # (n1 answered: it leads already)
    # the leader's fake Raft refuses the removal: its 409 comes back through n2
    assert await api2("DELETE", "/api/members?address=h:1") == (
        409, {"ok": False, "error": str(MembershipResult.DENIED), "address": "h:1"})


async def test_a_node_that_does_not_answer(pair):
    api1, api2 = pair
    await api2.client.close()  # its API is gone; the state still names its address
    nodes = await api1.ok("GET", "/api/nodes")
    assert [(n["name"], n["running"]) for n in nodes] == [("n1", True), ("n2", False)]
    status, answer = await api1("POST", "/api/nodes/n2/drain")
    assert (status, answer["error"]) == (503, "unavailable")
    assert answer["reason"].startswith("node n2: ")
