"""Events the server-side protocol object yields from received bytes.

The hot path (basic.publish with its content, basic.ack / nack / reject) has
events of its own carrying only what the broker needs; every other method
arrives as :class:`MethodReceived` with a pamqp command object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class Event:
    __slots__ = ()


class _NeedData:
    """Sentinel: no whole event is buffered yet."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


@dataclass(frozen=True, slots=True)
class ProtocolHeaderReceived(Event):
    """A valid ``AMQP\\x00\\x00\\x09\\x01`` header: answer with connection.start."""


@dataclass(frozen=True, slots=True)
class MethodReceived(Event):
    """Any method except the hot-path ones below. ``method`` is a pamqp
    ``pamqp.base.Frame`` subclass instance (e.g. ``pamqp.commands.Queue.Declare``)."""

    channel: int
    method: Any


@dataclass(frozen=True, slots=True)
class MessagePublished(Event):
    """basic.publish assembled with its content header and body frames.

    ``properties`` is the header's property flags and property list, exactly
    as received, so it can be stored and sent on unchanged."""

    channel: int
    exchange: str
    routing_key: str
    mandatory: bool
    immediate: bool
    properties: bytes
    # bytes, or for a body of several frames the bytearray they were copied into (not
    # copied again to make it bytes: protocol/content.py); read-only by convention
    body: bytes


@dataclass(frozen=True, slots=True)
class AckReceived(Event):
    channel: int
    delivery_tag: int
    multiple: bool


@dataclass(frozen=True, slots=True)
class NackReceived(Event):
    """basic.nack; basic.reject arrives as ``multiple=False, reject=True``."""

    channel: int
    delivery_tag: int
    multiple: bool
    requeue: bool
    reject: bool = False


@dataclass(frozen=True, slots=True)
class HeartbeatReceived(Event):
    pass
