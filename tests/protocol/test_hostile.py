"""Hostile input to the sans-I/O connection: each case is a clear protocol error
with the spec's reply code, never another exception (issue: bad input isolated)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from pamqp import base, commands

from protocol import (
    AMQPConnectionError,
    AMQPError,
    MessagePublished,
    MethodReceived,
    ServerConnection,
)
from protocol.constants import FRAME_ERROR, RESOURCE_ERROR
from protocol.methods import build, decode_method, encode_method
from tests.protocol.client import (
    MODES,
    body_frame,
    decode_frames,
    feed,
    handshake,
    method,
    open_channel,
    opened,
    raw,
)
from tests.protocol.test_fields import entry, nested, table


def header_frame(ch: int, body_size: int, props: bytes) -> bytes:
    return raw(2, ch, struct.pack(">HHQ", 60, 0, body_size) + props)


def publish_with(ch: int, props: bytes, body: bytes = b"x") -> bytes:
    return (method(ch, commands.Basic.Publish(exchange="", routing_key="q"))
            + header_frame(ch, len(body), props) + (body_frame(ch, body) if body else b""))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("props", [
    b"\x01\x00",  # expiration flag, no bytes (the probe's poisoned header)
    b"\x00\x10",  # user-id flag, no bytes
    b"\x20\x00" + nested(200),  # headers nested far too deep
    b"\x20\x00\x00\x00\x00\x06\x01kZ\x00\x00\x00",  # unknown field type in headers
], ids=["expiration", "user-id", "deep-headers", "bad-type"])
def test_malformed_properties_are_a_frame_error(mode: str, props: bytes) -> None:
    conn = opened(1)
    events = feed(conn, publish_with(1, props), mode)
    errors = [e for e in events if isinstance(e, AMQPError)]
    assert [type(e) for e in errors] == [AMQPConnectionError]
    assert errors[0].reply_code == FRAME_ERROR
    assert (errors[0].class_id, errors[0].method_id) == (60, 40)
    assert not [e for e in events if isinstance(e, MessagePublished)]


def test_valid_properties_after_a_bad_one_on_another_connection() -> None:
    good = opened(1)
    [ev] = feed(good, publish_with(1, b"\x10\x00\x02"))
    assert isinstance(ev, MessagePublished) and ev.properties == b"\x10\x00\x02"


@pytest.mark.parametrize("args", [
    nested(500),  # deeper than the interpreter's stack would allow
    table(entry("n", b"d", struct.pack(">d", float("nan")))),  # RabbitMQ cannot decode it
    table(entry("k", b"Q")),
], ids=["deep", "nan", "unknown-type"])
def test_undecodable_method_tables_are_a_frame_error(args: bytes) -> None:
    conn = opened(1)
    payload = (struct.pack(">HHH", 50, 10, 0) + b"\x01q" + b"\x00" + args)
    [err] = feed(conn, raw(1, 1, payload))
    assert isinstance(err, AMQPConnectionError)
    assert err.reply_code == FRAME_ERROR


def test_interleaved_contents_are_bounded_per_connection() -> None:
    conn = opened(0, max_message_size=1000)
    data = b"".join(open_channel(c) for c in (1, 2, 3))
    feed(conn, data)
    data = b""
    for c in (1, 2, 3):  # three unfinished 600-byte messages: 1,800 > 1,000
        data += method(c, commands.Basic.Publish(exchange="", routing_key="q"))
        data += header_frame(c, 600, b"\x00\x00") + body_frame(c, b"x" * 10)
    events = feed(conn, data)
    errors = [e for e in events if isinstance(e, AMQPError)]
    assert len(errors) == 1 and errors[0].reply_code == RESOURCE_ERROR


def test_unicode_names_decode_and_replies_encode() -> None:
    conn = opened(1)
    declare = build(commands.Queue.Declare, 0, "café", False, True)
    [ev] = feed(conn, raw(1, 1, encode_method(declare)))
    assert isinstance(ev, MethodReceived) and ev.method.queue == "café"
    # the reply pamqp itself refuses to build (its queue-name pattern is ASCII only)
    with pytest.raises(ValueError):
        commands.Queue.DeclareOk("café", 0, 0)
    out = conn.send_method(1, build(commands.Queue.DeclareOk, "café", 3, 1))
    [(ch, ok)] = decode_frames(out)
    assert (ch, ok.queue, ok.message_count, ok.consumer_count) == (1, "café", 3, 1)


@pytest.mark.parametrize("cls,values", [
    (commands.Queue.DeclareOk, ("ünïcödé-名前", 2**32 - 1, 7)),
    (commands.Basic.Deliver, ("ctag-é", 2**64 - 1, True, "ex", "rk")),
    (commands.Basic.Cancel, ("tag", True)),
    (commands.Connection.Close, (320, "CONNECTION_FORCED - bye", 0, 0)),
    (commands.Queue.Declare, (0, "q", False, True, False, True, False, {"x-a": [1, "b"]})),
])
def test_encode_method_roundtrips_through_the_strict_decoder(
    cls: type[base.Frame], values: tuple[Any, ...]
) -> None:
    m = build(cls, *values)
    payload = encode_method(m)
    decoded = decode_method(cls.index, payload[4:])
    for name, value in zip(cls.__slots__, values, strict=False):
        assert getattr(decoded, name) == value, name


def test_shortstr_over_255_bytes_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        encode_method(build(commands.Basic.ConsumeOk, "é" * 128))


def test_close_reply_text_is_cut_to_255_bytes() -> None:
    conn = opened(1)
    out = conn.close_channel(1, 404, "NOT_FOUND - no queue '" + "é" * 200 + "'")
    [(_, close)] = decode_frames(out)
    assert len(close.reply_text.encode()) <= 255
    assert close.reply_text.startswith("NOT_FOUND - no queue 'é")


def test_incomplete_and_frames_parsed() -> None:
    conn = opened(1)
    assert not conn.incomplete
    before = conn.frames_parsed
    frame = method(1, commands.Basic.Qos(0, 10, False))
    conn.receive_data(frame[:5])
    assert conn.next_event() is not None and conn.incomplete
    assert conn.frames_parsed == before
    conn.receive_data(frame[5:])
    assert isinstance(conn.next_event(), MethodReceived)
    assert not conn.incomplete and conn.frames_parsed == before + 1


# --- arguments tables (declare, bind, consume) -----------------------------------------

_WITH_ARGS: list[tuple[Any, tuple[int, int]]] = [
    (lambda a: commands.Queue.Declare(queue="q", arguments=a), (50, 10)),
    (lambda a: commands.Exchange.Declare(exchange="x", arguments=a), (40, 10)),
    (lambda a: commands.Queue.Bind(queue="q", exchange="x", arguments=a), (50, 20)),
    (lambda a: commands.Queue.Unbind(queue="q", exchange="x", arguments=a), (50, 50)),
    (lambda a: commands.Exchange.Bind(destination="d", source="s", arguments=a), (40, 30)),
    (lambda a: commands.Exchange.Unbind(destination="d", source="s", arguments=a), (40, 40)),
    (lambda a: commands.Basic.Consume(queue="q", arguments=a), (60, 20)),
]


@pytest.mark.parametrize(("make", "ids"), _WITH_ARGS)
def test_arguments_table_items_are_bounded(make: Any, ids: tuple[int, int]) -> None:
    """1,024 keys and array elements (every level counted) pass; one more is a soft 406
    for that channel, and the next method on another channel is parsed as usual."""
    conn = opened(1)
    conn.receive_data(open_channel(2))
    assert isinstance(conn.next_event(), MethodReceived)
    at_limit = {f"k{i}": i for i in range(1000)} | {"nested": {"a": list(range(22))}}
    over = {f"k{i}": i for i in range(1000)} | {"nested": {"a": list(range(23))}}
    events = feed(conn, method(1, make(at_limit)) + method(1, make(over))
                  + method(2, commands.Basic.Qos(prefetch_count=5)))
    assert isinstance(events[0], MethodReceived) and events[0].method.arguments == at_limit
    err = events[1]
    assert isinstance(err, AMQPError) and not err.hard
    assert (err.reply_code, err.class_id, err.method_id) == (406, *ids)
    assert "more than 1024 keys and array elements" in err.reply_text
    assert isinstance(events[2], MethodReceived) and events[2].channel == 2


def test_method_with_arguments_is_bounded_whatever_frame_max() -> None:
    """With --frame-max 0 (no limit) a declare could carry any table: it is refused past
    128 KiB (the default frame_max), as the management API refuses such arguments."""
    conn = ServerConnection(frame_max=0)
    events = feed(conn, handshake(frame_max=0) + open_channel(1))
    assert not [e for e in events if isinstance(e, Exception)]
    fits: dict[str, Any] = {"x-big": "v" * (131072 - 200)}
    too_big: dict[str, Any] = {"x-big": "v" * 131072}
    events = feed(conn, method(1, commands.Queue.Declare(queue="q", arguments=fits))
                  + method(1, commands.Queue.Declare(queue="q", arguments=too_big)))
    assert isinstance(events[0], MethodReceived)
    err = events[1]
    assert isinstance(err, AMQPError) and (err.reply_code, err.class_id) == (406, 50)
    assert "at most 131072 with arguments" in err.reply_text


def test_frame_max_zero_still_bounds_a_frame_by_the_largest_message() -> None:
    """frame_max 0 negotiated (no limit on either side): a frame announcing more than a
    whole message may carry is a framing error at once, before it is buffered."""
    conn = ServerConnection(frame_max=0, max_message_size=1 << 20)
    events = feed(conn, handshake(frame_max=0) + open_channel(1))
    assert not [e for e in events if isinstance(e, Exception)] and conn.frame_max == 0
    ok = publish_with(1, b"\x00\x00", b"y" * (1 << 20))  # one body frame of 1 MiB
    events = feed(conn, ok)
    assert isinstance(events[0], MessagePublished) and len(events[0].body) == 1 << 20
    events = feed(conn, raw(1, 1, b"")[:3] + struct.pack(">I", (1 << 20) + 1) + b"\x00")
    [err] = events
    assert isinstance(err, AMQPConnectionError) and err.reply_code == FRAME_ERROR
    assert err.framing_lost and "with frame_max 0" in err.reply_text
