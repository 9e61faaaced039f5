"""Test-side AMQP client encoder/decoder built on pamqp, plus a feeding driver."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pamqp import body as pbody
from pamqp import commands
from pamqp import frame as pframe
from pamqp import header as pheader
from pamqp import heartbeat as pheartbeat

from protocol import (
    NEED_DATA,
    AMQPError,
    BadProtocolHeader,
    MethodReceived,
    ProtocolHeaderReceived,
    ServerConnection,
)

HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT = pheartbeat.Heartbeat.marshal()
MODES = ["whole", "bytewise", "trailing"]


def method(ch: int, m: Any) -> bytes:
    return pframe.marshal(m, ch)


def content_header(
    ch: int, body_size: int, props: commands.Basic.Properties | None = None
) -> bytes:
    return pframe.marshal(pheader.ContentHeader(0, body_size, props), ch)


def body_frame(ch: int, data: bytes) -> bytes:
    return pframe.marshal(pbody.ContentBody(data), ch)


def raw(frame_type: int, ch: int, payload: bytes, end: bytes = b"\xce") -> bytes:
    return (
        bytes([frame_type])
        + ch.to_bytes(2, "big")
        + len(payload).to_bytes(4, "big")
        + payload
        + end
    )


def publish(
    ch: int,
    body: bytes,
    exchange: str = "",
    routing_key: str = "rk",
    props: commands.Basic.Properties | None = None,
    frame_max: int = 131072,
    mandatory: bool = False,
) -> bytes:
    out = [
        method(
            ch,
            commands.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory),
        ),
        content_header(ch, len(body), props),
    ]
    step = frame_max - 8
    for i in range(0, len(body), step):
        out.append(body_frame(ch, body[i : i + step]))
    return b"".join(out)


def handshake(
    frame_max: int = 131072, channel_max: int = 2047, heartbeat: int = 60, vhost: str = "/"
) -> bytes:
    return b"".join(
        [
            HEADER,
            method(
                0,
                commands.Connection.StartOk(
                    client_properties={"product": "test", "capabilities": {"basic.nack": True}},
                    mechanism="PLAIN",
                    response="\x00guest\x00guest",
                ),
            ),
            method(0, commands.Connection.TuneOk(channel_max, frame_max, heartbeat)),
            method(0, commands.Connection.Open(vhost)),
        ]
    )


def open_channel(ch: int) -> bytes:
    return method(ch, commands.Channel.Open())


def respond(conn: ServerConnection, event: Any) -> None:
    """What a node would do for handshake events (so state advances)."""
    if isinstance(event, ProtocolHeaderReceived):
        conn.start({"product": "raftmq"})
    elif isinstance(event, MethodReceived):
        m = event.method
        if isinstance(m, commands.Connection.StartOk):
            conn.tune()
        elif isinstance(m, commands.Connection.Open):
            conn.open_ok()
        elif isinstance(m, commands.Channel.Close):
            conn.channel_close_ok(event.channel)
        elif isinstance(m, commands.Connection.Close):
            conn.close_ok()


def drain(conn: ServerConnection, out: list[Any]) -> None:
    errors = 0
    while True:
        try:
            ev = conn.next_event()
        except (AMQPError, BadProtocolHeader) as exc:
            out.append(exc)
            errors += 1
            assert errors < 100, "next_event keeps raising"
            continue  # hard error: NEED_DATA follows; soft error: parsing goes on
        if ev is NEED_DATA:
            return
        respond(conn, ev)
        out.append(ev)


def chunks(data: bytes, mode: str) -> Iterator[bytes]:
    if mode == "bytewise":
        for i in range(len(data)):
            yield data[i : i + 1]
    else:
        yield data


def feed(conn: ServerConnection, data: bytes, mode: str = "whole") -> list[Any]:
    """Feed ``data`` whole, byte by byte, or whole plus a partial trailing
    heartbeat (which must stay buffered and complete afterwards)."""
    out: list[Any] = []
    if mode == "trailing":
        conn.receive_data(data + HEARTBEAT[:5])
        drain(conn, out)
        return out
    for piece in chunks(data, mode):
        conn.receive_data(piece)
        drain(conn, out)
    return out


def finish_trailing(conn: ServerConnection) -> list[Any]:
    out: list[Any] = []
    conn.receive_data(HEARTBEAT[5:])
    drain(conn, out)
    return out


def opened(ch: int = 1, **kw: Any) -> ServerConnection:
    """A connection through the handshake with channel ``ch`` open."""
    conn = ServerConnection(**kw)
    hs = handshake(frame_max=kw.get("frame_max", 131072))
    events = feed(conn, hs + (open_channel(ch) if ch else b""))
    assert not [e for e in events if isinstance(e, Exception)], events
    return conn


def joined(data: bytes | list[bytes | memoryview]) -> bytes:
    """An encoder's output as one bytes (a big content comes as its pieces)."""
    return data if isinstance(data, bytes) else b"".join(data)


def decode_frames(data: bytes | list[bytes | memoryview]) -> list[tuple[int, Any]]:
    """Split server output into (channel, pamqp frame) pairs; checks it is exact."""
    data = joined(data)
    out = []
    while data:
        n, ch, obj = pframe.unmarshal(data)
        out.append((ch, obj))
        data = data[n:]
    return out


def decode_content(data: bytes | list[bytes | memoryview]) -> tuple[Any, bytes, bytes, int]:
    """(method, raw properties, body, number of body frames) from a method+content."""
    data = joined(data)
    frames = decode_frames(data)
    (_, m), (_, hdr), *bodies = frames
    assert isinstance(hdr, pheader.ContentHeader)
    # raw properties: slice them out of the header frame itself
    first = pframe.frame_parts(data)[2]
    assert first is not None
    hstart = 7 + first + 1
    hsize = int.from_bytes(data[hstart + 3 : hstart + 7], "big")
    props = data[hstart + 7 + 12 : hstart + 7 + hsize]
    body = b"".join(b.value for _, b in bodies)
    assert hdr.body_size == len(body)
    return m, props, body, len(bodies)
