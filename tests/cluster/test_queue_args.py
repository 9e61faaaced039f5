"""Queue argument validation and equivalence, and alternate exchanges."""

from __future__ import annotations

from typing import Any

import pytest

from cluster import commands as C
from cluster.effects import ChannelError, Confirm, ExchangeDeclareOk, QueueDeclareOk, Return
from tests.cluster.helpers import CH, Machine, bind, enq, of_type, pub, q_declare, x_declare


def invalid(key: str, term: str) -> str:
    return f"PRECONDITION_FAILED - invalid arg '{key}' for queue 'q' in vhost '/': {term}"


@pytest.mark.parametrize("args,text", [
    ({"x-message-ttl": -1}, invalid("x-message-ttl", "{value_negative,-1}")),
    ({"x-message-ttl": "10"}, invalid("x-message-ttl", "{unacceptable_type,longstr}")),
    ({"x-message-ttl": 1.5}, invalid("x-message-ttl", "{unacceptable_type,double}")),
    ({"x-message-ttl": True}, invalid("x-message-ttl", "{unacceptable_type,bool}")),
    ({"x-message-ttl": 4294967296}, invalid("x-message-ttl", "{value_too_large,4294967296}")),
    ({"x-expires": 0}, invalid("x-expires", "{value_zero,0}")),
    ({"x-expires": -5}, invalid("x-expires", "{value_negative,-5}")),
    ({"x-max-length": -1}, invalid("x-max-length", "{value_negative,-1}")),
    ({"x-max-length-bytes": "big"}, invalid("x-max-length-bytes", "{unacceptable_type,longstr}")),
    ({"x-max-priority": 256}, invalid("x-max-priority", "{max_value_exceeded,256}")),
    ({"x-max-priority": -1}, invalid("x-max-priority", "{value_negative,-1}")),
    ({"x-overflow": "drop-tail"}, invalid("x-overflow", "invalid_overflow")),
    ({"x-overflow": 1}, invalid("x-overflow", "{unacceptable_type,long}")),
    ({"x-dead-letter-routing-key": "k"},
     invalid("x-dead-letter-routing-key", "routing_key_but_no_dlx_defined")),
    ({"x-single-active-consumer": "yes"},
     invalid("x-single-active-consumer", "{unacceptable_type,longstr}")),
    ({"x-queue-mode": "fast"}, invalid("x-queue-mode", "invalid_queue_mode")),
    ({"x-dead-letter-exchange": 5},
     "PRECONDITION_FAILED - invalid type 'long' for arg 'x-dead-letter-exchange' in queue 'q' "
     "in vhost '/'"),
    # the first failing argument in RabbitMQ's order is reported
    ({"x-max-length": -1, "x-expires": 0}, invalid("x-expires", "{value_zero,0}")),
])
def test_invalid_queue_args_406(m: Machine, args: dict[str, Any], text: str) -> None:
    assert m.run(q_declare(CH, "q", arguments=args)) == [ChannelError(CH, 406, text, 50, 10)]
    assert "q" not in m.state.vhosts["/"].queues


def test_valid_args_are_accepted_and_configure_the_queue(m: Machine) -> None:
    args = {"x-message-ttl": 0, "x-expires": 1, "x-dead-letter-exchange": b"dlx",
            "x-dead-letter-routing-key": "rk", "x-max-length": 0, "x-max-length-bytes": 10,
            "x-max-priority": 255, "x-overflow": b"reject-publish-dlx",
            "x-single-active-consumer": True, "x-queue-mode": "lazy"}
    assert m.run(q_declare(CH, "q", arguments=args)) == [QueueDeclareOk(CH, "q", 0, 0)]
    q = m.state.vhosts["/"].queues["q"]
    assert (q.message_ttl, q.expires, q.dlx, q.dlrk, q.max_length, q.max_length_bytes,
            q.max_priority, q.overflow, q.single_active, q.slow) == (
        0, 1, "dlx", "rk", 0, 10, 255, "reject-publish-dlx", True, True)


def test_existing_queue_is_not_revalidated_only_compared(m: Machine) -> None:
    m.run(q_declare(CH, "q", arguments={"x-message-ttl": 100}))
    (e,) = m.run(q_declare(CH, "q", arguments={"x-message-ttl": -1}))
    assert isinstance(e, ChannelError)
    assert e.reply_text.startswith("PRECONDITION_FAILED - inequivalent arg 'x-message-ttl'")
    m.open(CH)
    assert m.run(q_declare(CH, "q", arguments={"x-message-ttl": 100})) == [
        QueueDeclareOk(CH, "q", 0, 0)]


@pytest.mark.parametrize("key,a,b", [
    ("x-message-ttl", 100, 200),
    ("x-expires", 100, None),
    ("x-dead-letter-exchange", "a", "b"),
    ("x-dead-letter-routing-key", "a", "b"),
    ("x-max-length-bytes", 1, 2),
    ("x-max-priority", 1, 2),
    ("x-overflow", "drop-head", "reject-publish"),
    ("x-single-active-consumer", True, False),
])
def test_redeclare_equivalence_includes_feature_args(m: Machine, key: str, a: Any,
                                                     b: Any) -> None:
    def args(v: Any) -> dict[str, Any]:
        d = {} if v is None else {key: v}
        if key == "x-dead-letter-routing-key":
            d["x-dead-letter-exchange"] = "dlx"
        return d

    m.run(q_declare(CH, "q", arguments=args(a)))
    (e,) = m.run(q_declare(CH, "q", arguments=args(b)))
    assert isinstance(e, ChannelError)
    assert e.reply_code == 406 and f"inequivalent arg '{key}'" in e.reply_text


# --- alternate exchanges -----------------------------------------------------------------


@pytest.fixture
def ae(m: Machine) -> Machine:
    """main (direct, bound "k" -> q) has the alternate exchange alt (fanout -> unrouted)."""
    m.run(x_declare(CH, "alt", "fanout"), q_declare(CH, "unrouted"), bind(CH, "unrouted", "alt"),
          x_declare(CH, "main", arguments={"alternate-exchange": "alt"}), q_declare(CH, "q"),
          bind(CH, "q", "main", "k"))
    return m


def counts(m: Machine) -> dict[str, int]:
    return {n: q.ready_count() for n, q in m.state.vhosts["/"].queues.items()}


def test_unroutable_goes_to_alternate_exchange(ae: Machine) -> None:
    assert ae.run(pub(CH, "main", "other", mandatory=True, confirm=1)) == [Confirm(CH, 1, True)]
    assert ae.run(pub(CH, "main", "k", mandatory=True)) == []
    assert counts(ae) == {"unrouted": 1, "q": 1}


def test_alternate_exchange_that_fails_too_returns(ae: Machine) -> None:
    ae.run(C.QueueUnbind(CH, "unrouted", "alt", "", {}))
    (r,) = of_type(ae.run(pub(CH, "main", "other", mandatory=True)), Return)
    assert (r.reply_code, r.exchange, r.routing_key) == (312, "main", "other")


def test_alternate_exchange_chain_and_cycle(m: Machine) -> None:
    m.run(x_declare(CH, "a", arguments={"alternate-exchange": "b"}),
          x_declare(CH, "b", arguments={"alternate-exchange": "c"}),
          x_declare(CH, "c", arguments={"alternate-exchange": "a"}))
    assert of_type(m.run(pub(CH, "a", "k", mandatory=True)), Return)  # no endless loop
    m.run(q_declare(CH, "end"), bind(CH, "end", "c", "k"))
    assert m.run(pub(CH, "a", "k", mandatory=True)) == [] and counts(m) == {"end": 1}


def test_alternate_exchange_via_exchange_bindings(m: Machine) -> None:
    # src routes to dest; dest matches nothing and uses its own alternate exchange
    m.run(x_declare(CH, "alt", "fanout"), q_declare(CH, "caught"), bind(CH, "caught", "alt"),
          x_declare(CH, "dest", arguments={"alternate-exchange": "alt"}),
          x_declare(CH, "src", "fanout"),
          C.ExchangeBind(CH, "dest", "src", "", False, {}))
    assert m.run(pub(CH, "src", "k", mandatory=True)) == [] and counts(m) == {"caught": 1}


def test_missing_alternate_exchange_is_ignored(m: Machine) -> None:
    m.run(x_declare(CH, "x", arguments={"alternate-exchange": "gone"}))
    assert of_type(m.run(pub(CH, "x", "k", mandatory=True)), Return)


def test_alternate_exchange_argument_type_406(m: Machine) -> None:
    (e,) = m.run(x_declare(CH, "x", arguments={"alternate-exchange": 1}))
    assert e == ChannelError(CH, 406, "PRECONDITION_FAILED - invalid type 'long' for arg "
                             "'alternate-exchange' in exchange 'x' in vhost '/'", 40, 10)
    m.open(CH)
    assert m.run(x_declare(CH, "x", arguments={"alternate-exchange": b"alt"})) == [
        ExchangeDeclareOk(CH)]
    m.run(x_declare(CH, "alt", "fanout"), q_declare(CH, "q"), bind(CH, "q", "alt"))
    m.run(enq(CH, "nowhere"), pub(CH, "x", "k"))
    assert counts(m) == {"q": 1}
