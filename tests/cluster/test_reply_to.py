"""Direct reply-to in the machine (cluster/machine/reply_to.py): the token's channel part,
a reply as a ReplyDeliver for that channel and nothing stored, the pseudo-queue's
declare, and the level it needs."""

from __future__ import annotations

import pytest

from cluster import commands as C
from cluster.effects import ChannelError, Confirm, GetOk, QueueDeclareOk, ReplyDeliver, Return
from cluster.machine import reply_to
from tests.cluster.helpers import CH, CH2, Machine, of_type, pub, q_declare

RT = reply_to.PREFIX
OTHER = ("n2", 7, 3 | (5 << 16))  # a channel of another node, in another vhost below


def test_encode_decode() -> None:
    for ch in (CH, OTHER, ("node.with.dots", 1 << 40, 65535 | (1 << 30)), ("é", 0, 0)):
        rk = reply_to.encode(ch, "k-y_Z")
        assert reply_to.decode(rk) == (ch, "k-y_Z")
    for bad in ("", RT, RT + ".", RT + "...", RT + ".bjE.1.2", RT + ".bjE.1.2.k.x",
                RT + ".bjE.-1.2.k", RT + ".bjE.0x1.2.k", RT + ".bjE.1_0.2.k",
                RT + ".bjE.1.2.", RT + ".!!!.1.2.k", RT + ".//8.1.2.k",  # not UTF-8
                RT + ".bjE." + "1" * 17 + ".2.k", "amq.rabbitmq.reply-tox.bjE.1.2.k"):
        assert reply_to.decode(bad) is None, bad


def test_reply_reaches_the_channel_and_nothing_is_stored(m2: Machine) -> None:
    token = reply_to.encode(CH, "key")
    before = m2.state.next_msg_id
    out = m2.run(pub(CH2, "", token, b"reply", confirm=1))
    assert out == [ReplyDeliver(CH, 1, "", token, b"\x00\x00", b"reply"), Confirm(CH2, 1, True)]
    assert m2.state.next_msg_id == before and m2.state.channels[CH].last_tag == 1
    # the channel's own deliveries go on from there
    m2.run(q_declare(CH, "q"), pub(CH, "", "q"))
    [got] = of_type(m2.run(C.Get(CH, "q", True)), GetOk)
    assert got.delivery_tag == 2
    # mandatory: delivered, and returned as routed to no queue (RabbitMQ's)
    out = m2.run(pub(CH2, "", token, b"r2", mandatory=True))
    assert [type(e) for e in out] == [ReplyDeliver, Return]


@pytest.mark.parametrize("rk", [RT + ".bjE.1.2", RT + ".garbage", RT + "." + "é" * 60,
                                reply_to.encode(("n1", 1, 99), "key"),  # no such channel
                                reply_to.encode(OTHER, "key")])
def test_unknown_or_malformed_tokens_route_nowhere(m2: Machine, rk: str) -> None:
    m2.run(C.ConnectionOpen(OTHER[:2], "/", "guest"), C.ChannelOpen(OTHER))
    if rk == reply_to.encode(OTHER, "key"):  # another vhost's channel
        m2.run(C.VHostPut("other"), C.PermissionSet("guest", "other", ".*", ".*", ".*"),
               C.ConnectionClose(OTHER[:2]), C.ConnectionOpen(OTHER[:2], "other", "guest"),
               C.ChannelOpen(OTHER))
    out = m2.run(pub(CH2, "", rk, mandatory=True, confirm=1))
    assert of_type(out, ReplyDeliver) == []
    assert [type(e) for e in out] == [Return, Confirm] and of_type(out, Confirm)[0].ack
    assert CH2 in m2.state.channels  # nothing beyond the command itself


def test_declare(m2: Machine) -> None:
    for passive in (True, False):
        out = m2.run(q_declare(CH2, RT, passive=passive))
        assert out == [QueueDeclareOk(CH2, RT, 0, 1)]
    token = reply_to.encode(CH, "anything")
    assert m2.run(q_declare(CH2, token, passive=True)) == [QueueDeclareOk(CH2, token, 0, 1)]
    assert RT not in m2.state.vhosts["/"].queues and token not in m2.state.vhosts["/"].queues
    for name in (RT + "x", RT + ".bogus", reply_to.encode(("n1", 1, 99), "k")):
        m2.open(CH2)
        out = m2.run(q_declare(CH2, name))
        assert out == [ChannelError(CH2, 404, f"NOT_FOUND - no queue '{name}' in vhost '/'",
                                    50, 10)]


def test_before_level_4_a_token_is_an_ordinary_name(m2: Machine) -> None:
    m2.state.level = 3
    token = reply_to.encode(CH, "key")
    out = m2.run(pub(CH2, "", token, mandatory=True))
    assert [type(e) for e in out] == [Return]
    [err] = of_type(m2.run(q_declare(CH2, RT)), ChannelError)
    assert err.reply_code == 403  # the reserved amq. prefix, as before
