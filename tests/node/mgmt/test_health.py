"""RabbitMQ's health checks (node/mgmt/health.py) and the dashboard's files
(node/mgmt/dashboard.py) on the in-process node."""

from __future__ import annotations

import pytest

from node.services import alarms

pytestmark = pytest.mark.timeout(60)


async def test_checks_pass_on_a_healthy_single_node(api):
    assert await api.ok("GET", "/api/health/checks/alarms") == {"status": "ok"}
    assert await api.ok("GET", "/api/health/checks/local-alarms") == {"status": "ok"}
    assert await api.ok("GET", "/api/health/checks/node-is-quorum-critical") == {
        "status": "ok", "reason": "single node cluster"}


async def test_an_alarm_fails_the_alarm_checks(api, monkeypatch):
    monitor = api.node.broker.alarms.monitor
    # over the watermark for every measurement the node's own alarm check takes meanwhile
    monkeypatch.setattr(monitor, "_used", lambda: monitor.memory_limit + 1)
    monkeypatch.setitem(monitor.active, alarms.MEMORY, True)
    status, answer = await api("GET", "/api/health/checks/local-alarms")
    assert (status, answer["status"], answer["alarms"]) == (
        503, "failed", [{"node": "n1", "resource": alarms.MEMORY}])
    status, answer = await api("GET", "/api/health/checks/alarms")
    assert (status, answer["status"]) == (503, "failed")


async def test_aliveness(api):
    assert await api.ok("GET", "/api/aliveness-test/%2F") == {"status": "ok"}
    assert await api("GET", "/api/aliveness-test/nowhere") == (
        404, {"error": "Object Not Found", "reason": "Not Found"})
    # a management user without permissions in the vhost: the machine refuses the declare
    nobody = await api.user("nobody", "management")
    assert await api("GET", "/api/aliveness-test/%2F", user=nobody) == (
        401, {"error": "not_authorised", "reason": "Access refused."})
    assert await api("GET", "/api/health/checks/alarms", user=nobody) == (
        401, {"error": "not_authorised", "reason": "Not monitoring user"})


async def test_the_dashboard_is_served_without_credentials(api):
    status, page = await api("GET", "/", user=None)
    assert status == 200 and "<html" in page.lower()
    assert api.last_headers["X-Frame-Options"] == "DENY"
    assert (await api("GET", "/dashboard/dashboard.js", user=None))[0] == 200
    assert (await api("GET", "/dashboard/secret.txt", user=None))[0] == 404
