"""Definitions side by side with RabbitMQ 3.10 (issue 20): every object kind its GET
/api/definitions exports, built on one broker through its API, exported, imported into
the other, exported again and compared kind by kind, both ways.

Normalised, as legitimately different: the brokers' names and versions, the order of
items, RabbitMQ's own identity (the ``internal_cluster_id`` global parameter), a user's
empty ``"limits"`` (3.10 writes ``{}``, we leave it out) and the vhost entries' extra
fields (3.10 writes ``{"name"}`` alone; ours also has ``"metadata"``, which 3.10 imports:
its description and tags are compared through /api/vhosts). What RaftMQ does not support
yet is refused whole with a 400 naming it, nothing applied: global
parameters other than RabbitMQ's identity, runtime parameters other than vhost-limits,
and a vhost default queue type other than classic.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.ports import free_port
from harness.raftmq import RaftMQNode
from tests.harness.api import Api, q

pytestmark = [pytest.mark.raftmq_only, pytest.mark.timeout(240)]

V = "defs-kinds"
ADMIN, NO_PASSWORD, SHA512 = "defs-admin", "defs-nopw", "defs-sha512"
USERS = (ADMIN, NO_PASSWORD, SHA512)
# the kinds RabbitMQ 3.10 exports, besides its name and versions
KINDS = ("users", "vhosts", "permissions", "topic_permissions", "parameters",
         "global_parameters", "policies", "queues", "exchanges", "bindings")
IDENTITY = ("internal_cluster_id", "cluster_name")  # RabbitMQ's own, not ours to import


def brokers(base: Path) -> Iterator[tuple[Api, Api]]:
    """A RaftMQ node and a RabbitMQ 3.10 with its management plugin: (ours, theirs)."""
    from harness.rabbitmq import RabbitMQ

    rabbit = RabbitMQ(base / "rabbitmq", management_port=free_port())
    node = RaftMQNode(base / "raftmq" / "data", log_path=base / "raftmq" / "node.log")
    with rabbit, node:
        theirs = Api(rabbit.management_port or 0)
        deadline = time.monotonic() + 60
        while theirs("GET", "/api/overview")[0] != 200:
            assert time.monotonic() < deadline, "RabbitMQ's management API did not answer"
            time.sleep(0.2)
        yield Api(node.management_port), theirs


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, Api]]:
    yield from brokers(tmp_path_factory.mktemp("defs-kinds"))


def sha512_hash(password: str, salt: bytes = b"\x01\x02\x03\x04") -> str:
    """RabbitMQ's stored form: base64(salt + sha512(salt + password))."""
    return base64.b64encode(salt + hashlib.sha512(salt + password.encode()).digest()).decode()


def build(api: Api, rabbitmq: bool) -> None:
    """Every kind through the broker's own API (a global parameter only on RabbitMQ:
    RaftMQ has none)."""
    v = q(V)
    api.ok("PUT", f"/api/vhosts/{v}", {"description": "every kind", "tags": "a,b"})
    api.ok("PUT", f"/api/users/{ADMIN}", {"password": "pw-a",
                                          "tags": "management,policymaker"})
    api.ok("PUT", f"/api/users/{NO_PASSWORD}", {"password_hash": "", "tags": ""})
    api.ok("PUT", f"/api/users/{SHA512}", {
        "password_hash": sha512_hash("pw-5"), "tags": "monitoring",
        "hashing_algorithm": "rabbit_password_hashing_sha512"})
    api.ok("PUT", f"/api/user-limits/{ADMIN}/max-channels", {"value": 3})
    api.ok("PUT", f"/api/user-limits/{ADMIN}/max-connections", {"value": 5})
    for user, perms in (("guest", (".*", ".*", ".*")), (ADMIN, ("^defs-", ".*", "^r")),
                        (SHA512, ("", "", ".*"))):
        api.ok("PUT", f"/api/permissions/{v}/{user}", dict(zip(
            ("configure", "write", "read"), perms, strict=True)))
    api.ok("PUT", f"/api/topic-permissions/{v}/{ADMIN}",
           {"exchange": "defs-topic", "write": "^w\\.", "read": ".*"})
    api.ok("PUT", f"/api/vhost-limits/{v}/max-queues", {"value": 50})
    api.ok("PUT", f"/api/vhost-limits/{v}/max-connections", {"value": 100})
    api.ok("PUT", f"/api/policies/{v}/defs-policy", {
        "pattern": "^defs-q", "definition": {"max-length": 10}, "priority": 1,
        "apply-to": "queues"})
    if rabbitmq:
        api.ok("PUT", "/api/global-parameters/defs-param", {"value": {"a": 1}})
    exchanges: list[tuple[str, dict[str, Any]]] = [
        ("defs-topic", {"type": "topic", "arguments": {"alternate-exchange": "defs-ae"}}),
        ("defs-ae", {"type": "fanout", "auto_delete": True, "internal": True}),
        ("defs-h", {"type": "headers"}),
        ("defs-transient", {"type": "direct", "durable": False})]
    for name, body in exchanges:
        api.ok("PUT", f"/api/exchanges/{v}/{name}", {"durable": True, **body})
    queues: list[tuple[str, dict[str, Any]]] = [
        ("defs-q1", {"arguments": {"x-message-ttl": 1000, "x-max-length": 5,
                                   "x-dead-letter-exchange": "defs-ae",
                                   "x-queue-type": "classic"}}),
        ("defs-q2", {"auto_delete": True}),
        ("defs-qq", {"arguments": {"x-queue-type": "quorum"}}),
        ("defs-qt", {"durable": False})]
    for name, body in queues:
        api.ok("PUT", f"/api/queues/{v}/{name}", {"durable": True, **body})
    bindings: list[tuple[str, str, dict[str, Any]]] = [
        ("defs-topic", "q/defs-q1", {"routing_key": "a.#"}),
        ("defs-h", "q/defs-q2", {"arguments": {"x-match": "any", "k": "v"}}),
        ("defs-topic", "e/defs-h", {"routing_key": "b.*", "arguments": {"x-k": "v"}}),
        ("amq.direct", "q/defs-q1", {"routing_key": "k"}),
        ("amq.topic", "e/defs-h", {"routing_key": "c.#"}),
        ("defs-topic", "e/amq.fanout", {"routing_key": "z"}),
        ("defs-transient", "q/defs-qt", {"routing_key": "t"})]
    for source, dest, body in bindings:
        api.ok("POST", f"/api/bindings/{v}/e/{source}/{dest}", body)


def clean(api: Api) -> None:
    api("DELETE", f"/api/vhosts/{q(V)}")  # (with its policies and parameters)
    api("DELETE", "/api/global-parameters/defs-param")
    for user in USERS:
        api("DELETE", f"/api/users/{user}")


def kind(defs: dict[str, Any], name: str) -> list[str]:
    """The items of one kind that are this test's, normalised, sorted."""
    items = defs.get(name) or []
    if name == "users":
        items = [{"limits": {}, **u} for u in items if u["name"] in USERS]
    elif name == "vhosts":
        items = [{"name": vh["name"]} for vh in items if vh["name"] == V]
    elif name == "global_parameters":
        items = [p for p in items if p["name"] not in IDENTITY]
    else:
        items = [i for i in items if i.get("vhost") == V]
    return sorted(json.dumps(i, sort_keys=True) for i in items)


def assert_same_kinds(got: dict[str, Any], want: dict[str, Any]) -> None:
    differ = {k: (kind(got, k), kind(want, k)) for k in KINDS if kind(got, k) != kind(want, k)}
    assert not differ, json.dumps(differ, indent=1)


def metadata(api: Api) -> tuple[str, list[str]]:
    vh = api.ok("GET", f"/api/vhosts/{q(V)}")
    return vh["description"], sorted(vh["tags"])


def can_log_in(api: Api, user: str, password: str) -> bool:
    return api.as_(user, password)("GET", "/api/whoami")[0] == 200


def test_rabbitmq_export_imported_here_exports_the_same(both):
    """RabbitMQ's export, imported here: every kind back the same in our export; what we
    do not support is refused whole, naming it, until the file leaves it out."""
    ours, theirs = both
    clean(theirs)
    clean(ours)
    build(theirs, rabbitmq=True)
    original = theirs.ok("GET", "/api/definitions")
    assert kind(original, "policies") and "defs-param" in str(original["global_parameters"])
    assert any(b["source"] == "amq.direct" for b in original["bindings"]) and \
        any(x["name"] == "defs-transient" for x in original["exchanges"])  # (3.10 has them)

    doc = dict(original)
    status, answer = ours("POST", "/api/definitions", doc)
    assert status == 400 and "'defs-param'" in answer["reason"], answer
    assert ours("GET", f"/api/vhosts/{q(V)}")[0] == 404  # nothing applied
    doc["global_parameters"] = [p for p in doc["global_parameters"]
                                if p["name"] != "defs-param"]
    assert [p["name"] for p in doc["global_parameters"]] == ["internal_cluster_id"]

    assert ours("POST", "/api/definitions", doc)[0] == 204
    exported = ours.ok("GET", "/api/definitions")
    assert_same_kinds(exported, doc)
    assert exported["global_parameters"] == [] and kind(exported, "policies")
    assert can_log_in(ours, ADMIN, "pw-a") and can_log_in(ours, SHA512, "pw-5")
    assert not can_log_in(ours, NO_PASSWORD, "")
    # 3.10 does not export a vhost's description and tags: nothing to carry over
    assert all(set(vh) == {"name"} for vh in original["vhosts"])


def test_our_export_imported_into_rabbitmq_exports_the_same(both):
    """Our export, imported into RabbitMQ (its copies deleted first): RabbitMQ's export
    has every kind the same, and the vhost's description and tags (from "metadata")."""
    ours, theirs = both
    clean(ours)
    clean(theirs)
    build(ours, rabbitmq=False)
    exported = ours.ok("GET", "/api/definitions")
    assert {x["name"] for x in exported["exchanges"] if x["vhost"] == V} == \
        {"defs-topic", "defs-ae", "defs-h", "defs-transient"}

    theirs.ok("POST", "/api/definitions", exported)
    again = theirs.ok("GET", "/api/definitions")
    assert_same_kinds(again, exported)
    assert metadata(theirs) == metadata(ours) == ("every kind", ["a", "b"])
    assert can_log_in(theirs, ADMIN, "pw-a") and can_log_in(theirs, SHA512, "pw-5")

    # and back here, ours deleted first: the same again
    clean(ours)
    assert ours("POST", "/api/definitions", again)[0] == 204
    assert_same_kinds(ours.ok("GET", "/api/definitions"), exported)


@pytest.mark.parametrize(("vhost", "status"), [
    ({"name": V, "metadata": {"default_queue_type": "quorum"}}, 400),
    ({"name": V, "default_queue_type": "stream"}, 400),
    ({"name": V, "metadata": {"default_queue_type": "classic"}}, 204),
    ({"name": V, "default_queue_type": "undefined"}, 204),  # (3.10's /api/vhosts says so)
])
def test_a_default_queue_type_other_than_classic_is_refused(both, vhost, status):
    ours, _ = both
    clean(ours)
    got, answer = ours("POST", "/api/definitions", {"vhosts": [vhost]})
    assert got == status, answer
    if status == 400:
        assert "vhosts[0]" in answer["reason"] and "default_queue_type" in answer["reason"]
        assert ours("GET", f"/api/vhosts/{q(V)}")[0] == 404
    clean(ours)
