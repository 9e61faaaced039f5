"""Valid AMQP client conversations, and the mutations that make them hostile.

A conversation is a list of frames (bytes). The generator covers every method a
client may send, content with every property and nested header tables, and the
handshake; :func:`mutate` breaks them at the frame level (drop, repeat, swap,
splice from another conversation) and at the byte level (flip, overwrite,
insert, delete, truncate, and rewrite the length fields a parser trusts: frame
size, short-string and table lengths, body size). Everything is driven by one
``random.Random``, so a seed replays an input exactly.
"""

from __future__ import annotations

import datetime
import random
import struct
from typing import Any

from pamqp import commands as C
from pamqp.base import Frame

from protocol.methods import build, encode_method

HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"

NAMES = ["q", "", "café", "名前", "amq.gen-x", "amq.direct", "x" * 255, "a.b.c", "é" * 127,
         "fz-excl", "emoji-🐇", " ", "#", "*.b"]
EXCHANGES = ["", "amq.direct", "amq.topic", "amq.fanout", "amq.headers", "x", "café"]
TYPES = ["direct", "topic", "fanout", "headers", "bogus", ""]


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def method(channel: int, m: Frame) -> bytes:
    return frame(1, channel, encode_method(m))


def _value(r: random.Random, depth: int = 0) -> Any:
    k = r.randrange(12 if depth < 3 else 9)
    if k == 0:
        return r.choice([True, False])
    if k == 1:
        return r.choice([0, 1, -1, 127, -128, 255, 65535, -(2**31), 2**32 - 1, 2**62, -(2**63)])
    if k == 2:
        return r.random() * 1e6
    if k == 3:
        return r.choice(["", "all", "any", "x" * 300, "é", "drop-head", "reject-publish"])
    if k == 4:
        return None
    if k == 5:
        return datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    if k == 6:
        return bytearray(r.randbytes(r.randrange(8)))
    if k == 7:
        return r.choice([5, 10, 1000, 60000])
    if k == 8:
        return r.choice(["a.b", "x-match"])
    if k == 9:
        return [_value(r, depth + 1) for _ in range(r.randrange(4))]
    return {r.choice(["a", "b", "x-death", "count", "é"]): _value(r, depth + 1)
            for _ in range(r.randrange(4))}


ARG_KEYS = ["x-message-ttl", "x-expires", "x-max-length", "x-max-length-bytes",
            "x-overflow", "x-dead-letter-exchange", "x-dead-letter-routing-key",
            "x-max-priority", "x-single-active-consumer", "x-queue-mode", "x-priority",
            "alternate-exchange", "x-match", "x-queue-type", "other"]


def arguments(r: random.Random) -> dict[str, Any]:
    return {r.choice(ARG_KEYS): _value(r) for _ in range(r.randrange(4))}


def properties(r: random.Random) -> C.Basic.Properties:
    kw: dict[str, Any] = {}
    for name, gen in (
        ("content_type", lambda: r.choice(["text/plain", "application/json", "é"])),
        ("content_encoding", lambda: "utf-8"),
        ("headers", lambda: {k: _value(r) for k in r.sample(["a", "b", "x-death", "CC", "h"], 2)}),
        ("delivery_mode", lambda: r.choice([1, 2])),
        ("priority", lambda: r.randrange(256)),
        ("correlation_id", lambda: "cid"),
        ("reply_to", lambda: "amq.rabbitmq.reply-to"),
        ("expiration", lambda: r.choice(["0", "10", "100000", "-1", "abc", "1e3"])),
        ("message_id", lambda: "mid"),
        ("timestamp", lambda: datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC)),
        ("message_type", lambda: "t"),
        ("user_id", lambda: r.choice(["guest", "other"])),
        ("app_id", lambda: "app"),
    ):
        if r.random() < 0.3:
            kw[name] = gen()
    return C.Basic.Properties(**kw)


def publish(r: random.Random, ch: int, frame_max: int = 4096) -> list[bytes]:
    body = r.randbytes(r.choice([0, 1, 10, 100, 5000]))
    props = properties(r).marshal()
    out = [method(ch, build(C.Basic.Publish, 0, r.choice(EXCHANGES), r.choice(NAMES),
                            r.random() < 0.3, r.random() < 0.05)),
           frame(2, ch, struct.pack(">HHQ", 60, 0, len(body)) + props)]
    step = frame_max - 8
    for i in range(0, len(body), step):
        out.append(frame(3, ch, body[i : i + step]))
    return out


def channel_method(r: random.Random, ch: int) -> list[bytes]:
    """One random method (or publish) on channel ``ch``, as frames."""
    b = r.random() < 0.5
    name, ex = r.choice(NAMES), r.choice(EXCHANGES)
    k = r.randrange(24)
    m: Frame
    if k < 6:
        return publish(r, ch)
    if k == 6:
        m = build(C.Queue.Declare, 0, name, r.random() < 0.1, b, r.random() < 0.5,
                  r.random() < 0.3, r.random() < 0.1, arguments(r))
    elif k == 7:
        m = build(C.Exchange.Declare, 0, ex or "x", r.choice(TYPES), r.random() < 0.1, b,
                  r.random() < 0.2, r.random() < 0.1, r.random() < 0.1, arguments(r))
    elif k == 8:
        m = build(C.Queue.Bind, 0, name, ex, r.choice(NAMES), r.random() < 0.1, arguments(r))
    elif k == 9:
        m = build(C.Queue.Unbind, 0, name, ex, r.choice(NAMES), arguments(r))
    elif k == 10:
        m = build(C.Exchange.Bind, 0, ex, r.choice(EXCHANGES), name, False, arguments(r))
    elif k == 11:
        m = build(C.Basic.Consume, 0, name, r.choice(["", "tag", "é"]), False, b,
                  r.random() < 0.2, False, arguments(r))
    elif k == 12:
        m = build(C.Basic.Cancel, r.choice(["", "tag", "é"]), False)
    elif k == 13:
        m = build(C.Basic.Get, 0, name, b)
    elif k == 14:
        m = build(C.Basic.Ack, r.choice([0, 1, 2, 3, 2**64 - 1]), b)
    elif k == 15:
        m = build(C.Basic.Nack, r.choice([0, 1, 2, 5]), b, r.random() < 0.5)
    elif k == 16:
        m = build(C.Basic.Reject, r.choice([1, 2]), b)
    elif k == 17:
        m = build(C.Basic.Qos, 0, r.choice([0, 1, 10, 65535]), b)
    elif k == 18:
        m = build(C.Queue.Purge, 0, name, False)
    elif k == 19:
        m = build(C.Queue.Delete, 0, name, r.random() < 0.2, r.random() < 0.2, False)
    elif k == 20:
        m = build(r.choice([C.Confirm.Select, C.Tx.Select, C.Tx.Commit, C.Tx.Rollback]))
    elif k == 21:
        m = build(C.Basic.Recover, True)
    elif k == 22:
        m = build(C.Channel.Flow, b)
    else:
        m = build(C.Exchange.Delete, 0, ex, r.random() < 0.3, False)
    return [method(ch, m)]


def handshake(r: random.Random, vhost: str = "/", heartbeat: int = 0) -> list[bytes]:
    mech = r.choice(["PLAIN", "PLAIN", "PLAIN", "AMQPLAIN"])
    response: Any = "\0guest\0guest" if mech == "PLAIN" else \
        b"\x05LOGINS\x00\x00\x00\x05guest\x08PASSWORDS\x00\x00\x00\x05guest"
    caps: Any = {"consumer_cancel_notify": True, "connection.blocked": True}
    if r.random() < 0.1:
        caps = r.choice(["yes", 1, [1]])  # a capabilities value of the wrong type
    return [
        HEADER,
        method(0, build(C.Connection.StartOk, {"product": "fuzz", "capabilities": caps},
                        mech, response, "en_US")),
        method(0, build(C.Connection.TuneOk, 16, 4096, heartbeat)),
        method(0, build(C.Connection.Open, vhost)),
    ]


def conversation(r: random.Random, steps: int | None = None) -> list[bytes]:
    """Handshake, a few channels, random methods, sometimes a clean close."""
    frames = handshake(r)
    channels = [1]
    frames.append(method(1, build(C.Channel.Open)))
    for _ in range(steps if steps is not None else r.randrange(1, 12)):
        k = r.random()
        if k < 0.08:
            ch = r.randrange(1, 5)
            channels.append(ch)
            frames.append(method(ch, build(C.Channel.Open)))
        elif k < 0.12:
            frames.append(method(r.choice(channels), build(C.Channel.Close, 200, "bye", 0, 0)))
        elif k < 0.15:
            frames.append(HEARTBEAT)
        else:
            frames.extend(channel_method(r, r.choice(channels)))
    if r.random() < 0.3:
        frames.append(method(0, build(C.Connection.Close, 200, "bye", 0, 0)))
    return frames


# --- mutations -----------------------------------------------------------------------

_INTERESTING32 = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
                  0xFFFFFFFF, 4088, 4089, 131072]


def _byte_mutation(r: random.Random, data: bytearray) -> None:
    if not data:
        data.extend(r.randbytes(r.randrange(1, 16)))
        return
    k = r.randrange(8)
    i = r.randrange(len(data))
    if k == 0:
        data[i] ^= 1 << r.randrange(8)
    elif k == 1:
        data[i] = r.choice([0, 1, 0x7F, 0x80, 0xCE, 0xFF])
    elif k == 2:
        data[i:i] = r.randbytes(r.randrange(1, 9))
    elif k == 3:
        del data[i : i + r.randrange(1, 9)]
    elif k == 4 and i + 4 <= len(data):  # a 32-bit length field somewhere
        data[i : i + 4] = struct.pack(">I", r.choice(_INTERESTING32))
    elif k == 5 and i + 2 <= len(data):
        data[i : i + 2] = struct.pack(">H", r.choice([0, 1, 0xFFFF, 2047, 2048]))
    elif k == 6:
        data[i] = r.randrange(256)
    else:
        del data[i:]


def mutate(r: random.Random, frames: list[bytes], donor: list[bytes]) -> bytes:
    """One hostile byte stream from a valid conversation (``donor``: another one to
    splice frames from)."""
    frames = list(frames)
    for _ in range(r.randrange(1, 4)):
        k = r.randrange(10)
        if not frames:
            break
        # later frames more often: a broken handshake reaches little of the broker
        i = max(r.randrange(len(frames)), r.randrange(len(frames)))
        if k == 0:
            del frames[i]
        elif k == 1:
            frames.insert(i, frames[i])
        elif k == 2 and len(frames) > 1:
            j = r.randrange(len(frames))
            frames[i], frames[j] = frames[j], frames[i]
        elif k == 3 and donor:
            frames.insert(i, r.choice(donor))
        elif k == 4 and len(frames[i]) >= 7 and frames[i] != HEADER:
            f = bytearray(frames[i])  # rewrite the frame's own size field
            f[3:7] = struct.pack(">I", r.choice(_INTERESTING32))
            frames[i] = bytes(f)
        elif k == 5 and frames[i] != HEADER and len(frames[i]) > 7:
            f = bytearray(frames[i])  # change the channel
            f[1:3] = struct.pack(">H", r.choice([0, 1, 2, 3, 9, 2048, 65535]))
            frames[i] = bytes(f)
        else:
            f = bytearray(frames[i])
            for _ in range(r.randrange(1, 4)):
                _byte_mutation(r, f)
            frames[i] = bytes(f)
    return b"".join(frames)


def split(r: random.Random, data: bytes) -> list[bytes]:
    """``data`` cut at random points (sometimes byte by byte, sometimes whole)."""
    k = r.random()
    if k < 0.3 or len(data) < 2:
        return [data]
    if k < 0.35:
        return [data[i : i + 1] for i in range(min(len(data), 400))] + [data[400:]]
    cuts = sorted(r.sample(range(1, len(data)), min(len(data) - 1, r.randrange(1, 8))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
