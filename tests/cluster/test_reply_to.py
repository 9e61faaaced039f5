"""Direct reply-to in the machine (cluster/machine/reply_to.py): the reply consumer (known
by the digest of its token's key), a reply as a ReplyDeliver for its channel with nothing
stored, the pseudo-queue's declare, and the level it needs."""

from __future__ import annotations

import pytest

from cluster import commands as C
from cluster.effects import (
    CancelOk,
    ChannelError,
    Confirm,
    ConnectionError,
    ConsumeOk,
    GetOk,
    QueueDeclareOk,
    ReplyDeliver,
    Return,
)
from cluster.machine import reply_to
from tests.cluster.helpers import CH, CH2, Machine, consume, of_type, pub, q_declare

RT = reply_to.PREFIX
OTHER = ("n2", 7, 3 | (5 << 16))  # a channel of another node
KEY = "k" * 22
TOKEN = reply_to.encode(CH, KEY)


def _replies(m: Machine, ch: C.ChKey = CH, key: str = KEY, tag: str = "r") -> None:
    assert m.run(C.ReplyConsume(ch, tag, reply_to.digest(key))) == [ConsumeOk(ch, tag)]


def test_encode_decode() -> None:
    for ch in (CH, OTHER, ("node.with.dots", 1 << 40, 65535 | (1 << 30)), ("é", 0, 0)):
        rk = reply_to.encode(ch, "k-y_Z")
        assert reply_to.decode(rk) == (ch, "k-y_Z")
    for bad in ("", RT, RT + ".", RT + "...", RT + ".bjE.1.2", RT + ".bjE.1.2.k.x",
                RT + ".bjE.-1.2.k", RT + ".bjE.0x1.2.k", RT + ".bjE.1_0.2.k",
                RT + ".bjE.1.2.", RT + ".!!!.1.2.k", RT + ".//8.1.2.k",  # not UTF-8
                RT + ".bjE." + "1" * 17 + ".2.k", "amq.rabbitmq.reply-tox.bjE.1.2.k"):
        assert reply_to.decode(bad) is None, bad


def test_reply_reaches_the_consumer_and_nothing_is_stored(m2: Machine) -> None:
    _replies(m2)
    before = m2.state.next_msg_id
    out = m2.run(pub(CH2, "", TOKEN, b"reply", confirm=1))
    assert out == [ReplyDeliver(CH, 1, "", TOKEN, b"\x00\x00", b"reply"), Confirm(CH2, 1, True)]
    assert m2.state.next_msg_id == before and m2.state.channels[CH].last_tag == 1
    # the channel's own deliveries go on from there
    m2.run(q_declare(CH, "q"), pub(CH, "", "q"))
    [got] = of_type(m2.run(C.Get(CH, "q", True)), GetOk)
    assert got.delivery_tag == 2
    # mandatory: delivered, and returned as routed to no queue (RabbitMQ's)
    out = m2.run(pub(CH2, "", TOKEN, b"r2", mandatory=True))
    assert [type(e) for e in out] == [ReplyDeliver, Return]
    # cancelled: the token reaches nobody; a new consumer has another key
    assert m2.run(C.ReplyCancel(CH, "r")) == [CancelOk(CH, "r")]
    assert of_type(m2.run(pub(CH2, "", TOKEN)), ReplyDeliver) == []
    _replies(m2, key="n" * 22)
    assert of_type(m2.run(pub(CH2, "", TOKEN)), ReplyDeliver) == []
    assert len(of_type(m2.run(pub(CH2, "", reply_to.encode(CH, "n" * 22))), ReplyDeliver)) == 1


@pytest.mark.parametrize("rk", [RT + ".bjE.1.2", RT + ".garbage", RT + "." + "é" * 60,
                                reply_to.encode(CH, "x" * 22),  # another key
                                reply_to.encode(CH2, KEY),  # another channel, no consumer
                                reply_to.encode(("n1", 1, 99), KEY),  # no such channel
                                reply_to.encode(OTHER, KEY)])  # another vhost's channel
def test_forged_or_malformed_tokens_route_nowhere(m2: Machine, rk: str) -> None:
    _replies(m2)
    m2.run(C.VHostPut("other"), C.PermissionSet("guest", "other", ".*", ".*", ".*"),
           C.ConnectionOpen(OTHER[:2], "other", "guest"), C.ChannelOpen(OTHER))
    _replies(m2, OTHER)
    before = m2.state.channels[CH].last_tag
    out = m2.run(pub(CH2, "", rk, mandatory=True, confirm=1))
    assert of_type(out, ReplyDeliver) == []
    assert [type(e) for e in out] == [Return, Confirm] and of_type(out, Confirm)[0].ack
    assert CH2 in m2.state.channels and m2.state.channels[CH].last_tag == before


def test_reply_consumer_refusals(m2: Machine) -> None:
    out = m2.run(C.ReplyConsume(CH, "r", b"d", no_ack=False))
    assert out == [ChannelError(CH, 406, "PRECONDITION_FAILED - reply consumer cannot "
                                         "acknowledge", 60, 20)]
    m2.open(CH)
    _replies(m2)
    out = m2.run(C.ReplyConsume(CH, "r2", b"d"))
    assert out == [ChannelError(CH, 406, "PRECONDITION_FAILED - reply consumer already set",
                                60, 20)]
    m2.run(q_declare(CH2, "q"), consume(CH2, "q", "taken"))
    out = m2.run(C.ReplyConsume(CH2, "taken", b"d", no_ack=False))  # 530 first
    assert [type(e) for e in out] == [ConnectionError] and out[0].reply_code == 530  # type: ignore[attr-defined]


def test_declare(m2: Machine) -> None:
    _replies(m2)
    for passive in (True, False):
        out = m2.run(q_declare(CH2, RT, passive=passive))
        assert out == [QueueDeclareOk(CH2, RT, 0, 1)]
    assert m2.run(q_declare(CH2, TOKEN, passive=True)) == [QueueDeclareOk(CH2, TOKEN, 0, 1)]
    assert RT not in m2.state.vhosts["/"].queues and TOKEN not in m2.state.vhosts["/"].queues
    for name in (RT + "x", RT + ".bogus", reply_to.encode(("n1", 1, 99), KEY),
                 reply_to.encode(CH, "x" * 22), TOKEN + "x"):
        m2.open(CH2)
        out = m2.run(q_declare(CH2, name))
        assert out == [ChannelError(CH2, 404, f"NOT_FOUND - no queue '{name}' in vhost '/'",
                                    50, 10)]


def test_before_level_4_a_token_is_an_ordinary_name(m2: Machine) -> None:
    _replies(m2)
    m2.state.level = 3
    out = m2.run(pub(CH2, "", TOKEN, mandatory=True))
    assert [type(e) for e in out] == [Return]
    [err] = of_type(m2.run(q_declare(CH2, RT)), ChannelError)
    assert err.reply_code == 403  # the reserved amq. prefix, as before
