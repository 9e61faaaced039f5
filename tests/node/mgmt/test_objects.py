"""Queues, exchanges, bindings, messages, connections, channels, consumers, the overview
and policies (node/mgmt/objects.py) on the in-process node. Changes run as AMQP commands
on the request's own session, so the machine's refusals come back as RabbitMQ's API gives
them (a 403 channel error is a 401, a 404 a 404, the rest 400)."""

from __future__ import annotations

import urllib.parse

import pytest
from pamqp import commands as spec

from protocol.methods import build

pytestmark = pytest.mark.timeout(60)

NOT_FOUND = {"error": "Object Not Found", "reason": "Not Found"}


def state(api):
    return api.node.broker.raft.state


async def test_queues_declared_listed_purged_and_deleted(api):
    assert await api("PUT", "/api/queues/%2F/q1", {"durable": True,
                                                   "arguments": {"x-max-length": 5}}) == (
        201, None)
    assert await api("PUT", "/api/queues/%2F/q1", {"durable": True,
                                                   "arguments": {"x-max-length": 5}}) == (
        204, None)
    q = await api.ok("GET", "/api/queues/%2F/q1")
    assert (q["name"], q["vhost"], q["durable"], q["arguments"], q["consumer_details"]) == (
        "q1", "/", True, {"x-max-length": 5}, [])
    assert [q["name"] for q in await api.ok("GET", "/api/queues")] == ["q1"]
    assert [q["name"] for q in await api.ok("GET", "/api/queues/%2F")] == ["q1"]
    # a redeclaration with other arguments: the machine's 406, as RabbitMQ's API answers it
    status, answer = await api("PUT", "/api/queues/%2F/q1", {"arguments": {}})
    assert status == 400 and "inequivalent arg" in answer["reason"]
    await api.ok("POST", "/api/exchanges/%2F/amq.default/publish",
                 {"routing_key": "q1", "payload": "m", "properties": {}})
    status, answer = await api("DELETE", "/api/queues/%2F/q1?if-empty=true")
    assert (status, answer["error"]) == (400, "bad_request") and "q1" in state(api).vhosts[
        "/"].queues
    assert await api("DELETE", "/api/queues/%2F/q1/contents") == (204, None)
    assert await api("DELETE", "/api/queues/%2F/q1") == (204, None)
    assert await api("GET", "/api/queues/%2F/q1") == (404, NOT_FOUND)
    assert await api("DELETE", "/api/queues/%2F/q1") == (404, NOT_FOUND)
    assert await api("GET", "/api/queues/nowhere") == (404, NOT_FOUND)
    assert (await api("PUT", "/api/queues/%2F/q2", {"durable": 3}))[0] == 400


async def test_publish_and_get_messages(api):
    await api.ok("PUT", "/api/queues/%2F/inbox", {})
    for i in range(3):
        assert await api.ok("POST", "/api/exchanges/%2F/amq.default/publish", {
            "routing_key": "inbox", "payload": f"m{i}", "payload_encoding": "string",
            "properties": {"content_type": "text/plain", "headers": {"n": i}}}) == {
            "routed": True}
    assert await api.ok("POST", "/api/exchanges/%2F/amq.default/publish", {
        "routing_key": "nowhere", "payload": "", "properties": {}}) == {"routed": False}
    got = await api.ok("POST", "/api/queues/%2F/inbox/get",
                       {"count": 2, "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert [(m["payload"], m["redelivered"], m["properties"]["headers"]) for m in got] == [
        ("m0", False, {"n": 0}), ("m1", False, {"n": 1})]
    got = await api.ok("POST", "/api/queues/%2F/inbox/get",
                       {"count": 5, "ackmode": "ack_requeue_false", "encoding": "base64",
                        "truncate": 1})
    assert [(m["payload"], m["payload_bytes"], m["redelivered"]) for m in got] == [
        ("bQ==", 2, True), ("bQ==", 2, True), ("bQ==", 2, False)]
    assert await api.ok("POST", "/api/queues/%2F/inbox/get", {"count": 1}) == []
    for wrong in ({"count": 0}, {"ackmode": "keep"}, {"encoding": "hex"}, {"truncate": -1}):
        assert (await api("POST", "/api/queues/%2F/inbox/get", wrong))[0] == 400
    for bad in ({"payload": 1}, {"payload": "x", "payload_encoding": "hex"},
                {"payload": "!", "payload_encoding": "base64"},
                {"payload": "", "properties": {"priority": 300}},
                {"payload": "", "properties": {"colour": "red"}},
                {"payload": "", "properties": {"user_id": "mallory"}}):
        assert (await api("POST", "/api/exchanges/%2F/amq.default/publish", bad))[0] == 400


async def test_exchanges_and_bindings(api):
    assert await api("PUT", "/api/exchanges/%2F/x1", {"type": "topic"}) == (201, None)
    assert await api("PUT", "/api/exchanges/%2F/x1", {"type": "topic"}) == (204, None)
    assert (await api("PUT", "/api/exchanges/%2F/x2", {}))[0] == 400  # no type
    assert (await api.ok("GET", "/api/exchanges/%2F/x1"))["type"] == "topic"
    assert (await api.ok("GET", "/api/exchanges/%2F/amq.default"))["name"] == ""
    assert "x1" in [x["name"] for x in await api.ok("GET", "/api/exchanges/%2F")]
    await api.ok("PUT", "/api/queues/%2F/q", {})
    status, _ = await api("POST", "/api/bindings/%2F/e/x1/q/q", {"routing_key": "a.*",
                                                                 "arguments": {}})
    assert status == 201 and api.last_headers["Location"] == "/api/bindings/%2F/e/x1/q/q/a.%2A"
    between = await api.ok("GET", "/api/bindings/%2F/e/x1/q/q")
    assert [(b["routing_key"], b["properties_key"]) for b in between] == [("a.*", "a.%2A")]
    props = urllib.parse.quote(between[0]["properties_key"], safe="")
    assert (await api.ok("GET", f"/api/bindings/%2F/e/x1/q/q/{props}"))["routing_key"] == "a.*"
    assert len(await api.ok("GET", "/api/queues/%2F/q/bindings")) == 2  # and the default's
    assert len(await api.ok("GET", "/api/exchanges/%2F/x1/bindings/source")) == 1
    assert await api.ok("GET", "/api/exchanges/%2F/x1/bindings/destination") == []
    assert await api("GET", "/api/exchanges/%2F/x1/bindings/sideways") == (404, NOT_FOUND)
    assert any(b["source"] == "x1" for b in await api.ok("GET", "/api/bindings"))
    assert await api("POST", "/api/bindings/%2F/e/amq.default/q/q", {}) == (
        403, {"error": "access_refused",
              "reason": "operation not permitted on the default exchange"})
    assert await api("POST", "/api/bindings/%2F/e/x1/q/nothing", {}) == (404, NOT_FOUND)
    assert await api("DELETE", f"/api/bindings/%2F/e/x1/q/q/{props}") == (204, None)
    assert await api("GET", f"/api/bindings/%2F/e/x1/q/q/{props}") == (404, NOT_FOUND)
    assert await api("DELETE", "/api/exchanges/%2F/x1") == (204, None)
    assert await api("GET", "/api/exchanges/%2F/x1") == (404, NOT_FOUND)


async def test_the_machine_checks_the_users_permissions(api):
    reader = await api.user("reader", "management")
    await api.ok("PUT", "/api/permissions/%2F/reader", {"configure": "^own", "write": "",
                                                        "read": ".*"})
    assert await api("PUT", "/api/queues/%2F/theirs", {}, user=reader) == (
        401, {"error": "not_authorised", "reason": "Access refused."})
    assert (await api("PUT", "/api/queues/%2F/own", {}, user=reader))[0] == 201
    # a vhost it has no permissions in: not there to it
    await api.ok("PUT", "/api/vhosts/other", {})
    assert await api("GET", "/api/queues/other", user=reader) == (
        401, {"error": "not_authorised", "reason": "Not_Authorized"})
    assert "other" not in [q["vhost"] for q in await api.ok("GET", "/api/queues", user=reader)]


async def test_listing_filters_sort_and_pages(api):
    for name in ("b", "a", "c"):
        await api.ok("PUT", f"/api/queues/%2F/{name}", {})
    assert [q["name"] for q in await api.ok("GET", "/api/queues?sort=name&sort_reverse=true")
            ] == ["c", "b", "a"]
    assert await api.ok("GET", "/api/queues?columns=name&name=a") == [{"name": "a"}]
    page = await api.ok("GET", "/api/queues?page=2&page_size=2&sort=name")
    assert (page["page"], page["page_count"], [q["name"] for q in page["items"]]) == (
        2, 2, ["c"])
    assert [q["name"] for q in await api.ok("GET", "/api/queues?use_regex=true&name=^[ab]$")
            ] in (["b", "a"], ["a", "b"])
    assert (await api("GET", "/api/queues?page=0"))[0] == 400


async def test_connections_channels_and_consumers(api):
    client = api.node.client()
    await client.open()
    await api.ok("PUT", "/api/queues/%2F/work", {})
    client.method(1, build(spec.Basic.Consume, 0, "work", "ctag", False, False, False, False,
                           {}))
    await api.node.settle()
    name = f"n1:{client.conn.conn_no}"
    conns = await api.ok("GET", "/api/connections")
    assert [(c["name"], c["user"], c["vhost"], c["channels"]) for c in conns] == [
        (name, "guest", "/", 1)]
    assert conns[0]["peer_host"] == "127.0.0.1"
    assert (await api.ok("GET", f"/api/connections/{name}"))["name"] == name
    assert len(await api.ok("GET", "/api/vhosts/%2F/connections")) == 1
    channels = await api.ok("GET", "/api/channels")
    assert [c["name"] for c in channels] == [f"{name} (1)"]
    assert (await api.ok("GET", f"/api/channels/{name} (1)"))["number"] == 1
    assert await api("GET", f"/api/channels/{name} (2)") == (404, NOT_FOUND)
    assert len(await api.ok("GET", f"/api/connections/{name}/channels")) == 1
    assert len(await api.ok("GET", "/api/vhosts/%2F/channels")) == 1
    consumers = await api.ok("GET", "/api/consumers/%2F")
    assert [(c["consumer_tag"], c["queue"]["name"]) for c in consumers] == [("ctag", "work")]
    assert [c["consumer_tag"] for c in
            (await api.ok("GET", "/api/queues/%2F/work"))["consumer_details"]] == ["ctag"]
    # another user sees none of it, and may not close it
    other = await api.user("other", "management")
    assert await api.ok("GET", "/api/connections", user=other) == []
    assert await api("GET", f"/api/connections/{name}", user=other) == (404, NOT_FOUND)
    monitor = await api.user("monitor", "monitoring")
    assert await api("DELETE", f"/api/connections/{name}", user=monitor) == (
        401, {"error": "not_authorised", "reason": "User not authorised to access object"})
    for bad in ("n1:x", "n1:²", "nothing", "n1:999999999"):
        assert await api("GET", f"/api/connections/{bad}") == (404, NOT_FOUND)
    assert await api("DELETE", f"/api/connections/{name}",
                     headers={"X-Reason": "bye"}) == (204, None)
    await api.node.settle()
    assert client.transport.closed or any(
        f.name == "Connection.Close" and "bye" in f.reply_text for _, f in client.frames())


async def test_the_apis_own_sessions_are_not_connections(api):
    await api.ok("PUT", "/api/queues/%2F/q", {})
    assert await api.ok("GET", "/api/connections") == []
    assert api.node.broker.api_sessions == {}


async def test_overview_counts_what_the_user_may_see(api):
    await api.ok("PUT", "/api/queues/%2F/q", {})
    await api.ok("POST", "/api/exchanges/%2F/amq.default/publish",
                 {"routing_key": "q", "payload": "x", "properties": {}})
    overview = await api.ok("GET", "/api/overview?msg_rates_age=60&msg_rates_incr=5")
    assert (overview["node"], overview["object_totals"]["queues"],
            overview["queue_totals"]["messages"]) == ("n1", 1, 1)
    assert "publish" in overview["message_stats"]
    stranger = await api.user("stranger", "management")
    theirs = await api.ok("GET", "/api/overview", user=stranger)
    assert theirs["object_totals"]["queues"] == 0
    assert (await api("GET", "/api/overview?msg_rates_age=soon"))[0] == 400


async def test_policies(api):
    """(node/mgmt/policies.py; compared with RabbitMQ in test_policies_compare.py)"""
    assert await api.ok("GET", "/api/policies") == []
    assert await api.ok("GET", "/api/operator-policies/%2F") == []
    assert await api("GET", "/api/policies/nowhere") == (404, NOT_FOUND)
    status, answer = await api("PUT", "/api/policies/%2F/p", {"pattern": ".*"})
    assert (status, answer) == (400, {"error": "bad_request",
                                      "reason": "[{key_missing,definition}]"})
    body = {"pattern": "^p", "definition": {"max-length": 1}}
    assert (await api("PUT", "/api/policies/%2F/p", body))[0] == 201
    assert await api.ok("GET", "/api/policies/%2F/p") == {
        "vhost": "/", "name": "p", "pattern": "^p", "apply-to": "all",
        "definition": {"max-length": 1}, "priority": 0}
    assert (await api("DELETE", "/api/policies/%2F/p"))[0] == 204
    assert await api("DELETE", "/api/policies/%2F/p") == (404, NOT_FOUND)
