"""Policies and operator policies in the machine (cluster/machine/policies.py): RabbitMQ
3.10's precedence, live changes acting on the messages already queued, validation, and
replicas (one restored from a snapshot mid-log) staying equal with policy commands
interleaved with traffic."""

from __future__ import annotations

import pickle
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster import commands as C
from cluster import effects as E
from cluster.machine import policies as P
from cluster.machine import restore, snapshot
from cluster.machine.state import Msg, VHost
from tests.cluster.helpers import (
    CH,
    Machine,
    consume,
    enq,
    guest_state,
    q_declare,
    x_declare,
)


def setp(name: str, pattern: str, definition: dict[str, Any], priority: int = 0,
         apply_to: str = "all", operator: bool = False, vhost: str = "/") -> C.SetPolicy:
    return C.SetPolicy(vhost, name, pattern, apply_to, priority, definition, operator)


def machine() -> Machine:
    m = Machine()
    m.open(CH)
    return m


def queue(m: Machine, name: str) -> Any:
    return m.state.vhosts["/"].queues[name]


# --- precedence ---------------------------------------------------------------------------


def test_highest_priority_policy_applies_alone() -> None:
    m = machine()
    m.run(setp("low", "^q", {"message-ttl": 1000, "max-length": 5}, priority=1),
          setp("high", "^q", {"message-ttl": 2000}, priority=2),
          q_declare(CH, "q1"))
    q = queue(m, "q1")
    assert (q.policy, q.message_ttl, q.max_length) == ("high", 2000, None)
    m.run(C.ClearPolicy("/", "high"))
    assert (q.policy, q.message_ttl, q.max_length) == ("low", 1000, 5)
    m.run(C.ClearPolicy("/", "low"))
    assert (q.policy, q.message_ttl, q.max_length) == (None, None, None)


def test_equal_priorities_first_name_wins_and_apply_to() -> None:
    m = machine()
    m.run(setp("b", "q", {"max-length": 2}), setp("a", "q", {"max-length": 3}),
          setp("x", "q", {"max-length": 9}, priority=5, apply_to="exchanges"),
          q_declare(CH, "q1"))
    assert (queue(m, "q1").policy, queue(m, "q1").max_length) == ("a", 3)


def test_client_arguments_against_policy() -> None:
    """Numeric limits: the lower wins; dead-lettering, overflow: the client's wins."""
    m = machine()
    m.run(setp("p", ".*", {"message-ttl": 1000, "max-length": 50, "overflow": "reject-publish",
                           "dead-letter-exchange": "pdlx"}),
          q_declare(CH, "q1", arguments={"x-message-ttl": 500, "x-max-length": 100,
                                         "x-overflow": "drop-head",
                                         "x-dead-letter-exchange": "cdlx"}),
          q_declare(CH, "q2"))
    q1, q2 = queue(m, "q1"), queue(m, "q2")
    assert (q1.message_ttl, q1.max_length, q1.overflow, q1.dlx) == (500, 50, "drop-head", "cdlx")
    assert (q2.message_ttl, q2.max_length, q2.overflow, q2.dlx) == (1000, 50, "reject-publish",
                                                                    "pdlx")
    assert q1.arguments == {"x-message-ttl": 500, "x-max-length": 100,
                            "x-overflow": "drop-head", "x-dead-letter-exchange": "cdlx"}


def test_operator_policy_caps() -> None:
    m = machine()
    m.run(setp("p", ".*", {"max-length": 10, "message-ttl": 100, "dead-letter-exchange": "d"}),
          setp("op", ".*", {"max-length": 3, "message-ttl": 5000, "expires": 60000},
               operator=True),
          q_declare(CH, "q1", arguments={"x-max-length": 7}))
    q = queue(m, "q1")
    assert (q.policy, q.operator_policy) == ("p", "op")
    assert (q.max_length, q.message_ttl, q.expires, q.dlx) == (3, 100, 60000, "d")
    vh = m.state.vhosts["/"]
    assert P.effective_definition(vh, q.policy, q.operator_policy) == {
        "max-length": 3, "message-ttl": 100, "dead-letter-exchange": "d", "expires": 60000}


def test_exchange_alternate_exchange_by_policy() -> None:
    m = machine()
    m.run(x_declare(CH, "ae", "fanout"), q_declare(CH, "unrouted"),
          C.QueueBind(CH, "unrouted", "ae", "", False, {}),
          x_declare(CH, "x1"),
          setp("ae", "^x1$", {"alternate-exchange": "ae"}, apply_to="exchanges"))
    assert m.state.vhosts["/"].exchanges["x1"].policy == "ae"
    m.run(C.Publish(CH, "x1", "nowhere", False, b"\x00\x00", b"m", 0))
    assert queue(m, "unrouted").ready_count() == 1
    m.run(C.ClearPolicy("/", "ae"), C.Publish(CH, "x1", "nowhere", False, b"\x00\x00", b"m", 0))
    assert queue(m, "unrouted").ready_count() == 1


# --- live changes -------------------------------------------------------------------------


def test_lower_max_length_drops_the_head_at_once_into_the_dlx() -> None:
    m = machine()
    dl = {"dead-letter-exchange": "", "dead-letter-routing-key": "dead"}
    m.run(q_declare(CH, "q"), q_declare(CH, "dead"), setp("ml", "^q$", dl),
          *(enq(CH, "q", b"m%d" % i) for i in range(5)))
    m.run(setp("ml", "^q$", {"max-length": 2, **dl}))
    assert queue(m, "q").ready_count() == 2
    assert queue(m, "dead").ready_count() == 3
    out = m.run(C.Get(CH, "q", True))
    ok = [e for e in out if isinstance(e, E.GetOk)]
    assert m.body(ok[0]) == b"m3"


def test_ttl_applies_to_messages_arriving_afterwards() -> None:
    """As RabbitMQ 3.10's classic queues: messages already queued keep their expiry
    (none), the new message-ttl applies to those that come after."""
    m = machine()
    m.run(q_declare(CH, "q"), enq(CH, "q", b"old"))
    m.run(setp("ttl", "^q$", {"message-ttl": 100}))
    m.at(1000)
    assert queue(m, "q").ready_count() == 1
    m.run(C.Get(CH, "q", True), enq(CH, "q", b"new"))
    m.at(2000)
    assert queue(m, "q").ready_count() == 0


def test_expires_by_policy_counts_from_when_it_is_set() -> None:
    m = machine()
    m.at(1000, q_declare(CH, "q"))
    m.at(50_000, setp("exp", "^q$", {"expires": 10_000}))
    m.at(55_000)
    assert "q" in m.state.vhosts["/"].queues
    m.at(60_001)
    assert "q" not in m.state.vhosts["/"].queues


def test_consumer_still_served_after_policy_change() -> None:
    m = machine()
    m.run(q_declare(CH, "q"), consume(CH, "q", "c", no_ack=True))
    m.run(setp("p", "^q$", {"max-length": 1, "message-ttl": 60000}))
    out = m.run(enq(CH, "q", b"a"))
    assert [e for e in out if isinstance(e, E.Deliver)]


# --- validation ---------------------------------------------------------------------------


def test_validation_messages_as_rabbitmq() -> None:
    assert P.definition_problem({"foo": 1, "bar": 2}) == (
        '[{<<"bar">>,2},{<<"foo">>,1}] are not recognised policy settings')
    assert P.definition_problem({"message-ttl": "x"}) == '<<"x">> is not a valid message TTL'
    assert P.definition_problem({"message-ttl": -1, "expires": 0}) == (
        "0 is not a valid queue expiry")
    assert P.definition_problem({}) == "no policy provided"
    assert P.definition_problem({"expires": {"a": 1}}) == (
        '#{<<"a">> => 1} is not a valid queue expiry')
    assert P.definition_problem({"dead-letter-exchange": "x"}, operator=True) == (
        '[{<<"dead-letter-exchange">>,<<"x">>}] are not recognised policy settings')
    assert P.definition_problem({"ha-mode": "exactly"}) == (
        'ha-mode="exactly" takes an integer, none given')
    assert P.problem("x", "foo", 0, {"max-length": 1}) == (
        "apply-to 'foo' unrecognised; should be 'queues', 'exchanges' or 'all'")
    assert P.problem("x", "all", "5", {"max-length": 1}) == (
        'priority should be a number, actually was <<"5">>')
    assert P.problem(1, "all", 0, {"max-length": 1}) == "pattern should be a binary but was 1"
    assert P.problem("(a)\\1", "all", 0, {"max-length": 1}) is not None  # no backreferences


def test_invalid_command_is_ignored_and_hostile_pattern_is_linear() -> None:
    m = machine()
    m.run(setp("bad", "(", {"max-length": 1}), setp("bad2", ".*", {"nope": 1}),
          setp("novhost", ".*", {"max-length": 1}, vhost="nosuch"))
    assert not m.state.vhosts["/"].policies
    # (a+)+$ against a long name: exponential for a backtracking engine, linear for RE2
    m.run(setp("evil", "(a+)+$", {"max-length": 1}), q_declare(CH, "a" * 200 + "!"))
    assert queue(m, "a" * 200 + "!").policy is None


def test_old_vhost_and_queue_pickles_load_without_policies() -> None:
    vh = VHost("/")
    d = dict(vh.__dict__)
    del d["policies"], d["operator_policies"]
    old = VHost.__new__(VHost)
    old.__setstate__(d)
    assert old.policies == {} and old.operator_policies == {}
    state = guest_state()
    q = Machine(state)
    q.open(CH)
    q.run(q_declare(CH, "q"))
    qq = state.vhosts["/"].queues["q"]
    qd = dict(qq.__dict__)
    del qd["policy"], qd["operator_policy"]
    restored = type(qq).__new__(type(qq))
    restored.__setstate__(qd)
    assert restored.policy is None and restored.operator_policy is None


# --- replicas -----------------------------------------------------------------------------

_QUEUES = ["q0", "q1", "dlq"]
_cmds = st.one_of(
    st.builds(lambda q, b: enq(CH, q, b), st.sampled_from(_QUEUES), st.binary(max_size=3)),
    st.builds(lambda b: C.Publish(CH, "fan", "", False, b"\x00\x00", b, 0),
              st.binary(max_size=3)),
    st.builds(lambda q: C.QueueBind(CH, q, "fan", "", False, {}), st.sampled_from(_QUEUES)),
    st.builds(lambda q: q_declare(CH, q, arguments={"x-dead-letter-exchange": "",
                                                    "x-dead-letter-routing-key": "dlq"}),
              st.sampled_from(_QUEUES)),
    st.builds(lambda q: C.Get(CH, q, False), st.sampled_from(_QUEUES)),
    st.builds(lambda t, rq: C.Nack(CH, t, False, rq), st.integers(1, 20), st.booleans()),
    st.builds(lambda q: q_declare(CH, q), st.sampled_from(_QUEUES)),
    st.builds(lambda q: C.Get(CH, q, True), st.sampled_from(_QUEUES)),
    st.builds(lambda q: C.QueueDelete(CH, q, False, False, False), st.sampled_from(_QUEUES)),
    st.builds(lambda n, pat, ml, ttl, prio, op, mb: setp(
        n, pat, {k: v for k, v in (("max-length", ml), ("message-ttl", ttl),
                                   ("max-length-bytes", mb)) if v is not None}
        | ({} if op else {"dead-letter-exchange": "", "dead-letter-routing-key": "dlq"}),
        priority=prio, operator=op),
        st.sampled_from(["p1", "p2"]), st.sampled_from(["^q", "q1", ".*", "dl"]),
        st.one_of(st.none(), st.integers(0, 3)), st.integers(0, 50), st.integers(0, 2),
        st.booleans(), st.one_of(st.none(), st.integers(0, 6))),
    st.builds(lambda n, op: C.ClearPolicy("/", n, op), st.sampled_from(["p1", "p2"]),
              st.booleans()),
    st.just(C.Tick()),
    st.just(C.ChannelOpen(CH)),  # again after a channel error (ignored while open)
)


def _headers_counted(state: Any) -> None:
    """Every header the machine keeps counts exactly the queues (and their unacked
    deliveries) that keep it (messages.rebuild_headers' count)."""
    from cluster.machine import messages
    from cluster.machine.state import entry_id

    held: dict[int, int] = {}
    for q in state.queues.values():
        if messages.holds(q) and not q.deleted:
            for i in [entry_id(m) for m in q.ready] + [m.id for _k, m in q.returned]:
                held[i] = held.get(i, 0) + 1
    for ch in state.channels.values():
        for q, m, _c in ch.unacked.values():
            if messages.holds(q):
                held[entry_id(m)] = held.get(entry_id(m), 0) + 1
    for i, h in state.headers.items():
        assert h[4] == held.get(i), (i, h, held.get(i))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_cmds, st.integers(0, 40)), max_size=40), st.integers(0, 40))
def test_replicas_equal_with_policies_interleaved(steps: list[tuple[C.Command, int]],
                                                  cut: int) -> None:
    a, b = machine(), machine()
    for m in (a, b):
        m.run(x_declare(CH, "fan", "fanout"))
    now = 0
    for i, (cmd, dt) in enumerate(steps):
        now += dt
        if i == cut:
            b.state = restore(snapshot(b.state))
        ea, eb = a.at(now, cmd), b.at(now, cmd)
        assert [type(e) for e in ea] == [type(e) for e in eb]
        assert not [e for e in ea if isinstance(e, E.Fault)], ea
        _headers_counted(a.state)
    assert a.state == b.state
    assert pickle.loads(pickle.dumps(a.state)) == a.state
    vh = a.state.vhosts["/"]
    for q in vh.queues.values():  # every queue carries what matching says now
        p = P.match(vh.policies, "queues", q.name)
        op = P.match(vh.operator_policies, "queues", q.name)
        assert (q.policy, q.operator_policy) == (p.name if p else None, op.name if op else None)
        if q.max_length is not None:
            assert q.ready_count() <= q.max_length
        if q.max_length_bytes is not None:
            assert q.ready_bytes == sum(m.size for m in q.ready if isinstance(m, Msg)) + sum(
                m.size for _k, m in q.returned)


def test_headers_follow_a_policy_given_or_taken_dlx() -> None:
    """A message held by two queues, one with a dead-letter exchange of its own: a policy
    gives the other one a dead-letter exchange, then the message dies in both, and both
    copies are dead-lettered; a policy taking a dead-letter exchange away lets go of the
    headers it kept."""
    m = machine()
    m.run(x_declare(CH, "fan", "fanout"), q_declare(CH, "dlq"),
          q_declare(CH, "q1", arguments={"x-dead-letter-exchange": "",
                                         "x-dead-letter-routing-key": "dlq"}),
          q_declare(CH, "q2"),
          C.QueueBind(CH, "q1", "fan", "", False, {}), C.QueueBind(CH, "q2", "fan", "", False, {}),
          C.Publish(CH, "fan", "", False, b"\x00\x00", b"both", 0))
    m.run(setp("dl", "^q2$", {"dead-letter-exchange": "", "dead-letter-routing-key": "dlq",
                              "max-length": 0}))
    assert queue(m, "q2").ready_count() == 0 and queue(m, "dlq").ready_count() == 1
    out = m.run(C.Get(CH, "q1", False))
    tag = next(e for e in out if isinstance(e, E.GetOk)).delivery_tag
    m.run(C.Nack(CH, tag, False, False, True))
    assert queue(m, "dlq").ready_count() == 2
    assert not m.state.headers
    m.run(q_declare(CH, "q3"), setp("dl3", "^q3$", {"dead-letter-exchange": "x"}),
          enq(CH, "q3", b"held"))
    assert len(m.state.headers) == 1
    m.run(C.ClearPolicy("/", "dl3"))
    assert not m.state.headers


def test_delivery_limit_by_policy_the_lower_wins() -> None:
    m = machine()
    m.run(setp("dl", "^q", {"delivery-limit": 2}), q_declare(CH, "q1"),
          q_declare(CH, "q2", arguments={"x-delivery-limit": 5}),
          q_declare(CH, "q3", arguments={"x-delivery-limit": 1}))
    assert [queue(m, n).delivery_limit for n in ("q1", "q2", "q3")] == [2, 2, 1]
    m.run(C.ClearPolicy("/", "dl"))
    assert [queue(m, n).delivery_limit for n in ("q1", "q2", "q3")] == [None, 5, 1]


def test_a_bytes_limit_by_policy_counts_what_is_there() -> None:
    m = machine()
    m.run(q_declare(CH, "q", arguments={"x-message-ttl": 60000}),
          *(enq(CH, "q", b"x" * 10) for _ in range(3)))
    m.run(setp("b", "^q$", {"max-length-bytes": 25}))
    q = queue(m, "q")
    assert (q.ready_count(), q.ready_bytes) == (2, 20)
    m.run(C.Get(CH, "q", True), C.Get(CH, "q", True), C.ClearPolicy("/", "b"),
          enq(CH, "q", b"y" * 10), setp("b", "^q$", {"max-length-bytes": 100}))
    assert (q.ready_count(), q.ready_bytes) == (1, 10)
