"""The management API between tenants who do not trust each other (issue 19, items 2, 4,
5 and 8's ``sort=``): two vhosts, two users with the permissions of their own vhost only,
a monitoring user and an administrator, on one node.

* a user's regular expression (``(a+)+$`` froze every client 33 s) answers quickly and
  a publisher of the other tenant sees no confirm take 200 ms meanwhile;
* no connection, channel or consumer of the other tenant can be read, listed, closed
  or told apart from one that does not exist; listings and overview totals count only
  what the user may see (RabbitMQ's rules: rabbit_mgmt_util filter_vhost / filter_user);
* ``user_id`` cannot be spoofed through the API's publish, and every property is
  checked (400, never 500);
* ``sort`` on any field, of any type, answers 200.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from harness.raftmq import RaftMQNode
from tests.harness.api import Api, q
from tests.integration.helpers import close_quietly, connect

pytestmark = [pytest.mark.raftmq_only, pytest.mark.timeout(120)]

A, B = "tenant-a", "tenant-b"
EVIL = "(a+)+$"  # exponential under a backtracking engine on "aaa...ab"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftMQNode]:
    base = tmp_path_factory.mktemp("isolation")
    with RaftMQNode(base / "data", log_path=base / "node.log") as n:
        yield n


@pytest.fixture(scope="module")
def admin(node: RaftMQNode) -> Api:
    api = Api(node.management_port)
    for vhost, user in ((A, "alice"), (B, "bob")):
        api.ok("PUT", f"/api/vhosts/{q(vhost)}", {})
        api.ok("PUT", f"/api/users/{user}", {"password": user, "tags": "management"})
        api.ok("PUT", f"/api/permissions/{q(vhost)}/{user}",
               {"configure": ".*", "write": ".*", "read": ".*"})
    api.ok("PUT", "/api/users/watcher", {"password": "watcher", "tags": "monitoring"})
    api.ok("PUT", f"/api/permissions/{q(A)}/watcher", {"configure": "", "write": "",
                                                      "read": ".*"})
    return api


def as_(admin: Api, user: str) -> Api:
    return admin.as_(user, user)


def amqp(node: RaftMQNode, user: str, vhost: str, **props: Any) -> pika.BlockingConnection:
    url = f"amqp://{user}:{user}@127.0.0.1:{node.amqp_port}/{q(vhost)}"
    return connect(url, client_properties={"connection_name": f"{user}-conn", **props})


def tracebacks(node: RaftMQNode) -> int:
    return Path(node.log_path).read_text(errors="replace").count("Traceback")


def names(listing: Any) -> set[str]:
    return {i["name"] for i in listing}


# --- item 2: user regexes and listings ------------------------------------------------------


def test_pathological_regex_answers_quickly_and_stalls_no_one(node: RaftMQNode,
                                                              admin: Api) -> None:
    """300 queue names of 20 characters ("aaa...a" + 3 letters) and the issue's pattern:
    under Python's re each name cost seconds; on RE2 the listing answers at once, and
    alice's publish->confirm round trips on the other vhost stay under 200 ms."""
    bob = as_(admin, "bob")
    letters = "bcdefghijklmnopqrstuvwxyz"
    evil_names = [f"{'a' * 17}{letters[i // 25 % 25]}{letters[i % 25]}z" for i in range(300)]
    assert len(set(evil_names)) == 300 and all(len(n) == 20 for n in evil_names)
    for n in evil_names:
        bob.ok("PUT", f"/api/queues/{q(B)}/{n}", {"durable": False})

    conn = amqp(node, "alice", A)
    rtts: list[float] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            ch = conn.channel()
            ch.queue_declare("alice-q", durable=False)
            ch.confirm_delivery()
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                t0 = time.perf_counter()
                ch.basic_publish("", "alice-q", b"x")  # blocks until confirmed
                rtts.append(time.perf_counter() - t0)
        except BaseException as e:  # reported below
            errors.append(e)

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        time.sleep(0.3)
        path = f"/api/queues/{q(B)}?use_regex=true&name={urllib.parse.quote(EVIL, safe='')}"
        took = []
        for _ in range(3):
            t0 = time.perf_counter()
            status, found = bob("GET", path)
            took.append(time.perf_counter() - t0)
            assert status == 200, found
            assert found == []  # no name ends in a run of a's
        # a regex that does match, case-insensitively (RabbitMQ's re:run ... [caseless])
        status, found = bob("GET", f"/api/queues/{q(B)}?use_regex=true&name=A%7B17%7DBBZ%24")
        assert status == 200 and names(found) == {evil_names[0]}, found
        time.sleep(0.3)
    finally:
        stop.set()
        publisher.join(10)
        close_quietly(conn)
    assert not errors, errors
    assert len(rtts) > 10
    assert max(took) < 2.0, took
    print(f"regex listing {max(took) * 1000:.0f} ms at worst; {len(rtts)} confirms, worst "
          f"round trip {max(rtts) * 1000:.1f} ms")
    assert max(rtts) < 0.2, f"worst publish->confirm round trip {max(rtts) * 1000:.0f} ms"


def test_regex_refusals_are_400_with_a_reason(admin: Api) -> None:
    bob = as_(admin, "bob")
    base = f"/api/queues/{q(B)}?use_regex=true&name="
    for pattern, says in ((r"(a)\1", "RE2"), ("(?=a)b", "RE2"), ("(", "missing )"),
                          ("a" * 1001, "longer than 1000")):
        status, answer = bob("GET", base + urllib.parse.quote(pattern, safe=""))
        assert status == 400, (pattern, answer)
        assert says in answer["reason"], (pattern, answer)
    for raw in ("%ED%A0%80", "%FF", "%00"):  # not UTF-8, a lone surrogate, NUL
        for regex in ("true", "false"):
            status, answer = bob("GET", f"/api/queues/{q(B)}?use_regex={regex}&name={raw}")
            assert status in (200, 400), (raw, status, answer)
    # without use_regex the name is a case-insensitive substring, even "(" or "\1"
    assert bob("GET", f"/api/queues/{q(B)}?name=%28")[0] == 200
    assert bob("GET", f"/api/queues/{q(B)}?name=%5C1")[0] == 200


def test_a_user_without_permissions_sees_no_objects(admin: Api) -> None:
    """The issue's second case: a management user with no permissions at all ran the
    pattern over the built-in exchanges' names (2.9 s); it sees none of them now."""
    admin.ok("PUT", "/api/users/nobody", {"password": "nobody", "tags": "management"})
    nobody = as_(admin, "nobody")
    for path in ("/api/exchanges", "/api/queues", "/api/bindings", "/api/channels",
                 "/api/connections", "/api/consumers", "/api/vhosts"):
        assert nobody.ok("GET", f"{path}?use_regex=true&name={q(EVIL)}") == [], path
        assert nobody.ok("GET", path) == [], path
    totals = nobody.ok("GET", "/api/overview")["object_totals"]
    assert totals == {"exchanges": 0, "queues": 0, "connections": 0, "channels": 0,
                      "consumers": 0}
    assert nobody("GET", f"/api/exchanges/{q(A)}")[0] == 401


def test_listings_are_paged(admin: Api) -> None:
    bob = as_(admin, "bob")
    for i in range(7):
        bob.ok("PUT", f"/api/queues/{q(B)}/paged-{i}", {"durable": False})
    page = bob.ok("GET", f"/api/queues/{q(B)}?page=2&page_size=3&name=PAGED-&sort=name")
    assert page["filtered_count"] == 7 and page["page_count"] == 3
    assert page["total_count"] >= 7 and page["page"] == 2 and page["page_size"] == 3
    assert [i["name"] for i in page["items"]] == ["paged-3", "paged-4", "paged-5"]
    last = bob.ok("GET", f"/api/queues/{q(B)}?page=3&page_size=3&name=paged-&sort=name"
                  "&sort_reverse=true&columns=name,vhost")
    assert last["items"] == [{"name": "paged-0", "vhost": B}]
    for bad in ("page=0", "page=1&page_size=501", "page=1&page_size=0", "page=x",
                "page=9&page_size=3&name=paged-"):  # past the last page: RabbitMQ's 400
        status, answer = bob("GET", f"/api/queues/{q(B)}?{bad}")
        assert status == 400, (bad, answer)
    assert bob("GET", f"/api/queues/{q(B)}?page=1&page_size=500")[0] == 200


# --- item 4: per-vhost visibility -------------------------------------------------------------


@pytest.fixture(scope="module")
def tenants(node: RaftMQNode, admin: Api) -> Iterator[dict[str, Any]]:
    """alice and bob, each connected to its vhost with a consumer; alice's client
    properties carry a secret."""
    conns = {"alice": amqp(node, "alice", A, token="alice-secret-token"),
             "bob": amqp(node, "bob", B)}
    for user, conn in conns.items():
        ch = conn.channel()
        ch.queue_declare(f"{user}-work", durable=False)
        ch.basic_consume(f"{user}-work", lambda *_: None, consumer_tag=f"{user}-tag")
    deadline = time.monotonic() + 5
    listed: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        listed = admin.ok("GET", "/api/connections")
        if {c["user"] for c in listed} >= {"alice", "bob"}:
            break
        time.sleep(0.05)
    by_user = {c["user"]: c["name"] for c in listed}
    yield {"conns": conns, "names": by_user}
    for conn in conns.values():
        close_quietly(conn)


def test_other_tenants_connections_are_404_like_missing_ones(node: RaftMQNode, admin: Api,
                                                             tenants: dict[str, Any]) -> None:
    bob = as_(admin, "bob")
    alice_conn, bob_conn = tenants["names"]["alice"], tenants["names"]["bob"]
    node_id, _, alice_no = alice_conn.rpartition(":")
    missing = bob("GET", f"/api/connections/{q(node_id)}:999999")
    assert missing[0] == 404
    # enumerate the sequential names around theirs (API requests take numbers too):
    # only bob's own answers
    around = {*range(0, 5), *range(int(alice_no) - 40, int(alice_no) + 40),
              int(bob_conn.rpartition(":")[2])}
    for n in sorted(around):
        name = f"{node_id}:{n}"
        for path in (f"/api/connections/{q(name)}", f"/api/connections/{q(name)}/channels",
                     f"/api/channels/{q(name + ' (1)')}"):
            status, answer = bob("GET", path)
            if name == bob_conn:
                assert status == 200, (path, answer)
                continue
            assert (status, answer) == missing, (path, status, answer)
    status, answer = bob("DELETE", f"/api/connections/{q(alice_conn)}")
    assert (status, answer) == missing
    assert tenants["conns"]["alice"].is_open
    own = bob.ok("GET", f"/api/connections/{q(bob_conn)}")
    assert own["user"] == "bob" and own["vhost"] == B
    assert bob.ok("GET", f"/api/channels/{q(bob_conn + ' (1)')}")["user"] == "bob"
    # the administrator and the monitor see alice's, secret and all
    for who in (admin, as_(admin, "watcher")):
        info = who.ok("GET", f"/api/connections/{q(alice_conn)}")
        assert info["client_properties"]["token"] == "alice-secret-token"
    # a monitor may look but not close another user's (RabbitMQ's is_authorized_user)
    status, answer = as_(admin, "watcher")("DELETE", f"/api/connections/{q(alice_conn)}")
    assert status == 401 and answer["error"] == "not_authorised"
    assert tenants["conns"]["alice"].is_open


def test_listings_show_only_what_the_user_may_see(admin: Api,
                                                  tenants: dict[str, Any]) -> None:
    bob, watcher = as_(admin, "bob"), as_(admin, "watcher")
    # connections, channels, consumers: bob's own; the monitor's and admin's: everyone's
    for path in ("/api/connections", f"/api/vhosts/{q(B)}/connections", "/api/channels",
                 f"/api/vhosts/{q(B)}/channels"):
        assert {c["user"] for c in bob.ok("GET", path)} == {"bob"}, path
    for who in (admin, watcher):
        assert {c["user"] for c in who.ok("GET", "/api/connections")} >= {"alice", "bob"}
        assert {c["user"] for c in who.ok("GET", "/api/channels")} >= {"alice", "bob"}
        tags = {c["consumer_tag"] for c in who.ok("GET", "/api/consumers")}
        assert tags >= {"alice-tag", "bob-tag"}
    assert {c["consumer_tag"] for c in bob.ok("GET", "/api/consumers")} == {"bob-tag"}
    assert bob.ok("GET", f"/api/consumers/{q(B)}")[0]["consumer_tag"] == "bob-tag"
    assert bob("GET", f"/api/vhosts/{q(A)}/connections")[0] == 401
    # queues, exchanges, bindings: the vhosts with permissions (a monitor's too: RabbitMQ
    # shows those of other vhosts to administrators only)
    for path, kind in (("/api/queues", "queues"), ("/api/exchanges", "exchanges"),
                       ("/api/bindings", "bindings")):
        assert {i["vhost"] for i in bob.ok("GET", path)} == {B}, path
        assert {i["vhost"] for i in watcher.ok("GET", path)} == {A}, path
        assert {i["vhost"] for i in admin.ok("GET", path)} >= {A, B}, path
        status, answer = bob("GET", f"/api/{kind}/{q(A)}")
        assert status == 401, (kind, answer)
    assert bob("GET", f"/api/queues/{q(A)}/alice-work")[0] == 401
    assert bob("GET", f"/api/exchanges/{q(A)}/amq.direct")[0] == 401
    assert bob("GET", "/api/definitions")[0] == 401
    assert {v["name"] for v in bob.ok("GET", "/api/vhosts")} == {B}


def test_overview_counts_only_what_the_user_may_see(node: RaftMQNode, admin: Api,
                                                    tenants: dict[str, Any]) -> None:
    conn = amqp(node, "alice", A)
    try:
        ch = conn.channel()
        ch.queue_declare("alice-counted", durable=False)
        for _ in range(5):
            ch.basic_publish("", "alice-counted", b"m")
        ch.queue_declare("alice-counted", passive=True)  # a round trip: all applied
    finally:
        close_quietly(conn)
    bob = as_(admin, "bob")
    ours = bob.ok("GET", "/api/overview?msg_rates_age=60&msg_rates_incr=5")
    everyone = admin.ok("GET", "/api/overview")
    bob_queues = len(bob.ok("GET", "/api/queues"))
    assert ours["object_totals"]["queues"] == bob_queues < everyone["object_totals"]["queues"]
    assert ours["object_totals"]["connections"] == 1  # his own
    assert ours["object_totals"]["consumers"] == 1
    assert ours["object_totals"]["exchanges"] == len(bob.ok("GET", "/api/exchanges"))
    assert ours["queue_totals"]["messages"] == 0  # alice's 5 are not his to count
    assert everyone["queue_totals"]["messages"] >= 5
    assert ours["message_stats"]["publish"] == 0
    assert everyone["message_stats"]["publish"] >= 5
    assert "samples" in ours["message_stats"]["publish_details"]
    watcher = as_(admin, "watcher").ok("GET", "/api/overview")
    assert watcher["object_totals"]["connections"] >= 2  # a monitor's are the cluster's


# --- item 5: user_id and the other properties of the API's publish ----------------------------


def test_user_id_cannot_be_spoofed_through_the_api(node: RaftMQNode, admin: Api) -> None:
    bob = as_(admin, "bob")
    bob.ok("PUT", f"/api/queues/{q(B)}/spoof", {"durable": False})
    publish = f"/api/exchanges/{q(B)}/amq.default/publish"
    msg = {"routing_key": "spoof", "payload": "x", "payload_encoding": "string"}
    status, answer = bob("POST", publish, {**msg, "properties": {"user_id": "guest"}})
    assert status == 400, answer
    assert answer["reason"] == ("406 PRECONDITION_FAILED - user_id property set to 'guest' "
                                "but authenticated user was 'bob'")
    got = bob.ok("POST", f"/api/queues/{q(B)}/spoof/get",
                 {"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto"})
    assert got == []  # nothing stored
    assert bob.ok("POST", publish, {**msg, "properties": {"user_id": "bob"}}) == {
        "routed": True}
    got = bob.ok("POST", f"/api/queues/{q(B)}/spoof/get",
                 {"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto"})
    assert [m["properties"]["user_id"] for m in got] == ["bob"]


BAD_PROPERTIES = [
    {"delivery_mode": "2"}, {"delivery_mode": 256}, {"priority": -1}, {"priority": True},
    {"timestamp": 10 ** 30}, {"timestamp": -1}, {"timestamp": "now"},
    {"content_type": "x" * 256}, {"content_type": 5}, {"message_id": ["a"]},
    {"correlation_id": "\ud800"}, {"headers": "h"}, {"headers": {"k": 2 ** 64}},
    {"headers": {"k" * 300: 1}}, {"expiration": "soon"}, {"expiration": -5},
    {"nonsense": 1},
]


@pytest.mark.parametrize("props", BAD_PROPERTIES, ids=[str(p)[:40] for p in BAD_PROPERTIES])
def test_bad_properties_are_400(node: RaftMQNode, admin: Api, props: dict[str, Any]) -> None:
    before = tracebacks(node)
    status, answer = as_(admin, "bob")("POST", f"/api/exchanges/{q(B)}/amq.default/publish",
                                       {"routing_key": "spoof", "payload": "x",
                                        "payload_encoding": "string", "properties": props})
    assert status == 400, answer
    assert answer["error"] == "bad_request" and answer["reason"]
    assert tracebacks(node) == before


def test_bad_publish_fields_are_400(admin: Api) -> None:
    bob = as_(admin, "bob")
    publish = f"/api/exchanges/{q(B)}/amq.default/publish"
    for body in ({"routing_key": "r" * 256, "payload": "x"}, {"routing_key": 5, "payload": "x"},
                 {"payload": 5}, {"payload": "x", "payload_encoding": "rot13"},
                 {"payload": "!!", "payload_encoding": "base64"},
                 {"payload": "x", "properties": []}):
        status, answer = bob("POST", publish, body)
        assert status == 400, (body, answer)


# --- item 8: sort on any field -------------------------------------------------------------


def test_sort_on_any_field_answers_200(node: RaftMQNode, admin: Api,
                                       tenants: dict[str, Any]) -> None:
    """Fields holding objects, lists, strings, numbers and null side by side (a 500 with a
    traceback each before); ordering follows RabbitMQ (missing counts as 0)."""
    bob = as_(admin, "bob")
    bob.ok("PUT", f"/api/queues/{q(B)}/sort-args", {"durable": False,
                                                   "arguments": {"x-max-length": 5}})
    bob.ok("PUT", f"/api/queues/{q(B)}/sort-args-str", {"durable": False,
                                                       "arguments": {"x-queue-type": "classic"}})
    before = tracebacks(node)
    for path in ("/api/queues", "/api/exchanges", "/api/bindings", "/api/consumers",
                 "/api/channels", "/api/connections"):
        for key in ("arguments", "arguments.x-max-length", "message_stats",
                    "owner_pid_details", "owner_pid_details.name", "name", "nothing.at.all",
                    "channel_details", "queue", "client_properties", ".", ""):
            for reverse in ("true", "false"):
                status, answer = bob("GET", f"{path}?sort={q(key)}&sort_reverse={reverse}")
                assert status == 200, (path, key, answer)
    ordered = [i["name"] for i in bob.ok("GET", "/api/queues?sort=name&sort_reverse=true")]
    assert ordered == sorted(ordered, reverse=True)
    by_len = bob.ok("GET", f"/api/queues/{q(B)}?sort=arguments.x-max-length&name=sort-args")
    assert [i["name"] for i in by_len] == ["sort-args-str", "sort-args"]  # missing: 0 < 5
    assert tracebacks(node) == before


# --- a queue's page with very many consumers ------------------------------------------------


def test_queue_page_with_thousands_of_consumers_is_whole(node: RaftMQNode, admin: Api) -> None:
    """The page lists every consumer (RabbitMQ's consumer_details), built in slices and
    encoded off the loop when big: 3,000 consumers on three channels."""
    conn = amqp(node, "bob", B)
    try:
        chans = [conn.channel() for _ in range(3)]
        chans[0].queue_declare("crowded")
        for i, ch in enumerate(chans):
            for j in range(1000):
                ch.basic_consume("crowded", lambda *a: None, consumer_tag=f"c{i}-{j}")
        page = as_(admin, "bob").ok("GET", f"/api/queues/{q(B)}/crowded")
        assert page["consumers"] == 3000
        tags = {c["consumer_tag"] for c in page["consumer_details"]}
        assert len(tags) == 3000 and "c2-999" in tags
        assert page["name"] == "crowded"
    finally:
        close_quietly(conn)
