"""Effects: what applying a command asks the nodes to do.

Effects are plain data. Every replica computes the same effects; a node runs
only those addressed to its own connections and channels (``ch[0]`` /
``conn[0]`` is the node id). Effects are never persisted and may be run more
than once across a leader change, so the node treats them idempotently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform

from cluster.commands import ChKey, ConnKey, _fast_init


class Effect:
    __slots__ = ()


_E = TypeVar("_E", bound=Effect)


@dataclass_transform(frozen_default=True)
def _ef(cls: type[_E]) -> type[_E]:
    """Frozen slotted dataclass; spelled as a function mypy understands. Built with the
    commands' fast ``__init__`` (cluster/commands.py ``_fast_init``): every replica builds a
    Deliver and a Confirm per message."""
    made = dataclass(frozen=True, slots=True)(cls)
    _fast_init(made)
    return made


# --- synchronous replies (one per command that expects one, unless nowait) -------------


@_ef
class ExchangeDeclareOk(Effect):
    ch: ChKey


@_ef
class ExchangeDeleteOk(Effect):
    ch: ChKey


@_ef
class ExchangeBindOk(Effect):
    ch: ChKey


@_ef
class ExchangeUnbindOk(Effect):
    ch: ChKey


@_ef
class QueueDeclareOk(Effect):
    ch: ChKey
    queue: str
    message_count: int
    consumer_count: int


@_ef
class QueueBindOk(Effect):
    ch: ChKey


@_ef
class QueueUnbindOk(Effect):
    ch: ChKey


@_ef
class QueuePurgeOk(Effect):
    ch: ChKey
    message_count: int


@_ef
class QueueDeleteOk(Effect):
    ch: ChKey
    message_count: int


@_ef
class ConsumeOk(Effect):
    ch: ChKey
    consumer_tag: str


@_ef
class CancelOk(Effect):
    ch: ChKey
    consumer_tag: str


@_ef
class QosOk(Effect):
    ch: ChKey


@_ef
class FlowOk(Effect):
    ch: ChKey
    active: bool


@_ef
class RecoverOk(Effect):
    ch: ChKey


@_ef
class GetEmpty(Effect):
    ch: ChKey


class Stored(Effect):
    """An effect about a stored message: it carries the message's id, and the node reads
    the bytes (``Replica.read``) when it writes the frame. The replica lets go of a
    record only once every effect that could read it is written (``Replica.collect``)."""

    __slots__ = ()
    msg_id: int


@_ef
class GetOk(Stored):
    ch: ChKey
    delivery_tag: int
    redelivered: bool
    message_count: int  # messages left ready in the queue
    msg_id: int


# --- asynchronous ----------------------------------------------------------------------


@_ef
class Deliver(Stored):
    ch: ChKey
    consumer_tag: str
    delivery_tag: int
    redelivered: bool
    msg_id: int
    no_ack: bool = False  # the node reports these back with Sent once written


@_ef
class Return(Effect):
    """basic.return of an unroutable mandatory message (sent before its confirm)."""

    ch: ChKey
    reply_code: int
    reply_text: str
    exchange: str
    routing_key: str
    properties: bytes
    body: bytes


@_ef
class ReplyDeliver(Effect):
    """A direct reply-to reply (cluster/machine/reply_to.py) for channel ``ch``, whose
    reply consumer ``routing_key`` names (its key's digest checked by the machine): written
    as a basic.deliver to that consumer if the node, which alone knows the key, finds the
    whole token its consumer's. Carries the message: it is never stored."""

    ch: ChKey
    delivery_tag: int
    exchange: str
    routing_key: str
    properties: bytes
    body: bytes


@_ef
class Confirm(Effect):
    """Publisher confirm for ``seq`` on ``ch``: ack, or nack when ``ack`` is False."""

    ch: ChKey
    seq: int
    ack: bool


@_ef
class ConsumerCancelled(Effect):
    """The server cancelled a consumer (its queue was deleted, …): basic.cancel."""

    ch: ChKey
    consumer_tag: str


@_ef
class ChannelError(Effect):
    """Close the channel with this reply code. The machine has already
    forgotten the channel (consumers cancelled, unacked requeued) and ignores
    further commands for it until the next ``ChannelOpen``."""

    ch: ChKey
    reply_code: int
    reply_text: str
    class_id: int
    method_id: int


@_ef
class ConnectionError(Effect):
    """Close the whole connection with this reply code."""

    conn: ConnKey
    reply_code: int
    reply_text: str
    class_id: int
    method_id: int


@_ef
class OutOfOrder(Effect):
    """The batch ``seq`` of ``node``'s life ``incarnation`` was not applied: the batch it
    names as its predecessor (``Batch.after``) has not been. Only ever the single effect
    of an entry; the replica reports it to its proposer, which proposes again, in order,
    what it has in flight."""

    node: str
    incarnation: int
    seq: int


@_ef
class Fault(Effect):
    """A command raised while it was applied: a bug, not the client's doing. The
    command's connection (if any) is closed with 541 by a ConnectionError beside
    this; this one is for the log of the node that proposed the command (``node``).
    ``error`` may hold object addresses and so is left out of comparisons."""

    node: str
    command: str
    error: str = field(compare=False)
