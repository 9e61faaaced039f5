"""Direct reply-to: the ``amq.rabbitmq.reply-to`` pseudo-queue (RabbitMQ's
rabbit_channel, 3.10), from command level 4.

A requester's channel consumes ``amq.rabbitmq.reply-to`` in no-ack mode
(:class:`~cluster.commands.ReplyConsume`) and publishes with ``reply_to =
amq.rabbitmq.reply-to``; its node rewrites that to ``amq.rabbitmq.reply-to.<token>``
(node/amqp/session.py). The token's key is 128 random bits drawn by that node; the
machine holds only its SHA-256 (``Channel.reply``), so a token can be neither guessed nor
made up from a channel's key (another tenant's, or a closed channel's), and a snapshot
does not give it away. No queue exists and nothing is stored: a responder anywhere in the
cluster publishes the reply to the default exchange with the token as routing key, and
applying that publish makes one :class:`~cluster.effects.ReplyDeliver` for the channel
the token names, carrying the message, if the channel still has its reply consumer and
the key's digest is that consumer's. The channel's node checks the whole token again
before writing it.

The token: ``<node id, base64url>.<connection, hex>.<channel, hex>.<key>``. A token
that does not parse, or names a channel that is gone or in another vhost, routes
nowhere: the publish is unroutable (basic.return when mandatory), nothing else.

What RabbitMQ 3.10.8 does, checked side by side (tests/integration/test_reply_to.py):
queue.declare (passive or not) of ``amq.rabbitmq.reply-to`` answers declare-ok with 0
messages and 1 consumer, of a live token likewise, of any other name with that prefix
404; basic.get and a consume of a token are 404 (no such queue); a reply is delivered and
yet, being routed to no queue, returned when mandatory; the reply consumer's checks
(530 for a tag in use, 406 for ack mode or a second one) in rabbit_channel's order.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from cluster import commands as C
from cluster.effects import (
    CancelOk,
    Confirm,
    ConsumeOk,
    Effect,
    QueueDeclareOk,
    ReplyDeliver,
    Return,
)
from cluster.machine import errors as E
from cluster.machine.names import check_name
from cluster.machine.state import Channel, State

PREFIX = "amq.rabbitmq.reply-to"
TOKEN_PREFIX = PREFIX + "."


def encode(ch: C.ChKey, key: str) -> str:
    """The routing key replies to channel ``ch`` use (``key``: its reply consumer's)."""
    return f"{TOKEN_PREFIX}{_node_part(ch[0])}.{ch[1]:x}.{ch[2]:x}.{key}"


def decode(routing_key: str) -> tuple[C.ChKey, str] | None:
    """(channel key, reply key) named by a reply routing key; None if malformed."""
    if not routing_key.startswith(TOKEN_PREFIX):
        return None
    parts = routing_key[len(TOKEN_PREFIX):].split(".")
    if len(parts) != 4 or not all(parts):
        return None
    node_b64, conn, chan, key = parts
    # int(x, 16) alone takes "0x", "_" and signs: hex digits only
    if not (_hex(conn) and _hex(chan)):
        return None
    try:
        node = base64.urlsafe_b64decode(node_b64 + "=" * (-len(node_b64) % 4)).decode()
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    if _node_part(node) != node_b64:  # the decoder skips what is not base64: canonical only
        return None
    return (node, int(conn, 16), int(chan, 16)), key


def _node_part(node: str) -> str:
    return base64.urlsafe_b64encode(node.encode()).rstrip(b"=").decode()


def _hex(s: str) -> bool:
    return len(s) <= 16 and all(c in "0123456789abcdef" for c in s)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _target(state: State, ch: Channel, routing_key: str) -> Channel | None:
    """The channel whose live reply consumer ``routing_key`` names, in ``ch``'s vhost."""
    parsed = decode(routing_key)
    if parsed is None:
        return None
    target = state.channels.get(parsed[0])
    if target is None or target.vhost != ch.vhost or target.reply is None:
        return None
    if not hmac.compare_digest(digest(parsed[1]), target.reply[1]):
        return None
    return target


def consume(state: State, ch: Channel, cmd: C.ReplyConsume, out: list[Effect]) -> None:
    """The channel's reply consumer (rabbit_channel's checks, in its order)."""
    m = E.BASIC_CONSUME
    tag = cmd.consumer_tag
    if tag in ch.consumers:
        raise E.error(E.NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'", m)
    if not cmd.no_ack:
        raise E.error(E.PRECONDITION_FAILED, "reply consumer cannot acknowledge", m)
    if ch.reply is not None:
        raise E.error(E.PRECONDITION_FAILED, "reply consumer already set", m)
    check_name("consumer tag", tag, ch.vhost, m)
    ch.reply = (tag, cmd.digest)
    if not cmd.nowait:
        out.append(ConsumeOk(ch.key, tag))


def cancel(state: State, ch: Channel, cmd: C.ReplyCancel, out: list[Effect]) -> None:
    if ch.reply is not None and ch.reply[0] == cmd.consumer_tag:
        ch.reply = None
    if not cmd.nowait:
        out.append(CancelOk(ch.key, cmd.consumer_tag))


def publish(state: State, ch: Channel, cmd: C.Publish, out: list[Effect]) -> None:
    """A publish to the default exchange with a reply routing key (no queue has that
    name). As RabbitMQ's: delivered to the reply consumer it names, if there is one, and,
    routed to no queue, counted unroutable and returned when mandatory; confirmed."""
    state.n_published += 1
    target = _target(state, ch, cmd.routing_key)
    if target is not None:
        target.last_tag += 1  # the channel's delivery tags stay unique
        out.append(ReplyDeliver(target.key, target.last_tag, cmd.exchange, cmd.routing_key,
                                cmd.properties, cmd.body))
    state.n_unroutable += 1
    if cmd.mandatory:
        out.append(Return(ch.key, 312, "NO_ROUTE", cmd.exchange, cmd.routing_key,
                          cmd.properties, cmd.body))
    if cmd.confirm_seq:
        state.n_confirmed += 1
        out.append(Confirm(ch.key, cmd.confirm_seq, True))


def declare(state: State, ch: Channel, cmd: C.QueueDeclare, out: list[Effect]) -> None:
    """queue.declare of a name starting with ``amq.rabbitmq.reply-to`` (RabbitMQ checks
    neither permissions nor passive): the pseudo-queue itself, or a live reply consumer's
    token, answer 0 messages and 1 consumer; anything else is 404."""
    name = cmd.queue
    if name != PREFIX and _target(state, ch, name) is None:
        raise E.error(E.NOT_FOUND, f"no {E.rs('queue', name, ch.vhost)}", E.QUEUE_DECLARE)
    ch.last_queue = name
    if not cmd.nowait:
        out.append(QueueDeclareOk(ch.key, name, 0, 1))
