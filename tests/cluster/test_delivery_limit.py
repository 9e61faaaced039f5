"""x-delivery-limit: every return counts; past the limit a message is dead-lettered
(reason delivery_limit) or dropped; redeliveries carry x-delivery-count (RabbitMQ 3.10's
quorum queues, compared in tests/integration/test_delivery_limit.py)."""

from __future__ import annotations

from typing import Any

import pytest

from cluster import commands as C
from cluster.effects import Deliver, GetEmpty, GetOk
from protocol.properties import decode_properties
from tests.cluster import helpers
from tests.cluster.helpers import (
    CH,
    CH2,
    Machine,
    ack,
    consume,
    enq,
    nack,
    of_type,
    props,
    q_declare,
    reject,
    stored,
)


def headers(m: Machine, ef: Any) -> dict[str, Any] | None:
    return decode_properties(stored(m.state, ef)[2]).get("headers")


def get(m: Machine, q: str = "q") -> GetOk | GetEmpty:
    (e,) = [e for e in m.run(C.Get(CH, q, False)) if isinstance(e, GetOk | GetEmpty)]
    return e


@pytest.fixture
def lim(dlx: Machine) -> Machine:
    """q: delivery limit 1, dead-lettering to dlx (which feeds dlq)."""
    dlx.run(q_declare(CH, "q", arguments={"x-delivery-limit": 1,
                                          "x-dead-letter-exchange": "dlx"}))
    return dlx


def test_nack_requeue_past_the_limit_dead_letters(lim: Machine) -> None:
    p = props(headers={"app": "x"}, expiration="60000")
    lim.at(1_000, enq(CH, "q", b"a", props=p))
    first = get(lim)
    assert isinstance(first, GetOk) and not first.redelivered
    assert headers(lim, first) == {"app": "x"}  # the first delivery is the message as sent
    lim.run(nack(CH, first.delivery_tag))
    second = get(lim)
    assert isinstance(second, GetOk) and second.redelivered
    assert headers(lim, second) == {"app": "x", "x-delivery-count": 1}
    lim.at(2_000, nack(CH, second.delivery_tag))  # a second return: 2 > 1
    assert isinstance(get(lim), GetEmpty)
    dead = get(lim, "dlq")
    assert isinstance(dead, GetOk) and lim.body(dead) == b"a"
    h = headers(lim, dead)
    assert h is not None and "x-delivery-count" not in h  # as a quorum queue's
    (death,) = h["x-death"]
    assert (death["reason"], death["queue"], death["count"]) == ("delivery_limit", "q", 1)
    assert death["original-expiration"] == "60000"
    assert h["x-first-death-reason"] == "delivery_limit"


def test_without_a_dead_letter_exchange_it_is_dropped(m: Machine) -> None:
    m.run(q_declare(CH, "q", arguments={"x-delivery-limit": 0}), enq(CH, "q", b"a"))
    e = get(m)
    assert isinstance(e, GetOk)
    m.run(reject(CH, e.delivery_tag, requeue=True))
    assert isinstance(get(m), GetEmpty)
    held, live = helpers.held_references(m.state)
    assert held == live and not live  # its bytes went with it


def test_every_kind_of_return_counts(m2: Machine) -> None:
    m = m2
    m.run(q_declare(CH, "q", arguments={"x-delivery-limit": 3}), enq(CH, "q", b"a"))
    counts = []
    # 1: nack with requeue; 2: basic.recover; 3: the channel closed; 4: the node lost
    for way in ("nack", "recover", "close", "node"):
        ch = CH2 if way == "close" else CH
        if way == "node":
            m.run(C.ConnectionOpen(("n2", 1), "/", "guest"), C.ChannelOpen(("n2", 1, 1)))
            ch = ("n2", 1, 1)
        eff = m.run(C.Get(ch, "q", False))
        (e,) = of_type(eff, GetOk)
        counts.append((headers(m, e) or {}).get("x-delivery-count"))
        if way == "nack":
            m.run(nack(ch, e.delivery_tag))
        elif way == "recover":
            m.run(C.Recover(ch))
        elif way == "close":
            m.run(C.ChannelClose(ch))
        else:
            m.run(C.NodeDown("n2", 1))
    assert counts == [None, 1, 2, 3]
    assert isinstance(get(m), GetEmpty)  # the fourth return: 4 > 3, dropped


def test_consumers_see_the_count_and_returns_come_back_in_return_order(m: Machine) -> None:
    m.run(q_declare(CH, "q", arguments={"x-delivery-limit": 5}),
          enq(CH, "q", b"a"), enq(CH, "q", b"b"), enq(CH, "q", b"c"))
    a, b = (get(m), get(m))
    assert isinstance(a, GetOk) and isinstance(b, GetOk)
    m.run(nack(CH, b.delivery_tag), nack(CH, a.delivery_tag))
    eff = m.run(consume(CH, "q", "t"))
    got = [(m.body(d), d.redelivered, (headers(m, d) or {}).get("x-delivery-count"))
           for d in of_type(eff, Deliver)]
    # as rabbit_fifo's returns queue: returned ones first, in the order they came back
    assert got == [(b"b", True, 1), (b"a", True, 1), (b"c", False, None)]
    for d in of_type(eff, Deliver):
        m.run(ack(CH, d.delivery_tag))
    held, live = helpers.held_references(m.state)
    assert held == live and not live
    assert m.state.headers == {}


def test_a_count_sent_by_the_client_is_replaced_and_the_limit_applies(lim: Machine) -> None:
    lim.run(enq(CH, "q", b"a", props=props(headers={"x-delivery-count": 7})))
    e = get(lim)
    assert isinstance(e, GetOk) and headers(lim, e) == {"x-delivery-count": 7}
    lim.run(nack(CH, e.delivery_tag))
    e = get(lim)
    assert isinstance(e, GetOk) and headers(lim, e) == {"x-delivery-count": 1}


@pytest.mark.parametrize(("value", "deliveries"), [(-1, 1), (0, 1), (2, 3), ("abc", 6),
                                                   (True, 6), (1.5, 6)])
def test_values_as_a_quorum_queue_takes_them(m: Machine, value: Any, deliveries: int) -> None:
    """RabbitMQ 3.10's quorum queues accept any x-delivery-limit; a non-integer never
    stops a message (compared in the integration test)."""
    eff = m.run(q_declare(CH, "q", arguments={"x-delivery-limit": value}), enq(CH, "q"))
    assert not [e for e in eff if type(e).__name__ == "ChannelError"]
    n = 0
    for _ in range(6):
        e = get(m)
        if not isinstance(e, GetOk):
            break
        n += 1
        m.run(nack(CH, e.delivery_tag))
    assert n == deliveries
    if deliveries == 6:  # no limit, yet counted and shown as a quorum queue does
        e = get(m)
        assert isinstance(e, GetOk) and headers(m, e) == {"x-delivery-count": 6}


def test_priority_queue_with_limit(dlx: Machine) -> None:
    m = dlx
    m.run(q_declare(CH, "q", arguments={"x-delivery-limit": 1, "x-max-priority": 5,
                                        "x-dead-letter-exchange": "dlx"}),
          enq(CH, "q", b"lo", props=props(priority=1)),
          enq(CH, "q", b"hi", props=props(priority=4)))
    e = get(m)
    assert isinstance(e, GetOk) and m.body(e) == b"hi"
    m.run(nack(CH, e.delivery_tag))
    e = get(m)
    assert isinstance(e, GetOk) and m.body(e) == b"hi"
    assert headers(m, e) == {"x-delivery-count": 1}
    m.run(nack(CH, e.delivery_tag))
    e = get(m)
    assert isinstance(e, GetOk) and m.body(e) == b"lo"
    assert m.body(get(m, "dlq")) == b"hi"


def test_replicas_and_snapshots_agree(lim: Machine) -> None:
    lim.run(enq(CH, "q", b"a"), enq(CH, "q", b"b"))
    e = get(lim)
    assert isinstance(e, GetOk)
    lim.run(nack(CH, e.delivery_tag))
    copy = helpers.clone(lim.state)
    assert copy == lim.state
    assert lim.state.headers == helpers.expected_headers(lim.state)
    other = Machine(copy)
    for mm in (lim, other):
        e = get(mm)
        assert isinstance(e, GetOk) and headers(mm, e) == {"x-delivery-count": 1}
        mm.run(nack(CH, e.delivery_tag))
    assert copy == lim.state
    assert lim.body(get(lim, "dlq")) == b"a"


def test_below_level_4_returns_are_not_limited(lim: Machine) -> None:
    lim.state.level = 3  # a member of the previous release applies the old behaviour
    lim.run(enq(CH, "q", b"a"))
    for _ in range(4):
        e = get(lim)
        assert isinstance(e, GetOk) and headers(lim, e) is None
        lim.run(nack(CH, e.delivery_tag))
    assert isinstance(get(lim, "dlq"), GetEmpty)


def setp(definition: dict[str, Any]) -> C.SetPolicy:
    return C.SetPolicy("/", "p", "^q$", "queues", 0, definition, False)


def test_policy_delivery_limit_and_the_lower_wins(dlx: Machine) -> None:
    m = dlx
    m.run(q_declare(CH, "q", arguments={"x-delivery-limit": 5, "x-dead-letter-exchange": "dlx"}),
          setp({"delivery-limit": 0}))
    assert m.state.vhosts["/"].queues["q"].delivery_limit == 0
    m.run(enq(CH, "q", b"a"))
    e = get(m)
    assert isinstance(e, GetOk)
    m.run(nack(CH, e.delivery_tag))
    assert isinstance(get(m), GetEmpty)
    dead = get(m, "dlq")
    assert isinstance(dead, GetOk)
    (death,) = (headers(m, dead) or {})["x-death"]
    assert death["reason"] == "delivery_limit"
    m.run(C.ClearPolicy("/", "p", False))
    assert m.state.vhosts["/"].queues["q"].delivery_limit == 5


def test_a_limit_by_policy_counts_messages_already_queued(m: Machine) -> None:
    """A message queued before a policy gave its queue a limit: the machine kept no copy
    of its properties, so it is counted and limited but shown no x-delivery-count."""
    m.run(q_declare(CH, "q"), enq(CH, "q", b"a"), setp({"delivery-limit": 1}))
    counts = []
    for _ in range(3):
        e = get(m)
        if not isinstance(e, GetOk):
            break
        counts.append((headers(m, e) or {}).get("x-delivery-count"))
        m.run(nack(CH, e.delivery_tag))
    assert counts == [None, None]
    held, live = helpers.held_references(m.state)
    assert held == live and not live
