"""Priority queues (x-max-priority), consumer priorities (x-priority) and single
active consumer (x-single-active-consumer)."""

from __future__ import annotations

import pytest

from cluster import commands as C
from cluster.effects import ChannelError, Deliver
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
    qos,
)
from tests.cluster.helpers import (
    body as body_of,
)


@pytest.fixture
def m(m2: Machine) -> Machine:
    return m2


def drain(m: Machine, q: str = "q") -> list[bytes]:
    out: list[bytes] = []
    while True:
        (g,) = m.run(C.Get(CH, q, True))
        if not hasattr(g, "msg_id"):  # GetEmpty
            return out
        out.append(m.body(g))


def pri(p: int | None) -> bytes:
    return props(priority=p) if p is not None else props()


def tags(effects: list) -> list[tuple[str, bytes]]:
    return [(d.consumer_tag, body_of(effects, d)) for d in of_type(effects, Deliver)]


# --- priority queues -------------------------------------------------------------------


def test_highest_priority_first_fifo_within(m: Machine) -> None:
    m.run(q_declare(CH, "q", arguments={"x-max-priority": 5}))
    for body, p in [(b"a0", None), (b"b3", 3), (b"c9", 9), (b"d3", 3), (b"e0", 0), (b"f5", 5)]:
        m.run(enq(CH, "q", body, props=pri(p)))
    # above the maximum counts as the maximum: c9 and f5 share priority 5, FIFO
    assert drain(m) == [b"c9", b"f5", b"b3", b"d3", b"a0", b"e0"]


def test_requeued_go_ahead_of_their_priority(m: Machine) -> None:
    m.run(q_declare(CH, "q", arguments={"x-max-priority": 10}))
    m.run(enq(CH, "q", b"hi1", props=pri(7)), enq(CH, "q", b"hi2", props=pri(7)),
          enq(CH, "q", b"lo", props=pri(1)))
    m.run(C.Get(CH, "q", False))  # hi1
    m.run(enq(CH, "q", b"hi3", props=pri(7)), nack(CH, 1, requeue=True))
    assert drain(m) == [b"hi1", b"hi2", b"hi3", b"lo"]


def test_consumers_get_priority_order(m: Machine) -> None:
    m.run(q_declare(CH, "q", arguments={"x-max-priority": 2}))
    m.run(enq(CH, "q", b"lo"), enq(CH, "q", b"hi", props=pri(2)), qos(CH, 1))
    eff = m.run(consume(CH, "q", "c"))
    assert tags(eff) == [("c", b"hi")]
    assert tags(m.run(ack(CH, 1))) == [("c", b"lo")]


def test_zero_max_priority_is_a_plain_queue(m: Machine) -> None:
    m.run(q_declare(CH, "q", arguments={"x-max-priority": 0}))
    q = m.state.vhosts["/"].queues["q"]
    assert not q.slow
    m.run(enq(CH, "q", b"a"), enq(CH, "q", b"b", props=pri(5)))
    assert drain(m) == [b"a", b"b"]


def test_priority_with_ttl_expires_from_head(m: Machine) -> None:
    m.run(q_declare(CH, "q", arguments={"x-max-priority": 5, "x-message-ttl": 100}))
    m.at(0, enq(CH, "q", b"lo", props=pri(0)))
    m.at(50, enq(CH, "q", b"hi", props=pri(5)))
    m.at(120)
    # "lo" expired but waits behind "hi"; it goes once "hi" is taken
    assert drain(m) == [b"hi"]
    assert m.state.vhosts["/"].queues["q"].ready_count() == 0


# --- consumer priorities ---------------------------------------------------------------


def test_high_priority_consumer_first_while_it_has_credit(m: Machine) -> None:
    m.run(q_declare(CH, "q"), qos(CH, 2), qos(CH2, 10))
    m.run(consume(CH2, "q", "low"), consume(CH, "q", "high", arguments={"x-priority": 10}))
    eff = m.run(*[enq(CH, "q", b"%d" % i) for i in range(4)])
    assert tags(eff) == [("high", b"0"), ("high", b"1"), ("low", b"2"), ("low", b"3")]
    # credit back for the high priority consumer: it is served first again
    m.run(ack(CH, 1))
    assert tags(m.run(enq(CH, "q", b"4"))) == [("high", b"4")]


def test_equal_priorities_round_robin(m: Machine) -> None:
    m.run(q_declare(CH, "q"))
    m.run(consume(CH, "q", "a", arguments={"x-priority": 5}),
          consume(CH, "q", "b", arguments={"x-priority": 5}),
          consume(CH, "q", "z", arguments={"x-priority": -1}))
    eff = m.run(*[enq(CH, "q", b"%d" % i) for i in range(4)])
    assert [t for t, _ in tags(eff)] == ["a", "b", "a", "b"]


def test_negative_priority_below_default(m: Machine) -> None:
    m.run(q_declare(CH, "q"), qos(CH, 1))
    m.run(consume(CH, "q", "neg", arguments={"x-priority": -5}), consume(CH, "q", "dflt"))
    eff = m.run(*[enq(CH, "q", b"%d" % i) for i in range(3)])
    assert [t for t, _ in tags(eff)] == ["dflt", "neg"]
    assert [t for t, _ in tags(m.run(ack(CH, 2)))] == ["neg"]
    assert tags(m.run(ack(CH, 1))) == []


def test_invalid_consumer_priority_406(m: Machine) -> None:
    m.run(q_declare(CH, "q"))
    (e,) = m.run(consume(CH, "q", "c", arguments={"x-priority": "high"}))
    assert e == ChannelError(CH, 406, "PRECONDITION_FAILED - invalid arg 'x-priority' for "
                             "queue 'q' in vhost '/': {unacceptable_type,longstr}", 60, 20)


# --- single active consumer ------------------------------------------------------------


def test_single_active_consumer(m: Machine) -> None:
    m.run(q_declare(CH, "q", arguments={"x-single-active-consumer": True}), qos(CH, 2))
    m.run(consume(CH, "q", "first"), consume(CH2, "q", "second"))
    eff = m.run(*[enq(CH, "q", b"%d" % i) for i in range(4)])
    assert tags(eff) == [("first", b"0"), ("first", b"1")]  # "second" waits despite credit
    # the active consumer goes: the next takes over the ready messages...
    eff = m.run(C.Cancel(CH, "first", True))
    assert tags(eff) == [("second", b"2"), ("second", b"3")]
    # ...and the first one's unacked, once its channel closes
    eff = m.run(C.ChannelClose(CH))
    assert sorted(tags(eff)) == [("second", b"0"), ("second", b"1")]


def test_single_active_consumer_channel_close(m: Machine) -> None:
    other = ("n2", 1, 1)
    m.open(other)
    m.run(q_declare(CH, "q", arguments={"x-single-active-consumer": True}))
    m.run(consume(CH, "q", "a"), consume(CH2, "q", "b"), consume(other, "q", "c"))
    m.run(enq(CH, "q", b"0"))  # to "a"
    # closing the channels of both a and b together: nothing goes to b on the way
    eff = m.run(C.ConnectionClose(CH[:2]))
    assert tags(eff) == [("c", b"0")]
    m.open(CH)
    m.run(consume(CH, "q", "d"))
    assert tags(m.run(enq(CH, "q", b"1"))) == [("c", b"1")]


def test_single_active_consumer_takeover_by_priority(m: Machine) -> None:
    m.run(q_declare(CH, "q", arguments={"x-single-active-consumer": True}))
    m.run(consume(CH, "q", "first"), consume(CH, "q", "low"),
          consume(CH2, "q", "high", arguments={"x-priority": 3}),
          consume(CH2, "q", "high2", arguments={"x-priority": 3}))
    assert tags(m.run(enq(CH, "q", b"0"))) == [("first", b"0")]  # the first stays active
    m.run(C.Cancel(CH, "first", True))
    assert tags(m.run(enq(CH, "q", b"1"))) == [("high", b"1")]
    m.run(C.Cancel(CH2, "high", True))
    assert tags(m.run(enq(CH, "q", b"2"))) == [("high2", b"2")]


def test_single_active_consumer_refuses_exclusive_consumers(m: Machine) -> None:
    m.run(q_declare(CH, "q", arguments={"x-single-active-consumer": True}))
    (e,) = m.run(consume(CH, "q", "c", exclusive=True))
    assert e == ChannelError(CH, 403, "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use",
                             60, 20)
