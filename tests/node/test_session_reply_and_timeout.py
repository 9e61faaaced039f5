"""node/amqp/session.py without a socket: direct reply-to's node side (the reply consumer,
reply_to rewritten, a reply written only for its token) and the consumer timeout's check
(check_acks) on a fake clock."""

from __future__ import annotations

from typing import Any

import pytest
from pamqp import commands as spec

from cluster import commands as C
from cluster import effects as E
from cluster.machine import reply_to
from node.amqp.session import Session
from protocol import ServerConnection
from protocol.errors import ChannelError
from protocol.events import MessagePublished, MethodReceived
from protocol.fields import REPLY_TO, short_property
from protocol.properties import encode_properties
from tests.protocol.client import decode_frames, opened

RT = reply_to.PREFIX


class Harness:
    def __init__(self) -> None:
        self.proto: ServerConnection = opened(0)
        self.proposed: list[C.Command] = []
        self.out: list[bytes] = []
        self.s = Session(("n1", 5), self.proto, self.proposed.append, lambda fn: fn(),
                         self.out.append, read=lambda mid: ("", "q", b"\x00\x00", b"x"))
        self.s.user = "guest"

    def frames(self) -> list[Any]:
        got = [f for data in self.out for _, f in decode_frames(data)]
        self.out.clear()
        return got

    def open(self, number: int = 1) -> C.ChKey:
        self.s.on_event(MethodReceived(number, spec.Channel.Open()))
        self.frames()
        cmd = self.proposed[-1]
        assert isinstance(cmd, C.ChannelOpen)
        return cmd.ch

    def consume_replies(self, number: int = 1, tag: str = "r") -> None:
        self.s.on_event(MethodReceived(number, spec.Basic.Consume(queue=RT, consumer_tag=tag,
                                                                  no_ack=True)))

    def publish(self, props: bytes, number: int = 1) -> C.Publish:
        self.s.on_event(MessagePublished(number, "", "q", False, False, props, b"x"))
        cmd = self.proposed[-1]
        assert isinstance(cmd, C.Publish)
        return cmd


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_reply_consumer_and_rewritten_reply_to(h: Harness) -> None:
    key = h.open()
    h.consume_replies()
    consume = h.proposed[-1]
    assert isinstance(consume, C.ReplyConsume) and consume.consumer_tag == "r"
    props = encode_properties(reply_to=RT, correlation_id="c", priority=3)
    token = short_property(h.publish(props).properties, REPLY_TO)
    assert token is not None
    (ch, secret) = reply_to.decode(token)  # type: ignore[misc]
    assert ch == key and len(secret) >= 22
    assert consume.digest == reply_to.digest(secret)  # the machine gets the digest only
    assert short_property(h.publish(props).properties, REPLY_TO) == token  # per channel
    other = encode_properties(reply_to="my-queue")
    assert h.publish(other).properties == other  # any other reply_to as it is
    # the reply for that token is written; one for any other key of this channel is not
    h.s.run_effect(E.ReplyDeliver(key, 7, "", token, b"\x00\x00", b"hi"))
    h.s.run_effect(E.ReplyDeliver(key, 8, "", reply_to.encode(key, "A" * 22), b"\x00\x00",
                                  b"forged"))
    h.s.run_effect(E.ReplyDeliver(key, 9, "", token + "x", b"\x00\x00", b"forged"))
    frames = h.frames()
    assert len(frames) == 3 and isinstance(frames[0], spec.Basic.Deliver)  # one message
    assert frames[0].consumer_tag == "r" and frames[0].delivery_tag == 7
    assert frames[2].value == b"hi"
    # cancelled: nothing more is written, and consuming again gives another key
    h.s.on_event(MethodReceived(1, spec.Basic.Cancel("r")))
    assert h.proposed[-1] == C.ReplyCancel(key, "r", False)
    h.s.run_effect(E.ReplyDeliver(key, 10, "", token, b"\x00\x00", b"late"))
    assert h.frames() == []
    h.consume_replies(tag="r2")
    h.frames()
    assert short_property(h.publish(props).properties, REPLY_TO) != token


def test_reply_to_without_reply_consumer(h: Harness) -> None:
    h.open()
    props = encode_properties(reply_to=RT)
    with pytest.raises(ChannelError, match="fast reply consumer does not exist"):
        h.publish(props)


def test_before_level_4_the_pseudo_queue_is_an_ordinary_name(h: Harness) -> None:
    h.s.level = lambda: 3
    h.open()
    h.consume_replies()
    assert isinstance(h.proposed[-1], C.Consume)  # the machine answers 404, as before
    props = encode_properties(reply_to=RT)
    assert h.publish(props).properties == props


def _deliver(key: C.ChKey, tag: int, no_ack: bool = False) -> E.Deliver:
    return E.Deliver(key, "c", tag, False, 1, no_ack)


def test_check_acks_closes_a_channel_whose_oldest_delivery_is_too_old(h: Harness) -> None:
    key = h.open()
    unacked: dict[int, int] = {}  # tag -> timeout ms: the replica's view

    def oldest(k: C.ChKey) -> tuple[int, int] | None:
        assert k == key
        return next(iter(unacked.items()), None)

    for tag in (1, 2):
        h.s.run_effect(_deliver(key, tag))
        unacked[tag] = 1000
    h.s.check_acks(10.0, oldest)  # first seen here
    h.s.run_effect(_deliver(key, 3))
    unacked[3] = 1000
    h.s.check_acks(10.6, oldest)
    del unacked[1], unacked[2]  # acked: tag 3 was first seen at 10.6
    h.s.check_acks(11.5, oldest)
    assert not any(isinstance(c, C.ChannelClose) for c in h.proposed)
    h.frames()
    h.s.check_acks(11.7, oldest)
    assert isinstance(h.proposed[-1], C.ChannelClose) and h.proposed[-1].ch == key
    [close] = h.frames()
    assert isinstance(close, spec.Channel.Close) and close.reply_code == 406
    assert close.reply_text == (
        "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value "
        "used: 1000 ms. This timeout value can be configured, see consumers doc guide to "
        "learn more")
    h.s.check_acks(20.0, oldest)  # closing: once only
    assert sum(isinstance(c, C.ChannelClose) for c in h.proposed) == 1


def test_check_acks_ignores_no_ack_settled_and_untimed(h: Harness) -> None:
    key = h.open()
    h.s.run_effect(_deliver(key, 1, no_ack=True))
    h.s.check_acks(0.0, lambda k: None)
    h.s.run_effect(_deliver(key, 2))
    h.s.check_acks(1.0, lambda k: None)  # settled: the marks are dropped
    assert not h.s.channels[1].marks
    h.s.run_effect(_deliver(key, 3))
    h.s.check_acks(2.0, lambda k: (3, 0))  # a timeout of 0: none
    h.s.check_acks(99999.0, lambda k: (3, 0))
    assert not any(isinstance(c, C.ChannelClose) for c in h.proposed)
