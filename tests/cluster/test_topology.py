"""exchange.* / queue.* semantics and error codes."""

from __future__ import annotations

from typing import cast

import pytest

from cluster import commands as C
from cluster.effects import (
    ChannelError,
    Confirm,
    ConnectionError,
    ConsumeOk,
    ConsumerCancelled,
    ExchangeBindOk,
    ExchangeDeclareOk,
    ExchangeDeleteOk,
    ExchangeUnbindOk,
    QueueBindOk,
    QueueDeclareOk,
    QueueDeleteOk,
    QueuePurgeOk,
    QueueUnbindOk,
    Return,
)
from cluster.machine import queue_stats, vhost_exists
from tests.cluster.helpers import (
    CH,
    Machine,
    bind,
    consume,
    enq,
    of_type,
    pub,
    q_declare,
    unbind,
    x_declare,
)

CH2 = ("n1", 2, 1)  # another connection


def err(effects: list, cls: type = ChannelError) -> tuple[int, str, int, int]:
    (e,) = of_type(effects, cls)
    return e.reply_code, e.reply_text, e.class_id, e.method_id


def test_new_state_has_standard_exchanges() -> None:
    m = Machine()
    ex = m.state.vhosts["/"].exchanges
    assert list(ex) == ["", "amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"]
    assert all(x.durable for x in ex.values())
    assert vhost_exists(m.state, "/") and not vhost_exists(m.state, "/other")


# --- exchanges -------------------------------------------------------------------------


def test_exchange_declare_and_redeclare(m: Machine) -> None:
    assert m.run(x_declare(CH, "x", "topic")) == [ExchangeDeclareOk(CH)]
    assert m.run(x_declare(CH, "x", "topic")) == [ExchangeDeclareOk(CH)]
    assert m.run(x_declare(CH, "x", "topic", nowait=True)) == []
    assert m.run(x_declare(CH, "x", passive=True)) == [ExchangeDeclareOk(CH)]


def test_unknown_exchange_type_is_connection_error_503(m: Machine) -> None:
    eff = m.run(x_declare(CH, "x", "nosuch"))
    assert err(eff, ConnectionError) == (503, "COMMAND_INVALID - unknown exchange type 'nosuch'",
                                         40, 10)
    assert ("n1", 1) not in m.state.conns and CH not in m.state.channels


@pytest.mark.parametrize("field,kw,text", [
    ("type", {"type_": "fanout"}, "received 'fanout' but current is 'direct'"),
    ("durable", {"durable": True}, "received 'true' but current is 'false'"),
    ("auto_delete", {"auto_delete": True}, "received 'true' but current is 'false'"),
    ("internal", {"internal": True}, "received 'true' but current is 'false'"),
])
def test_exchange_inequivalent_406(m: Machine, field: str, kw: dict, text: str) -> None:
    m.run(x_declare(CH, "x"))
    eff = m.run(x_declare(CH, "x", **kw))
    code, msg, cls, meth = err(eff)
    assert (code, cls, meth) == (406, 40, 10)
    assert msg == (f"PRECONDITION_FAILED - inequivalent arg '{field}' for exchange 'x' in "
                   f"vhost '/': {text}")
    assert CH not in m.state.channels  # the channel is closed in the state
    assert m.run(x_declare(CH, "y")) == []  # and further commands are ignored


def test_exchange_alternate_exchange_arg_is_compared_others_ignored(m: Machine) -> None:
    m.run(x_declare(CH, "x", arguments={"foo": 1}))
    assert m.run(x_declare(CH, "x", arguments={"foo": 2})) == [ExchangeDeclareOk(CH)]
    eff = m.run(x_declare(CH, "x", arguments={"alternate-exchange": "ae"}))
    assert err(eff)[0] == 406


def test_exchange_reserved_names(m: Machine) -> None:
    assert err(m.run(x_declare(CH, "amq.foo")))[:2] == (
        403, "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'")
    m.open(CH)
    # an existing amq.* exchange may be redeclared equivalently (RabbitMQ checks the
    # prefix only for new exchanges)
    assert m.run(x_declare(CH, "amq.direct", durable=True)) == [ExchangeDeclareOk(CH)]
    assert err(m.run(x_declare(CH, "amq.direct", "fanout", durable=True)))[0] == 406


def test_default_exchange_is_untouchable(m: Machine) -> None:
    text = "ACCESS_REFUSED - operation not permitted on the default exchange"
    assert err(m.run(x_declare(CH, "")))[:4] == (403, text, 40, 10)
    m.open(CH)
    assert err(m.run(x_declare(CH, "", passive=True)))[:2] == (403, text)
    m.open(CH)
    assert err(m.run(C.ExchangeDelete(CH, "", False, False))) == (403, text, 40, 20)
    m.open(CH)
    m.run(q_declare(CH, "q"))
    assert err(m.run(bind(CH, "q", "")))[:4] == (403, text, 50, 20)
    m.open(CH)
    assert err(m.run(C.ExchangeBind(CH, "", "amq.direct", "", False, {})))[:4] == (
        403, text, 40, 30)
    m.open(CH)
    assert err(m.run(C.ExchangeBind(CH, "amq.direct", "", "", False, {})))[0] == 403


def test_exchange_passive_missing_404(m: Machine) -> None:
    assert err(m.run(x_declare(CH, "nope", passive=True))) == (
        404, "NOT_FOUND - no exchange 'nope' in vhost '/'", 40, 10)


def test_exchange_delete(m: Machine) -> None:
    assert m.run(C.ExchangeDelete(CH, "missing", False, False)) == [ExchangeDeleteOk(CH)]
    assert err(m.run(C.ExchangeDelete(CH, "amq.fanout", False, False)))[:2] == (
        403, "ACCESS_REFUSED - deletion of system exchange 'amq.fanout' in vhost '/' not allowed")
    m.open(CH)
    m.run(x_declare(CH, "x"), q_declare(CH, "q"), bind(CH, "q", "x", "k"))
    assert err(m.run(C.ExchangeDelete(CH, "x", True, False))) == (
        406, "PRECONDITION_FAILED - exchange 'x' in vhost '/' in use", 40, 20)
    m.open(CH)
    assert m.run(C.ExchangeDelete(CH, "x", False, True)) == []
    assert "x" not in m.state.vhosts["/"].exchanges
    assert m.state.vhosts["/"].queues["q"].bindings == {}


def test_auto_delete_exchange_goes_with_last_binding(m: Machine) -> None:
    m.run(x_declare(CH, "x", auto_delete=True), q_declare(CH, "q1"), q_declare(CH, "q2"))
    m.run(bind(CH, "q1", "x", "a"), bind(CH, "q2", "x", "b"))
    exchanges = m.state.vhosts["/"].exchanges
    m.run(unbind(CH, "q1", "x", "a"))
    assert "x" in exchanges
    m.run(C.QueueDelete(CH, "q2", False, False, False))  # removing the queue removes its binding
    assert "x" not in exchanges


def test_internal_exchange_refuses_publish(m: Machine) -> None:
    m.run(x_declare(CH, "ix", "fanout", internal=True))
    assert err(m.run(pub(CH, "ix", "k"))) == (
        403, "ACCESS_REFUSED - cannot publish to internal exchange 'ix' in vhost '/'", 60, 40)


def test_exchange_bind_errors_and_unbind(m: Machine) -> None:
    m.run(x_declare(CH, "a", "fanout"))
    assert err(m.run(C.ExchangeBind(CH, "a", "missing", "", False, {}))) == (
        404, "NOT_FOUND - no exchange 'missing' in vhost '/'", 40, 30)
    m.open(CH)
    assert err(m.run(C.ExchangeBind(CH, "missing2", "a", "", False, {})))[:2] == (
        404, "NOT_FOUND - no exchange 'missing2' in vhost '/'")
    m.open(CH)
    assert m.run(C.ExchangeBind(CH, "amq.fanout", "a", "", False, {})) == [ExchangeBindOk(CH)]
    assert m.run(C.ExchangeUnbind(CH, "amq.fanout", "a", "", False, {})) == [ExchangeUnbindOk(CH)]
    # unbinding what does not exist is fine (rabbit_binding:remove ignores not_found)
    assert m.run(C.ExchangeUnbind(CH, "zz", "yy", "", False, {})) == [ExchangeUnbindOk(CH)]


# --- queues ----------------------------------------------------------------------------


def test_queue_declare_ok_counts(m: Machine) -> None:
    assert m.run(q_declare(CH, "q")) == [QueueDeclareOk(CH, "q", 0, 0)]
    m.run(enq(CH, "q"), enq(CH, "q"), consume(CH, "q", "c", no_ack=False))
    # one delivered (unacked), one... no: unlimited prefetch delivers both
    assert m.run(q_declare(CH, "q")) == [QueueDeclareOk(CH, "q", 0, 1)]
    m.run(enq(CH, "q2"), q_declare(CH, "q2"), enq(CH, "q2"), enq(CH, "q2"))
    assert m.run(q_declare(CH, "q2", passive=True)) == [QueueDeclareOk(CH, "q2", 2, 0)]


def test_server_named_queues_are_deterministic(m: Machine) -> None:
    eff = m.run(q_declare(CH, ""), q_declare(CH, ""))
    names = [cast(QueueDeclareOk, e).queue for e in eff]
    assert all(n.startswith("amq.gen-") and len(n) == len("amq.gen-") + 22 for n in names)
    assert names[0] != names[1]
    other = Machine()
    other.open(CH)
    eff = other.run(q_declare(CH, ""), q_declare(CH, ""))
    assert [cast(QueueDeclareOk, e).queue for e in eff] == names


def test_queue_reserved_name_and_passive_missing(m: Machine) -> None:
    assert err(m.run(q_declare(CH, "amq.q"))) == (
        403, "ACCESS_REFUSED - queue name 'amq.q' contains reserved prefix 'amq.*'", 50, 10)
    m.open(CH)
    assert err(m.run(q_declare(CH, "nope", passive=True))) == (
        404, "NOT_FOUND - no queue 'nope' in vhost '/'", 50, 10)


@pytest.mark.parametrize("kw,field", [
    ({"durable": True}, "durable"),
    ({"auto_delete": True}, "auto_delete"),
    ({"arguments": {"x-max-length": 10}}, "x-max-length"),
])
def test_queue_inequivalent_406(m: Machine, kw: dict, field: str) -> None:
    m.run(q_declare(CH, "q"), enq(CH, "q"))
    code, text, cls, meth = err(m.run(q_declare(CH, "q", **kw)))
    assert (code, cls, meth) == (406, 50, 10)
    assert f"inequivalent arg '{field}' for queue 'q' in vhost '/'" in text
    assert m.state.vhosts["/"].queues["q"].ready_count() == 1


def test_queue_unknown_args_are_not_compared(m: Machine) -> None:
    m.run(q_declare(CH, "q", arguments={"x-custom": 1}))
    assert m.run(q_declare(CH, "q")) == [QueueDeclareOk(CH, "q", 0, 0)]


def test_exclusive_queue_locked_405(m: Machine) -> None:
    m.open(CH2)
    m.run(q_declare(CH, "ex", exclusive=True))
    locked = "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'ex' in vhost '/'"
    cases = [
        (q_declare(CH2, "ex", exclusive=True), (50, 10)),
        (q_declare(CH2, "ex", passive=True), (50, 10)),
        (q_declare(CH2, "ex"), (50, 10)),
        (bind(CH2, "ex", "amq.fanout"), (50, 20)),
        (C.QueuePurge(CH2, "ex", False), (50, 30)),
        (C.QueueDelete(CH2, "ex", False, False, False), (50, 40)),
        (consume(CH2, "ex"), (60, 20)),
        (C.Get(CH2, "ex", True), (60, 70)),
    ]
    for cmd, method in cases:
        m.open(CH2)
        code, text, cls, meth = err(m.run(cmd))
        assert (code, (cls, meth)) == (405, method), cmd
        assert text.startswith(locked)
        assert ("n1", 2) in m.state.conns  # channel error, connection survives
    # another channel of the owner connection may use it
    other_ch = ("n1", 1, 2)
    m.open(other_ch)
    assert m.run(q_declare(other_ch, "ex", exclusive=True)) == [
        QueueDeclareOk(other_ch, "ex", 0, 0)]
    # publishing to it from anywhere is allowed
    m.open(CH2)
    m.run(enq(CH2, "ex"))
    assert m.state.vhosts["/"].queues["ex"].ready_count() == 1


def test_connection_close_deletes_exclusive_queues(m: Machine) -> None:
    m.run(q_declare(CH, "ex", exclusive=True), q_declare(CH, "keep"))
    m.run(bind(CH, "ex", "amq.fanout"))
    m.run(C.ConnectionClose(("n1", 1)))
    assert list(m.state.vhosts["/"].queues) == ["keep"]
    assert m.state.vhosts["/"].exchanges["amq.fanout"].bindings == {}
    assert m.state.conns == {} and m.state.channels == {}


def test_bind_errors(m: Machine) -> None:
    m.run(q_declare(CH, "q"))
    assert err(m.run(bind(CH, "q", "nox"))) == (
        404, "NOT_FOUND - no exchange 'nox' in vhost '/'", 50, 20)
    m.open(CH)
    assert err(m.run(bind(CH, "noq", "amq.direct"))) == (
        404, "NOT_FOUND - no queue 'noq' in vhost '/'", 50, 20)
    m.open(CH)
    assert m.run(bind(CH, "q", "amq.direct", "k")) == [QueueBindOk(CH)]
    assert m.run(bind(CH, "q", "amq.direct", "k")) == [QueueBindOk(CH)]  # idempotent
    assert len(m.state.vhosts["/"].exchanges["amq.direct"].bindings) == 1
    assert m.run(unbind(CH, "q", "amq.direct", "k")) == [QueueUnbindOk(CH)]
    assert m.run(unbind(CH, "q", "amq.direct", "k")) == [QueueUnbindOk(CH)]
    assert m.run(unbind(CH, "nq", "nx", "k")) == [QueueUnbindOk(CH)]


def test_empty_queue_name_means_last_declared(m: Machine) -> None:
    assert err(m.run(C.QueuePurge(CH, "", False)))[:2] == (
        404, "NOT_FOUND - no previously declared queue")
    m.open(CH)
    ok = m.run(q_declare(CH, ""))[0]
    assert isinstance(ok, QueueDeclareOk)
    name = ok.queue
    assert m.run(bind(CH, "", "amq.direct")) == [QueueBindOk(CH)]
    m.run(pub(CH, "amq.direct", name))  # routing key defaulted to the queue name
    assert m.run(C.QueuePurge(CH, "", False)) == [QueuePurgeOk(CH, 1)]


def test_purge_only_ready(m: Machine) -> None:
    m.run(q_declare(CH, "q"), enq(CH, "q"), C.Get(CH, "q", False), enq(CH, "q"), enq(CH, "q"))
    assert m.run(C.QueuePurge(CH, "q", False)) == [QueuePurgeOk(CH, 2)]
    assert list(queue_stats(m.state)) == [("/", "q", 0, 1, 0)]
    assert err(m.run(C.QueuePurge(CH, "nq", False))) == (
        404, "NOT_FOUND - no queue 'nq' in vhost '/'", 50, 30)


def test_queue_delete(m: Machine) -> None:
    assert m.run(C.QueueDelete(CH, "missing", False, False, False)) == [QueueDeleteOk(CH, 0)]
    m.run(q_declare(CH, "q"), enq(CH, "q"), enq(CH, "q"))
    assert err(m.run(C.QueueDelete(CH, "q", False, True, False))) == (
        406, "PRECONDITION_FAILED - queue 'q' in vhost '/' not empty", 50, 40)
    m.open(CH)
    m.run(q_declare(("n1", 1, 1), "q2"), consume(CH, "q2", "c"))
    assert err(m.run(C.QueueDelete(CH, "q2", True, False, False))) == (
        406, "PRECONDITION_FAILED - queue 'q2' in vhost '/' in use", 50, 40)
    m.open(CH)
    assert m.run(C.QueueDelete(CH, "q", False, False, False)) == [QueueDeleteOk(CH, 2)]


def test_queue_delete_cancels_consumers_everywhere(m: Machine) -> None:
    m.open(CH2)
    m.run(q_declare(CH, "q"), consume(CH, "q", "a"), consume(CH2, "q", "b"), enq(CH, "q"))
    eff = m.run(C.QueueDelete(CH, "q", False, False, False))
    # delete-ok before the cancels, as RabbitMQ orders them
    assert eff == [QueueDeleteOk(CH, 0), ConsumerCancelled(CH, "a"), ConsumerCancelled(CH2, "b")]
    assert m.state.channels[CH].consumers == {} and m.state.channels[CH2].consumers == {}
    # the message delivered to "a" is still unacked on CH; acking it is harmless
    assert m.run(C.Ack(CH, 1, False)) == []


def test_auto_delete_queue(m: Machine) -> None:
    m.run(q_declare(CH, "ad", auto_delete=True))
    queues = m.state.vhosts["/"].queues
    m.run(enq(CH, "ad"))
    assert "ad" in queues  # no consumer yet: stays
    m.run(consume(CH, "ad", "c1"), consume(CH, "ad", "c2"), C.Cancel(CH, "c1", False))
    assert "ad" in queues
    m.run(C.Cancel(CH, "c2", True))
    assert "ad" not in queues
    m.run(q_declare(CH, "ad2", auto_delete=True), consume(CH, "ad2", "c"))
    m.run(C.ChannelClose(CH))
    assert "ad2" not in queues


def test_unroutable_mandatory_returned_before_confirm(m: Machine) -> None:
    eff = m.run(pub(CH, "amq.direct", "nowhere", b"b", mandatory=True, confirm=7))
    assert [type(e).__name__ for e in eff] == ["Return", "Confirm"]
    assert eff[0] == Return(CH, 312, "NO_ROUTE", "amq.direct", "nowhere", b"\x00\x00", b"b")
    confirm = m.run(pub(CH, "", "noq", b"b", confirm=8))[0]
    assert isinstance(confirm, Confirm) and confirm.seq == 8  # non-mandatory: just the ack


def test_publish_to_missing_exchange_404(m: Machine) -> None:
    assert err(m.run(pub(CH, "nox", "k", confirm=1))) == (
        404, "NOT_FOUND - no exchange 'nox' in vhost '/'", 60, 40)


def test_consume_on_missing_queue_404(m: Machine) -> None:
    assert err(m.run(consume(CH, "nq"))) == (404, "NOT_FOUND - no queue 'nq' in vhost '/'",
                                            60, 20)
    m.open(CH)
    assert err(m.run(C.Get(CH, "nq", False)))[2:] == (60, 70)


def test_consume_ok_before_deliver(m: Machine) -> None:
    m.run(q_declare(CH, "q"), enq(CH, "q"))
    eff = m.run(consume(CH, "q", "t"))
    assert isinstance(eff[0], ConsumeOk) and len(eff) == 2
