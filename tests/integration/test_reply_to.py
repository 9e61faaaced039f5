"""Direct reply-to (``amq.rabbitmq.reply-to``) with pika, on RaftMQ and, with
``BROKER=rabbitmq``, on RabbitMQ 3.10: every assertion here holds on both (RabbitMQ's
repeated delivery tags aside, which are not asserted)."""

from __future__ import annotations

from typing import Any

import pika
import pytest

from tests.integration.helpers import (
    close_quietly,
    connect,
    expect_channel_error,
    pump,
    settle,
    unique,
)

RT = "amq.rabbitmq.reply-to"


class Requester:
    """A channel consuming its replies, and what it received."""

    def __init__(self, url: str, tag: str = "") -> None:
        self.conn = connect(url)
        self.ch = self.conn.channel()
        self.replies: list[tuple[Any, Any, bytes]] = []
        self.tag = self.ch.basic_consume(
            RT, lambda _c, m, p, b: self.replies.append((m, p, b)), auto_ack=True,
            consumer_tag=tag or None)

    def request(self, queue: str, body: bytes, corr: str = "c") -> None:
        self.ch.basic_publish("", queue, body,
                              pika.BasicProperties(reply_to=RT, correlation_id=corr))

    def close(self) -> None:
        close_quietly(self.conn)


class Responder:
    """A consumer of ``queue`` that records each request's reply_to."""

    def __init__(self, url: str, queue: str) -> None:
        self.conn = connect(url)
        self.ch = self.conn.channel()
        self.ch.queue_declare(queue, auto_delete=True)
        self.reply_tos: list[str] = []
        self.returns: list[tuple[int, bytes]] = []
        self.ch.add_on_return_callback(
            lambda _c, m, _p, b: self.returns.append((m.reply_code, b)))
        self.ch.basic_consume(queue, lambda _c, _m, p, _b: self.reply_tos.append(p.reply_to),
                              auto_ack=True)

    def next_reply_to(self) -> str:
        pump(self.conn, lambda: bool(self.reply_tos), what="a request")
        return self.reply_tos.pop(0)

    def reply(self, token: str, body: bytes, mandatory: bool = False) -> None:
        self.ch.basic_publish("", token, body, pika.BasicProperties(correlation_id="c"),
                              mandatory=mandatory)

    def close(self) -> None:
        close_quietly(self.conn)


@pytest.fixture
def rpc(broker: Any) -> Any:
    made: list[Any] = []

    def make(kind: type, *args: Any) -> Any:
        obj = kind(broker.url, *args)
        made.append(obj)
        return obj

    yield make
    for obj in made:
        obj.close()


def test_request_reply(broker: Any, rpc: Any) -> None:
    queue = unique("rpc")
    req = rpc(Requester)
    resp = rpc(Responder, queue)
    for i in range(3):
        req.request(queue, b"req%d" % i, corr=str(i))
        token = resp.next_reply_to()
        assert token.startswith(RT + ".")
        resp.reply(token, b"rep%d" % i)
    pump(req.conn, lambda: len(req.replies) == 3, what="3 replies")
    assert [b for _m, _p, b in req.replies] == [b"rep0", b"rep1", b"rep2"]
    m, p, _b = req.replies[0]
    assert m.consumer_tag == req.tag and m.exchange == "" and m.routing_key == token
    assert not m.redelivered and p.correlation_id == "c"
    # the token names the channel: the same on every request
    req.request(queue, b"again")
    assert resp.next_reply_to() == token


def test_reply_with_mandatory_is_delivered_and_returned(broker: Any, rpc: Any) -> None:
    """RabbitMQ routes a reply to no queue: with mandatory it is returned, and yet
    delivered."""
    queue = unique("rpc")
    req = rpc(Requester)
    resp = rpc(Responder, queue)
    req.request(queue, b"q")
    token = resp.next_reply_to()
    resp.ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError) as returned:
        resp.reply(token, b"both", mandatory=True)
    pump(req.conn, lambda: len(req.replies) == 1, what="the reply")
    assert [(r.method.reply_code, r.body) for r in returned.value.messages] == [(312, b"both")]


def test_refusals(broker: Any, conn: Any) -> None:
    ch = conn.channel()
    err = expect_channel_error(406, lambda: ch.basic_consume(RT, lambda *a: None,
                                                                 auto_ack=False))
    assert "reply consumer cannot acknowledge" in err.reply_text
    ch = conn.channel()
    ch.basic_publish("", unique("nowhere"), b"x", pika.BasicProperties(reply_to=RT))
    err = expect_channel_error(406, lambda: ch.queue_declare("", exclusive=True))
    assert "fast reply consumer does not exist" in err.reply_text
    ch = conn.channel()
    ch.basic_consume(RT, lambda *a: None, auto_ack=True)
    err = expect_channel_error(406, lambda: ch.basic_consume(RT, lambda *a: None,
                                                                 auto_ack=True))
    assert "reply consumer already set" in err.reply_text
    for get in (lambda c: c.basic_get(RT, auto_ack=True), lambda c: c.basic_get(RT)):
        ch = conn.channel()
        err = expect_channel_error(404, lambda c=ch, g=get: g(c))  # type: ignore[misc]
        assert err.reply_text == f"NOT_FOUND - no queue '{RT}' in vhost '/'"


def test_declare(broker: Any, rpc: Any) -> None:
    queue = unique("rpc")
    req = rpc(Requester)
    resp = rpc(Responder, queue)
    ch = resp.conn.channel()
    for passive in (True, False):
        ok = ch.queue_declare(RT, passive=passive).method
        assert (ok.queue, ok.message_count, ok.consumer_count) == (RT, 0, 1)
    req.request(queue, b"q")
    token = resp.next_reply_to()
    ok = ch.queue_declare(token, passive=True).method  # from another connection
    assert (ok.queue, ok.message_count, ok.consumer_count) == (token, 0, 1)
    for name in (RT + ".bogus", RT + "x", token + "x", token[:-2] + "AA"):
        ch = resp.conn.channel()
        err = expect_channel_error(404, lambda n=name, c=ch: c.queue_declare(n))  # type: ignore[misc]
        assert err.reply_text == f"NOT_FOUND - no queue '{name}' in vhost '/'"
    # a token is not a queue
    ch = resp.conn.channel()
    expect_channel_error(404, lambda: ch.basic_consume(token, lambda *a: None, auto_ack=True))
    ch = resp.conn.channel()
    expect_channel_error(404, lambda: ch.basic_get(token, auto_ack=True))
    req.close()
    ch = resp.conn.channel()
    expect_channel_error(404, lambda: ch.queue_declare(token, passive=True))


def test_cancelled_or_closed_requester_gets_nothing(broker: Any, rpc: Any) -> None:
    queue = unique("rpc")
    req = rpc(Requester, "mine")
    resp = rpc(Responder, queue)
    req.request(queue, b"q")
    token = resp.next_reply_to()
    req.ch.basic_cancel("mine")
    resp.reply(token, b"after cancel")
    settle(req.conn)
    assert req.replies == []
    # consuming again gives a new token: the old one reaches nobody
    req.ch.basic_consume(RT, lambda _c, m, p, b: req.replies.append((m, p, b)), auto_ack=True)
    req.request(queue, b"q2")
    token2 = resp.next_reply_to()
    assert token2 != token
    resp.reply(token, b"old token")
    resp.reply(token2, b"new token")
    pump(req.conn, lambda: bool(req.replies), what="the reply")
    settle(req.conn)
    assert [b for _m, _p, b in req.replies] == [b"new token"]
    # a channel gone: the reply is dropped (returned when mandatory), the responder goes on
    req.ch.close()
    resp.ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        resp.reply(token2, b"closed", mandatory=True)
    resp.reply(token2, b"closed")
    assert resp.ch.is_open


@pytest.mark.raftmq_only
def test_hostile_tokens(broker: Any, rpc: Any) -> None:
    """Another connection cannot read replies meant for a requester: not by consuming the
    token, not with a token of its own altered, not by guessing; malformed tokens cost
    nothing beyond their own publish. (RabbitMQ 3.10 closes the publisher's connection with
    541 INTERNAL_ERROR on some malformed tokens, ``amq.rabbitmq.reply-to.g1AAAA.abc``: here
    they are dropped, or returned when mandatory.)"""
    queue = unique("rpc")
    victim = rpc(Requester)
    resp = rpc(Responder, queue)
    victim.request(queue, b"q")
    token = resp.next_reply_to()
    thief = rpc(Requester)
    thief.request(queue, b"q")
    thief_token = resp.next_reply_to()
    assert thief_token != token
    # the thief's own token with the victim's channel part: neither gets it
    head, _, key = thief_token.rpartition(".")
    victim_head = token.rpartition(".")[0]
    forged = [victim_head + "." + key, head + "." + token.rpartition(".")[2],
              victim_head + "." + "A" * len(key), token + "A", token[:-1]]
    malformed = [RT + ".", RT + "..", RT + ".x.y.z", RT + ".g1AAAA.abc", RT + ".%%%.1.2.k",
                 RT + "." + "é" * 100, RT + ".bjE.-1.2.k", RT + ".bjE.0x1.2.k"]
    for rk in forged + malformed:
        resp.reply(rk, b"stolen")
    resp.reply(token, b"for the victim")
    pump(victim.conn, lambda: bool(victim.replies), what="the victim's reply")
    settle(thief.conn)
    settle(victim.conn)
    assert [b for _m, _p, b in victim.replies] == [b"for the victim"]
    assert thief.replies == []
    assert resp.ch.is_open and resp.conn.is_open
