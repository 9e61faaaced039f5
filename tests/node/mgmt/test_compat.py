"""RabbitMQ 3.10's answers where clients depend on them (issue 23, item 8), on the
in-process node: a trailing slash is ignored, an unknown path is a JSON 404 to GET and a
405 to anything else, a method a path does not allow is a 405 without a body; the
overview has churn_rates. (Side by side with RabbitMQ: tests/integration/test_mgmt_compat.py.)"""

from __future__ import annotations

import pytest

from node.mgmt.rates import CHURN

pytestmark = pytest.mark.timeout(60)

NOT_FOUND = {"error": "Object Not Found", "reason": "Not Found"}


@pytest.mark.parametrize("path", ["/api/connections", "/api/queues", "/api/queues/%2F",
                                  "/api/overview", "/api/whoami", "/api/vhosts/%2F",
                                  "/api/exchanges/%2F/amq.direct"])
async def test_a_trailing_slash_is_ignored(api, path):
    with_slash = await api.ok("GET", path + "/")
    if path != "/api/overview":  # (its rates move between two requests)
        assert with_slash == await api.ok("GET", path)
    assert (await api("GET", path + "/", user=None))[0] == 401  # (still authenticated)


async def test_a_queue_declared_and_deleted_through_a_path_with_a_slash(api):
    assert (await api("PUT", "/api/queues/%2F/slashed/", {}))[0] == 201
    assert (await api.ok("GET", "/api/queues/%2F/slashed/"))["name"] == "slashed"
    assert (await api("DELETE", "/api/queues/%2F/slashed/"))[0] == 204
    assert await api("GET", "/api/queues/%2F/slashed/") == (404, NOT_FOUND)


@pytest.mark.parametrize("path", ["/api/nosuch", "/api/nosuch/", "/nosuch",
                                  "/api/connections//", "/api//connections"])
async def test_an_unknown_path_is_a_json_404_to_get_and_a_405_to_the_rest(api, path):
    assert await api("GET", path, user=None) == (404, NOT_FOUND)
    for method in ("POST", "PUT", "DELETE"):
        assert await api(method, path) == (405, None)
        assert api.last_headers["Allow"] == "HEAD, GET, OPTIONS"


async def test_a_method_the_path_does_not_allow_is_a_405_without_a_body(api):
    for path in ("/api/connections", "/api/connections/", "/api/overview/"):
        assert await api("POST", path) == (405, None)
        assert "GET" in api.last_headers["Allow"]


async def test_the_overview_has_churn_rates(api):
    await api.ok("PUT", "/api/queues/%2F/churned", {})
    await api.ok("DELETE", "/api/queues/%2F/churned")
    churn = (await api.ok("GET", "/api/overview"))["churn_rates"]
    assert set(churn) == {*CHURN, *(f"{k}_details" for k in CHURN)}
    assert churn["queue_created"] >= 1 and churn["queue_deleted"] >= 1
    assert all(churn[f"{k}_details"] == {"rate": churn[f"{k}_details"]["rate"]} for k in CHURN)


async def test_options_answers_what_the_path_allows_to_anyone(api):
    """(RabbitMQ: 200 with Allow, no credentials needed: a browser's CORS preflight.)"""
    for path, allow in (("/api/queues/%2F/q", "HEAD, GET, PUT, DELETE, OPTIONS"),
                        ("/api/queues/%2F/q/", "HEAD, GET, PUT, DELETE, OPTIONS"),
                        ("/api/overview", "HEAD, GET, OPTIONS"),
                        ("/api/nosuch", "HEAD, GET, OPTIONS")):
        assert await api("OPTIONS", path, user=None) == (200, None)
        assert api.last_headers["Allow"] == allow, path
