"""Policies and operator policies side by side with RabbitMQ 3.10 (Debian's, with its
management plugin): the same ``rabbitmqadmin`` commands and API requests to both, answers
compared; the same pika traffic to both, with policies set live, compared queue by queue
(max-length dropping the head at once, a TTL policy expiring what arrives after it, a
dead-letter exchange by policy, operator policies capping, client arguments against
policies); who may set them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest

from harness.ports import free_port
from harness.raftmq import RaftMQNode
from tests.harness.api import Api, q
from tests.integration.helpers import wait_until

pytestmark = [pytest.mark.raftmq_only, pytest.mark.timeout(180)]

V = q("/")
# RabbitMQ applies a policy and updates its API's queue entries asynchronously (statistics
# every 500 ms here), later still on a busy machine
STATS_WAIT = 30.0


@pytest.fixture(scope="module")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    from harness.rabbitmq import RabbitMQ, ensure_installed

    ensure_installed()
    base = tmp_path_factory.mktemp("policies-compare")
    rabbit = RabbitMQ(base / "rabbitmq", management_port=free_port())
    node = RaftMQNode(base / "raftmq" / "data", log_path=base / "raftmq" / "node.log")
    with rabbit, node:
        yield node, rabbit


@pytest.fixture(scope="module")
def apis(brokers: tuple[Any, Any]) -> tuple[Api, Api]:
    node, rabbit = brokers
    rapi, oapi = Api(node.management_port), Api(rabbit.management_port or 0)
    wait_until(lambda: oapi("GET", "/api/overview")[0] == 200, 60)
    return rapi, oapi


def both(apis: tuple[Api, Api], method: str, path: str, body: Any = None) -> tuple[Any, Any]:
    (rs, ra), (os_, oa) = apis[0](method, path, body), apis[1](method, path, body)
    assert rs == os_, f"{method} {path} {body}: RaftMQ {rs} {ra!r}, RabbitMQ {os_} {oa!r}"
    return ra, oa


def _admin(port: int) -> Callable[..., str]:
    exe = shutil.which("rabbitmqadmin")
    if exe is None:
        pytest.skip("rabbitmqadmin is not installed")

    def run(*args: str) -> str:
        res = subprocess.run([sys.executable if exe.endswith(".py") else exe, "-H", "127.0.0.1",
                              "-P", str(port), "-u", "guest", "-p", "guest", *args],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"{args}: {res.returncode}\n{res.stdout}\n{res.stderr}"
        return res.stdout

    return run


def test_rabbitmqadmin_declares_lists_and_deletes_policies(brokers: tuple[Any, Any],
                                                           apis: tuple[Api, Api]) -> None:
    results = []
    for b in brokers:
        adm = _admin(b.management_port)
        adm("declare", "policy", "name=adm-p", "pattern=^adm-",
            'definition={"max-length": 2, "message-ttl": 60000}', "apply-to=queues",
            "priority=3")
        adm("declare", "operator_policy", "name=adm-op", "pattern=^adm-",
            'definition={"max-length": 1}', "apply-to=queues")
        listed = (json.loads(adm("-f", "raw_json", "list", "policies")),
                  json.loads(adm("-f", "raw_json", "list", "operator_policies")))
        adm("delete", "policy", "name=adm-p")
        adm("delete", "operator_policy", "name=adm-op")
        after = json.loads(adm("-f", "raw_json", "list", "policies"))
        results.append((listed, after))
    assert results[0] == results[1]
    (policies, operator), after = results[0]
    assert policies == [{"vhost": "/", "name": "adm-p", "pattern": "^adm-",
                         "apply-to": "queues", "priority": 3,
                         "definition": {"max-length": 2, "message-ttl": 60000}}]
    assert operator[0]["definition"] == {"max-length": 1} and after == []


BAD = [
    {"pattern": "^q", "definition": {"foo": 1, "bar": 2}},
    {"pattern": "^q", "definition": {"message-ttl": "x"}},
    {"pattern": "^q", "definition": {"message-ttl": -1, "expires": 0}},
    {"pattern": "^q", "definition": {}},
    {"pattern": "(", "definition": {"max-length": 1}},
    {"definition": {"max-length": 1}},
    {"pattern": "x", "definition": {"max-length": 1}, "apply-to": "foo"},
    {"pattern": "x", "definition": {"max-length": 1}, "priority": "a"},
    {"pattern": 1, "definition": {"max-length": 1}},
    {"pattern": "x", "definition": {"overflow": "a"}},
    {"pattern": "x", "definition": {"alternate-exchange": 1}},
    {"pattern": "x", "definition": {"delivery-limit": -1}},
    {"pattern": "x", "definition": {"expires": {"a": 1}}},
    {"pattern": "x", "definition": {"ha-mode": "exactly"}},
    {"pattern": "x", "definition": {"ha-sync-mode": "automatic"}},
]
# (not compared: {"consumer-timeout": 1}, which RabbitMQ 3.10 refuses as an unknown key and
# 3.12 takes, as RaftMQ does: tests/integration/test_consumer_timeout.py)


@pytest.mark.parametrize("body", BAD)
def test_refusals_as_rabbitmq(apis: tuple[Api, Api], body: dict[str, Any]) -> None:
    ra, oa = both(apis, "PUT", f"/api/policies/{V}/bad", body)
    if not isinstance(body.get("pattern"), str) or "(" not in body["pattern"]:
        assert ra == oa  # (RE2's reason for a bad pattern is its own)


def test_operator_refusals_and_not_found(apis: tuple[Api, Api]) -> None:
    ra, oa = both(apis, "PUT", f"/api/operator-policies/{V}/op",
                  {"pattern": "x", "definition": {"dead-letter-exchange": "x"}})
    assert ra == oa
    ra, oa = both(apis, "PUT", "/api/policies/nosuch/p",
                  {"pattern": "x", "definition": {"max-length": 1}})
    assert ra == oa
    for path in (f"/api/policies/{V}/none", f"/api/operator-policies/{V}/none"):
        assert both(apis, "GET", path) == both(apis, "DELETE", path)


def _queue(api: Api, name: str) -> dict[str, Any]:
    got: dict[str, Any] = api.ok("GET", f"/api/queues/{V}/{q(name)}")
    return got


def test_policies_act_on_queues_as_in_rabbitmq(brokers: tuple[Any, Any],
                                               apis: tuple[Api, Api]) -> None:
    """The same traffic and policies on both; the same outcome."""
    seen = [_traffic(b, api) for b, api in zip(brokers, apis, strict=True)]
    assert seen[0] == seen[1]
    assert seen[0][:5] == (b"m3", 6, "expired", "pol-dl", b"d0")


def _clear(api: Api) -> None:
    for name in ("ttl", "ml", "dl", "args"):
        api("DELETE", f"/api/policies/{V}/{name}")
    api("DELETE", f"/api/operator-policies/{V}/cap")


def _traffic(b: Any, api: Api) -> tuple[Any, ...]:
    """The traffic and policies of the test above on one broker; what came of them (its
    policies cleared whatever happens: the next test lists them)."""
    try:
        return _traffic_on(b, api)
    finally:
        _clear(api)


def _traffic_on(b: Any, api: Api) -> tuple[Any, ...]:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", b.amqp_port))
    ch = conn.channel()
    for name in ("pol-ttl", "pol-ml", "pol-dl", "pol-dlq", "pol-args"):
        ch.queue_delete(name)
    ch.queue_declare("pol-ttl")
    ch.queue_declare("pol-ml")
    ch.queue_declare("pol-dl")
    ch.queue_declare("pol-dlq")
    ch.queue_declare("pol-args", arguments={"x-message-ttl": 60000, "x-max-length": 2,
                                            "x-overflow": "drop-head"})
    for i in range(5):
        ch.basic_publish("", "pol-ttl", b"old%d" % i)
        ch.basic_publish("", "pol-ml", b"m%d" % i)
    api.ok("PUT", f"/api/policies/{V}/ttl", {"pattern": "^pol-ttl$", "apply-to": "queues",
                                             "definition": {"message-ttl": 100}})
    api.ok("PUT", f"/api/policies/{V}/ml", {"pattern": "^pol-ml$", "priority": 1,
                                            "definition": {"max-length": 2}})
    api.ok("PUT", f"/api/policies/{V}/dl", {
        "pattern": "^pol-dl$", "definition": {"message-ttl": 50, "dead-letter-exchange": "",
                                              "dead-letter-routing-key": "pol-dlq"}})
    api.ok("PUT", f"/api/policies/{V}/args", {
        "pattern": "^pol-args$", "definition": {"message-ttl": 100, "max-length": 10,
                                                "overflow": "reject-publish"}})
    api.ok("PUT", f"/api/operator-policies/{V}/cap", {
        "pattern": "^pol-args$", "definition": {"max-length": 1, "expires": 3600000}})
    # max-length: the head goes at once
    wait_until(lambda: ch.queue_declare("pol-ml", passive=True).method.message_count == 2, STATS_WAIT)
    m = ch.basic_get("pol-ml", auto_ack=True)
    head = m[2]
    # message-ttl: the messages already there stay; one arriving afterwards is behind
    # them and waits for the head
    wait_until(lambda: _queue(api, "pol-ttl").get("policy") == "ttl", STATS_WAIT)
    ch.basic_publish("", "pol-ttl", b"new")
    time.sleep(0.4)  # (the TTL must have run out: nothing to wait for otherwise)
    ttl_count = ch.queue_declare("pol-ttl", passive=True).method.message_count
    # dead-letter exchange by policy: expired messages go to pol-dlq
    wait_until(lambda: _queue(api, "pol-dl").get("policy") == "dl", STATS_WAIT)
    for i in range(3):
        ch.basic_publish("", "pol-dl", b"d%d" % i)
    wait_until(lambda: ch.queue_declare("pol-dlq", passive=True).method.message_count == 3, STATS_WAIT)
    got = ch.basic_get("pol-dlq", auto_ack=True)
    death = got[1].headers["x-death"][0]
    # client arguments against the policy, capped by the operator policy
    wait_until(lambda: _queue(api, "pol-args").get("operator_policy") == "cap", STATS_WAIT)
    for i in range(3):
        ch.basic_publish("", "pol-args", b"a%d" % i)
    wait_until(lambda: ch.queue_declare("pol-args", passive=True).method.message_count == 1, STATS_WAIT)
    entry = _queue(api, "pol-args")
    result = (head, ttl_count, death["reason"], death["queue"], got[2],
              {k: entry[k] for k in ("policy", "operator_policy",
                                     "effective_policy_definition", "arguments")})
    _clear(api)
    wait_until(lambda: _queue(api, "pol-args").get("policy", 0) is None, STATS_WAIT)
    assert _queue(api, "pol-args")["effective_policy_definition"] == {}
    conn.close()
    return result


def test_who_may_set_policies(apis: tuple[Api, Api]) -> None:
    for api in apis:
        api.ok("PUT", "/api/users/pol-mgmt", {"password": "pw", "tags": "management"})
        api.ok("PUT", "/api/users/pol-maker", {"password": "pw", "tags": "policymaker"})
        api.ok("PUT", "/api/users/pol-stranger", {"password": "pw", "tags": "policymaker"})
        for user in ("pol-mgmt", "pol-maker"):
            api.ok("PUT", f"/api/permissions/{V}/{user}",
                   {"configure": ".*", "write": ".*", "read": ".*"})
    body = {"pattern": "^who-", "definition": {"max-length": 1}}
    for user, method, path in [
        ("pol-mgmt", "PUT", f"/api/policies/{V}/who"),
        ("pol-mgmt", "GET", "/api/policies"),
        ("pol-maker", "PUT", f"/api/policies/{V}/who"),
        ("pol-maker", "GET", "/api/policies"),
        ("pol-maker", "GET", f"/api/policies/{V}/who"),
        ("pol-stranger", "GET", "/api/policies"),
        ("pol-stranger", "PUT", f"/api/policies/{V}/who2"),
        ("pol-maker", "PUT", f"/api/operator-policies/{V}/who"),
        ("pol-maker", "GET", "/api/operator-policies"),
        ("pol-maker", "GET", f"/api/operator-policies/{V}/who"),
        ("pol-stranger", "GET", f"/api/policies/{V}"),
        ("pol-mgmt", "DELETE", f"/api/policies/{V}/nosuch"),
        ("pol-maker", "DELETE", f"/api/policies/{V}/nosuch"),
        ("pol-maker", "DELETE", f"/api/policies/{V}/who"),
    ]:
        ra, oa = both((apis[0].as_(user, "pw"), apis[1].as_(user, "pw")), method, path,
                      body if method == "PUT" else None)
        assert ra == oa, (user, method, path)
