"""Vhost and user limits survive a definitions export and import (issue 20, item 3: the
export said ``"limits": []`` while /api/vhost-limits showed max-connections 100).

RabbitMQ 3.10 exports a vhost's limits as a runtime parameter, ``{"component":
"vhost-limits", "name": "limits", "vhost": v, "value": {...}}`` in ``"parameters"`` (its
vhosts' own ``"limits"`` stays ``[]``), and a user's as the user's ``"limits"`` object.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.api import Api, q
from tests.integration.conftest import BROKER_KIND

pytestmark = [pytest.mark.timeout(60)]

VHOST = "defs-limits"
USER = "defs-limits-user"


@pytest.fixture(scope="module")
def api(broker: Any) -> Api:
    if broker.node is None and BROKER_KIND == "raftmq":
        pytest.skip("needs the node's management port")
    port = broker.node.management_port if broker.node is not None else 15672
    return Api(port)


def _clean(api: Api) -> None:
    api("DELETE", f"/api/vhosts/{q(VHOST)}")
    api("DELETE", f"/api/users/{q(USER)}")


def test_limits_round_trip(api):
    _clean(api)
    try:
        api.ok("PUT", f"/api/vhosts/{q(VHOST)}", {})
        api.ok("PUT", f"/api/vhost-limits/{q(VHOST)}/max-connections", {"value": 100})
        api.ok("PUT", f"/api/vhost-limits/{q(VHOST)}/max-queues", {"value": 7})
        api.ok("PUT", f"/api/users/{q(USER)}", {"password": "pw", "tags": ""})
        api.ok("PUT", f"/api/user-limits/{q(USER)}/max-channels", {"value": 3})
        exported = api.ok("GET", "/api/definitions")
        mine = [p for p in exported["parameters"] if p.get("vhost") == VHOST]
        assert mine == [{"value": {"max-connections": 100, "max-queues": 7},
                         "vhost": VHOST, "component": "vhost-limits", "name": "limits"}]
        user = next(u for u in exported["users"] if u["name"] == USER)
        assert user["limits"] == {"max-channels": 3}

        _clean(api)
        assert api("GET", f"/api/vhost-limits/{q(VHOST)}")[0] == 404
        doc = {k: [x for x in exported[k] if x.get("vhost", x.get("name")) in (VHOST, USER)]
               for k in ("users", "vhosts", "parameters")}
        status, answer = api("POST", "/api/definitions", doc)
        assert status in (201, 204), answer
        assert api.ok("GET", f"/api/vhost-limits/{q(VHOST)}") == [
            {"vhost": VHOST, "value": {"max-connections": 100, "max-queues": 7}}]
        assert api.ok("GET", f"/api/user-limits/{q(USER)}") == [
            {"user": USER, "value": {"max-channels": 3}}]

        # an imported limits parameter replaces the vhost's limits (as RabbitMQ's does)
        doc["parameters"][0]["value"] = {"max-queues": 2}
        status, answer = api("POST", "/api/definitions", doc)
        assert status in (201, 204), answer
        assert api.ok("GET", f"/api/vhost-limits/{q(VHOST)}") == [
            {"vhost": VHOST, "value": {"max-queues": 2}}]
    finally:
        _clean(api)


@pytest.mark.raftmq_only
def test_import_checks_the_files_own_queue_limit_before_applying(api):
    """A file whose vhost-limits allow fewer queues than it declares is refused whole."""
    _clean(api)
    doc = {"vhosts": [{"name": VHOST}],
           "parameters": [{"vhost": VHOST, "component": "vhost-limits", "name": "limits",
                           "value": {"max-queues": 1}}],
           "queues": [{"vhost": VHOST, "name": f"q{i}", "durable": True} for i in range(2)]}
    try:
        status, answer = api("POST", "/api/definitions", doc)
        assert status == 400, answer
        assert "queues[1]" in answer["reason"] and "max-queues" in answer["reason"]
        assert api("GET", f"/api/vhosts/{q(VHOST)}")[0] == 404
    finally:
        _clean(api)


@pytest.mark.raftmq_only
@pytest.mark.parametrize(("parameter", "words"), [
    ({"component": "federation-upstream", "name": "u", "value": {}}, "not supported"),
    ({"component": "vhost-limits", "name": "limits", "value": {"max-bogus": 1}},
     "max-bogus"),
    ({"component": "vhost-limits", "name": "limits", "value": {"max-queues": "1"}},
     "64-bit integer"),
    ({"component": "vhost-limits", "name": "limits", "vhost": "nowhere",
      "value": {"max-queues": 1}}, "nowhere"),
])
def test_bad_parameters_are_refused_naming_them(api, parameter, words):
    _clean(api)
    doc = {"vhosts": [{"name": VHOST}], "parameters": [{"vhost": VHOST, **parameter}]}
    try:
        status, answer = api("POST", "/api/definitions", doc)
        assert status == 400, answer
        assert "parameters[0]" in answer["reason"] and words in answer["reason"]
        assert api("GET", f"/api/vhosts/{q(VHOST)}")[0] == 404
    finally:
        _clean(api)
