"""node/session.py without a socket: method translation, confirms, transactions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pamqp import commands as spec

from cluster import commands as C
from cluster import effects as E
from node.session import Session
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
