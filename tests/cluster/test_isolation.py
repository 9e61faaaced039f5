"""Apply isolation: a command that fails or raises inside a batch stays with its own
channel or connection; the rest of the batch applies, identically on every replica."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from cluster import commands as C
from cluster import effects as E
from cluster.machine import apply_batch, restore, snapshot
from tests.cluster.helpers import enq, guest_state, of_type, props, q_declare, stored

BAD = ("n1", 1, 1)  # the hostile client's channel
GOOD = ("n2", 7, 1)  # another client's channel, another node
# the module (the package exports its function of the same name)
apply_module = importlib.import_module("cluster.machine.apply")


def opened_state() -> Any:
    state = guest_state()
    apply_batch(state, C.Batch("n1", 1, 1, 1, (
        C.ConnectionOpen(BAD[:2], "/", "guest"), C.ChannelOpen(BAD),
        C.ConnectionOpen(GOOD[:2], "/", "guest"), C.ChannelOpen(GOOD),
        q_declare(GOOD, "q", durable=True),
        q_declare(BAD, "excl", exclusive=True),
    )))
    return state


def run(state: Any, *cmds: C.Command, seq: int = 2) -> list[E.Effect]:
    return apply_batch(state, C.Batch("n1", 1, seq, 2, cmds))


def test_poisoned_properties_in_the_log_do_not_drop_the_rest_of_the_batch() -> None:
    state = opened_state()
    replica = restore(snapshot(state))
    batch = (
        enq(BAD, "q", b"poison", props=b"\x01\x00", confirm=1),  # expiration flag, no bytes
        enq(GOOD, "q", b"valid", confirm=1),
        C.Get(GOOD, "q", True),
    )
    out = run(state, *batch)
    # the bad publish is a frame error for its own connection...
    [err] = of_type(out, E.ConnectionError)
    assert (err.conn, err.reply_code) == (BAD[:2], 501)
    assert BAD[:2] not in state.conns
    # ...whose exclusive queue is gone with it
    assert "excl" not in state.vhosts["/"].queues
    # the other client's publish in the same entry is confirmed and consumable
    assert E.Confirm(GOOD, 1, True) in out
    [got] = of_type(out, E.GetOk)
    assert stored(state, got)[3] == b"valid"
    assert not of_type(out, E.Fault)
    # every replica computes the same
    assert run(replica, *batch) == out
    assert replica == state


def test_a_command_that_raises_is_a_fault_for_its_connection_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = opened_state()
    replica = restore(snapshot(state))

    def broken(state: Any, ch: Any, cmd: Any, out: list[E.Effect]) -> None:
        if cmd.queue == "boom":
            raise KeyError("a bug")

    monkeypatch.setitem(apply_module._CHANNEL_HANDLERS, C.QueuePurge, broken)
    batch = (
        C.QueuePurge(BAD, "boom", False),
        enq(GOOD, "q", b"after", confirm=1),
    )
    out = run(state, *batch)
    [fault] = of_type(out, E.Fault)
    assert fault.node == "n1" and "QueuePurge" in fault.command and "KeyError" in fault.error
    [err] = of_type(out, E.ConnectionError)
    assert (err.conn, err.reply_code) == (BAD[:2], 541)
    assert BAD[:2] not in state.conns and "excl" not in state.vhosts["/"].queues
    assert E.Confirm(GOOD, 1, True) in out
    assert run(replica, *batch) == out
    assert replica == state


def test_a_fault_in_a_connection_command_and_in_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    state = opened_state()

    def broken(state: Any, cmd: Any, out: list[E.Effect]) -> None:
        raise RuntimeError("bug")

    monkeypatch.setitem(apply_module._OTHER_HANDLERS, C.ChannelOpen, broken)
    out = run(state, C.ChannelOpen((BAD[0], BAD[1], 2)), enq(GOOD, "q", confirm=5))
    assert of_type(out, E.Fault) and E.Confirm(GOOD, 5, True) in out
    assert [e.conn for e in of_type(out, E.ConnectionError)] == [BAD[:2]]


def test_long_fields_are_shortened_in_the_fault_description() -> None:
    text = apply_module.describe(enq(BAD, "q", b"x" * 1_000_000))
    assert len(text) < 1000 and "(1000000)" in text


def test_undecodable_commands_are_skipped_and_counted() -> None:
    import msgpack

    good = C.encode_command(enq(GOOD, "q", b"m"))
    data = msgpack.packb([C.FORMAT_VERSION, "n1", 1, 3, 4,
                          [[9999, 1], good, [30, "too", "few"], "junk"]], use_bin_type=True)
    batch = C.decode_batch(data)
    assert batch.skipped == 3 and len(batch.commands) == 1
    for junk in (b"", b"\xc1", msgpack.packb([2, "n1"]), msgpack.packb([1, 5, "x", 1, 1, []]),
                 msgpack.packb(12)):
        with pytest.raises(ValueError):
            C.decode_batch(junk)


def test_expiration_is_still_refused_as_rabbitmq_does() -> None:
    state = opened_state()
    out = run(state, enq(GOOD, "q", props=props(expiration="soon"), confirm=1))
    [err] = of_type(out, E.ChannelError)
    assert err.reply_code == 406 and "invalid expiration" in err.reply_text


def test_the_machine_does_not_load_pamqp() -> None:
    """The machine's only imports from protocol/ are standard-library modules."""
    import subprocess
    import sys

    code = ("import sys, cluster.machine, cluster.commands, cluster.effects; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pamqp', 'protocol')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert eval(out) == ["protocol", "protocol.constants", "protocol.errors", "protocol.fields"]
