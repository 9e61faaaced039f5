"""Layer 2 of the fuzzing: command logs with arbitrary field values.

The protocol layer validates what clients send; the log may still carry anything
a buggy or older node proposed, so the machine must hold on its own. Hypothesis
generates batches of every command with hostile values (property bytes, names,
arguments of every type, delivery tags, prefetch counts, channel and connection
ids in any order, clocks going back) and checks after every batch:

* ``apply_batch`` never raises and never reports an internal fault;
* a replica fed the same log, and one restored from a snapshot taken mid-log,
  stay equal to the main state and emit identical effects;
* every command addressed to an open channel that expects an answer gets
  exactly one: its reply, or a channel or connection error.

``make test`` runs a short profile; ``make fuzz`` sets ``FUZZ_EXAMPLES`` high.
"""

from __future__ import annotations

import datetime
import decimal
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster import commands as C
from cluster import effects as E
from cluster.machine import apply_batch, restore, snapshot
from protocol.properties import encode_properties
from tests.cluster.helpers import guest_state

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))

NODES = ["n1", "n2"]
CONNS = [(n, c) for n in NODES for c in (1, 2)]
CHANNELS = [(n, c, ch) for n, c in CONNS for ch in (1, 2)]
NAMES = ["", "q", "q2", "café", "amq.gen-1", "amq.direct", "amq.topic", "x", "dlx", "é" * 100,
         "a.b.c", "#", "*"]

# the widest integers the protocol can produce (longlong), and msgpack can carry
ints = st.one_of(st.integers(-5, 50), st.sampled_from([0, 2**31, 2**63 - 1, 2**64 - 1, -(2**63)]))
scalars = st.one_of(
    st.none(), st.booleans(), ints, st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.binary(max_size=8), st.sampled_from(NAMES + ["all", "any", "any-with-x", "drop-head",
                                                    "reject-publish", "reject-publish-dlx"]),
    st.decimals(allow_nan=False, allow_infinity=False, places=2),
    st.datetimes(min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2200, 1, 1),
                 timezones=st.just(datetime.UTC)),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
KEYS = ["x-message-ttl", "x-expires", "x-max-length", "x-max-length-bytes", "x-overflow",
        "x-dead-letter-exchange", "x-dead-letter-routing-key", "x-max-priority",
        "x-single-active-consumer", "x-queue-mode", "x-priority", "alternate-exchange",
        "x-match", "x-cancel-on-ha-failover", "k"]
arguments = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=4)), values,
                            max_size=4)
names = st.one_of(st.sampled_from(NAMES), st.sampled_from(NAMES), st.text(max_size=6))
chs = st.sampled_from(CHANNELS)
b = st.booleans()
good_props = st.builds(
    lambda exp, prio, hdr, dm: encode_properties(**{k: v for k, v in (
        ("expiration", exp), ("priority", prio), ("headers", hdr), ("delivery_mode", dm))
        if v is not None}),
    st.none() | st.sampled_from(["0", "5", "100", "-1", "x", "99999999999"]),
    st.none() | st.integers(0, 255),
    st.none() | st.dictionaries(st.sampled_from(["a", "b", "x-death", "CC"]), st.integers(0, 3),
                                max_size=2),
    st.none() | st.sampled_from([1, 2]),
)
props = st.one_of(good_props, st.binary(max_size=24),
                  st.sampled_from([b"\x01\x00", b"\x00\x10", b"\x08\x00", b"\x20\x00\x00"]))

lifecycle = st.one_of(
    st.builds(C.ConnectionOpen, st.sampled_from(CONNS), st.sampled_from(["/", "other"]),
              st.text(max_size=4)),
    st.builds(C.ConnectionClose, st.sampled_from(CONNS)),
    st.builds(C.ChannelOpen, chs),
    st.builds(C.ChannelClose, chs),
    st.builds(C.ConnectionFlow, st.sampled_from(CONNS), b),
    st.builds(C.NodeUp, st.sampled_from(NODES), st.integers(0, 3)),
    st.builds(C.NodeDown, st.sampled_from(NODES), st.integers(0, 3)),
    st.builds(C.Tick),
)
messages = st.one_of(
    st.builds(C.Publish, chs, st.sampled_from(["", "x", "dlx", "amq.fanout"]),
              st.sampled_from(["q", "q2", "café", "k"]), b, props, st.binary(max_size=16), ints),
    st.builds(C.Consume, chs, st.sampled_from(["q", "q2", "café"]), st.sampled_from(["", "t"]),
              b, b, b, arguments),
    st.builds(C.Get, chs, st.sampled_from(["q", "q2", "café"]), b),
    st.builds(C.Ack, chs, st.integers(0, 6), b),
    st.builds(C.Nack, chs, st.integers(0, 6), b, b, b),
)
channel_commands = st.one_of(
    st.builds(C.ExchangeDeclare, chs, names, st.sampled_from(["direct", "topic", "fanout",
                                                               "headers", "nope"]),
              b, b, b, b, b, arguments),
    st.builds(C.ExchangeDelete, chs, names, b, b),
    st.builds(C.ExchangeBind, chs, names, names, names, b, arguments),
    st.builds(C.ExchangeUnbind, chs, names, names, names, b, arguments),
    st.builds(C.QueueDeclare, chs, names, b, b, b, b, b, arguments),
    st.builds(C.QueueBind, chs, names, names, names, b, arguments),
    st.builds(C.QueueUnbind, chs, names, names, names, arguments),
    st.builds(C.QueuePurge, chs, names, b),
    st.builds(C.QueueDelete, chs, names, b, b, b),
    st.builds(C.Publish, chs, names, names, b, props, st.binary(max_size=16), ints),
    st.builds(C.Consume, chs, names, names, b, b, b, arguments),
    st.builds(C.Cancel, chs, names, b),
    st.builds(C.Get, chs, names, b),
    st.builds(C.Ack, chs, ints, b),
    st.builds(C.Nack, chs, ints, b, b, b),
    st.builds(C.Recover, chs, b),
    st.builds(C.Qos, chs, ints, b),
    st.builds(C.Flow, chs, b),
)
# channels close on every error: reopening often keeps commands reaching open ones
commands = st.one_of(messages, messages, channel_commands, lifecycle,
                     st.builds(C.ChannelOpen, chs))


def prelude() -> list[C.Command]:
    """Both nodes up, every connection and channel open, a few queues and exchanges:
    so that generated commands find something to act on."""
    admin = CHANNELS[0]
    cmds: list[C.Command] = [C.NodeUp("n1", 1), C.NodeUp("n2", 1)]
    cmds += [C.ConnectionOpen(c, "/", "guest") for c in CONNS]
    cmds += [C.ChannelOpen(ch) for ch in CHANNELS]
    cmds += [C.ExchangeDeclare(admin, "x", "direct", False, True, False, False, False, {}),
             C.ExchangeDeclare(admin, "dlx", "fanout", False, True, False, False, False, {})]
    for q, args in (("q", {}), ("q2", {"x-max-priority": 3, "x-message-ttl": 50,
                                        "x-dead-letter-exchange": "dlx", "x-max-length": 4}),
                    ("café", {"x-single-active-consumer": True, "x-expires": 400})):
        cmds.append(C.QueueDeclare(admin, q, False, True, False, False, False, args))
        cmds.append(C.QueueBind(admin, q, "x", q, False, {}))
    cmds.append(C.QueueBind(admin, "q", "dlx", "", False, {}))
    return cmds

# command type -> (reply effect types, has a nowait field)
REPLIES: dict[type, tuple[tuple[type, ...], bool]] = {
    C.ExchangeDeclare: ((E.ExchangeDeclareOk,), True),
    C.ExchangeDelete: ((E.ExchangeDeleteOk,), True),
    C.ExchangeBind: ((E.ExchangeBindOk,), True),
    C.ExchangeUnbind: ((E.ExchangeUnbindOk,), True),
    C.QueueDeclare: ((E.QueueDeclareOk,), True),
    C.QueueBind: ((E.QueueBindOk,), True),
    C.QueueUnbind: ((E.QueueUnbindOk,), False),
    C.QueuePurge: ((E.QueuePurgeOk,), True),
    C.QueueDelete: ((E.QueueDeleteOk,), True),
    C.Consume: ((E.ConsumeOk,), True),
    C.Cancel: ((E.CancelOk,), True),
    C.Get: ((E.GetOk, E.GetEmpty), False),
    C.Qos: ((E.QosOk,), False),
    C.Flow: ((E.FlowOk,), False),
    C.Recover: ((E.RecoverOk,), True),
}


def answers(cmd: C.Command, effects: list[E.Effect]) -> int:
    """How many answers (reply or error) ``cmd`` got among ``effects``."""
    ch = cmd.ch  # type: ignore[attr-defined]
    n = sum(1 for ef in effects if (isinstance(ef, E.ChannelError) and ef.ch == ch)
            or (isinstance(ef, E.ConnectionError) and ef.conn == ch[:2]))
    if isinstance(cmd, C.Publish):
        n += sum(1 for ef in effects if isinstance(ef, E.Confirm) and ef.ch == ch
                 and ef.seq == cmd.confirm_seq)
        return n
    kinds = REPLIES.get(type(cmd), ((), False))[0]
    return n + sum(1 for ef in effects if isinstance(ef, kinds) and getattr(ef, "ch", None) == ch)


def expects_answer(cmd: C.Command) -> bool:
    if isinstance(cmd, C.Publish):
        return cmd.confirm_seq != 0
    entry = REPLIES.get(type(cmd))
    if entry is None:
        return False
    return not (entry[1] and getattr(cmd, "nowait", False))


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(log=st.lists(st.tuples(st.sampled_from(NODES), st.integers(-5, 200),
                              st.lists(commands, min_size=1, max_size=4)),
                    min_size=1, max_size=30),
       cut=st.integers(0, 30))
def test_arbitrary_command_logs(log: list[tuple[str, int, list[C.Command]]], cut: int) -> None:
    main, replica = guest_state(), guest_state()
    for state in (main, replica):
        apply_batch(state, C.Batch("n1", 1, 0, 0, tuple(prelude())))
    restored: Any = None
    clock = 0
    for i, (node, dt, cmds) in enumerate(log):
        if i == cut:
            restored = restore(snapshot(main))
        clock += dt  # may go back: the machine only ever moves its clock forward
        # one command per entry, so every answer can be pinned to its command
        for j, raw in enumerate(cmds):
            # a node proposes for its own clients, in its current life
            key = getattr(raw, "ch", None) or getattr(raw, "conn", None)
            origin = key[0] if key else node
            info = main.nodes.get(origin)
            inc = info.incarnation if info is not None else 1
            # through the log's codec, as every replica sees it (lists become tuples...)
            batch = C.decode_batch(C.encode_batch(
                C.Batch(origin, inc, i * 10 + j + 1, clock, (raw,))))
            (cmd,) = batch.commands
            was_open = getattr(cmd, "ch", None) in main.channels
            effects = apply_batch(main, batch)
            assert not [e for e in effects if isinstance(e, E.Fault)], effects
            assert apply_batch(replica, batch) == effects
            if restored is not None:
                assert apply_batch(restored, batch) == effects
            if was_open and expects_answer(cmd):
                assert answers(cmd, effects) == 1, (cmd, effects)
            elif was_open and hasattr(cmd, "ch"):
                assert answers(cmd, effects) <= 1, (cmd, effects)
    assert replica == main
    if restored is not None:
        assert restored == main
        assert restore(snapshot(main)) == main


def test_values_msgpack_can_carry() -> None:
    """The command codec carries every argument type the fuzz uses."""
    cmd = C.QueueDeclare(("n1", 1, 1), "q", False, False, False, False, False, {
        "d": decimal.Decimal("1.25"), "t": datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
        "l": [1, None, {"x": b"y"}]})
    data = C.encode_batch(C.Batch("n1", 1, 1, 0, (cmd,)))
    [got] = C.decode_batch(data).commands
    assert isinstance(got, C.QueueDeclare)
    assert got.arguments == {**cmd.arguments, "l": (1, None, {"x": b"y"})}
