"""Content assembly: basic.publish + content header + body frames -> one event.

Per channel, as RabbitMQ's rabbit_command_assembler: a publish waits for its
header, the header for its bodies; anything out of sequence is an
``unexpected_frame``. Everything a header announces is checked before it is
believed: the class and weight, the size against the message size limit (soft
406, as RabbitMQ's max_message_size), the sum of what all unfinished contents
of the connection announce (their channels may interleave them), and the
property list itself (:func:`protocol.fields.check_properties`), since the
broker and every replica read those bytes.
"""

from __future__ import annotations

import struct

from protocol.constants import FRAME_ERROR, PRECONDITION_FAILED, RESOURCE_ERROR, UNEXPECTED_FRAME
from protocol.errors import ChannelError
from protocol.events import MessagePublished
from protocol.fields import FieldError, check_properties

_CONTENT_HDR = struct.Struct(">HHQ")

# Frozen dataclasses initialise through object.__setattr__ per field (~0.85 us
# for MessagePublished); setting the slots through their descriptors gives an
# equal object in half the time. Only for the per-message event.
_new = object.__new__
_MP_SETTERS = tuple(
    MessagePublished.__dict__[name].__set__
    for name in (
        "channel", "exchange", "routing_key", "mandatory", "immediate", "properties", "body"
    )
)  # fmt: skip


def published(channel: int, exchange: str, routing_key: str, mandatory: bool, immediate: bool,
              properties: bytes, body: bytes) -> MessagePublished:
    ev: MessagePublished = _new(MessagePublished)
    s_ch, s_ex, s_rk, s_m, s_i, s_p, s_b = _MP_SETTERS
    s_ch(ev, channel)
    s_ex(ev, exchange)
    s_rk(ev, routing_key)
    s_m(ev, mandatory)
    s_i(ev, immediate)
    s_p(ev, properties)
    s_b(ev, body)
    return ev


class ContentError(Exception):
    """A connection error in a content sequence (the caller closes the connection)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code, self.text = code, text


class _Content:
    """A basic.publish waiting for its header / body frames."""

    __slots__ = ("exchange", "routing_key", "mandatory", "immediate", "properties",
                 "remaining", "received")

    def __init__(self, exchange: str, routing_key: str, mandatory: bool, immediate: bool) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.mandatory = mandatory
        self.immediate = immediate
        self.properties: bytes | None = None  # None until the header frame arrives
        self.remaining = 0
        # Body frames so far, appended in place: a list of chunks joined at the end
        # held the body twice at that moment (64 MiB message: +64 MiB peak).
        self.received: bytearray | None = None


class ContentAssembler:
    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self._pending: dict[int, _Content] = {}

    def expecting(self, ch: int) -> bool:
        """A content is under way on ``ch``: only its frames may come."""
        return ch in self._pending

    def busy(self) -> bool:
        """A content is under way on some channel (a basic.publish waits for frames)."""
        return bool(self._pending)

    def pending_bytes(self) -> int:
        """Body bytes announced by unfinished contents (received or still to come)."""
        return sum(c.remaining + (len(c.received) if c.received is not None else 0)
                   for c in self._pending.values())

    def drop(self, ch: int) -> None:
        self._pending.pop(ch, None)

    def clear(self) -> None:
        self._pending.clear()

    def publish(self, ch: int, buf: bytes | bytearray, pos: int, end: int) -> None:
        """basic.publish's fields (reserved short, exchange, routing key, bits); raises
        IndexError or UnicodeDecodeError when they do not decode."""
        n = buf[pos + 2]
        pos += 3
        exchange = buf[pos : pos + n].decode("utf-8")
        pos += n
        n = buf[pos]
        pos += 1
        routing_key = buf[pos : pos + n].decode("utf-8")
        pos += n
        bits = buf[pos]
        if pos + 1 != end:
            raise IndexError
        self._pending[ch] = _Content(exchange, routing_key, bool(bits & 1), bool(bits & 2))

    def header(self, ch: int, buf: bytes | bytearray, start: int,
               end: int) -> MessagePublished | None:
        content = self._pending.get(ch)
        if content is None or content.properties is not None:
            raise ContentError(UNEXPECTED_FRAME, f"content header on channel {ch} without "
                                                 "basic.publish")
        if end - start < 14:
            raise ContentError(FRAME_ERROR, "content header frame too short")
        class_id, weight, body_size = _CONTENT_HDR.unpack_from(buf, start)
        if class_id != 60 or weight != 0:
            # rabbit_command_assembler: any header not matching {ClassId, 0, ...}
            # of the pending method is unexpected_frame.
            raise ContentError(UNEXPECTED_FRAME, f"content header class {class_id} weight "
                                                 f"{weight}; expected class 60 weight 0")
        if body_size > self.max_message_size:
            del self._pending[ch]
            raise ChannelError(ch, PRECONDITION_FAILED, f"message size {body_size} is larger "
                               f"than max size {self.max_message_size}", 60, 40)
        if len(self._pending) > 1 and self.pending_bytes() + body_size > self.max_message_size:
            raise ContentError(RESOURCE_ERROR, f"unfinished messages on {len(self._pending)} "
                               f"channels announce more than {self.max_message_size} bytes")
        properties = bytes(buf[start + 12 : end])
        try:
            check_properties(properties)
        except FieldError as exc:
            raise ContentError(FRAME_ERROR,
                               f"cannot decode content header properties: {exc}") from None
        if body_size == 0:
            del self._pending[ch]
            return published(ch, content.exchange, content.routing_key, content.mandatory,
                             content.immediate, properties, b"")
        content.properties = properties
        content.remaining = body_size
        return None

    def body(self, ch: int, buf: bytes | bytearray, start: int,
             end: int) -> MessagePublished | None:
        content = self._pending.get(ch)
        if content is None or content.properties is None:
            raise ContentError(UNEXPECTED_FRAME, f"content body on channel {ch} without header")
        size = end - start
        remaining = content.remaining - size
        if remaining < 0:
            # RabbitMQ does not check this at all (it then waits forever and fails on the
            # next method with unexpected_frame); we fail at once with the same code.
            raise ContentError(UNEXPECTED_FRAME,
                               f"content body overruns declared size by {-remaining} bytes")
        received = content.received
        if remaining or received is not None:
            # Several frames: copied once, from the read buffer into the body (the body
            # of the event is then this bytearray, read-only by convention: converting
            # it to bytes would copy it whole again).
            with memoryview(buf)[start:end] as piece:
                if received is None:
                    received = content.received = bytearray(piece)
                else:
                    received += piece
            if remaining:
                content.remaining = remaining
                return None
            body: bytes = received  # type: ignore[assignment]
        else:
            body = bytes(buf[start:end])  # the usual case: one body frame
        del self._pending[ch]
        return published(ch, content.exchange, content.routing_key, content.mandatory,
                         content.immediate, content.properties, body)
