"""The management API for queues, exchanges, bindings, get and publish, side by side with
RabbitMQ 3.10 and its management plugin: the same requests to both, statuses and error
bodies compared, and the fields both return compared value by value. Every field
RabbitMQ returns that RaftMQ lacks is reported (printed, and listed in the assertion
message when a compared value differs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from harness.ports import free_port
from harness.raftmq import RaftMQNode
from tests.harness.api import Api, q

pytestmark = [pytest.mark.raftmq_only, pytest.mark.timeout(180)]

V = q("/")
# Fields whose values are the broker's own business (statistics, identity, timing).
OWN = {"node", "memory", "reductions", "garbage_collection", "idle_since", "state",
       "owner_pid_details", "message_stats", "messages_details", "messages_ready_details",
       "messages_unacknowledged_details", "consumer_utilisation", "consumer_capacity",
       "user_who_performed_action", "effective_policy_definition", "message_bytes_ready",
       "connected_at", "port",
       # a connection's bytes: each broker's handshake and server properties are its own
       "recv_oct", "send_oct", "recv_cnt", "send_cnt", "recv_oct_details", "send_oct_details"}
missing_fields: dict[str, set[str]] = {}


@pytest.fixture(scope="module")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    from harness.rabbitmq import RabbitMQ

    base = tmp_path_factory.mktemp("mgmt-compare")
    rabbit = RabbitMQ(base / "rabbitmq", management_port=free_port())
    node = RaftMQNode(base / "raftmq" / "data", log_path=base / "raftmq" / "node.log")
    with rabbit, node:
        yield node, rabbit


@pytest.fixture(scope="module")
def amqp_ports(brokers: tuple[Any, Any]) -> tuple[int, int]:
    return brokers[0].amqp_port, brokers[1].amqp_port


@pytest.fixture(scope="module")
def apis(brokers: tuple[Any, Any]) -> Iterator[tuple[Api, Api]]:
    node, rabbit = brokers
    rapi, oapi = Api(node.management_port), Api(rabbit.management_port or 0)
    _wait(lambda: oapi("GET", "/api/overview")[0] == 200, 60)
    yield rapi, oapi
    if missing_fields:
        print("\nfields RabbitMQ returns that RaftMQ lacks:")
        for what, keys in sorted(missing_fields.items()):
            print(f"  {what}: {', '.join(sorted(keys))}")


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def both(apis: tuple[Api, Api], method: str, path: str, body: Any = None) -> tuple[Any, Any]:
    """The same request to both: the statuses must be equal; (RaftMQ's, RabbitMQ's) answers."""
    (rs, ra), (os_, oa) = apis[0](method, path, body), apis[1](method, path, body)
    assert rs == os_, f"{method} {path}: RaftMQ {rs} {ra!r}, RabbitMQ {os_} {oa!r}"
    return ra, oa


# Names of connections and channels: RabbitMQ's say "peer -> listener"; RaftMQ's name the
# node holding the connection (they are unique in the cluster, as the API needs).
NAMES = {"name", "connection_name", "peer_port"}  # and each client has its own port


def compare(what: str, ours: dict[str, Any], theirs: dict[str, Any],
            ignore: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Every field both return has the same value (nested objects field by field)."""
    lacking = set(theirs) - set(ours)
    missing_fields.setdefault(what, set()).update(lacking)
    diff = {}
    for k in set(ours) & set(theirs) - OWN - ignore:
        if isinstance(ours[k], dict) and isinstance(theirs[k], dict) and k != "arguments":
            compare(f"{what}.{k}", ours[k], theirs[k], NAMES)
        elif ours[k] != theirs[k]:
            diff[k] = (ours[k], theirs[k])
    assert not diff, f"{what}: values differ (RaftMQ, RabbitMQ): {diff}; lacking: {lacking}"


def test_queue_declare_list_and_errors(apis: tuple[Api, Api]) -> None:
    body = {"durable": True, "auto_delete": False, "arguments": {"x-message-ttl": 60000}}
    both(apis, "PUT", f"/api/queues/{V}/cmp-q", body)
    both(apis, "PUT", f"/api/queues/{V}/cmp-q", body)  # again: 204 on both
    ours, theirs = both(apis, "GET", f"/api/queues/{V}/cmp-q")
    compare("queue", ours, theirs)
    ours, theirs = both(apis, "PUT", f"/api/queues/{V}/cmp-q", {"durable": False})
    assert ours == theirs  # inequivalent arg 'durable' ...
    assert both(apis, "GET", f"/api/queues/{V}/no-such-queue") == ({"error": "Object Not Found",
                                                                    "reason": "Not Found"},) * 2
    ours, theirs = both(apis, "PUT", f"/api/queues/{V}/amq.reserved", {})
    assert ours["error"] == theirs["error"]
    ours, theirs = both(apis, "PUT", f"/api/queues/{V}/bad-args",
                        {"arguments": {"x-max-length": "many"}})
    assert ours["error"] == theirs["error"] == "bad_request"
    ours, theirs = both(apis, "GET", f"/api/queues/{V}")
    assert {x["name"] for x in ours} == {x["name"] for x in theirs}
    both(apis, "DELETE", f"/api/queues/{V}/cmp-q")
    both(apis, "GET", f"/api/queues/{V}/cmp-q")  # 404 on both


def test_exchanges_and_bindings(apis: tuple[Api, Api]) -> None:
    ours, theirs = both(apis, "GET", f"/api/exchanges/{V}")
    # RaftMQ has no firehose tracer, and so no amq.rabbitmq.trace exchange
    theirs = [x for x in theirs if x["name"] != "amq.rabbitmq.trace"]
    assert sorted((x["name"], x["type"]) for x in ours) == \
        sorted((x["name"], x["type"]) for x in theirs)
    for ours_x, theirs_x in zip(sorted(ours, key=lambda x: x["name"]),
                                sorted(theirs, key=lambda x: x["name"]), strict=True):
        compare("exchange", ours_x, theirs_x)
    both(apis, "PUT", f"/api/exchanges/{V}/cmp-x", {"type": "topic", "durable": True})
    both(apis, "PUT", f"/api/queues/{V}/cmp-b", {"durable": True})
    both(apis, "POST", f"/api/bindings/{V}/e/cmp-x/q/cmp-b", {"routing_key": "a.*"})
    both(apis, "POST", f"/api/bindings/{V}/e/cmp-x/q/cmp-b", {"routing_key": ""})
    ours, theirs = both(apis, "GET", f"/api/queues/{V}/cmp-b/bindings")
    assert ours == theirs
    ours, theirs = both(apis, "GET", f"/api/bindings/{V}/e/cmp-x/q/cmp-b")
    assert ours == theirs
    for b in ours:
        one = both(apis, "GET", f"/api/bindings/{V}/e/cmp-x/q/cmp-b/{b['properties_key']}")
        assert one[0] == one[1]
    ours, theirs = both(apis, "GET", f"/api/exchanges/{V}/cmp-x/bindings/source")
    assert ours == theirs
    both(apis, "DELETE", f"/api/bindings/{V}/e/cmp-x/q/cmp-b/a.*")
    ours, theirs = both(apis, "GET", f"/api/bindings/{V}/e/cmp-x/q/cmp-b")
    assert ours == theirs and len(ours) == 1
    ours, theirs = both(apis, "DELETE", f"/api/exchanges/{V}/cmp-x?if-unused=true")
    assert ours["error"] == theirs["error"]
    both(apis, "DELETE", f"/api/exchanges/{V}/cmp-x")
    both(apis, "DELETE", f"/api/queues/{V}/cmp-b")


def test_publish_get_purge(apis: tuple[Api, Api]) -> None:
    both(apis, "PUT", f"/api/queues/{V}/cmp-m", {"durable": True})
    for payload, encoding in (("hello", "string"), ("AAEC/w==", "base64")):
        ours, theirs = both(apis, "POST", f"/api/exchanges/{V}/amq.default/publish", {
            "routing_key": "cmp-m", "payload": payload, "payload_encoding": encoding,
            "properties": {"delivery_mode": 2, "headers": {"h": "v", "n": 1},
                           "content_type": "text/plain", "priority": 3}})
        assert ours == theirs == {"routed": True}
    ours, theirs = both(apis, "POST", f"/api/exchanges/{V}/amq.default/publish", {
        "routing_key": "nowhere", "payload": "x", "payload_encoding": "string",
        "properties": {}})
    assert ours == theirs == {"routed": False}
    for api in apis:
        _wait(lambda api=api: api.ok("GET", f"/api/queues/{V}/cmp-m").get("messages") == 2)  # type: ignore[misc]
    get = {"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 50000}
    ours, theirs = both(apis, "POST", f"/api/queues/{V}/cmp-m/get", get)
    assert len(ours) == len(theirs) == 2
    for o, t in zip(ours, theirs, strict=True):
        compare("get", o, t)
    ours, theirs = both(apis, "POST", f"/api/queues/{V}/cmp-m/get",
                        dict(get, ackmode="ack_requeue_false"))
    assert [m["redelivered"] for m in ours] == [m["redelivered"] for m in theirs] == [True] * 2
    both(apis, "POST", f"/api/exchanges/{V}/amq.default/publish", {
        "routing_key": "cmp-m", "payload": "again", "payload_encoding": "string",
        "properties": {}})
    for api in apis:
        _wait(lambda api=api: api.ok("GET", f"/api/queues/{V}/cmp-m").get("messages") == 1)  # type: ignore[misc]
    ours, theirs = both(apis, "DELETE", f"/api/queues/{V}/cmp-m?if-empty=true")
    assert ours["error"] == theirs["error"] == "bad_request"
    both(apis, "DELETE", f"/api/queues/{V}/cmp-m/contents")
    for api in apis:
        _wait(lambda api=api: api.ok("GET", f"/api/queues/{V}/cmp-m").get("messages") == 0)  # type: ignore[misc]
    both(apis, "DELETE", f"/api/queues/{V}/cmp-m?if-empty=true")


def test_overview(apis: tuple[Api, Api]) -> None:
    ours, theirs = both(apis, "GET", "/api/overview")
    for key in ("object_totals", "queue_totals"):
        assert set(theirs[key]) - set(ours[key]) <= {"messages_details", "messages_ready_details",
                                                     "messages_unacknowledged_details"}, key
    missing_fields["overview"] = set(theirs) - set(ours)


def test_unknown_vhost(apis: tuple[Api, Api]) -> None:
    for path in (f"/api/queues/{q('no-vhost')}", f"/api/exchanges/{q('no-vhost')}/x",
                 f"/api/queues/{q('no-vhost')}/x"):
        ours, theirs = both(apis, "GET", path)
        assert ours == theirs


def test_connections_channels_consumers(apis: tuple[Api, Api],
                                        amqp_ports: tuple[int, int]) -> None:
    """A pika client consuming on each broker: the listings agree on what both know, and
    closing the connection through the API closes it with 320 and the given reason."""
    import pika

    clients = []
    for api in apis:
        conn = pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", amqp_ports[apis.index(api)]))
        ch = conn.channel()
        ch.queue_declare("cmp-c", durable=True)
        ch.basic_qos(prefetch_count=5)
        ch.basic_consume("cmp-c", lambda *a: None, consumer_tag="cmp-tag")
        clients.append(conn)
    try:
        for api in apis:
            _wait(lambda api=api: len(api.ok("GET", "/api/consumers")) == 1)  # type: ignore[misc]
            _wait(lambda api=api: len(api.ok("GET", "/api/connections")) == 1)  # type: ignore[misc]
        ours, theirs = both(apis, "GET", f"/api/consumers/{V}")
        compare("consumer", ours[0], theirs[0])
        ours, theirs = both(apis, "GET", "/api/channels")
        compare("channel", ours[0], theirs[0], NAMES)
        ours, theirs = both(apis, "GET", "/api/connections")
        compare("connection", ours[0], theirs[0], NAMES)
        for api, conn in zip(apis, clients, strict=True):
            name = api.ok("GET", "/api/connections")[0]["name"]
            status, _ = api("DELETE", f"/api/connections/{q(name)}")
            assert status == 204
            closed: list[pika.exceptions.ConnectionClosedByBroker] = []

            def gone(conn: Any = conn,
                     closed: list[pika.exceptions.ConnectionClosedByBroker] = closed) -> bool:
                try:
                    conn.process_data_events(0.05)
                except pika.exceptions.ConnectionClosedByBroker as e:
                    closed.append(e)
                    return True
                return False

            _wait(gone)
            assert closed[0].reply_code == 320
    finally:
        for conn in clients:
            if conn.is_open:
                conn.close()
        for api in apis:
            api("DELETE", f"/api/queues/{V}/cmp-c")


def _section_set(defs: dict[str, Any], name: str, vhost: str) -> set[str]:
    import json

    return {json.dumps(i, sort_keys=True) for i in defs.get(name, [])
            if i.get("vhost", vhost) == vhost}


def test_definitions_round_trip(apis: tuple[Api, Api]) -> None:
    """Topology, a user and permissions made on RabbitMQ, exported, imported into RaftMQ,
    exported from RaftMQ, imported into RabbitMQ (its copies deleted first): what comes
    back is what went out."""
    raft, rabbit = apis
    vh = q("defs")
    rabbit.ok("PUT", f"/api/vhosts/{vh}", {"description": "round trip"})
    rabbit.ok("PUT", "/api/users/def-user", {"password": "secret", "tags": "monitoring"})
    rabbit.ok("PUT", f"/api/permissions/{vh}/def-user",
              {"configure": "^def-", "write": ".*", "read": ".*"})
    rabbit.ok("PUT", f"/api/permissions/{vh}/guest",
              {"configure": ".*", "write": ".*", "read": ".*"})
    rabbit.ok("PUT", f"/api/topic-permissions/{vh}/def-user",
              {"exchange": "def-topic", "write": "^a", "read": ".*"})
    rabbit.ok("PUT", f"/api/exchanges/{vh}/def-topic", {"type": "topic", "durable": True})
    rabbit.ok("PUT", f"/api/exchanges/{vh}/def-fan", {"type": "fanout", "durable": True,
                                                       "arguments": {"alternate-exchange":
                                                                     "def-topic"}})
    rabbit.ok("PUT", f"/api/queues/{vh}/def-q", {"durable": True, "arguments": {
        "x-max-length": 10, "x-dead-letter-exchange": "def-fan", "x-queue-type": "classic"}})
    rabbit.ok("POST", f"/api/bindings/{vh}/e/def-topic/q/def-q", {"routing_key": "a.#"})
    rabbit.ok("POST", f"/api/bindings/{vh}/e/def-topic/e/def-fan",
              {"routing_key": "b.*", "arguments": {"x-k": "v"}})
    original = rabbit.ok("GET", "/api/definitions")

    raft.ok("POST", "/api/definitions", original)
    ours = raft.ok("GET", "/api/definitions")
    for section in ("queues", "exchanges", "bindings", "permissions", "topic_permissions"):
        assert _section_set(ours, section, "defs") == _section_set(original, section, "defs"), \
            section
    mine = {u["name"]: u for u in ours["users"]}
    theirs = {u["name"]: u for u in original["users"]}
    assert mine["def-user"] == {k: v for k, v in theirs["def-user"].items() if k != "limits"}
    assert raft("GET", "/api/whoami")[0] == 200
    assert Api(int(raft.base.rsplit(":", 1)[1]), "def-user", "secret")("GET", "/api/whoami")[0] \
        == 200  # the hash came over: the password works

    rabbit.ok("DELETE", f"/api/vhosts/{vh}")
    rabbit.ok("DELETE", "/api/users/def-user")
    rabbit.ok("POST", "/api/definitions", ours)
    again = rabbit.ok("GET", "/api/definitions")
    for section in ("queues", "exchanges", "bindings", "permissions", "topic_permissions"):
        assert _section_set(again, section, "defs") == _section_set(original, section, "defs"), \
            section
    for api in apis:
        api("DELETE", f"/api/vhosts/{vh}")
        api("DELETE", "/api/users/def-user")


def test_health_checks(apis: tuple[Api, Api]) -> None:
    for path in ("/api/health/checks/alarms", "/api/health/checks/local-alarms",
                 "/api/health/checks/node-is-quorum-critical", f"/api/aliveness-test/{V}"):
        ours, theirs = both(apis, "GET", path)
        assert ours == theirs and ours["status"] == "ok", path
    assert both(apis, "GET", f"/api/aliveness-test/{q('no-vhost')}")[0] == \
        {"error": "Object Not Found", "reason": "Not Found"}


def test_message_rates_follow_traffic(apis: tuple[Api, Api], amqp_ports: tuple[int, int]) -> None:
    """Counts and rates from the replicated counters: 300 published and consumed with acks
    show in the overview and in the queue's message_stats, with rates above zero."""
    import pika

    raft = apis[0]
    before = raft.ok("GET", "/api/overview")["message_stats"]
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp_ports[0]))
    try:
        ch = conn.channel()
        ch.queue_declare("cmp-rates")
        for i in range(300):
            ch.basic_publish("", "cmp-rates", b"%d" % i)
        for got, (method, _props, _body) in enumerate(
                ch.consume("cmp-rates", inactivity_timeout=5), 1):
            if method is None:
                break
            ch.basic_ack(method.delivery_tag)
            if got == 300:
                break
        ch.cancel()
    finally:
        conn.close()
    time.sleep(1.5)
    stats = raft.ok("GET", "/api/overview")["message_stats"]
    assert stats["publish"] - before.get("publish", 0) == 300
    assert stats["ack"] - before.get("ack", 0) == 300
    assert stats["publish_details"]["rate"] > 0 and stats["ack_details"]["rate"] > 0
    queue = raft.ok("GET", f"/api/queues/{V}/cmp-rates")["message_stats"]
    assert queue["publish"] == queue["deliver_get"] == queue["ack"] == 300
    samples = raft.ok("GET", "/api/overview?msg_rates_age=60&msg_rates_incr=1")[
        "message_stats"]["publish_details"]["samples"]
    assert samples and samples[0]["sample"] >= 300
    raft.ok("DELETE", f"/api/queues/{V}/cmp-rates")


def test_management_user_sees_only_its_vhosts(apis: tuple[Api, Api],
                                              amqp_ports: tuple[int, int]) -> None:
    """A user tagged management lists only the vhosts it has permissions on, consumers
    included (RabbitMQ's rule); an administrator sees everything."""
    import pika

    raft = apis[0]
    raft.ok("PUT", f"/api/vhosts/{q('hidden')}", {})
    raft.ok("PUT", f"/api/permissions/{q('hidden')}/guest",
            {"configure": ".*", "write": ".*", "read": ".*"})
    raft.ok("PUT", "/api/users/mgr", {"password": "mgr-pw", "tags": "management"})
    raft.ok("PUT", f"/api/permissions/{V}/mgr", {"configure": ".*", "write": ".*", "read": ".*"})
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", amqp_ports[0], virtual_host="hidden"))
    try:
        ch = conn.channel()
        ch.queue_declare("secret-q")
        ch.basic_consume("secret-q", lambda *a: None)
        _wait(lambda: any(c["queue"]["vhost"] == "hidden"
                          for c in raft.ok("GET", "/api/consumers")))
        mgr = raft.as_("mgr", "mgr-pw")
        for path in ("/api/queues", "/api/consumers", "/api/exchanges", "/api/bindings",
                     "/api/channels"):
            items = mgr.ok("GET", path)
            vhosts = {i.get("vhost") or i["queue"]["vhost"] for i in items}
            assert "hidden" not in vhosts, path
        assert mgr("GET", f"/api/queues/{q('hidden')}")[0] == 401
        assert mgr("GET", f"/api/queues/{q('hidden')}/secret-q")[0] == 401
        assert mgr("GET", "/api/connections")[1] == []  # not its own
    finally:
        conn.close()
        raft("DELETE", f"/api/vhosts/{q('hidden')}")
        raft("DELETE", "/api/users/mgr")


def test_policies_listed_alike(apis: tuple[Api, Api]) -> None:
    """Policies (compared in depth in test_policies_compare.py): a policy set on both is
    listed alike, and a queue shows it alike."""
    body = {"pattern": "^cmp-pol$", "definition": {"message-ttl": 1000}, "apply-to": "queues"}
    both(apis, "PUT", f"/api/policies/{V}/cmp-ttl", body)
    both(apis, "PUT", f"/api/queues/{V}/cmp-pol", {"durable": True})
    ours, theirs = both(apis, "GET", f"/api/policies/{V}/cmp-ttl")
    assert ours == theirs
    _wait(lambda: apis[1]("GET", f"/api/queues/{V}/cmp-pol")[1].get("policy") == "cmp-ttl")
    fields = ("policy", "operator_policy", "arguments")
    ours_q = apis[0].ok("GET", f"/api/queues/{V}/cmp-pol")
    theirs_q = apis[1].ok("GET", f"/api/queues/{V}/cmp-pol")
    assert {k: ours_q[k] for k in fields} == {k: theirs_q[k] for k in fields}
    both(apis, "DELETE", f"/api/queues/{V}/cmp-pol")
    both(apis, "DELETE", f"/api/policies/{V}/cmp-ttl")


def test_publish_with_bad_properties_is_a_400(apis: tuple[Api, Api]) -> None:
    """Properties that do not encode, or that a client's publish could not carry either,
    are the request's error, with a reason (never a 500)."""
    for props in ({"priority": 1000}, {"timestamp": "soon"}, {"timestamp": 1e30},
                  {"delivery_mode": "x"}, {"nope": 1}):
        status, answer = apis[0]("POST", f"/api/exchanges/{V}/amq.default/publish",
                                 {"routing_key": "x", "payload": "p", "properties": props,
                                  "payload_encoding": "string"})
        assert status == 400 and answer["error"] == "bad_request", (props, status, answer)
