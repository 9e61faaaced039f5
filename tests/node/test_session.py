"""node/amqp/session.py without a socket: method translation, confirms, transactions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pamqp import commands as spec

from cluster import commands as C
from cluster import effects as E
from node.amqp import session
from node.amqp.session import Session
from protocol import ServerConnection
from protocol.errors import ChannelError
from protocol.events import AckReceived, MessagePublished, MethodReceived
from protocol.properties import encode_properties
from tests.protocol.client import decode_frames, opened


class Harness:
    def __init__(self) -> None:
        self.proto: ServerConnection = opened(0)
        self.proposed: list[C.Command] = []
        self.hooks: list[Callable[[], None]] = []
        self.out: list[bytes] = []
        self.s = Session(("n1", 5), self.proto, self.proposed.append, self.hooks.append,
                         self.out.append)
        self.s.user = "guest"

    def frames(self) -> list[Any]:
        got = [f for data in self.out for _, f in decode_frames(data)]
        self.out.clear()
        return got

    def open(self, number: int = 1) -> C.ChKey:
        self.s.on_event(MethodReceived(number, spec.Channel.Open()))
        cmd = self.proposed[-1]
        assert isinstance(cmd, C.ChannelOpen)
        return cmd.ch

    def publish(self, number: int = 1, props: bytes = b"\x00\x00") -> None:
        self.s.on_event(MessagePublished(number, "", "q", False, False, props, b"x"))


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_channel_keys_carry_a_generation(h: Harness) -> None:
    first = h.open(1)
    h.s.on_event(MethodReceived(1, spec.Channel.Close(200, "", 0, 0)))
    second = h.open(1)
    assert first != second and first[2] & 0xFFFF == second[2] & 0xFFFF == 1
    assert [type(c) for c in h.proposed] == [C.ChannelOpen, C.ChannelClose, C.ChannelOpen]


def test_confirms_coalesce_over_contiguous_runs(h: Harness) -> None:
    ch = h.open()
    h.s.on_event(MethodReceived(1, spec.Confirm.Select()))
    for _ in range(4):
        h.publish()
    h.frames()
    # 1, 2 and 4 arrive (3's batch is late): only 1-2 can be acked with multiple
    for seq in (1, 2, 4):
        h.s.run_effect(E.Confirm(ch, seq, True))
    h.s.effects_done()
    [ack] = h.frames()
    assert (ack.delivery_tag, ack.multiple) == (2, True)
    h.s.run_effect(E.Confirm(ch, 3, True))
    h.s.run_effect(E.Confirm(ch, 3, True))  # a repeat across a leader change: ignored
    h.s.effects_done()
    [ack] = h.frames()
    assert (ack.delivery_tag, ack.multiple) == (4, True)
    assert h.s.counters.confirmed == 4


def test_a_nack_goes_out_alone_after_the_acks_before_it(h: Harness) -> None:
    ch = h.open()
    h.s.on_event(MethodReceived(1, spec.Confirm.Select()))
    for _ in range(3):
        h.publish()
    h.frames()
    h.s.run_effect(E.Confirm(ch, 1, True))
    h.s.run_effect(E.Confirm(ch, 2, False))
    h.s.run_effect(E.Confirm(ch, 3, True))
    h.s.effects_done()
    got = [(f.name, f.delivery_tag, f.multiple) for f in h.frames()]
    assert got == [("Basic.Ack", 1, True), ("Basic.Nack", 2, False), ("Basic.Ack", 3, True)]


def test_tx_holds_publishes_and_acks_until_commit(h: Harness) -> None:
    ch = h.open()
    h.s.on_event(MethodReceived(1, spec.Tx.Select()))
    h.publish()
    h.s.on_event(AckReceived(1, 7, False))
    assert [type(c) for c in h.proposed] == [C.ChannelOpen]
    h.s.on_event(MethodReceived(1, spec.Tx.Commit()))
    assert [type(c) for c in h.proposed] == [C.ChannelOpen, C.Publish, C.Ack]
    assert h.proposed[-1] == C.Ack(ch, 7, False)
    h.frames()
    [reply] = h.hooks
    reply()
    assert [f.name for f in h.frames()] == ["Tx.CommitOk"]


def test_user_id_must_be_the_login(h: Harness) -> None:
    h.open()
    h.publish(props=encode_properties(user_id="guest"))
    with pytest.raises(ChannelError) as info:
        h.publish(props=encode_properties(user_id="mallory"))
    assert info.value.reply_code == 406


def test_effects_for_a_reopened_channel_are_dropped(h: Harness) -> None:
    old = h.open(1)
    h.s.on_event(MethodReceived(1, spec.Channel.Close(200, "", 0, 0)))
    h.open(1)
    h.frames()
    h.s.run_effect(E.QueueDeclareOk(old, "q", 0, 0))
    assert h.frames() == []


# --- per-connection bounds ------------------------------------------------------------


def _tx_publish(h: Harness, number: int, body: bytes = b"x") -> None:
    h.s.on_event(MessagePublished(number, "", "q", False, False, b"\x00\x00", body))


def test_uncommitted_transactions_are_bounded_per_connection(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """tx.select, then publishes without tx.commit: past TX_MAX_COMMANDS (all channels of
    the connection together) the publish that overflows gets a 406 for its channel, and
    closing the channel frees what it held."""
    monkeypatch.setattr(session, "TX_MAX_COMMANDS", 5)
    for number in (1, 2):
        h.open(number)
        h.s.on_event(MethodReceived(number, spec.Tx.Select()))
    for _ in range(3):
        _tx_publish(h, 1)
    _tx_publish(h, 2)
    h.s.on_event(AckReceived(2, 1, False))  # acks count too
    with pytest.raises(ChannelError) as info:
        _tx_publish(h, 2)
    err = info.value
    assert (err.channel, err.reply_code, err.class_id, err.method_id) == (2, 406, 60, 40)
    assert "uncommitted" in err.reply_text
    h.s.channel_error(2, err)  # what the connection does with it
    assert h.s.tx_commands == 3
    _tx_publish(h, 1)  # channel 2's share is free again
    _tx_publish(h, 1)
    h.s.on_event(MethodReceived(1, spec.Tx.Commit()))
    assert h.s.tx_commands == 0 and h.s.tx_bytes == 0
    assert sum(isinstance(c, C.Publish) for c in h.proposed) == 5


def test_uncommitted_transaction_bytes_are_bounded(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session, "TX_MAX_BYTES", 1000)
    h.open(1)
    h.s.on_event(MethodReceived(1, spec.Tx.Select()))
    _tx_publish(h, 1, b"a" * 600)
    with pytest.raises(ChannelError) as info:
        _tx_publish(h, 1, b"b" * 600)
    assert info.value.reply_code == 406
    h.s.on_event(MethodReceived(1, spec.Tx.Rollback()))
    assert h.s.tx_bytes == 0
    _tx_publish(h, 1, b"c" * 900)  # rolled back: room again
    assert h.s.tx_bytes == 902 and not any(isinstance(c, C.Publish) for c in h.proposed)


def test_input_past_the_window_holds_reading_until_applied(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client sending faster than the cluster applies (publishes, basic.gets, declares
    pipelined): past INPUT_WINDOW bytes read since the last apply, its socket is not
    read until what it sent is applied."""
    monkeypatch.setattr(session, "INPUT_WINDOW", 1000)
    holds: list[bool] = []
    h.s.hold_reading = holds.append
    for _ in range(3):
        h.s.received(300)
    assert holds == [] and not h.hooks
    h.s.received(300)  # 1,200 bytes > 1,000
    h.s.received(300)  # already held: no second hold
    assert holds == [True] and len(h.hooks) == 1
    h.hooks.pop()()  # the entry holding what they carried is applied
    assert holds == [True, False] and h.s.unapplied == 0
    h.s.received(999)
    assert holds == [True, False]


def test_a_big_delivery_is_written_in_pieces_of_the_stored_body(h: Harness) -> None:
    """The body read from the store goes to the transport as slices of itself (no join
    into one more copy of the whole message); small ones stay one bytes."""
    from protocol.frames import JOIN_MAX

    big, small = b"B" * (JOIN_MAX + 10), b"s" * 100

    class Store:
        def read(self, msg_id: int) -> tuple[str, str, bytes, bytes]:
            return "", "q", b"\x00\x00", big if msg_id == 1 else small

    parts: list[Any] = []
    h.s.write_parts = parts.extend
    h.s.read = Store().read
    ch = h.open()
    h.frames()
    h.s.run_effect(E.Deliver(ch, "c", 1, False, 1))
    assert any(isinstance(p, memoryview) and p.obj is big for p in parts)
    assert not h.out
    h.s.run_effect(E.Deliver(ch, "c", 2, False, 2))
    [deliver, _header, body] = h.frames()
    assert deliver.delivery_tag == 2 and body.value == small
    assert b"".join(parts).count(b"B") == len(big)
