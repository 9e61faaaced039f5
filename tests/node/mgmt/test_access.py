"""Users, virtual hosts, permissions, topic permissions and limits (node/mgmt/access.py)
on the in-process node: RabbitMQ's status codes (201 made, 204 changed or deleted, 404,
400 with a reason), each change applied once answered."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(60)

NOT_FOUND = {"error": "Object Not Found", "reason": "Not Found"}


def state(api):
    return api.node.broker.raft.state


async def test_users_made_changed_listed_and_deleted(api):
    assert await api("PUT", "/api/users/alice", {"password": "pw", "tags": "monitoring"}) == (
        201, None)
    assert state(api).users["alice"].tags == ("monitoring",)
    assert await api("PUT", "/api/users/alice", {"tags": ["management", "policymaker"]}) == (
        204, None)  # the password is kept
    assert (await api("GET", "/api/whoami", user=("alice", "pw")))[1]["tags"] == [
        "management", "policymaker"]
    alice = await api.ok("GET", "/api/users/alice")
    assert alice["name"] == "alice" and alice["hashing_algorithm"] == \
        "rabbit_password_hashing_sha256" and alice["limits"] == {}
    assert {u["name"] for u in await api.ok("GET", "/api/users")} == {"guest", "alice"}
    assert [u["name"] for u in await api.ok("GET", "/api/users/without-permissions")] == [
        "alice"]
    assert await api("DELETE", "/api/users/alice") == (204, None)
    assert await api("GET", "/api/users/alice") == (404, NOT_FOUND)
    assert await api("DELETE", "/api/users/alice") == (404, NOT_FOUND)


async def test_user_input_is_checked_before_anything_is_proposed(api):
    entries = len(api.node.cluster.log)
    assert await api("PUT", "/api/users/bob", {}) == (
        400, {"error": "bad_request",
              "reason": "password or password_hash is required for a new user"})
    assert (await api("PUT", "/api/users/bob", {"password": "x",
                                                "hashing_algorithm": "md4"}))[0] == 400
    assert (await api("PUT", "/api/users/bob", {"password_hash": "not a hash"}))[0] == 400
    assert (await api("PUT", "/api/users/bob", {"password": "x", "tags": 7}))[0] == 400
    assert (await api("PUT", "/api/users/bob", {"password": "x",
                                                "tags": ",".join("t" * 65)}))[0] == 400
    status, answer = await api("PUT", "/api/users/bob", data=b"[1, 2]",
                               headers={"Content-Type": "application/json"})
    assert (status, answer["reason"]) == (400, "a JSON object is required")
    status, answer = await api("PUT", "/api/users/bob", data=b'{"password": NaN}',
                               headers={"Content-Type": "application/json"})
    assert status == 400
    status, answer = await api("PUT", "/api/users/bob", data=b" " * ((4 << 20) + 1),
                               headers={"Content-Type": "application/json"})
    assert (status, answer["error"]) == (413, "bad_request")
    assert len(api.node.cluster.log) == entries and "bob" not in state(api).users


async def test_bulk_delete(api):
    for name in ("u1", "u2"):
        await api.user(name)
    assert await api("POST", "/api/users/bulk-delete", {"users": ["u1", "u2"]}) == (204, None)
    assert "u1" not in state(api).users and "u2" not in state(api).users
    assert (await api("POST", "/api/users/bulk-delete", {"users": "u1"}))[0] == 400


async def test_vhosts_made_listed_and_deleted(api):
    assert await api("PUT", "/api/vhosts/v1", {"description": "d", "tags": "a,b"}) == (201, None)
    assert await api("PUT", "/api/vhosts/v1", {"description": "e"}) == (204, None)
    v1 = await api.ok("GET", "/api/vhosts/v1")
    assert (v1["name"], v1["description"], v1["tags"], v1["messages"]) == ("v1", "e", [], 0)
    assert [v["name"] for v in await api.ok("GET", "/api/vhosts")] == ["/", "v1"]
    assert ("guest", "v1") in state(api).permissions  # its creator's, as in RabbitMQ
    assert await api("DELETE", "/api/vhosts/v1") == (204, None)
    assert await api("GET", "/api/vhosts/v1") == (404, NOT_FOUND)
    assert await api("DELETE", "/api/vhosts/v1") == (404, NOT_FOUND)
    assert (await api("PUT", "/api/vhosts/" + "x" * 256, {}))[0] == 400


async def test_a_management_user_sees_its_own_vhosts_only(api):
    await api.ok("PUT", "/api/vhosts/theirs", {})
    await api.ok("PUT", "/api/vhosts/mine", {})
    me = await api.user("me", "management", vhost="mine")
    assert [v["name"] for v in await api.ok("GET", "/api/vhosts", user=me)] == ["mine"]
    assert await api("GET", "/api/vhosts/theirs", user=me) == (404, NOT_FOUND)
    assert (await api("GET", "/api/vhosts/mine", user=me))[0] == 200


async def test_deleting_a_vhost_with_many_queues_deletes_them_in_chunks(api, monkeypatch):
    from node.mgmt import access

    monkeypatch.setattr(access, "DELETE_CHUNK", 2)
    await api.ok("PUT", "/api/vhosts/big", {})
    await api.ok("PUT", "/api/permissions/big/guest", {"configure": ".*", "write": ".*",
                                                       "read": ".*"})
    for i in range(5):
        await api.ok("PUT", f"/api/queues/big/q{i}", {})
    entries = len(api.node.cluster.log)
    assert await api("DELETE", "/api/vhosts/big") == (204, None)
    assert "big" not in state(api).vhosts
    assert len(api.node.cluster.log) - entries >= 4  # 3 chunks, then the vhost


async def test_permissions(api):
    await api.ok("PUT", "/api/vhosts/v", {})
    await api.user("carol")
    path = "/api/permissions/v/carol"
    assert await api("PUT", path, {"configure": "^c", "write": "", "read": ".*"}) == (201, None)
    assert await api("PUT", path, {"configure": "^c", "write": "w", "read": ".*"}) == (204, None)
    assert await api.ok("GET", path) == {"user": "carol", "vhost": "v", "configure": "^c",
                                         "write": "w", "read": ".*"}
    assert len(await api.ok("GET", "/api/users/carol/permissions")) == 1
    # and guest's, given when it made the vhost (as RabbitMQ's API does), and on /
    assert [p["user"] for p in await api.ok("GET", "/api/vhosts/v/permissions")] == [
        "guest", "carol"]
    assert len(await api.ok("GET", "/api/permissions")) == 3
    assert await api("GET", "/api/users/nobody/permissions") == (404, NOT_FOUND)
    assert await api("GET", "/api/vhosts/nowhere/permissions") == (404, NOT_FOUND)
    assert await api("PUT", "/api/permissions/nowhere/carol", {}) == (
        400, {"error": "bad_request", "reason": "vhost_not_found: nowhere"})
    assert await api("PUT", "/api/permissions/v/nobody", {}) == (
        400, {"error": "bad_request", "reason": "user_not_found: nobody"})
    assert (await api("PUT", path, {"configure": "(", "write": "", "read": ""}))[0] == 400
    assert await api("DELETE", path) == (204, None)
    assert await api("GET", path) == (404, NOT_FOUND)
    assert await api("DELETE", path) == (404, NOT_FOUND)


async def test_topic_permissions(api):
    await api.user("dave")
    path = "/api/topic-permissions/%2F/dave"
    assert (await api("PUT", path, {"write": ".*", "read": ".*"}))[1]["reason"] == \
        "exchange is required"
    assert await api("PUT", path, {"exchange": "amq.topic", "write": "^a", "read": ""}) == (
        201, None)
    assert await api("PUT", path, {"exchange": "x", "write": "", "read": ""}) == (201, None)
    assert len(await api.ok("GET", path)) == 2
    assert len(await api.ok("GET", "/api/topic-permissions")) == 2
    assert len(await api.ok("GET", "/api/users/dave/topic-permissions")) == 2
    assert len(await api.ok("GET", "/api/vhosts/%2F/topic-permissions")) == 2
    assert await api("DELETE", path + "?exchange=x") == (204, None)
    assert [t["exchange"] for t in await api.ok("GET", path)] == ["amq.topic"]
    assert await api("DELETE", path) == (204, None)
    assert await api("GET", path) == (404, NOT_FOUND)
    assert await api("DELETE", path) == (404, NOT_FOUND)


async def test_limits(api):
    await api.ok("PUT", "/api/vhosts/v", {})
    await api.user("erin")
    assert await api("PUT", "/api/vhost-limits/v/max-queues", {"value": 3}) == (204, None)
    assert await api("PUT", "/api/user-limits/erin/max-channels", {"value": 2}) == (204, None)
    assert await api.ok("GET", "/api/vhost-limits") == [{"vhost": "v",
                                                         "value": {"max-queues": 3}}]
    assert await api.ok("GET", "/api/vhost-limits/v") == [{"vhost": "v",
                                                           "value": {"max-queues": 3}}]
    assert await api.ok("GET", "/api/user-limits/erin") == [
        {"user": "erin", "value": {"max-channels": 2}}]
    assert await api.ok("GET", "/api/user-limits") == [
        {"user": "erin", "value": {"max-channels": 2}}]
    assert await api("GET", "/api/vhost-limits/nowhere") == (404, NOT_FOUND)
    assert await api("GET", "/api/user-limits/nobody") == (404, NOT_FOUND)
    assert await api("PUT", "/api/vhost-limits/nowhere/max-queues", {"value": 1}) == (
        404, NOT_FOUND)
    assert (await api("PUT", "/api/vhost-limits/v/max-channels", {"value": 1}))[0] == 400
    for bad in ("3", True, 1 << 63, None):
        assert (await api("PUT", "/api/vhost-limits/v/max-queues", {"value": bad}))[0] == 400
    assert await api("DELETE", "/api/vhost-limits/v/max-queues") == (204, None)
    assert await api("DELETE", "/api/user-limits/erin/max-channels") == (204, None)
    assert await api.ok("GET", "/api/vhost-limits/v") == []
    assert await api.ok("GET", "/api/user-limits/erin") == []
