"""Authentication and the tags' rights (node/mgmt/framework.py authenticate, needs):
every refusal is RabbitMQ's 401 not_authorised, with a challenge unless the dashboard
asks."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(60)


async def test_whoami_names_the_user_and_its_tags(api):
    assert await api.ok("GET", "/api/whoami") == {"name": "guest", "tags": ["administrator"]}


async def test_no_credentials_is_a_401_with_a_challenge(api):
    status, answer = await api("GET", "/api/whoami", user=None)
    assert (status, answer) == (401, {"error": "not_authorised", "reason": "Not_Authorized"})
    assert api.last_headers["WWW-Authenticate"] == 'Basic realm="RabbitMQ Management"'


async def test_the_dashboards_requests_get_no_challenge(api):
    status, _ = await api("GET", "/api/whoami", user=None,
                          headers={"X-Requested-With": "XMLHttpRequest"})
    assert status == 401 and "WWW-Authenticate" not in api.last_headers


async def test_a_wrong_password_and_garbage_credentials_are_refused(api):
    assert await api("GET", "/api/whoami", user=("guest", "nope")) == (
        401, {"error": "not_authorized", "reason": "Login failed"})  # (RabbitMQ's spelling)
    status, answer = await api("GET", "/api/whoami", user=None,
                               headers={"Authorization": "Basic %%%"})
    assert (status, answer["reason"]) == (401, "Login failed")


async def test_a_user_without_tags_may_not_use_the_api(api):
    nobody = await api.user("nobody")
    assert await api("GET", "/api/whoami", user=nobody) == (
        401, {"error": "not_authorised", "reason": "Not management user"})


@pytest.mark.parametrize(("method", "path", "tag"), [
    ("GET", "/api/users", "administrator"),
    ("PUT", "/api/users/x", "administrator"),
    ("PUT", "/api/vhosts/v", "administrator"),
    ("DELETE", "/api/permissions/%2F/guest", "administrator"),
    ("GET", "/api/status", "monitoring"),
    ("GET", "/api/nodes", "monitoring"),
    ("GET", "/api/vhost-limits", "monitoring"),
    ("GET", "/api/health/checks/alarms", "monitoring"),
    ("POST", "/api/members?address=h:1", "administrator"),
    ("POST", "/api/nodes/n1/drain", "administrator"),
    ("POST", "/api/cluster/transfer-leadership", "administrator"),
    ("PUT", "/api/nodes/n1/limits", "administrator"),
    ("GET", "/api/definitions", "administrator"),
])
async def test_each_tag_opens_its_endpoints_only(api, method, path, tag):
    manager = await api.user("manager", "management")
    assert await api(method, path, {}, user=manager) == (
        401, {"error": "not_authorised", "reason": f"Not {tag} user"})


async def test_monitoring_reads_everything_and_changes_nothing(api):
    monitor = await api.user("monitor", "monitoring")
    assert (await api("GET", "/api/status", user=monitor))[0] == 200
    assert (await api("GET", "/api/vhost-limits", user=monitor))[0] == 200
    assert await api("PUT", "/api/vhosts/v", {}, user=monitor) == (
        401, {"error": "not_authorised", "reason": "Not administrator user"})
    assert (await api("GET", "/api/users", user=monitor))[0] == 401


async def test_a_deleted_user_is_refused_at_once(api):
    alice = await api.user("alice", "administrator")
    assert (await api("GET", "/api/users", user=alice))[0] == 200
    await api.ok("DELETE", "/api/users/alice")
    assert (await api("GET", "/api/users", user=alice))[0] == 401


async def test_an_empty_password_or_user_name_is_refused(api):
    """RabbitMQ refuses an empty password even to a user whose password is "" (and there is
    no user without a name)."""
    await api.ok("PUT", "/api/users/blank", {"password": "", "tags": "administrator"})
    for user in (("blank", ""), ("", ""), ("", "guest")):
        status, answer = await api("GET", "/api/whoami", user=user)
        assert (status, answer) == (401, {"error": "not_authorized", "reason": "Login failed"})
        assert api.last_headers["WWW-Authenticate"] == 'Basic realm="RabbitMQ Management"'
