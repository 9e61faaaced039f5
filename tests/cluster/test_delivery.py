"""Consumers, delivery assignment, prefetch, acks, nacks, get, flow, recover."""

from __future__ import annotations

import pytest

from cluster import commands as C
from cluster.effects import (
    CancelOk,
    ChannelError,
    ConnectionError,
    ConsumeOk,
    Deliver,
    FlowOk,
    GetEmpty,
    GetOk,
    QosOk,
    RecoverOk,
)
from cluster.machine import queue_stats
from cluster.machine.state import Msg
from tests.cluster.helpers import (
    CH,
    CH2,
    Machine,
    ack,
    body,
    consume,
    enq,
    nack,
    of_type,
    q_declare,
    qos,
    store_of,
)


@pytest.fixture
def m(m2: Machine) -> Machine:
    """Two channels and the queue ``q``."""
    m2.run(q_declare(CH, "q"))
    return m2


def delivered(effects: list) -> list[tuple[str, int, bytes, bool]]:
    return [(d.consumer_tag, d.delivery_tag, body(effects, d), d.redelivered)
            for d in of_type(effects, Deliver)]


def publish_n(m: Machine, n: int, queue: str = "q", start: int = 0) -> list:
    return m.run(*[enq(CH, queue, b"%d" % i) for i in range(start, start + n)])


def test_round_robin(m: Machine) -> None:
    m.run(consume(CH, "q", "a"), consume(CH, "q", "b"), consume(CH2, "q", "c"))
    eff = publish_n(m, 6)
    assert [(d.ch, d.consumer_tag, m.body(d)) for d in of_type(eff, Deliver)] == [
        (CH, "a", b"0"), (CH, "b", b"1"), (CH2, "c", b"2"),
        (CH, "a", b"3"), (CH, "b", b"4"), (CH2, "c", b"5"),
    ]
    # delivery tags are per channel, counting up from 1
    assert [d.delivery_tag for d in of_type(eff, Deliver) if d.ch == CH] == [1, 2, 3, 4]
    assert [d.delivery_tag for d in of_type(eff, Deliver) if d.ch == CH2] == [1, 2]


def test_per_consumer_prefetch_applies_to_later_consumers(m: Machine) -> None:
    m.run(consume(CH, "q", "unlimited"), qos(CH, 2), consume(CH, "q", "two"))
    publish_n(m, 10)
    cons = m.state.channels[CH].consumers
    assert cons["two"].unacked == 2 and cons["unlimited"].unacked == 8


def test_prefetch_credit_freed_by_ack(m: Machine) -> None:
    assert m.run(qos(CH, 2)) == [QosOk(CH)]
    m.run(consume(CH, "q", "c"))
    eff = publish_n(m, 5)
    assert delivered(eff) == [("c", 1, b"0", False), ("c", 2, b"1", False)]
    assert delivered(m.run(ack(CH, 1))) == [("c", 3, b"2", False)]
    assert delivered(m.run(ack(CH, 3, multiple=True))) == [("c", 4, b"3", False),
                                                           ("c", 5, b"4", False)]
    assert list(queue_stats(m.state)) == [("/", "q", 0, 2, 1)]


def test_global_prefetch_shared_by_channel_consumers(m: Machine) -> None:
    m.run(qos(CH, 3, global_=True), consume(CH, "q", "a"), consume(CH, "q", "b"))
    eff = publish_n(m, 10)
    assert [d.consumer_tag for d in of_type(eff, Deliver)] == ["a", "b", "a"]
    eff = m.run(ack(CH, 1), ack(CH, 2))
    # credit returns to the channel: one delivery per freed slot (order follows which
    # consumer regained credit first, as rabbit_fifo re-adds consumers at the back)
    assert sorted(d.consumer_tag for d in of_type(eff, Deliver)) == ["a", "b"]
    assert m.state.channels[CH].global_unacked == 3
    # raising the limit releases more
    eff = m.run(qos(CH, 5, global_=True))
    assert eff[0] == QosOk(CH) and len(of_type(eff, Deliver)) == 2


def test_per_consumer_and_global_together(m: Machine) -> None:
    m.run(qos(CH, 1), qos(CH, 3, global_=True), consume(CH, "q", "a"), consume(CH, "q", "b"))
    eff = publish_n(m, 10)
    assert [d.consumer_tag for d in of_type(eff, Deliver)] == ["a", "b"]


def test_no_ack_consumer_unlimited_and_settled(m: Machine) -> None:
    m.run(qos(CH, 1), consume(CH, "q", "c", no_ack=True))
    eff = publish_n(m, 5)
    assert len(of_type(eff, Deliver)) == 5
    assert m.state.channels[CH].unacked == {}
    assert list(queue_stats(m.state)) == [("/", "q", 0, 0, 1)]


def test_nack_requeue_goes_to_head_in_original_order(m: Machine) -> None:
    m.run(consume(CH, "q", "c"))
    publish_n(m, 4)  # tags 1..4
    m.run(C.Cancel(CH, "c", False))
    # return 3 then 1: they come back as 1, 3 (original order), before never-delivered 4, 5
    m.run(nack(CH, 3), nack(CH, 1), enq(CH, "q", b"4"))
    eff = m.run(consume(CH, "q", "d"))
    assert delivered(eff) == [("d", 5, b"0", True), ("d", 6, b"2", True), ("d", 7, b"4", False)]


def test_nack_multiple_and_drop(m: Machine) -> None:
    publish_n(m, 3)
    m.run(C.Get(CH, "q", False), C.Get(CH, "q", False), C.Get(CH, "q", False))
    assert m.run(nack(CH, 2, multiple=True, requeue=False)) == []
    assert list(queue_stats(m.state)) == [("/", "q", 0, 1, 0)]
    m.run(nack(CH, 3, requeue=True))
    (g,) = m.run(C.Get(CH, "q", True))
    assert isinstance(g, GetOk) and g.redelivered and m.body(g) == b"2" and g.message_count == 0


def test_requeued_message_redelivered_immediately(m: Machine) -> None:
    m.run(consume(CH, "q", "c"))
    publish_n(m, 1)
    assert delivered(m.run(nack(CH, 1))) == [("c", 2, b"0", True)]
    msg = m.state.channels[CH].unacked[2][1]
    assert isinstance(msg, Msg) and msg.delivery_count == 1


@pytest.mark.parametrize("cmd,method", [
    (C.Ack(CH, 99, False), (60, 80)),
    (C.Ack(CH, 99, True), (60, 80)),
    (C.Ack(CH, 0, False), (60, 80)),
    (C.Nack(CH, 99, True, True), (60, 120)),
    (C.Nack(CH, 99, False, True), (60, 120)),
    (C.Nack(CH, 99, False, True, reject=True), (60, 90)),
])
def test_unknown_delivery_tag_406_closes_channel(m: Machine, cmd: C.Command,
                                                 method: tuple[int, int]) -> None:
    m.run(consume(CH, "q", "c"), consume(CH2, "q", "other"))
    publish_n(m, 2)  # 0 -> CH, 1 -> CH2
    eff = m.run(cmd)
    tag = cmd.delivery_tag  # type: ignore[attr-defined]
    assert eff[0] == ChannelError(CH, 406, f"PRECONDITION_FAILED - unknown delivery tag {tag}",
                                  *method)
    # the channel is gone: its consumer cancelled, its unacked message redelivered to CH2
    assert CH not in m.state.channels
    assert delivered(eff[1:]) == [("other", 2, b"0", True)]
    assert m.run(ack(CH, 1)) == []  # further commands ignored
    m.open(CH)  # until a new ChannelOpen
    assert m.state.channels[CH].last_tag == 0


def test_ack_multiple_zero_means_all_and_double_ack_fails(m: Machine) -> None:
    m.run(consume(CH, "q", "c"))
    publish_n(m, 3)
    assert m.run(ack(CH, 0, multiple=True)) == []
    assert m.state.channels[CH].unacked == {}
    assert m.run(ack(CH, 0, multiple=True)) == []  # nothing outstanding: still fine
    eff = m.run(ack(CH, 2))
    assert isinstance(eff[0], ChannelError) and eff[0].reply_code == 406


def test_ack_multiple_requires_the_tag_itself(m: Machine) -> None:
    m.run(consume(CH, "q", "c"))
    publish_n(m, 3)
    m.run(ack(CH, 2))
    assert m.run(ack(CH, 3, multiple=True)) == []  # acks 1 and 3
    assert m.state.channels[CH].unacked == {}


def test_channel_close_requeues_unacked(m: Machine) -> None:
    m.run(consume(CH, "q", "c"))
    publish_n(m, 2)
    m.run(C.ChannelClose(CH))
    assert list(queue_stats(m.state)) == [("/", "q", 2, 0, 0)]
    eff = m.run(consume(CH2, "q", "d"))
    assert delivered(eff) == [("d", 1, b"0", True), ("d", 2, b"1", True)]


def test_cancel_keeps_unacked_on_channel(m: Machine) -> None:
    m.run(consume(CH, "q", "c"))
    publish_n(m, 2)
    assert m.run(C.Cancel(CH, "c", False)) == [CancelOk(CH, "c")]
    assert m.run(C.Cancel(CH, "unknown", False)) == [CancelOk(CH, "unknown")]
    publish_n(m, 1, start=2)
    assert list(queue_stats(m.state)) == [("/", "q", 1, 2, 0)]
    assert m.run(ack(CH, 1, multiple=False), ack(CH, 2)) == []


def test_duplicate_consumer_tag_is_connection_error_530(m: Machine) -> None:
    m.run(consume(CH, "q", "c"))
    eff = m.run(consume(CH, "q", "c"))
    assert eff[0] == ConnectionError(("n1", 1), 530,
                                     "NOT_ALLOWED - attempt to reuse consumer tag 'c'", 60, 20)
    assert m.state.conns == {} and m.state.channels == {}


def test_server_generated_consumer_tags(m: Machine) -> None:
    eff = m.run(consume(CH, "q"), consume(CH, "q"))
    tags = [e.consumer_tag for e in of_type(eff, ConsumeOk)]
    assert len(set(tags)) == 2 and all(t.startswith("amq.ctag-") for t in tags)


def test_exclusive_consumer_403(m: Machine) -> None:
    m.run(consume(CH, "q", "x", exclusive=True))
    eff = m.run(consume(CH2, "q", "y"))
    assert eff[0] == ChannelError(CH2, 403, "ACCESS_REFUSED - queue 'q' in vhost '/' in "
                                  "exclusive use", 60, 20)
    m.open(CH2)
    m.run(C.Cancel(CH, "x", True))
    assert m.run(consume(CH2, "q", "y")) == [ConsumeOk(CH2, "y")]
    eff = m.run(consume(CH, "q", "z", exclusive=True))
    assert isinstance(eff[0], ChannelError) and eff[0].reply_code == 403


def test_get(m: Machine) -> None:
    assert m.run(C.Get(CH, "q", False)) == [GetEmpty(CH)]
    publish_n(m, 2)
    (g,) = m.run(C.Get(CH, "q", False))
    assert isinstance(g, GetOk)
    assert (g.delivery_tag, m.body(g), g.message_count, g.redelivered) == (1, b"0", 1, False)
    (g,) = m.run(C.Get(CH, "q", True))
    assert isinstance(g, GetOk)
    assert (g.delivery_tag, g.message_count) == (2, 0)
    assert list(m.state.channels[CH].unacked) == [1]
    # basic.get ignores prefetch and does not use consumer credit
    m.run(qos(CH, 1, global_=True), consume(CH, "q", "c"))
    assert len(of_type(publish_n(m, 1), Deliver)) == 1


def test_flow(m: Machine) -> None:
    m.run(consume(CH, "q", "c"))
    assert m.run(C.Flow(CH, False)) == [FlowOk(CH, False)]
    assert of_type(publish_n(m, 2), Deliver) == []
    eff = m.run(C.Flow(CH, True))
    assert eff[0] == FlowOk(CH, True) and len(of_type(eff, Deliver)) == 2


def test_recover_requeues_all_unacked(m: Machine) -> None:
    m.run(qos(CH, 2), consume(CH, "q", "c"))
    publish_n(m, 2)
    eff = m.run(C.Recover(CH))
    assert eff[0] == RecoverOk(CH)
    assert delivered(eff) == [("c", 3, b"0", True), ("c", 4, b"1", True)]


def test_connection_flow_holds_deliveries_in_the_queue(m: Machine) -> None:
    """A connection whose socket stopped taking writes gets nothing more, even with no-ack
    consumers; the messages stay ready for other consumers, and flow when it resumes."""
    m.run(consume(CH, "q", "mine", no_ack=True))
    m.run(C.ConnectionFlow(CH[:2], False))
    assert of_type(publish_n(m, 3), Deliver) == []
    assert list(queue_stats(m.state)) == [("/", "q", 3, 0, 1)]
    m.open(("n2", 1, 1))  # a consumer elsewhere takes them meanwhile
    eff = m.run(consume(("n2", 1, 1), "q", "other", no_ack=True))
    assert [d.consumer_tag for d in of_type(eff, Deliver)] == ["other"] * 3
    m.run(C.Cancel(("n2", 1, 1), "other", True))
    publish_n(m, 2)
    m.open(CH2)  # a channel opened while paused is paused too
    m.run(consume(CH2, "q", "late", no_ack=True))
    eff = m.run(C.ConnectionFlow(CH[:2], True))
    assert sorted(d.consumer_tag for d in of_type(eff, Deliver)) == ["late", "mine"]


def test_a_no_ack_consumer_gets_at_most_its_window_until_the_node_reports_writes(
        m: Machine) -> None:
    """No prefetch bounds a no-ack consumer: NOACK_WINDOW deliveries are on their way at
    most; the rest stay in the queue (for other consumers too) until Sent frees room."""
    from cluster.machine.features import NOACK_WINDOW

    m.run(q_declare(CH, "q"), *(enq(CH, "q", b"%d" % i) for i in range(NOACK_WINDOW + 50)))
    eff = m.run(consume(CH, "q", "c", no_ack=True))
    delivered = of_type(eff, Deliver)
    assert len(delivered) == NOACK_WINDOW and all(d.no_ack for d in delivered)
    assert list(queue_stats(m.state))[0][2] == 50  # ready, not lost
    more = of_type(m.run(C.Sent(CH, "c", 30)), Deliver)
    assert [m.body(d) for d in more] == [b"%d" % i for i in range(NOACK_WINDOW, NOACK_WINDOW + 30)]
    assert of_type(m.run(C.Sent(CH, "c", 10_000)), Deliver)  # over-reporting: floor at 0
    assert of_type(m.run(C.Sent(CH, "nope", 5)), Deliver) == []  # unknown tag: ignored


@pytest.mark.parametrize("multiple", [False, True])
def test_acked_messages_leave_the_store(m: Machine, multiple: bool) -> None:
    """Every way out lets go of the message's bytes: single acks (the fast path),
    multiple acks and acked basic.gets alike."""
    publish_n(m, 1)
    assert of_type(m.run(C.Get(CH2, "q", False)), GetOk)
    m.run(consume(CH, "q", "a"))
    publish_n(m, 3, start=1)
    if multiple:
        m.run(ack(CH, 3, multiple=True), ack(CH2, 1, multiple=True))
    else:
        m.run(ack(CH, 1), ack(CH, 2), ack(CH, 3), ack(CH2, 1))
    assert store_of(m.state).live() == {}
