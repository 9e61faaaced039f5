"""The management API's authentication: every endpoint that changes anything refuses no
credentials, wrong credentials and a user without the administrator tag, and works for an
administrator; the metrics port changes nothing; membership cannot be broken by a request."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from harness.raftmq import RaftMQNode
from tests.integration.test_access import Api

pytestmark = [pytest.mark.raftmq_only, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftMQNode]:
    base = tmp_path_factory.mktemp("mgmt")
    with RaftMQNode(base / "data", log_path=base / "node.log") as n:
        yield n


@pytest.fixture(scope="module")
def admin(node: RaftMQNode) -> Api:
    api = Api(node.management_port)
    api.ok("PUT", "/api/users/watcher", {"password": "w", "tags": "monitoring"})
    api.ok("PUT", "/api/users/victim", {"password": "v", "tags": ""})
    api.ok("PUT", "/api/vhosts/target", {})
    return api


# (method, path, body): each changes something
MUTATIONS = [
    ("PUT", "/api/users/mallory", {"password": "x", "tags": "administrator"}),
    ("DELETE", "/api/users/victim", None),
    ("POST", "/api/users/bulk-delete", {"users": ["victim"]}),
    ("PUT", "/api/vhosts/evil", {}),
    ("DELETE", "/api/vhosts/target", None),
    ("PUT", "/api/permissions/target/victim", {"configure": ".*", "write": ".*", "read": ".*"}),
    ("DELETE", "/api/permissions/%2F/guest", None),
    ("PUT", "/api/topic-permissions/target/victim", {"exchange": "amq.topic", "write": ".*",
                                                     "read": ".*"}),
    ("DELETE", "/api/topic-permissions/target/victim", None),
    ("PUT", "/api/vhost-limits/target/max-queues", {"value": 1}),
    ("DELETE", "/api/vhost-limits/target/max-queues", None),
    ("PUT", "/api/user-limits/victim/max-connections", {"value": 1}),
    ("DELETE", "/api/user-limits/victim/max-connections", None),
    ("POST", "/api/members?address=10.255.0.1:25672", None),
    ("DELETE", "/api/members?address=10.255.0.1:25672", None),
]


@pytest.mark.parametrize(("method", "path", "body"), MUTATIONS,
                         ids=[f"{m} {p}" for m, p, _ in MUTATIONS])
def test_mutations_need_an_administrator(admin: Api, method: str, path: str,
                                         body: object) -> None:
    anonymous = admin.as_("", "")
    anonymous.auth = None  # type: ignore[assignment]
    # (a different unknown user each time: failed logins of one user are slowed down)
    for who, api in (("no credentials", anonymous), ("wrong password", admin.as_("guest", "x")),
                     ("unknown user", admin.as_(f"nobody-{method}{path}", "x")),
                     ("monitoring user", admin.as_("watcher", "w")),
                     ("user without tags", admin.as_("victim", "v"))):
        status, answer = api(method, path, body)
        assert status == 401, (who, status, answer)
        # (RabbitMQ spells a refused login's error with a z, the other refusals with an s)
        refused_login = who in ("wrong password", "unknown user")
        assert answer["error"] == ("not_authorized" if refused_login else "not_authorised"), \
            (who, answer)
    # nothing changed
    users = {u["name"] for u in admin.ok("GET", "/api/users")}
    assert "mallory" not in users and "victim" in users
    assert {v["name"] for v in admin.ok("GET", "/api/vhosts")} >= {"/", "target"}
    status, _ = admin("GET", "/api/status")
    assert status == 200


def test_an_administrator_can_make_every_change(admin: Api) -> None:
    for method, path, body in MUTATIONS:
        if "/api/members" in path:
            continue  # below
        # what each change acts on exists first (an earlier one may have deleted it)
        admin.ok("PUT", "/api/users/victim", {"password": "v", "tags": ""})
        admin.ok("PUT", "/api/vhosts/target", {})
        admin("PUT", "/api/topic-permissions/target/victim", {"exchange": "amq.topic",
                                                              "write": ".*", "read": ".*"})
        admin("PUT", "/api/vhost-limits/target/max-queues", {"value": 5})
        admin("PUT", "/api/user-limits/victim/max-connections", {"value": 5})
        admin("PUT", "/api/permissions/%2F/guest", {"configure": ".*", "write": ".*",
                                                   "read": ".*"})
        status, answer = admin(method, path, body)
        assert status in (200, 201, 204), (method, path, status, answer)
    names = {u["name"] for u in admin.ok("GET", "/api/users")}
    assert "mallory" in names


def test_membership_cannot_be_broken_by_a_request(node: RaftMQNode, admin: Api) -> None:
    """The issue's reproduction: a POST to the metrics port, then the same to the management
    port as an administrator; neither adds a member that does not exist."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{node.metrics_port}/api/members?address=10.255.0.1:25672",
        method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code in (404, 405)
    status, answer = admin("POST", "/api/members?address=127.0.0.1:1")
    assert status in (400, 409), answer  # no cluster secret / nothing answers there
    status_view = admin.ok("GET", "/api/status")
    assert status_view["raft"]["members"] == [status_view["raft_address"]]
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/healthz",
                                timeout=5) as r:
        assert r.status == 200


def test_metrics_port_serves_only_read_only_endpoints(node: RaftMQNode) -> None:
    base = f"http://127.0.0.1:{node.metrics_port}"
    for path in ("/metrics", "/healthz", "/livez"):
        with urllib.request.urlopen(base + path, timeout=5) as r:
            assert r.status == 200
    for path in ("/api/status", "/api/users"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + path, timeout=5)
        assert info.value.code == 404


def test_reads_need_credentials_and_tags(admin: Api) -> None:
    anonymous = admin.as_("", "")
    anonymous.auth = None  # type: ignore[assignment]
    assert anonymous("GET", "/api/users")[0] == 401
    assert admin.as_("watcher", "w")("GET", "/api/users")[0] == 401  # administrator only
    assert admin.as_("watcher", "w")("GET", "/api/status")[0] == 200  # monitoring may
    status, me = admin.as_("watcher", "w")("GET", "/api/whoami")
    assert status == 200 and me == {"name": "watcher", "tags": ["monitoring"]}


def test_bad_input_is_a_400_with_a_reason(admin: Api) -> None:
    for method, path, body in (
        ("PUT", "/api/permissions/target/nobody", {"configure": ".*", "write": ".*",
                                                   "read": ".*"}),
        ("PUT", "/api/permissions/nope/guest", {"configure": ".*", "write": ".*", "read": ".*"}),
        ("PUT", "/api/permissions/%2F/guest", {"configure": "(", "write": ".*", "read": ".*"}),
        ("PUT", "/api/users/newbie", {"tags": "management"}),  # no password for a new user
        ("PUT", "/api/users/newbie", {"password_hash": "not-base64", "tags": ""}),
        ("PUT", "/api/vhost-limits/%2F/max-everything", {"value": 1}),
    ):
        status, answer = admin(method, path, body)
        assert status == 400, (path, status, answer)
        assert answer["error"] == "bad_request" and answer["reason"], answer
    req = urllib.request.Request(admin.base + "/api/vhosts/x", data=b"{not json", method="PUT")
    req.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 400 and json.loads(info.value.read())["error"] == "bad_request"
