"""x-message-deduplication exchanges (the rabbitmq-message-deduplication plugin's
interface) in the machine: a duplicate is confirmed and dropped; the cache is bounded,
expires and is replicated."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster import commands as C
from cluster.effects import ChannelError, Confirm, ConnectionError, GetEmpty, GetOk, Return
from protocol.properties import decode_properties
from tests.cluster import helpers
from tests.cluster.helpers import CH, Machine, bind, of_type, props, pub, q_declare, x_declare


def dedup_x(m: Machine, **args: Any) -> list[Any]:
    return m.run(x_declare(CH, "ddx", "x-message-deduplication",
                           arguments={"x-cache-size": 3, **args}))


def keyed(key: Any, **headers: Any) -> bytes:
    return props(headers={"x-deduplication-header": key, **headers})


def count(m: Machine, q: str = "q") -> int:
    n = 0
    while isinstance([e for e in m.run(C.Get(CH, q, True)) if isinstance(e, GetOk | GetEmpty)][0],
                     GetOk):
        n += 1
    return n


@pytest.fixture
def dm(m: Machine) -> Machine:
    dedup_x(m)
    m.run(q_declare(CH, "q"), q_declare(CH, "q2"), bind(CH, "q", "ddx", "a"),
          bind(CH, "q2", "ddx", "b"))
    return m


def test_a_duplicate_is_confirmed_and_dropped(dm: Machine) -> None:
    eff = dm.run(pub(CH, "ddx", "any", b"1", props=keyed("k"), confirm=1))
    assert of_type(eff, Confirm) == [Confirm(CH, 1, True)]
    assert (count(dm), count(dm, "q2")) == (1, 1)  # routed as fanout: every binding
    eff = dm.run(pub(CH, "ddx", "any", b"2", props=keyed("k"), confirm=2, mandatory=True))
    assert [type(e) for e in eff] == [Return, Confirm]
    assert of_type(eff, Confirm) == [Confirm(CH, 2, True)]
    assert (count(dm), count(dm, "q2")) == (0, 0)
    dm.run(pub(CH, "ddx", "", b"3", props=props()), pub(CH, "ddx", "", b"4", props=props()))
    assert count(dm) == 2  # without the header: never a duplicate
    dm.run(pub(CH, "ddx", "", b"5", props=keyed(1)))
    assert count(dm) == 1  # a value of another type is another value


def test_the_cache_is_bounded_oldest_first(dm: Machine) -> None:
    for k in ("a", "b", "c", "d"):  # size 3: "a" gives way to "d"
        dm.run(pub(CH, "ddx", "", b"x", props=keyed(k)))
    assert count(dm) == 4
    dm.run(pub(CH, "ddx", "", b"x", props=keyed("b")), pub(CH, "ddx", "", b"x", props=keyed("a")))
    assert count(dm) == 1
    ex = dm.state.vhosts["/"].exchanges["ddx"]
    assert ex.dedup is not None and len(ex.dedup) == 3


def test_ttl_from_the_exchange_or_the_message(m: Machine) -> None:
    dedup_x(m, **{"x-cache-ttl": 100})
    m.run(q_declare(CH, "q"), bind(CH, "q", "ddx"))
    m.at(0, pub(CH, "ddx", "", b"x", props=keyed("a")),
         pub(CH, "ddx", "", b"x", props=keyed("b", **{"x-cache-ttl": 500})))
    m.at(99, pub(CH, "ddx", "", b"x", props=keyed("a")))
    assert count(m) == 2
    m.at(100, pub(CH, "ddx", "", b"x", props=keyed("a")),
         pub(CH, "ddx", "", b"x", props=keyed("b")))
    assert count(m) == 1  # "a" expired, "b" kept 500 ms by its own header
    m.at(500, pub(CH, "ddx", "", b"x", props=keyed("b")))
    assert count(m) == 1


@pytest.mark.parametrize(("args", "text"), [
    ({}, "Missing or invalid argument, 'x-cache-size' must be an integer greater than 0"),
    ({"x-cache-size": 0}, "Missing or invalid argument, 'x-cache-size' must be an integer "
                          "greater than 0"),
    ({"x-cache-size": "abc"}, "Missing or invalid argument, 'x-cache-size' must be an integer "
                              "greater than 0"),
    ({"x-cache-size": 5, "x-cache-ttl": -1}, "Invalid argument, 'x-cache-ttl' must be an "
                                             "integer greater than 0"),
    ({"x-cache-size": 5, "x-cache-persistence": "ram"}, "Invalid argument, "
     "'x-cache-persistence' must be either 'disk' or 'memory'"),
])
def test_declare_checks_as_the_plugin(m: Machine, args: dict[str, Any], text: str) -> None:
    (err,) = of_type(m.run(x_declare(CH, "ddx", "x-message-deduplication", arguments=args)),
                     ChannelError)
    assert (err.reply_code, err.reply_text) == (406, "PRECONDITION_FAILED - " + text)


def test_declare_takes_a_string_size_and_the_persistence(m: Machine) -> None:
    eff = m.run(x_declare(CH, "ddx", "x-message-deduplication",
                          arguments={"x-cache-size": "10", "x-cache-persistence": "disk"}))
    assert not of_type(eff, ChannelError)


def test_not_below_level_4(m: Machine) -> None:
    m.state.level = 3
    (err,) = of_type(dedup_x(m), ConnectionError)
    assert err.reply_code == 503


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 4), st.sampled_from([None, 5, 20]),
       st.lists(st.tuples(st.sampled_from([None, "a", "b", "c", "d", "e"]), st.integers(0, 6),
                          st.sampled_from([None, 3, 30]), st.booleans()),
                min_size=1, max_size=40))
def test_routed_exactly_when_not_a_duplicate(size: int, ttl: int | None,
                                             plan: list[tuple[str | None, int, int | None,
                                                              bool]]) -> None:
    """A model cache (insertion ordered, oldest out when full, entries expiring at their
    TTL) says which publishes are duplicates; the machine agrees, and a replica restored
    from a snapshot midway stays equal."""
    m = Machine()
    m.open(CH)
    args: dict[str, Any] = {"x-cache-size": size}
    if ttl is not None:
        args["x-cache-ttl"] = ttl
    dedup_x(m, **args)
    m.run(q_declare(CH, "q"), bind(CH, "q", "ddx"))
    model: dict[str, int | None] = {}
    now = 0
    replica: Machine | None = None
    for i, (key, dt, msg_ttl, snap) in enumerate(plan):
        now += dt
        hdr: dict[str, Any] = {}
        if key is not None:
            hdr["x-deduplication-header"] = key
        if msg_ttl is not None:
            hdr["x-cache-ttl"] = msg_ttl
        cmd = pub(CH, "ddx", "", b"%d" % i, props=props(headers=hdr), confirm=i + 1)
        eff = m.at(now, cmd)
        if replica is not None:
            assert replica.at(now, cmd) == eff
        routed = count(m) == 1
        if replica is not None:
            assert count(replica) == int(routed)
        expect = True
        if key is not None:
            exp = model.get(key, 0)
            if key in model and (exp is None or exp > now):
                expect = False
            else:
                model.pop(key, None)
                while len(model) >= size:
                    del model[next(iter(model))]
                t = msg_ttl if msg_ttl is not None else ttl
                model[key] = now + t if t is not None else None
        assert routed == expect, (i, key, now, model)
        assert of_type(eff, Confirm) == [Confirm(CH, i + 1, True)]
        if snap and replica is None:
            replica = Machine(helpers.clone(m.state))
    if replica is not None:
        assert replica.state == m.state
    held, live = helpers.held_references(m.state)
    assert held == live


# --- queue level ----------------------------------------------------------------------------


@pytest.fixture
def dq(m: Machine) -> Machine:
    m.run(q_declare(CH, "q", arguments={"x-message-deduplication": True}))
    return m


def enq_k(key: Any, confirm: int = 0, mandatory: bool = False) -> C.Publish:
    return pub(CH, "", "q", b"m", props=keyed(key), confirm=confirm, mandatory=mandatory)


def depth(m: Machine, q: str = "q") -> int:
    return m.state.vhosts["/"].queues[q].ready_count()


def get_tag(m: Machine, no_ack: bool = False) -> int:
    (e,) = of_type(m.run(C.Get(CH, "q", no_ack)), GetOk)
    return int(e.delivery_tag)


def test_queue_drops_a_value_it_holds(dq: Machine) -> None:
    dq.run(enq_k("a"))
    eff = dq.run(enq_k("a", confirm=7, mandatory=True))
    assert eff == [Confirm(CH, 7, True)]  # dropped, confirmed, not returned (it was routed)
    assert depth(dq) == 1
    dq.run(pub(CH, "", "q", b"m", props=props()), pub(CH, "", "q", b"m", props=props()))
    assert depth(dq) == 3  # without the header: always enqueued


def test_queue_frees_a_value_when_its_message_goes(dq: Machine) -> None:
    dq.run(enq_k("a"))
    tag = get_tag(dq)
    dq.run(enq_k("a"))
    assert depth(dq) == 0  # delivered, not acknowledged: still held
    dq.run(C.Nack(CH, tag, False, True))  # requeued: still held
    dq.run(enq_k("a"))
    assert depth(dq) == 1
    tag = get_tag(dq)
    dq.run(C.Ack(CH, tag, False))
    dq.run(enq_k("a"))
    assert depth(dq) == 1  # acknowledged: free again
    get_tag(dq, no_ack=True)
    dq.run(enq_k("a"))
    assert depth(dq) == 1  # fetched without ack: free again
    dq.run(C.QueuePurge(CH, "q", False), enq_k("a"))
    assert depth(dq) == 1
    dq.run(C.Nack(CH, get_tag(dq), False, False), enq_k("a"))  # rejected: free
    assert depth(dq) == 1
    q = dq.state.vhosts["/"].queues["q"]
    assert q.dedup_keys is not None and len(q.dedup_keys) == 1


def test_only_the_deduplication_queue_drops_it(dq: Machine) -> None:
    dq.run(q_declare(CH, "plain"), x_declare(CH, "f", "fanout"), bind(CH, "q", "f"),
           bind(CH, "plain", "f"))
    dq.run(*[pub(CH, "f", "", b"m", props=keyed("a")) for _ in range(2)])
    assert (depth(dq), depth(dq, "plain")) == (1, 2)


def test_expired_and_dead_lettered_into_a_deduplication_queue(m: Machine) -> None:
    m.run(x_declare(CH, "dlx", "fanout"),
          q_declare(CH, "dlq", arguments={"x-message-deduplication": True}),
          bind(CH, "dlq", "dlx"),
          q_declare(CH, "q", arguments={"x-message-ttl": 10, "x-dead-letter-exchange": "dlx",
                                        "x-message-deduplication": True}))
    m.at(0, enq_k("a"))
    m.at(5, enq_k("a"))  # held in q
    m.at(10, enq_k("a"))  # the first expired (to dlq) before this one: q takes it
    assert (depth(m, "q"), depth(m, "dlq")) == (1, 1)
    m.at(20)  # that one expires too: dlq already holds "a"
    assert (depth(m, "q"), depth(m, "dlq")) == (0, 1)
    held, live = helpers.held_references(m.state)
    assert held == live


def test_with_a_delivery_limit_a_returned_message_keeps_its_value(m: Machine) -> None:
    m.run(q_declare(CH, "q", arguments={"x-message-deduplication": True,
                                        "x-delivery-limit": 5}), enq_k("a"))
    m.run(C.Nack(CH, get_tag(m), False, True))  # returned: a new record, same value
    m.run(enq_k("a"))
    assert depth(m) == 1
    m.run(C.Ack(CH, get_tag(m), False), enq_k("a"))
    assert depth(m) == 1


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["pub", "get", "getna", "ack", "nack", "reject",
                                           "close", "tick"]),
                          st.sampled_from([None, "a", "b", "c"])),
                min_size=1, max_size=40))
def test_queue_values_are_those_of_the_messages_it_holds(
        ops: list[tuple[str, str | None]]) -> None:
    """Whatever happens, a deduplication queue's values are exactly those of the messages
    it holds (ready or unacked), each once; a replica restored midway stays equal."""
    m = Machine()
    m.open(CH)
    m.run(q_declare(CH, "q", arguments={"x-message-deduplication": True, "x-delivery-limit": 2,
                                        "x-message-ttl": 25}))
    replica: Machine | None = None
    now = 0
    for i, (op, key) in enumerate(ops):
        now += 3
        if op == "pub":
            hdr = {} if key is None else {"x-deduplication-header": key}
            cmds: tuple[C.Command, ...] = (pub(CH, "", "q", b"%d" % i, props=props(headers=hdr)),)
        elif op in ("get", "getna"):
            cmds = (C.Get(CH, "q", op == "getna"),)
        elif op == "close":
            cmds = (C.ChannelClose(CH), C.ChannelOpen(CH))
        elif op == "tick":
            cmds = (C.Tick(),)
        else:
            tags = sorted(m.state.channels[CH].unacked)
            if not tags:
                continue
            cmds = (C.Ack(CH, tags[0], False) if op == "ack" else
                    C.Nack(CH, tags[0], False, op == "nack"),)
        eff = m.at(now, *cmds)
        if replica is not None:
            assert replica.at(now, *cmds) == eff
        elif i == len(ops) // 2:
            replica = Machine(helpers.clone(m.state))
        q = m.state.vhosts["/"].queues["q"]
        present: list[bytes] = []
        ids = [e if isinstance(e, int) else e.id for e in q.ready]
        ids += [e.id for _k, e in q.returned]
        ids += [e if isinstance(e, int) else e.id for qq, e, _c in
                m.state.channels[CH].unacked.values() if qq is q]
        for mid in ids:
            h = decode_properties(helpers.stored(m.state, mid)[2]).get("headers") or {}
            if "x-deduplication-header" in h:
                present.append(h["x-deduplication-header"].encode())
        assert len(present) == len(set(present)), present
        assert q.dedup_keys is not None and q.dedup_ids is not None
        assert sorted(k[5:] for k in q.dedup_keys) == sorted(present)  # (b"S" + length)
        assert sorted(q.dedup_ids) == sorted(q.dedup_keys.values())
        held, live = helpers.held_references(m.state)
        assert held == live
    if replica is not None:
        assert replica.state == m.state
