"""Frame encoders: the generic pamqp path and hand-written hot-path ones.

Hot-path encoders build every frame of a delivery with a few ``struct.pack``
calls and one ``b"".join``; message properties travel as the raw bytes the
publisher sent (no decode / re-encode), and short strings that repeat
(consumer tags, exchange names, routing keys) are encoded once and cached.
"""

from __future__ import annotations

import struct

from pamqp import base

from protocol.constants import FRAME_OVERHEAD
from protocol.methods import encode_method
from protocol.methods import shortstr as _encode_shortstr

_FRAME_HDR = struct.Struct(">BHI")

# method frame header + class id + method id
_METHOD_HDR = struct.Struct(">BHIHH")
# frame-end of the previous frame, then a content header frame's fixed part:
# type, channel, size, class id (60), weight (0), body size
_END_CONTENT_HDR = struct.Struct(">BBHIHHQ")
# frame-end of the previous frame, then a body frame's header
_END_BODY_HDR = struct.Struct(">BBHI")
_QB = struct.Struct(">QB")
_HB = struct.Struct(">H")
_I = struct.Struct(">I")

_END = b"\xce"
# Bodies from this size on are not joined into one bytes with their frames: the
# encoder returns the list of pieces (slices of the body itself, no copy) for the
# transport's writelines. Joining copied every big delivery once more (64 MiB: +64 MiB).
JOIN_MAX = 1 << 20

# What a content encoder returns: one bytes, or for a big body the pieces to write.
Frames = bytes | list[bytes | memoryview]
HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"

# Cache of encoded short strings; cleared when it grows past the bound so a
# client cycling through random routing keys cannot grow it forever.
_SHORTSTR: dict[str, bytes] = {}
_SHORTSTR_MAX = 8192


def shortstr(value: str) -> bytes:
    enc = _SHORTSTR.get(value)
    if enc is None:
        enc = _encode_shortstr(value)
        if len(_SHORTSTR) >= _SHORTSTR_MAX:
            _SHORTSTR.clear()
        _SHORTSTR[value] = enc
    return enc


def method_frame(channel: int, method: base.Frame) -> bytes:
    """Any method (long tail: declares, consume-ok, ...); see protocol.methods."""
    return raw_frame(1, channel, encode_method(method))


def raw_frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return b"".join((_FRAME_HDR.pack(frame_type, channel, len(payload)), payload, _END))


def _content(
    parts: list[bytes | memoryview], channel: int, properties: bytes, body: bytes,
    frame_max: int,
) -> Frames:
    """Append header + body frames to ``parts`` (whose last frame lacks its
    frame-end) and join them, unless the body is JOIN_MAX or more. ``frame_max`` 0
    means no limit."""
    size = len(body)
    parts.append(_END_CONTENT_HDR.pack(0xCE, 2, channel, 12 + len(properties), 60, 0, size))
    parts.append(properties)
    chunk = frame_max - FRAME_OVERHEAD if frame_max else size
    if size <= chunk:
        if size:
            parts.append(_END_BODY_HDR.pack(0xCE, 3, channel, size))
            parts.append(body)
    else:
        view = memoryview(body)
        for start in range(0, size, chunk):
            piece = view[start : start + chunk]
            parts.append(_END_BODY_HDR.pack(0xCE, 3, channel, len(piece)))
            parts.append(piece)
    parts.append(_END)
    if size >= JOIN_MAX:
        return parts
    return b"".join(parts)


def deliver(
    channel: int,
    consumer_tag: str,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
    properties: bytes,
    body: bytes,
    frame_max: int,
) -> Frames:
    """basic.deliver + content header + body frames."""
    tag = shortstr(consumer_tag)
    ex = shortstr(exchange)
    rk = shortstr(routing_key)
    size = 4 + len(tag) + 9 + len(ex) + len(rk)
    parts: list[bytes | memoryview] = [
        _METHOD_HDR.pack(1, channel, size, 60, 60),
        tag,
        _QB.pack(delivery_tag, 1 if redelivered else 0),
        ex,
        rk,
    ]
    return _content(parts, channel, properties, body, frame_max)


def get_ok(
    channel: int,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
    message_count: int,
    properties: bytes,
    body: bytes,
    frame_max: int,
) -> Frames:
    """basic.get-ok + content."""
    ex = shortstr(exchange)
    rk = shortstr(routing_key)
    size = 4 + 9 + len(ex) + len(rk) + 4
    parts: list[bytes | memoryview] = [
        _METHOD_HDR.pack(1, channel, size, 60, 71),
        _QB.pack(delivery_tag, 1 if redelivered else 0),
        ex,
        rk,
        _I.pack(message_count),
    ]
    return _content(parts, channel, properties, body, frame_max)


def basic_return(
    channel: int,
    reply_code: int,
    reply_text: str,
    exchange: str,
    routing_key: str,
    properties: bytes,
    body: bytes,
    frame_max: int,
) -> Frames:
    """basic.return + content (unroutable mandatory message)."""
    text = shortstr(reply_text)
    ex = shortstr(exchange)
    rk = shortstr(routing_key)
    size = 4 + 2 + len(text) + len(ex) + len(rk)
    parts: list[bytes | memoryview] = [_METHOD_HDR.pack(1, channel, size, 60, 50), _HB.pack(reply_code), text, ex, rk]
    return _content(parts, channel, properties, body, frame_max)


_ACK = struct.Struct(">BHIHHQBB")


def ack(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    """basic.ack (publisher confirm)."""
    return _ACK.pack(1, channel, 13, 60, 80, delivery_tag, 1 if multiple else 0, 0xCE)


def nack(channel: int, delivery_tag: int, multiple: bool, requeue: bool = False) -> bytes:
    """basic.nack (publisher confirm: the broker could not take the message)."""
    bits = (1 if multiple else 0) | (2 if requeue else 0)
    return _ACK.pack(1, channel, 13, 60, 120, delivery_tag, bits, 0xCE)
