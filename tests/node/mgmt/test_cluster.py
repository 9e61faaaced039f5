"""This node's status and limits, the nodes, drain, leadership and Raft membership
(node/mgmt/cluster.py, node/mgmt/members.py) on the in-process node, whose fake Raft
(tests/cluster/fake_raft.py) is told what to answer."""

from __future__ import annotations

import pytest

from cluster.replica import MembershipResult

pytestmark = pytest.mark.timeout(60)

NOT_FOUND = {"error": "Object Not Found", "reason": "Not Found"}


async def test_status(api):
    status = await api.ok("GET", "/api/status")
    assert (status["node"], status["ready"], status["isolated"], status["raft"]["state"],
            status["connections"], status["publishers_blocked"]) == (
        "n1", True, False, "leader", 0, None)
    assert set(status["nodes"]) == {"n1"} and status["levels"]["node"] >= 1


async def test_nodes(api):
    nodes = await api.ok("GET", "/api/nodes")
    assert [(n["name"], n["running"], n["being_drained"], n["raft"]["role"]) for n in nodes] == [
        ("n1", True, False, "leader")]
    assert (await api.ok("GET", "/api/nodes/n1"))["name"] == "n1"
    assert await api("GET", "/api/nodes/n9") == (404, NOT_FOUND)
    assert await api.ok("GET", "/api/nodes?columns=name") == [{"name": "n1"}]


async def test_node_limits(api):
    answer = await api.ok("PUT", "/api/nodes/n1/limits", {"vm_memory_high_watermark": "0.9",
                                                          "disk_free_limit": "1MB"})
    assert answer["vm_memory_high_watermark"] == "0.9" and answer["disk_free_limit"] == 1000000
    assert api.node.broker.alarms.monitor.memory_watermark.value == 0.9
    assert (await api("PUT", "/api/nodes/n1/limits", {"disk_free_limit": "lots"}))[0] == 400
    assert await api("PUT", "/api/nodes/n2/limits", {}) == (
        404, {"error": "Object Not Found", "reason": "this is node n1: ask that node"})


async def test_transfer_leadership(api, monkeypatch):
    assert await api.ok("POST", "/api/cluster/transfer-leadership?to=n1") == {
        "ok": True, "leader": "n1"}
    assert await api("POST", "/api/cluster/transfer-leadership?to=n7") == (
        400, {"error": "bad_request", "reason": "n7 is not a member of the cluster"})
    # nobody takes over in time (the fake's transfer is refused): a 409 naming the leader
    from node.services import maintenance

    monkeypatch.setattr(maintenance, "TRANSFER_TIMEOUT_S", 0.1)
    assert await api("POST", "/api/cluster/transfer-leadership") == (409, {
        "ok": False, "leader": "n1", "error": "the leadership did not move in time (a "
                                             "target must be connected and caught up)"})
    api.node.cluster.leader = None  # a follower that knows no leader
    assert await api("POST", "/api/cluster/transfer-leadership") == (
        503, {"error": "unavailable", "reason": "no leader known"})


async def test_drain_this_node(api, monkeypatch):
    """The node's clients closed, leadership handed over (the fake hands it to n2)."""
    client = api.node.client()
    await client.open()
    cluster = api.node.cluster

    def hand_over(to: str | None = None) -> bool:
        cluster.leader = "n2"
        return True

    monkeypatch.setattr(api.node.raft, "transfer_leadership", hand_over)
    answer = await api.ok("POST", "/api/nodes/n1/drain")
    assert (answer["ok"], answer["node"], answer["closed"], answer["leader_before"],
            answer["leader_after"]) == (True, "n1", 1, "n1", "n2")
    assert client.transport.closed or any(f.name == "Connection.Close"
                                          for _, f in client.frames())
    assert api.node.broker.draining
    assert (await api.ok("GET", "/api/nodes/n1"))["being_drained"] is True
    assert await api("POST", "/api/nodes/n9/drain") == (404, NOT_FOUND)


async def test_membership_checks_the_address_and_the_secret(api):
    for bad in ("", "host", ":5672", "h:0", "h:65536", "h:x", "h:²"):
        assert await api("POST", f"/api/members?address={bad}") == (
            400, {"error": "bad_request", "reason": "address=HOST:PORT is required"})
    status, answer = await api("POST", "/api/members?address=h:1")
    assert status == 400 and "no --cluster-secret" in answer["reason"]


async def test_membership_answers_what_raft_answers(api, monkeypatch):
    raft = api.node.raft
    assert await api("POST", "/api/members?address=h:1&force=true") == (
        409, {"ok": False, "error": str(MembershipResult.DENIED), "address": "h:1"})
    monkeypatch.setattr(raft, "add_member", lambda addr, cb: cb(MembershipResult.OK))
    assert await api.ok("POST", "/api/members?address=h:1&force=true") == {
        "ok": True, "error": None, "address": "h:1"}
    monkeypatch.setattr(raft, "remove_member", lambda addr, cb: cb(MembershipResult.OK))
    assert await api.ok("DELETE", "/api/members?address=h:1") == {
        "ok": True, "error": None, "address": "h:1"}


async def test_a_membership_change_that_never_completes_is_a_504(api, monkeypatch):
    from node.mgmt import members

    monkeypatch.setattr(members, "MEMBERSHIP_TIMEOUT_S", 0.1)
    monkeypatch.setattr(api.node.raft, "add_member", lambda addr, cb: None)
    assert await api("POST", "/api/members?address=h:1&force=true") == (
        504, {"ok": False, "error": "timeout", "address": "h:1"})
