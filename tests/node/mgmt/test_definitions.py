"""Definitions export and import (node/mgmt_definitions.py) on the in-process node: what
one node exports, another imports whole; a bad file is a 400 naming the item, with
nothing applied."""

from __future__ import annotations

import pytest

from tests.node.mgmt.conftest import start_node

pytestmark = pytest.mark.timeout(60)


async def _populate(api) -> None:
    await api.ok("PUT", "/api/vhosts/v", {"description": "tenant"})
    await api.user("alice", "management", vhost="v")
    await api.ok("PUT", "/api/permissions/v/guest", {"configure": ".*", "write": ".*",
                                                     "read": ".*"})
    await api.ok("PUT", "/api/vhost-limits/v/max-queues", {"value": 10})
    await api.ok("PUT", "/api/exchanges/v/events", {"type": "topic"})
    await api.ok("PUT", "/api/exchanges/v/later", {  # a built-in plugin's type
        "type": "x-delayed-message", "arguments": {"x-delayed-type": "direct"}})
    await api.ok("PUT", "/api/queues/v/audit", {"arguments": {"x-max-length": 100}})
    await api.ok("POST", "/api/bindings/v/e/events/q/audit", {"routing_key": "#"})


async def test_an_export_imports_whole_into_another_cluster(api):
    await _populate(api)
    exported = await api.ok("GET", "/api/definitions")
    assert {u["name"] for u in exported["users"]} == {"guest", "alice"}
    assert [(q["name"], q["vhost"]) for q in exported["queues"]] == [("audit", "v")]
    status, _ = await api("GET", "/api/definitions?download=defs.json")
    assert status == 200 and api.last_headers["Content-Disposition"] == \
        'attachment; filename="defs.json"'
    other, other_api = await start_node(None, "m1")
    try:
        assert await other_api("POST", "/api/definitions", exported) == (204, None)
        st = other.broker.raft.state
        assert "alice" in st.users and st.vhosts["v"].limits == {"max-queues": 10}
        assert "audit" in st.vhosts["v"].queues and "events" in st.vhosts["v"].exchanges
        assert st.vhosts["v"].exchanges["later"].type == "x-delayed-message"
        again = await other_api.ok("GET", "/api/definitions")
        assert again["queues"] == exported["queues"]
        assert again["bindings"] == exported["bindings"]
    finally:
        await other_api.client.close()
        await other.stop()


async def test_a_bad_file_is_refused_whole(api):
    entries = len(api.node.cluster.log)
    status, answer = await api("POST", "/api/definitions", {
        "vhosts": [{"name": "fine"}],
        "queues": [{"name": "q", "vhost": "nowhere", "durable": True, "auto_delete": False,
                    "arguments": {}}]})
    assert status == 400 and "queues[0]" in answer["reason"]
    assert len(api.node.cluster.log) == entries and "fine" not in api.node.broker.raft.state.vhosts
    assert (await api("POST", "/api/definitions", {"users": "everyone"}))[0] == 400
