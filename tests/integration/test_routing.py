"""Exchange routing: default/direct, fanout, topic, headers, exchange-to-exchange, unbind.

Publishes go through a confirm-mode channel so that once basic_publish returns the broker has
routed (enqueued) the message and basic.get can check queue contents without polling.
"""

from __future__ import annotations

import pika
import pytest

from tests.integration.helpers import get_all, queue_depth

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def cch(conn):
    c = conn.channel()
    c.confirm_delivery()
    return c


def bodies(ch, queue) -> list[bytes]:
    return [d.body for d in get_all(ch, queue)]


def test_default_exchange_routes_by_queue_name(cch, names):
    q1, q2 = names.queue("a"), names.queue("b")
    cch.queue_declare(q1)
    cch.queue_declare(q2)
    cch.basic_publish("", q1, b"one")
    cch.basic_publish("", q2, b"two")
    cch.basic_publish("", q1, b"three")
    assert bodies(cch, q1) == [b"one", b"three"]
    assert bodies(cch, q2) == [b"two"]


def test_default_exchange_cannot_be_bound_or_used_with_other_keys(cch, names):
    q = names.queue()
    cch.queue_declare(q)
    # a routing key that is not a queue name goes nowhere (and mandatory would return it)
    cch.basic_publish("", q + "-nope", b"lost")
    assert queue_depth(cch, q) == 0


def test_amq_direct_routes_by_binding_key(cch, names):
    qa, qb = names.queue("a"), names.queue("b")
    for q in (qa, qb):
        cch.queue_declare(q)
    cch.queue_bind(qa, "amq.direct", routing_key=qa + ".red")
    cch.queue_bind(qa, "amq.direct", routing_key=qa + ".green")  # two keys to one queue
    cch.queue_bind(qb, "amq.direct", routing_key=qa + ".green")  # one key to two queues
    cch.basic_publish("amq.direct", qa + ".red", b"red")
    cch.basic_publish("amq.direct", qa + ".green", b"green")
    cch.basic_publish("amq.direct", qa + ".blue", b"blue")
    assert bodies(cch, qa) == [b"red", b"green"]
    assert bodies(cch, qb) == [b"green"]


def test_direct_exchange_duplicate_binding_delivers_once(cch, names):
    x, q = names.exchange(), names.queue()
    cch.exchange_declare(x, "direct")
    cch.queue_declare(q)
    cch.queue_bind(q, x, routing_key="k")
    cch.queue_bind(q, x, routing_key="k")  # idempotent
    cch.basic_publish(x, "k", b"m")
    assert bodies(cch, q) == [b"m"]


def test_fanout_delivers_to_every_bound_queue(cch, names):
    x = names.exchange()
    cch.exchange_declare(x, "fanout")
    qs = [names.queue(str(i)) for i in range(3)]
    for i, q in enumerate(qs):
        cch.queue_declare(q)
        cch.queue_bind(q, x, routing_key=f"ignored-{i}")
    unbound = names.queue("unbound")
    cch.queue_declare(unbound)
    cch.basic_publish(x, "whatever", b"f1")
    cch.basic_publish(x, "", b"f2")
    for q in qs:
        assert bodies(cch, q) == [b"f1", b"f2"]
    assert queue_depth(cch, unbound) == 0


TOPIC_KEYS = ["a", "a.b", "a.b.c", "a.x.b", "a.x.y.b", "b", "x.b", "a.b.b"]
TOPIC_CASES = {
    "#": set(TOPIC_KEYS),
    "a.#": {"a", "a.b", "a.b.c", "a.x.b", "a.x.y.b", "a.b.b"},
    "a.*": {"a.b"},
    "*.b": {"a.b", "x.b"},
    "*": {"a", "b"},
    "a.#.b": {"a.b", "a.x.b", "a.x.y.b", "a.b.b"},
    "a.*.b": {"a.x.b", "a.b.b"},
    "#.c": {"a.b.c"},
    "a.b.c": {"a.b.c"},
    "#.b.#": {"a.b", "a.b.c", "a.x.b", "a.x.y.b", "b", "x.b", "a.b.b"},
    "*.*.*": {"a.b.c", "a.x.b", "a.b.b"},
}


def test_topic_wildcards(cch, names):
    x = names.exchange()
    cch.exchange_declare(x, "topic")
    queues = {}
    for pattern in TOPIC_CASES:
        q = names.queue("t")
        cch.queue_declare(q)
        cch.queue_bind(q, x, routing_key=pattern)
        queues[pattern] = q
    for key in TOPIC_KEYS:
        cch.basic_publish(x, key, key.encode())
    for pattern, expected in TOPIC_CASES.items():
        got = bodies(cch, queues[pattern])
        assert len(got) == len(set(got)), f"{pattern!r}: duplicate deliveries {got}"
        assert {b.decode() for b in got} == expected, f"pattern {pattern!r}"


def test_topic_message_matching_several_bindings_of_one_queue_arrives_once(cch, names):
    x, q = names.exchange(), names.queue()
    cch.exchange_declare(x, "topic")
    cch.queue_declare(q)
    for pattern in ("a.*", "#", "a.b"):
        cch.queue_bind(q, x, routing_key=pattern)
    cch.basic_publish(x, "a.b", b"once")
    assert bodies(cch, q) == [b"once"]


def test_headers_exchange_all_and_any(cch, names):
    x = names.exchange()
    cch.exchange_declare(x, "headers")
    q_all, q_any = names.queue("all"), names.queue("any")
    cch.queue_declare(q_all)
    cch.queue_declare(q_any)
    cch.queue_bind(q_all, x, arguments={"x-match": "all", "format": "pdf", "type": "report"})
    cch.queue_bind(q_any, x, arguments={"x-match": "any", "format": "pdf", "type": "log"})

    def pub(body, headers):
        cch.basic_publish(x, "rk-ignored", body, pika.BasicProperties(headers=headers))

    pub(b"both", {"format": "pdf", "type": "report"})             # all: yes, any: yes (format)
    pub(b"both+extra", {"format": "pdf", "type": "report", "z": 1})  # all: yes, any: yes
    pub(b"format-only", {"format": "pdf"})                          # all: no,  any: yes
    pub(b"log", {"format": "zip", "type": "log"})                   # all: no,  any: yes
    pub(b"wrong-value", {"format": "zip", "type": "report"})        # all: no,  any: no
    pub(b"no-headers", None)                                        # all: no,  any: no
    assert bodies(cch, q_all) == [b"both", b"both+extra"]
    assert bodies(cch, q_any) == [b"both", b"both+extra", b"format-only", b"log"]


def test_headers_exchange_defaults_to_all(cch, names):
    x, q = names.exchange(), names.queue()
    cch.exchange_declare(x, "headers")
    cch.queue_declare(q)
    cch.queue_bind(q, x, arguments={"a": "1", "b": "2"})
    cch.basic_publish(x, "", b"partial", pika.BasicProperties(headers={"a": "1"}))
    cch.basic_publish(x, "", b"full", pika.BasicProperties(headers={"a": "1", "b": "2"}))
    assert bodies(cch, q) == [b"full"]


def test_exchange_to_exchange_binding(cch, names):
    src, dst = names.exchange("src"), names.exchange("dst")
    cch.exchange_declare(src, "topic")
    cch.exchange_declare(dst, "fanout")
    q_dst, q_src = names.queue("dst"), names.queue("src")
    cch.queue_declare(q_dst)
    cch.queue_declare(q_src)
    cch.exchange_bind(destination=dst, source=src, routing_key="orders.#")
    cch.queue_bind(q_dst, dst)
    cch.queue_bind(q_src, src, routing_key="#")
    cch.basic_publish(src, "orders.new", b"order")
    cch.basic_publish(src, "audit.new", b"audit")
    assert bodies(cch, q_dst) == [b"order"]
    assert bodies(cch, q_src) == [b"order", b"audit"]

    cch.exchange_unbind(destination=dst, source=src, routing_key="orders.#")
    cch.basic_publish(src, "orders.new", b"after-unbind")
    assert queue_depth(cch, q_dst) == 0
    assert bodies(cch, q_src) == [b"after-unbind"]


def test_exchange_to_exchange_chain_and_cycle_deliver_once(cch, names):
    a, b = names.exchange("a"), names.exchange("b")
    cch.exchange_declare(a, "fanout")
    cch.exchange_declare(b, "fanout")
    q = names.queue()
    cch.queue_declare(q)
    cch.exchange_bind(destination=b, source=a)
    cch.exchange_bind(destination=a, source=b)  # a cycle must not loop or duplicate
    cch.queue_bind(q, a)
    cch.queue_bind(q, b)
    cch.basic_publish(a, "", b"m")
    assert bodies(cch, q) == [b"m"]


def test_queue_unbind_stops_routing(cch, names):
    x, q = names.exchange(), names.queue()
    cch.exchange_declare(x, "direct")
    cch.queue_declare(q)
    cch.queue_bind(q, x, routing_key="k1")
    cch.queue_bind(q, x, routing_key="k2")
    cch.basic_publish(x, "k1", b"before")
    cch.queue_unbind(q, x, routing_key="k1")
    cch.basic_publish(x, "k1", b"after-k1")
    cch.basic_publish(x, "k2", b"after-k2")  # the other binding still routes
    assert bodies(cch, q) == [b"before", b"after-k2"]


def test_headers_unbind_with_arguments(cch, names):
    x, q = names.exchange(), names.queue()
    cch.exchange_declare(x, "headers")
    cch.queue_declare(q)
    args = {"x-match": "any", "k": "v"}
    cch.queue_bind(q, x, arguments=args)
    cch.basic_publish(x, "", b"1", pika.BasicProperties(headers={"k": "v"}))
    cch.queue_unbind(q, x, arguments=args)
    cch.basic_publish(x, "", b"2", pika.BasicProperties(headers={"k": "v"}))
    assert bodies(cch, q) == [b"1"]


def test_exchange_delete_removes_its_bindings(cch, names):
    x, q = names.exchange(), names.queue()
    cch.exchange_declare(x, "fanout")
    cch.queue_declare(q)
    cch.queue_bind(q, x)
    cch.exchange_delete(x)
    cch.exchange_declare(x, "fanout")  # same name again: no bindings carried over
    cch.basic_publish(x, "", b"m")
    assert queue_depth(cch, q) == 0
