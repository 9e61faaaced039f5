"""Dead-lettering: reasons, x-death, routing keys, cycles, missing exchanges."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from cluster import commands as C
from cluster.effects import Confirm, Deliver, GetOk, Return
from cluster.machine.deadletter import is_cycle, record_death
from protocol.properties import decode_properties
from tests.cluster.helpers import (
    CH,
    Machine,
    ack,
    bind,
    consume,
    enq,
    nack,
    of_type,
    props,
    pub,
    q_declare,
    reject,
    stored,
    x_declare,
)


@pytest.fixture
def m(dlx: Machine) -> Machine:
    """q dead-letters to the fanout exchange dlx, which feeds dlq."""
    dlx.run(q_declare(CH, "q", arguments={"x-dead-letter-exchange": "dlx"}))
    return dlx


def dead(m: Machine, q: str = "dlq") -> list[tuple[bytes, str, str, dict[str, Any]]]:
    """(body, exchange, routing key, decoded properties) of q's ready messages."""
    out = []
    for x in m.state.vhosts["/"].queues[q].ready:
        exchange, routing_key, properties, body = stored(m.state, x)
        out.append((body, exchange, routing_key, decode_properties(properties)))
    return out


def ts(seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


def test_reject_dead_letters_with_x_death(m: Machine) -> None:
    p = props(expiration="60000", content_type="text/plain", headers={"app": "x"})
    m.at(5_000, pub(CH, "", "q", b"a", props=p))
    m.run(C.Get(CH, "q", False))
    assert m.at(7_999, reject(CH, 1)) == []
    (body, exchange, rk, pr), = dead(m)
    assert (body, exchange, rk) == (b"a", "dlx", "q")
    assert pr == {
        "content_type": "text/plain",  # everything else is kept, expiration is removed
        "headers": {
            "app": "x",
            "x-death": [{"count": 1, "reason": "rejected", "queue": "q", "time": ts(7),
                         "exchange": "", "routing-keys": ["q"],
                         "original-expiration": "60000"}],
            "x-first-death-exchange": "",
            "x-first-death-queue": "q",
            "x-first-death-reason": "rejected",
        },
    }


def test_nack_multiple_without_requeue_dead_letters_in_order(m: Machine) -> None:
    m.run(*[enq(CH, "q", b"%d" % i) for i in range(3)], consume(CH, "q", "c"))
    m.run(nack(CH, 3, multiple=True, requeue=False))
    assert [d[0] for d in dead(m)] == [b"0", b"1", b"2"]


def test_ack_and_requeue_do_not_dead_letter(m: Machine) -> None:
    m.run(enq(CH, "q", b"a"), enq(CH, "q", b"b"), C.Get(CH, "q", False), C.Get(CH, "q", False))
    m.run(ack(CH, 1), nack(CH, 2, requeue=True))
    assert dead(m) == []


def test_dead_letter_routing_key_replaces_keys_and_drops_cc(m: Machine) -> None:
    m.run(x_declare(CH, "dx"), q_declare(CH, "byrk"), bind(CH, "byrk", "dx", "dead"),
          q_declare(CH, "q2", arguments={"x-dead-letter-exchange": "dx",
                                         "x-dead-letter-routing-key": "dead"}))
    m.run(enq(CH, "q2", b"a", props=props(headers={"CC": ["other"], "k": 1})),
          C.Get(CH, "q2", False), reject(CH, 1))
    (body, exchange, rk, pr), = dead(m, "byrk")
    assert (exchange, rk) == ("dx", "dead")
    assert "CC" not in pr["headers"] and pr["headers"]["k"] == 1
    assert pr["headers"]["x-death"][0]["routing-keys"] == ["q2"]


def test_default_exchange_as_dlx(m: Machine) -> None:
    m.run(q_declare(CH, "target"),
          q_declare(CH, "q2", arguments={"x-dead-letter-exchange": "",
                                         "x-dead-letter-routing-key": "target"}))
    m.run(enq(CH, "q2", b"a"), C.Get(CH, "q2", False), reject(CH, 1))
    assert [(d[0], d[1], d[2]) for d in dead(m, "target")] == [(b"a", "", "target")]


def test_missing_dlx_drops(m: Machine) -> None:
    m.run(q_declare(CH, "q2", arguments={"x-dead-letter-exchange": "nosuch"}))
    m.run(enq(CH, "q2", b"a"), C.Get(CH, "q2", False))
    assert m.run(reject(CH, 1)) == []
    assert m.state.vhosts["/"].queues["q2"].ready_count() == 0


def test_dead_lettered_messages_are_never_confirmed_or_returned(m: Machine) -> None:
    m.run(C.QueueUnbind(CH, "dlq", "dlx", "", {}))  # the DLX routes nowhere now
    m.run(q_declare(CH, "t", arguments={"x-message-ttl": 0, "x-dead-letter-exchange": "dlx"}))
    eff = m.run(pub(CH, "", "t", mandatory=True, confirm=7))
    assert eff == [Confirm(CH, 7, True)]
    assert not of_type(eff, Return)


def test_dead_lettered_message_delivered_to_dlq_consumer(m: Machine) -> None:
    m.run(consume(CH, "dlq", "d", no_ack=True))
    m.run(enq(CH, "q", b"a"), C.Get(CH, "q", False))
    (d,) = of_type(m.run(reject(CH, 1)), Deliver)
    exchange, routing_key, _props, got = stored(m.state, d)
    assert (d.consumer_tag, got, exchange, routing_key, d.redelivered) == (
        "d", b"a", "dlx", "q", False)


def test_delete_and_purge_do_not_dead_letter(m: Machine) -> None:
    m.run(enq(CH, "q", b"a"), C.QueuePurge(CH, "q", True), enq(CH, "q", b"b"),
          C.QueueDelete(CH, "q", False, False, True))
    assert dead(m) == []


def test_expired_and_maxlen_reasons(m: Machine) -> None:
    m.run(q_declare(CH, "t", arguments={"x-message-ttl": 10, "x-max-length": 1,
                                        "x-dead-letter-exchange": "dlx"}))
    m.at(0, enq(CH, "t", b"first"), enq(CH, "t", b"second"))
    m.at(10)
    got = [(d[0], d[3]["headers"]["x-death"][0]["reason"]) for d in dead(m)]
    assert got == [(b"first", "maxlen"), (b"second", "expired")]


def test_repeated_deaths_count_and_move_to_front(m: Machine) -> None:
    """a -> (reject) -> b -> (reject) -> a -> (expire) -> b: counts per (queue, reason)."""
    m.run(x_declare(CH, "to_b", "fanout"), x_declare(CH, "to_a", "fanout"),
          q_declare(CH, "a", arguments={"x-dead-letter-exchange": "to_b"}),
          q_declare(CH, "b", arguments={"x-dead-letter-exchange": "to_a"}),
          bind(CH, "a", "to_a"), bind(CH, "b", "to_b"))
    m.at(1000, enq(CH, "a", b"m"), C.Get(CH, "a", False), reject(CH, 1))  # a rejected
    m.at(2000, C.Get(CH, "b", False), reject(CH, 2))  # b rejected -> a
    m.at(3000, C.Get(CH, "a", False), reject(CH, 3))  # a rejected again -> b
    (_, exchange, rk, pr), = dead(m, "b")
    deaths = pr["headers"]["x-death"]
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [
        ("a", "rejected", 2), ("b", "rejected", 1)]
    # the repeated entry keeps its own fields, count incremented (rabbit_dead_letter)
    assert deaths[0]["time"] == ts(1) and deaths[0]["exchange"] == ""
    assert deaths[1]["exchange"] == "to_b" and deaths[1]["routing-keys"] == ["a"]
    assert pr["headers"]["x-first-death-queue"] == "a"
    assert pr["headers"]["x-first-death-exchange"] == ""
    assert (exchange, rk) == ("to_b", "a")


def test_cycle_without_rejection_is_dropped(m: Machine) -> None:
    # dead-letters to the default exchange with its own name as routing key: itself
    m.run(q_declare(CH, "loop", arguments={"x-message-ttl": 5, "x-dead-letter-exchange": ""}))
    m.at(0, enq(CH, "loop", b"a"))
    m.at(5)
    assert m.state.vhosts["/"].queues["loop"].ready_count() == 0
    assert m.state.timed == {}


def test_rejection_breaks_a_cycle(m: Machine) -> None:
    m.run(q_declare(CH, "loop", arguments={"x-dead-letter-exchange": ""}))
    m.run(enq(CH, "loop", b"a"), C.Get(CH, "loop", False), reject(CH, 1))
    (g,) = m.run(C.Get(CH, "loop", False))
    assert isinstance(g, GetOk) and m.body(g) == b"a" and g.redelivered is False
    m.run(reject(CH, 2))
    (g,) = m.run(C.Get(CH, "loop", True))
    assert isinstance(g, GetOk)
    h = decode_properties(stored(m.state, g)[2])["headers"]
    assert [(d["queue"], d["reason"], d["count"]) for d in h["x-death"]] == [
        ("loop", "rejected", 2)]


def test_two_queue_expiry_cycle_is_dropped(m: Machine) -> None:
    m.run(x_declare(CH, "to_b", "fanout"), x_declare(CH, "to_a", "fanout"),
          q_declare(CH, "a", arguments={"x-message-ttl": 5, "x-dead-letter-exchange": "to_b"}),
          q_declare(CH, "b", arguments={"x-message-ttl": 5, "x-dead-letter-exchange": "to_a"}),
          bind(CH, "a", "to_a"), bind(CH, "b", "to_b"))
    m.at(0, enq(CH, "a", b"m"))
    m.at(5)
    assert m.state.vhosts["/"].queues["b"].ready_count() == 1
    m.at(10)  # b -> a would revisit a with no rejection in between
    assert m.state.vhosts["/"].queues["a"].ready_count() == 0
    assert m.state.vhosts["/"].queues["b"].ready_count() == 0


def test_cycle_detection_reads_existing_x_death() -> None:
    p, deaths = record_death(b"\x00\x00", "expired", "a", "", "k", 0, False)
    assert deaths == [(b"a", b"expired")]
    p, deaths = record_death(p, "rejected", "b", "x", "k", 0, False)
    assert deaths == [(b"b", b"rejected"), (b"a", b"expired")]
    assert not is_cycle(b"a", deaths)  # the rejection in b breaks it
    p, deaths = record_death(p, "expired", "c", "x", "k", 0, False)
    assert is_cycle(b"c", deaths) and not is_cycle(b"a", deaths) and not is_cycle(b"z", deaths)


def test_malformed_headers_keep_properties() -> None:
    bad = b"\x20\x00\x00\x00\x00\x09\x01kX"  # a table with an unknown field type
    p, deaths = record_death(bad, "rejected", "q", "", "k", 0, False)
    assert p == bad and deaths == [(b"q", b"rejected")]
