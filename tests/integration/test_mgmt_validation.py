"""The management API never says yes to something it did not do, and bad input is a 400
with a reason, never a 500 or a traceback (issue 19, items 6 and 8).

* an integer beyond 64 bits in queue arguments was 201 with no queue (the proposer left
  the command out of the Raft entry, nobody told the handler);
* NaN in arguments was stored and then written out as invalid JSON by /api/queues and
  the export, for everyone who could see the vhost;
* a definitions import with one bad queue was 204 with the queue missing;
* JSON nested 100,000 deep was a 500 with a RecursionError traceback.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
from pathlib import Path
from typing import Any

import pytest

from tests.harness.api import Api, q

pytestmark = [pytest.mark.timeout(120)]


def raw(api: Api, method: str, path: str, data: bytes) -> tuple[int, Any]:
    """A request with exactly ``data`` as its body (Api json-encodes its bodies)."""
    host, port = api.base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    token = base64.b64encode(f"{api.auth[0]}:{api.auth[1]}".encode()).decode()
    try:
        conn.request(method, path, body=data, headers={
            "Authorization": f"Basic {token}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(body) if body else None
    except ValueError:
        return resp.status, body


def queues(api: Api, vhost: str = "/") -> set[str]:
    return {x["name"] for x in api.ok("GET", f"/api/queues/{q(vhost)}")}


def tracebacks(broker: Any) -> int:
    if broker.node is None:
        return 0
    return Path(broker.node.log_path).read_text(errors="replace").count("Traceback")


def assert_bad_request(status: int, answer: Any, *words: str) -> None:
    assert status == 400, (status, answer)
    assert isinstance(answer, dict) and answer.get("error") == "bad_request", answer
    for word in words:
        assert word in answer["reason"], (word, answer["reason"])


@pytest.mark.raftmq_only
@pytest.mark.parametrize("value", [1 << 64, 1 << 63, -(1 << 63) - 1, 10 ** 30])
def test_integer_beyond_64_bits_is_refused_and_nothing_declared(api, broker, value):
    before = tracebacks(broker)
    status, answer = raw(api, "PUT", "/api/queues/%2F/big-int",
                         b'{"durable": true, "arguments": {"x-big": %d}}' % value)
    assert_bad_request(status, answer, "x-big", "64 bits")
    assert "big-int" not in queues(api)
    # the same in a nested table and an array, and in binding arguments
    status, answer = raw(api, "PUT", "/api/queues/%2F/big-int",
                         b'{"arguments": {"t": {"deep": [1, %d]}}}' % value)
    assert_bad_request(status, answer, "64 bits")
    assert "big-int" not in queues(api)
    assert tracebacks(broker) == before


@pytest.mark.raftmq_only
def test_largest_64_bit_integers_are_accepted(api):
    body = {"arguments": {"lo": -(1 << 63), "hi": (1 << 63) - 1}}
    assert api("PUT", "/api/queues/%2F/int-edges", body)[0] == 201
    got = api.ok("GET", "/api/queues/%2F/int-edges")
    assert got["arguments"] == body["arguments"]
    api.ok("DELETE", "/api/queues/%2F/int-edges")


@pytest.mark.raftmq_only
@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"])
def test_nan_and_infinity_are_refused(api, broker, number):
    before = tracebacks(broker)
    status, answer = raw(api, "PUT", "/api/queues/%2F/nan-q",
                         b'{"arguments": {"x-n": %s}}' % number)
    assert_bad_request(status, answer, "JSON")
    assert "nan-q" not in queues(api)
    # and nowhere else either: a user's body, a binding's arguments
    status, answer = raw(api, "PUT", "/api/vhosts/nan-vhost", b'{"description": %s}' % number)
    assert status == 400, answer
    # the listing and the export stay valid JSON (raw() parsed them)
    status, listed = raw(api, "GET", "/api/queues", b"")
    assert status == 200 and isinstance(listed, list)
    status, defs = raw(api, "GET", "/api/definitions", b"")
    assert status == 200 and isinstance(defs, dict)
    assert tracebacks(broker) == before


@pytest.mark.raftmq_only
@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_deeply_nested_json_is_a_400(api, broker, depth):
    before = tracebacks(broker)
    doc = b'{"arguments": {"x": ' + b"[" * depth + b"]" * depth + b"}}"
    status, answer = raw(api, "PUT", "/api/queues/%2F/deep", doc)
    assert_bad_request(status, answer, "nested deeper than 32")
    status, answer = raw(api, "POST", "/api/definitions", b"[" * depth + b"]" * depth)
    assert_bad_request(status, answer, "nested deeper")
    assert "deep" not in queues(api)
    assert tracebacks(broker) == before


@pytest.mark.raftmq_only
def test_nesting_within_the_bound_and_brackets_in_strings_are_fine(api):
    nested: Any = "leaf [[[{{{"
    for _ in range(25):
        nested = [nested]
    assert api("PUT", "/api/queues/%2F/nested-ok", {"arguments": {"x": nested}})[0] == 201
    assert api.ok("GET", "/api/queues/%2F/nested-ok")["arguments"]["x"] == nested
    api.ok("DELETE", "/api/queues/%2F/nested-ok")


@pytest.mark.raftmq_only
@pytest.mark.parametrize("arguments, words", [
    ({f"k{i}": i for i in range(1025)}, "more than 1024 entries"),
    ({"x": "y" * 140_000}, "larger than 131072 bytes"),
    ({"k" * 256: 1}, "longer than 255 bytes"),
    ({"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "r" * 256},
     "x-dead-letter-routing-key"),
    ({"x": "\ud800"}, "surrogate"),
])
def test_argument_tables_are_bounded(api, broker, arguments, words):
    before = tracebacks(broker)
    status, answer = api("PUT", "/api/queues/%2F/big-args", {"arguments": arguments})
    assert_bad_request(status, answer, words)
    status, answer = api("PUT", "/api/exchanges/%2F/big-args-x",
                         {"type": "direct", "arguments": arguments})
    assert_bad_request(status, answer, words)
    assert "big-args" not in queues(api)
    assert tracebacks(broker) == before


@pytest.mark.raftmq_only
def test_names_and_routing_keys_are_short_strings(api, broker):
    before = tracebacks(broker)
    long = "n" * 256
    assert_bad_request(*api("PUT", f"/api/queues/%2F/{long}", {}), "255")
    assert_bad_request(*api("PUT", f"/api/exchanges/%2F/{long}", {"type": "direct"}), "255")
    assert_bad_request(*api("PUT", f"/api/vhosts/{long}", {}), "255")
    assert_bad_request(*api("PUT", f"/api/users/{long}", {"password": "p"}), "255")
    assert api("PUT", "/api/queues/%2F/rk-q", {})[0] == 201
    status, answer = api("POST", "/api/bindings/%2F/e/amq.direct/q/rk-q",
                         {"routing_key": "r" * 256})
    assert_bad_request(status, answer, "routing_key")
    assert api("POST", "/api/bindings/%2F/e/amq.direct/q/rk-q",
               {"routing_key": "r" * 255})[0] == 201
    # 255 bytes of UTF-8 (not characters): 128 two-byte characters are 256 bytes
    assert_bad_request(*api("PUT", "/api/queues/%2F/" + q("é" * 128), {}), "255")
    assert api("PUT", "/api/queues/%2F/" + q("é" * 127), {})[0] == 201
    for name in ("rk-q", "é" * 127):
        api.ok("DELETE", f"/api/queues/%2F/{q(name)}")
    assert tracebacks(broker) == before


@pytest.mark.raftmq_only
@pytest.mark.parametrize("method, path, body", [
    ("PUT", "/api/users/surrogate", {"password": "\ud800"}),
    ("PUT", "/api/users/t1", {"password": "p", "tags": ["\ud800"]}),
    ("PUT", "/api/users/t2", {"password": "p", "tags": {"a": 1}}),
    ("PUT", "/api/users/t3", {"password_hash": 12}),
    ("PUT", "/api/vhosts/v-bad", {"description": ["x"]}),
    ("PUT", "/api/permissions/%2F/guest", {"configure": "(", "write": ".*", "read": ".*"}),
    ("PUT", "/api/permissions/%2F/guest", {"configure": 1, "write": ".*", "read": ".*"}),
    ("PUT", "/api/topic-permissions/%2F/guest", {"exchange": "x" * 256, "write": ".*",
                                                 "read": ".*"}),
    ("PUT", "/api/topic-permissions/%2F/guest", {"exchange": "amq.topic", "write": "[",
                                                 "read": ".*"}),
    ("PUT", "/api/vhost-limits/%2F/max-queues", {"value": 1 << 64}),
    ("PUT", "/api/user-limits/guest/max-channels", {"value": 1.5}),
    ("POST", "/api/users/bulk-delete", {"users": [1, 2]}),
    ("POST", "/api/users/bulk-delete", {"users": ["\ud800"]}),
    ("PUT", "/api/exchanges/%2F/x-bad", {"type": 7}),
    ("PUT", "/api/exchanges/%2F/x-bad", {"type": "direct", "arguments": [1]}),
    ("PUT", "/api/queues/%2F/q-bad", {"durable": 3}),
    ("PUT", "/api/queues/%2F/q-bad", [1, 2]),
    ("POST", "/api/members?address=h:%C2%B2", None),
    ("POST", "/api/members?address=h:99999", None),
])
def test_bad_values_are_400_with_a_reason(api, broker, method, path, body):
    before = tracebacks(broker)
    status, answer = api(method, path, body)
    assert status == 400, (status, answer)
    assert answer["error"] == "bad_request" and answer["reason"], answer
    assert tracebacks(broker) == before


# --- definitions import ------------------------------------------------------------------


def _doc(vhost: str, queues: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"vhosts": [{"name": vhost}],
            "permissions": [{"user": "guest", "vhost": vhost, "configure": ".*",
                             "write": ".*", "read": ".*"}],
            "queues": [{"vhost": vhost, "durable": True, "auto_delete": False,
                        "arguments": {}, **qd} for qd in queues], **extra}


@pytest.mark.raftmq_only
@pytest.mark.parametrize("bad, words", [
    ({"name": "bad", "arguments": {"x-big": 1 << 64}}, "64 bits"),
    ({"name": "b" * 256}, "255"),
    ({"name": "bad", "arguments": {"x-message-ttl": "soon"}}, "x-message-ttl"),
])
def test_import_with_one_bad_queue_applies_nothing(api, broker, bad, words):
    """Checked whole before anything is applied: a 400 naming the item, and not one of
    the good items (nor the vhost or permissions) is left behind."""
    before = tracebacks(broker)
    good = [{"name": f"good-{i}"} for i in range(5)]
    doc = _doc("import-bad", [*good[:3], bad, *good[3:]])
    status, answer = raw(api, "POST", "/api/definitions", json.dumps(doc).encode())
    assert_bad_request(status, answer, words)
    assert answer["reason"].startswith("queues[3]"), answer
    assert api("GET", "/api/vhosts/import-bad")[0] == 404
    assert tracebacks(broker) == before


@pytest.mark.raftmq_only
@pytest.mark.parametrize("section, item, words", [
    ("permissions", {"user": "guest", "vhost": "imp-p", "configure": "(", "write": ".*",
                     "read": ".*"}, "regular expression"),
    ("topic_permissions", {"user": "guest", "vhost": "imp-p", "exchange": "amq.topic",
                           "write": "[", "read": ".*"}, "regular expression"),
    ("permissions", {"user": "nobody-at-all", "vhost": "imp-p", "configure": ".*",
                     "write": ".*", "read": ".*"}, "nobody-at-all"),
    ("users", {"name": "u", "password_hash": "", "tags": 5}, "tags"),
    ("exchanges", {"vhost": "imp-p", "name": "x", "type": "direct",
                   "arguments": {"alternate-exchange": "a" * 256}}, "alternate-exchange"),
    ("bindings", {"vhost": "imp-p", "source": "amq.direct", "destination": "q",
                  "destination_type": "queue", "routing_key": "r" * 256}, "routing_key"),
    ("queues", {"vhost": "nowhere", "name": "q"}, "nowhere"),
])
def test_import_refuses_invalid_items_before_applying(api, broker, section, item, words):
    before = tracebacks(broker)
    doc = _doc("imp-p", [{"name": "q"}])
    doc[section] = [*doc.get(section, []), item]
    status, answer = api("POST", "/api/definitions", doc)
    assert_bad_request(status, answer, words)
    assert api("GET", "/api/vhosts/imp-p")[0] == 404
    assert tracebacks(broker) == before


@pytest.mark.raftmq_only
def test_import_applies_everything_it_answers_204_for(api):
    doc = _doc("import-ok", [{"name": f"q{i}", "arguments": {"x-max-length": i + 1}}
                             for i in range(1200)],
               exchanges=[{"vhost": "import-ok", "name": "ix", "type": "topic",
                           "durable": True, "auto_delete": False, "internal": False,
                           "arguments": {}}],
               bindings=[{"vhost": "import-ok", "source": "ix", "destination": f"q{i}",
                          "destination_type": "queue", "routing_key": f"k.{i}",
                          "arguments": {}} for i in range(1200)])
    status, answer = api("POST", "/api/definitions", doc)
    assert status == 204, answer
    assert queues(api, "import-ok") == {f"q{i}" for i in range(1200)}
    bound = [b for b in api.ok("GET", "/api/bindings/import-ok") if b["source"] == "ix"]
    assert len(bound) == 1200
    # deleted DELETE_CHUNK queues and exchanges to a Raft entry, then the vhost
    api.ok("DELETE", "/api/vhosts/import-ok")
    assert api("GET", "/api/vhosts/import-ok")[0] == 404
    assert not [q for q in api.ok("GET", "/api/queues") if q["vhost"] == "import-ok"]


@pytest.mark.raftmq_only
def test_a_refusal_from_the_machine_names_the_item(api):
    """What only the machine judges (a queue redeclared with other arguments than it has)
    stops the import at its chunk: a 400 naming the item and how much was applied (the
    chunks before it stay, as RabbitMQ leaves what it applied)."""
    api.ok("PUT", "/api/vhosts/imp-m", {})
    api.ok("PUT", "/api/permissions/imp-m/guest", {"configure": ".*", "write": ".*",
                                                   "read": ".*"})
    try:
        api.ok("PUT", "/api/queues/imp-m/clash", {"arguments": {"x-max-length": 1}})
        items = [{"vhost": "imp-m", "name": f"q{i}", "durable": True} for i in range(600)]
        items[550] = {"vhost": "imp-m", "name": "clash", "durable": True,
                      "arguments": {"x-max-length": 2}}
        status, answer = api("POST", "/api/definitions", {"queues": items})
        assert_bad_request(status, answer, "queues[550] 'clash'", "x-max-length",
                           "550 of 600 definitions were applied")
        assert len(queues(api, "imp-m")) == 1 + 550
    finally:
        api.ok("DELETE", "/api/vhosts/imp-m")


@pytest.mark.raftmq_only
def test_import_skips_amq_names_as_rabbitmq_does(api):
    doc = _doc("imp-amq", [{"name": "amq.mine"}, {"name": "plain"}],
               exchanges=[{"vhost": "imp-amq", "name": "amq.x", "type": "direct"}])
    assert api("POST", "/api/definitions", doc)[0] == 204
    assert queues(api, "imp-amq") == {"plain"}
    api.ok("DELETE", "/api/vhosts/imp-amq")


@pytest.mark.raftmq_only
def test_import_respects_the_vhost_queue_limit(api):
    api.ok("PUT", "/api/vhosts/imp-lim", {})
    try:
        api.ok("PUT", "/api/vhost-limits/imp-lim/max-queues", {"value": 3})
        doc = {"queues": [{"vhost": "imp-lim", "name": f"q{i}"} for i in range(4)]}
        assert_bad_request(*api("POST", "/api/definitions", doc), "queues[3]", "max-queues")
        assert queues(api, "imp-lim") == set()
    finally:
        api.ok("DELETE", "/api/vhosts/imp-lim")


@pytest.mark.raftmq_only
@pytest.mark.parametrize("size", [(4 << 20) + 1, (16 << 20) + 1])
def test_bodies_are_bounded(api, broker, size):
    """4 MiB for a request's JSON, 16 MiB for a definitions import (the port's limit)."""
    doc = b'{"arguments": {}, "pad": "' + b"x" * (size - 28) + b'"}'
    assert len(doc) == size
    status, _ = raw(api, "PUT", "/api/queues/%2F/padded", doc)
    assert status == 413
    assert "padded" not in queues(api)
    if size > 16 << 20:
        assert raw(api, "POST", "/api/definitions", doc)[0] == 413
    else:
        assert raw(api, "POST", "/api/definitions", doc)[0] == 204  # (nothing in it)


@pytest.mark.raftmq_only
def test_odd_digits_and_header_characters_are_no_500(api, broker):
    """"²".isdigit() is True and int("²") raises; a file name with CR LF in a header made
    aiohttp raise after the handler (a traceback, no answer)."""
    before = tracebacks(broker)
    api.ok("PUT", "/api/queues/%2F/odd", {})
    assert api("POST", "/api/queues/%2F/odd/get", {"count": "\u00b2",
                                                   "ackmode": "ack_requeue_true"})[0] == 400
    assert api("POST", "/api/queues/%2F/odd/get", {"count": "2", "ackmode": "ack_requeue_true",
                                                   "truncate": "\u00b2"})[0] == 400
    assert api("GET", "/api/connections/n1:%C2%B2")[0] == 404
    assert api("DELETE", "/api/connections/n1:%C2%B2")[0] == 404
    host, port = api.base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    token = base64.b64encode(b"guest:guest").decode()
    conn.request("GET", "/api/definitions?download=a%0d%0aSet-Cookie:%20x%22",
                 headers={"Authorization": f"Basic {token}"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 200 and resp.getheader("Set-Cookie") is None
    assert resp.getheader("Content-Disposition") == 'attachment; filename="a__Set-Cookie_ x_"'
    api.ok("DELETE", "/api/queues/%2F/odd")
    assert tracebacks(broker) == before


@pytest.mark.raftmq_only
def test_a_nan_from_amqp_never_makes_the_export_invalid_json(api, broker):
    """An AMQP client can send a double NaN in queue arguments (a raw frame: pika will
    not encode one): refused at the edge or stored, the export stays strict JSON."""
    from pamqp import commands

    from tests.integration.rawclient import RawClient

    with RawClient(broker.host, broker.port) as c:
        c.handshake()
        c.send_frame(0 + 1, commands.Channel.Open())
        c.recv_method()
        c.send_frame(1, commands.Queue.Declare(queue="amqp-nan",
                                               arguments={"x-n": float("nan")}))
        with contextlib.suppress(Exception):
            c.recv_method()

    def strict(raw_text: bytes) -> Any:
        return json.loads(raw_text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))

    status, _ = raw(api, "GET", "/api/definitions", b"")
    assert status == 200
    host, port = api.base.removeprefix("http://").split(":")
    http_conn = http.client.HTTPConnection(host, int(port), timeout=30)
    http_conn.request("GET", "/api/definitions", headers={
        "Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
    defs = strict(http_conn.getresponse().read())
    http_conn.close()
    found = [q for q in defs["queues"] if q["name"] == "amqp-nan"]
    assert found == [] or found[0]["arguments"] == {"x-n": None}
    with contextlib.suppress(Exception):
        api("DELETE", "/api/queues/%2F/amqp-nan")


@pytest.mark.raftmq_only
def test_deleting_a_big_vhost_in_use(api, broker):
    """More queues than one deletion entry takes, one consumed and one exclusive to a
    live connection: all go, the connection is closed, the vhost is gone."""
    import pika

    doc = _doc("del-v", [{"name": f"q{i}"} for i in range(700)])
    assert api("POST", "/api/definitions", doc)[0] == 204
    conn = pika.BlockingConnection(pika.URLParameters(broker.url_for(vhost="del-v")))
    try:
        ch = conn.channel()
        ch.queue_declare("mine", exclusive=True)
        ch.basic_consume("q0", lambda *a: None)
        assert api("DELETE", "/api/vhosts/del-v")[0] == 204
        with pytest.raises(pika.exceptions.AMQPError):
            for _ in range(50):
                conn.process_data_events(time_limit=0.1)
                ch.queue_declare("probe", passive=True)
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    assert api("GET", "/api/vhosts/del-v")[0] == 404
    assert not [q for q in api.ok("GET", "/api/queues") if q["vhost"] == "del-v"]


# --- /get takes what it shows, and a bounded amount of it --------------------------------


def _fill(broker: Any, queue: str, bodies: list[bytes]) -> None:
    from tests.integration.helpers import close_quietly, connect

    conn = connect(broker.url)
    try:
        ch = conn.channel()
        ch.queue_declare(queue)
        ch.confirm_delivery()
        for body in bodies:
            ch.basic_publish("", queue, body)
    finally:
        close_quietly(conn)


def _depth(api: Api, queue: str) -> int:
    import time

    for _ in range(100):  # the listing's counts follow the apply
        got = api.ok("GET", f"/api/queues/%2F/{queue}")
        if got.get("messages") is not None:
            return int(got["messages"])
        time.sleep(0.05)
    raise AssertionError("no depth")


def test_get_many_messages_in_order_with_every_ackmode(api: Api, broker: Any) -> None:
    """250 messages (more than one Raft entry of gets): all shown in order; requeued ones
    stay, acked ones go."""
    bodies = [b"m%03d" % i for i in range(250)]
    _fill(broker, "getmany", bodies)
    got = api.ok("POST", "/api/queues/%2F/getmany/get",
                 {"count": 250, "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert [m["payload"] for m in got] == [b.decode() for b in bodies]
    assert _depth(api, "getmany") == 250
    got = api.ok("POST", "/api/queues/%2F/getmany/get",
                 {"count": 300, "ackmode": "ack_requeue_false", "encoding": "auto"})
    assert [m["payload"] for m in got] == [b.decode() for b in bodies]
    assert all(m["redelivered"] for m in got)
    assert _depth(api, "getmany") == 0


@pytest.mark.raftmq_only
def test_get_holds_a_bounded_amount_and_leaves_the_rest(api: Api, broker: Any) -> None:
    """Five 20 MiB messages, count 5: /get stops once 64 MiB are read (four), acks only
    what it showed, and the fifth stays in the queue."""
    big = [bytes([65 + i]) * (20 << 20) for i in range(5)]
    _fill(broker, "getbig", big)
    got = api.ok("POST", "/api/queues/%2F/getbig/get",
                 {"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto",
                  "truncate": 10})
    assert [m["payload"] for m in got] == [chr(65 + i) * 10 for i in range(4)]
    assert all(m["payload_bytes"] == 20 << 20 for m in got)
    assert _depth(api, "getbig") == 1


def test_a_new_vhost_gives_its_creator_every_permission(api):
    """As RabbitMQ's API does (rabbit_mgmt_wm_vhost): the administrator who adds a vhost gets
    configure, write and read '.*' on it; updating an existing vhost grants nothing."""
    import uuid

    user, vhost = f"creator-{uuid.uuid4().hex[:8]}", f"made-{uuid.uuid4().hex[:8]}"
    assert api("PUT", f"/api/users/{user}", {"password": "pw-123456", "tags": "administrator"})[0] == 201
    try:
        assert api.as_(user, "pw-123456")("PUT", f"/api/vhosts/{vhost}", {})[0] == 201
        status, perms = api("GET", f"/api/vhosts/{vhost}/permissions")
        assert status == 200 and [(p["user"], p["configure"], p["write"], p["read"])
                                  for p in perms] == [(user, ".*", ".*", ".*")]
        assert api("PUT", f"/api/vhosts/{vhost}", {"description": "again"})[0] == 204
        assert len(api("GET", f"/api/vhosts/{vhost}/permissions")[1]) == 1  # guest got none
    finally:
        api("DELETE", f"/api/vhosts/{vhost}")
        api("DELETE", f"/api/users/{user}")
