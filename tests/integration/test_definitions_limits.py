"""Vhost and user limits survive a definitions export and import (issue 20, item 3: the
export said ``"limits": []`` while /api/vhost-limits showed max-connections 100).

RabbitMQ 3.10 exports a vhost's limits as a runtime parameter, ``{"component":
"vhost-limits", "name": "limits", "vhost": v, "value": {...}}`` in ``"parameters"``, and
a user's as the user's ``"limits"`` object (checked side by side with RabbitMQ below).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.api import Api, q
from tests.integration.test_definitions_rabbitmq import brokers

pytestmark = [pytest.mark.timeout(60)]

VHOST = "defs-limits"
USER = "defs-limits-user"


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


# --- side by side with RabbitMQ 3.10 -----------------------------------------------------


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, Api]]:
    """A RaftMQ node and a RabbitMQ 3.10 with its management plugin, of this module."""
    yield from brokers(tmp_path_factory.mktemp("defs-limits"))


@pytest.mark.raftmq_only
@pytest.mark.timeout(180)
def test_limits_cross_rabbitmq_both_ways(both):
    """Limits set on RabbitMQ, exported, imported here: the same limits, and our export's
    parameters and user limits equal to RabbitMQ's; then our export imported into a
    RabbitMQ whose copies were deleted: its limits back."""
    ours, theirs = both
    theirs.ok("PUT", f"/api/vhosts/{q(VHOST)}", {"description": "d", "tags": "t1"})
    theirs.ok("PUT", f"/api/vhost-limits/{q(VHOST)}/max-connections", {"value": 100})
    theirs.ok("PUT", f"/api/vhost-limits/{q(VHOST)}/max-queues", {"value": 7})
    theirs.ok("PUT", f"/api/users/{q(USER)}", {"password": "pw", "tags": ""})
    theirs.ok("PUT", f"/api/user-limits/{q(USER)}/max-channels", {"value": 3})
    original = theirs.ok("GET", "/api/definitions")
    doc = {k: [x for x in original[k] if x.get("vhost", x.get("name")) in (VHOST, USER)]
           for k in ("users", "vhosts", "parameters")}
    assert doc["parameters"] == [{"value": {"max-connections": 100, "max-queues": 7},
                                  "vhost": VHOST, "component": "vhost-limits",
                                  "name": "limits"}]  # (what RabbitMQ 3.10 writes)
    # (3.10's vhost entry is {"name"} alone; ours also has "metadata" and a "limits" that
    # stays []: the limits themselves are the parameter)
    assert doc["vhosts"][0].get("limits", []) == []

    ours.ok("POST", "/api/definitions", doc)
    for path in (f"/api/vhost-limits/{q(VHOST)}", f"/api/user-limits/{q(USER)}"):
        assert ours.ok("GET", path) == theirs.ok("GET", path), path
    exported = ours.ok("GET", "/api/definitions")
    assert [p for p in exported["parameters"] if p["vhost"] == VHOST] == doc["parameters"]
    assert next(u for u in exported["users"] if u["name"] == USER)["limits"] == \
        next(u for u in original["users"] if u["name"] == USER)["limits"]

    theirs.ok("DELETE", f"/api/vhosts/{q(VHOST)}")
    theirs.ok("DELETE", f"/api/users/{q(USER)}")
    theirs.ok("POST", "/api/definitions", exported)
    assert theirs.ok("GET", f"/api/vhost-limits/{q(VHOST)}") == [
        {"vhost": VHOST, "value": {"max-connections": 100, "max-queues": 7}}]
    assert theirs.ok("GET", f"/api/user-limits/{q(USER)}") == [
        {"user": USER, "value": {"max-channels": 3}}]
