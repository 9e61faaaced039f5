"""Message TTL (x-message-ttl, the expiration property), queue expiry (x-expires),
the Tick command and next_deadline."""

from __future__ import annotations

import pytest

from cluster import commands as C
from cluster.effects import ChannelError, ConsumerCancelled, Deliver, GetEmpty, GetOk
from cluster.machine import apply_batch, next_deadline, queue_stats
from tests.cluster.helpers import (
    CH,
    Machine,
    ack,
    bind,
    body,
    consume,
    enq,
    guest_state,
    nack,
    of_type,
    props,
    q_declare,
    qos,
    stored,
    x_declare,
)


def ready(m: Machine, q: str) -> list[bytes]:
    queue = m.state.vhosts["/"].queues[q]
    return [stored(m.state, msg)[3] for _, msg in sorted(queue.returned, key=lambda e: e[0])] + [
        stored(m.state, msg)[3] for msg in queue.ready]


def bodies(effects: list) -> list[bytes]:
    return [body(effects, d) for d in of_type(effects, Deliver)]


# --- per-queue TTL ---------------------------------------------------------------------


def test_queue_ttl_expires_at_head_on_tick(m: Machine) -> None:
    m.run(q_declare(CH, "q", arguments={"x-message-ttl": 100}))
    assert next_deadline(m.state) is None
    m.at(10, enq(CH, "q", b"a"))
    m.at(50, enq(CH, "q", b"b"))
    assert next_deadline(m.state) == 110
    assert m.at(109) == [] and ready(m, "q") == [b"a", b"b"]
    assert m.at(110) == [] and ready(m, "q") == [b"b"]
    assert next_deadline(m.state) == 150
    m.at(1000)
    assert ready(m, "q") == [] and next_deadline(m.state) is None
    assert m.state.timed == {}


def test_expired_messages_never_handed_out_even_without_tick(m: Machine) -> None:
    m.run(q_declare(CH, "q", arguments={"x-message-ttl": 100}))
    m.at(0, enq(CH, "q", b"a"), enq(CH, "q", b"b"))
    m.at(60, enq(CH, "q", b"c"))
    # no Tick: the next command itself sees time has passed
    (g,) = m.at(120, C.Get(CH, "q", True))
    assert isinstance(g, GetOk) and m.body(g) == b"c" and g.message_count == 0
    m.at(130, enq(CH, "q", b"d"))
    eff = m.at(300, consume(CH, "q", "c"))
    assert bodies(eff) == []


def test_expired_message_skipped_when_consumer_regains_credit(m: Machine) -> None:
    m.run(q_declare(CH, "q", arguments={"x-message-ttl": 100}), qos(CH, 1),
          consume(CH, "q", "c"))
    assert bodies(m.at(0, enq(CH, "q", b"a"), enq(CH, "q", b"b"))) == [b"a"]
    m.at(50, enq(CH, "q", b"c"))
    # at 120 "b" is expired (the apply-time check drops it), "c" is not
    assert bodies(m.at(120, ack(CH, 1))) == [b"c"]


def test_ttl_zero_delivers_only_immediately(m: Machine) -> None:
    m.run(q_declare(CH, "q", arguments={"x-message-ttl": 0}))
    m.run(enq(CH, "q", b"lost"))
    assert m.run(C.Get(CH, "q", True)) == [GetEmpty(CH)]  # same millisecond: still gone
    m.run(consume(CH, "q", "c"))
    assert bodies(m.run(enq(CH, "q", b"kept"))) == [b"kept"]
    # the consumer out of credit: expired at once again
    m.run(C.Flow(CH, False))
    m.run(enq(CH, "q", b"lost2"))
    assert ready(m, "q") == [] and next_deadline(m.state) is None


def test_requeued_message_keeps_its_expiry(m: Machine) -> None:
    m.run(q_declare(CH, "q", arguments={"x-message-ttl": 100}))
    m.at(0, enq(CH, "q", b"a"))
    m.at(10, C.Get(CH, "q", False))
    m.at(200, nack(CH, 1, requeue=True))
    assert ready(m, "q") == []
    m.at(300, enq(CH, "q", b"b"))
    m.at(310, C.Get(CH, "q", False))
    m.at(320, nack(CH, 2, requeue=True))
    assert ready(m, "q") == [b"b"] and next_deadline(m.state) == 400


def test_unacked_messages_do_not_expire(m: Machine) -> None:
    m.run(q_declare(CH, "q", arguments={"x-message-ttl": 10}), consume(CH, "q", "c"))
    m.at(0, enq(CH, "q", b"a"))
    m.at(1000)
    assert list(queue_stats(m.state)) == [("/", "q", 0, 1, 1)]
    assert m.at(1001, ack(CH, 1)) == []


# --- per-message TTL -------------------------------------------------------------------


def test_per_message_ttl_and_the_lower_of_both(m: Machine) -> None:
    m.run(q_declare(CH, "plain"), q_declare(CH, "q", arguments={"x-message-ttl": 100}))
    m.at(0, enq(CH, "plain", b"p", props=props(expiration="30")),
         enq(CH, "q", b"short", props=props(expiration="30")),
         enq(CH, "q", b"long", props=props(expiration="5000")))
    assert next_deadline(m.state) == 30
    m.at(30)
    assert ready(m, "plain") == [] and ready(m, "q") == [b"long"]
    assert next_deadline(m.state) == 100  # the queue's TTL is lower than 5000
    m.at(100)
    assert ready(m, "q") == []


def test_per_message_ttl_only_expires_at_the_head(m: Machine) -> None:
    m.run(q_declare(CH, "q"))
    m.at(0, enq(CH, "q", b"slow", props=props(expiration="1000")),
         enq(CH, "q", b"fast", props=props(expiration="10")))
    m.at(500)
    assert ready(m, "q") == [b"slow", b"fast"]  # as RabbitMQ: "fast" waits behind "slow"
    (g,) = m.at(600, C.Get(CH, "q", True))
    assert isinstance(g, GetOk)
    assert m.body(g) == b"slow" and g.message_count == 0  # and "fast" went as it reached the head


def test_properties_are_delivered_unchanged(m: Machine) -> None:
    p = props(expiration="60000", headers={"k": "v"})
    m.run(q_declare(CH, "q"), consume(CH, "q", "c"))
    (d,) = of_type(m.run(enq(CH, "q", props=p)), Deliver)
    assert stored(m.state, d)[2] == p


def test_plain_queue_returns_to_fast_path(m: Machine) -> None:
    m.run(q_declare(CH, "q"))
    q = m.state.vhosts["/"].queues["q"]
    m.run(enq(CH, "q", b"a", props=props(expiration="100")))
    assert q.slow
    m.run(C.Get(CH, "q", False))
    assert q.slow  # still unacked: it may come back
    m.run(ack(CH, 1), enq(CH, "q", b"b"), C.Get(CH, "q", True))
    assert not q.slow


@pytest.mark.parametrize("expiration,error", [
    ("-1", "{value_negative,-1}"),
    ("abc", "no_integer"),
    ("12abc", '{leftover_string,"abc"}'),
    ("4294967296", "{value_too_large,4294967296}"),
])
def test_invalid_expiration_406(m: Machine, expiration: str, error: str) -> None:
    m.run(q_declare(CH, "q"))
    eff = m.run(enq(CH, "q", props=props(expiration=expiration), confirm=1))
    assert eff == [ChannelError(CH, 406, f"PRECONDITION_FAILED - invalid expiration "
                                f"'{expiration}': {error}", 60, 40)]
    assert ready(m, "q") == []


def test_empty_expiration_406(m: Machine) -> None:
    m.run(q_declare(CH, "q"))
    eff = m.run(enq(CH, "q", props=b"\x01\x00\x00"))  # the flag set, an empty shortstr
    assert eff == [ChannelError(CH, 406, "PRECONDITION_FAILED - invalid expiration '': "
                                "no_integer", 60, 40)]


@pytest.mark.parametrize("expiration", ["0", "+5", "4294967295"])
def test_valid_expirations(m: Machine, expiration: str) -> None:
    m.run(q_declare(CH, "q"))
    assert m.run(enq(CH, "q", props=props(expiration=expiration))) == []


# --- queue expiry ----------------------------------------------------------------------


def test_unused_queue_expires(m: Machine) -> None:
    m.run(x_declare(CH, "x", auto_delete=True))
    m.at(100, q_declare(CH, "q", arguments={"x-expires": 1000}), bind(CH, "q", "x"),
         enq(CH, "q", b"a"))
    assert next_deadline(m.state) == 1100
    m.at(1099)
    assert "q" in m.state.vhosts["/"].queues
    assert m.at(1100) == []
    vh = m.state.vhosts["/"]
    assert "q" not in vh.queues and m.state.queues == {}
    assert "x" not in vh.exchanges  # the normal delete path: auto-delete exchange went too
    assert next_deadline(m.state) is None


def test_publishing_does_not_count_as_use_but_get_and_declare_do(m: Machine) -> None:
    m.at(0, q_declare(CH, "q", arguments={"x-expires": 100}))
    m.at(90, enq(CH, "q"))
    m.at(95, C.Get(CH, "q", True))
    m.at(150, q_declare(CH, "q", passive=True))
    m.at(240, q_declare(CH, "q", arguments={"x-expires": 100}))
    m.at(339)
    assert "q" in m.state.vhosts["/"].queues
    m.at(340)
    assert "q" not in m.state.vhosts["/"].queues


def test_consumers_keep_a_queue_alive(m: Machine) -> None:
    m.at(0, q_declare(CH, "q", arguments={"x-expires": 100}), consume(CH, "q", "c"))
    assert next_deadline(m.state) == 100  # early: a Tick then just recomputes
    assert m.at(100) == [] and next_deadline(m.state) is None
    m.at(5000, C.Cancel(CH, "c", True))
    assert next_deadline(m.state) == 5100
    m.at(5100)
    assert "q" not in m.state.vhosts["/"].queues


def test_expired_exclusive_queue_leaves_its_connection(m: Machine) -> None:
    m.at(0, q_declare(CH, "q", exclusive=True, arguments={"x-expires": 10}))
    m.at(10)
    assert m.state.conns[CH[:2]].exclusive_queues == {}


def test_expiring_queue_with_consumer_of_closed_channel(m: Machine) -> None:
    m.at(0, q_declare(CH, "q", arguments={"x-expires": 10}), consume(CH, "q", "c"),
         enq(CH, "q"))
    m.at(50, C.ChannelClose(CH))  # the consumer goes: unused from now
    m.at(59)
    assert list(queue_stats(m.state)) == [("/", "q", 1, 0, 0)]
    eff = m.at(60)
    assert not of_type(eff, ConsumerCancelled) and m.state.queues == {}


# --- driven by batches -------------------------------------------------------------------


def test_batches_timestamps_drive_expiry() -> None:
    s = guest_state()
    ch = CH
    seq = 0

    def batch(ts: int, *cmds: C.Command) -> list:
        nonlocal seq
        seq += 1
        raw = C.encode_batch(C.Batch("n1", 1, seq, ts, cmds))
        return apply_batch(s, C.decode_batch(raw))

    batch(1000, C.ConnectionOpen(ch[:2], "/", "guest"), C.ChannelOpen(ch),
          q_declare(ch, "q", arguments={"x-message-ttl": 50}), enq(ch, "q"))
    assert next_deadline(s) == 1050
    batch(1049, C.Tick())
    assert s.vhosts["/"].queues["q"].ready_count() == 1
    batch(1040, C.Tick())  # a proposer's clock behind: time never goes back
    assert s.now_ms == 1049
    batch(1050, C.Tick())
    assert s.vhosts["/"].queues["q"].ready_count() == 0 and next_deadline(s) is None


def test_snapshots_taken_before_these_fields_existed_restore() -> None:
    from cluster.machine.state import Consumer, Msg, State

    msg = Msg.__new__(Msg)  # pickle's default state for a slotted class, minus new fields
    msg.__setstate__((None, {"id": 1, "size": 1, "redelivered": False,
                             "delivery_count": 0}))
    assert msg == Msg(1, 1)
    c = Consumer.__new__(Consumer)
    c.__setstate__((None, {"ch": CH, "tag": "t", "qid": 1, "no_ack": False,
                           "exclusive": False, "prefetch": 0, "arguments": {}}))
    assert c.priority == 0 and c.unacked == 0
    s = guest_state()
    old = {k: v for k, v in s.__dict__.items() if k not in ("timed", "next_due", "dl_pending")}
    restored = State.__new__(State)
    restored.__setstate__(old)
    assert restored == s
