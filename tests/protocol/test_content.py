"""basic.publish content assembly, acks / nacks, content-sequence errors."""

from __future__ import annotations

import tracemalloc

import pytest
from pamqp import commands

from protocol import (
    AckReceived,
    AMQPConnectionError,
    ChannelError,
    HeartbeatReceived,
    MessagePublished,
    MethodReceived,
    NackReceived,
)
from protocol.constants import FRAME_ERROR, PRECONDITION_FAILED, UNEXPECTED_FRAME
from protocol.properties import decode_properties
from tests.protocol.client import (
    MODES,
    body_frame,
    content_header,
    feed,
    finish_trailing,
    method,
    open_channel,
    opened,
    publish,
    raw,
)

PROPS = commands.Basic.Properties(
    content_type="application/json", delivery_mode=2, headers={"x-a": 1, "s": "v"}
)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [0, 1, 100, 4088, 4089, 20000])
def test_publish(mode: str, size: int) -> None:
    conn = opened(1, frame_max=4096)  # small frames: exercise many body frames
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    data = publish(1, body, "amq.topic", "a.b.c", PROPS, frame_max=4096, mandatory=True)
    events = feed(conn, data, mode)
    assert len(events) == 1
    ev = events[0]
    assert isinstance(ev, MessagePublished)
    assert (ev.channel, ev.exchange, ev.routing_key) == (1, "amq.topic", "a.b.c")
    assert ev.mandatory and not ev.immediate
    assert ev.body == body
    # one body frame: bytes; several: the bytearray they were appended to (no join copy)
    assert isinstance(ev.body, bytes if size <= 4088 else bytearray)
    assert isinstance(ev.properties, bytes)
    assert ev.properties == PROPS.marshal()
    assert decode_properties(ev.properties)["headers"] == {"x-a": 1, "s": "v"}
    if mode == "trailing":
        assert finish_trailing(conn) == [HeartbeatReceived()]


def test_big_body_is_held_once_while_assembled() -> None:
    """A 16 MiB body in 128 KiB frames: assembly allocates about the body once (the
    chunks joined at the end used to hold it twice, peak 2x)."""
    size = 16 << 20
    data = publish(1, b"b" * size, frame_max=131072)
    conn = opened(1)
    tracemalloc.start()
    try:
        conn.receive_data(data)
        ev = conn.next_event()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(ev, MessagePublished) and len(ev.body) == size
    assert peak < 1.3 * size, peak / size


def test_body_frames_count() -> None:
    conn = opened(1, frame_max=4096)
    data = publish(1, b"x" * 10000, frame_max=4096)
    assert data.count(b"\x03\x00\x01") >= 3  # three body frames went in
    [ev] = feed(conn, data)
    assert ev.body == b"x" * 10000


def test_empty_body_frames_allowed() -> None:
    conn = opened(1)
    data = (
        method(1, commands.Basic.Publish(routing_key="k"))
        + content_header(1, 3)
        + body_frame(1, b"")
        + body_frame(1, b"ab")
        + body_frame(1, b"")
        + body_frame(1, b"c")
    )
    [ev] = feed(conn, data)
    assert ev.body == b"abc"


@pytest.mark.parametrize("mode", MODES)
def test_interleaved_channels_and_acks(mode: str) -> None:
    conn = opened(1)
    data = b"".join(
        [
            open_channel(2),
            publish(1, b"one"),
            method(2, commands.Basic.Ack(7, multiple=True)),
            publish(2, b"two", routing_key="r2"),
            method(1, commands.Basic.Nack(9, multiple=False, requeue=True)),
            method(1, commands.Basic.Reject(11, requeue=False)),
            method(2, commands.Basic.Nack(12, multiple=True, requeue=False)),
            method(
                1,
                commands.Queue.Declare(
                    queue="q", durable=True, arguments={"x-queue-type": "quorum"}
                ),
            ),
        ]
    )
    events = feed(conn, data, mode)
    assert isinstance(events[0], MethodReceived)  # channel.open 2
    assert events[1].body == b"one" and events[1].channel == 1
    assert events[2] == AckReceived(2, 7, True)
    assert events[3].body == b"two" and events[3].routing_key == "r2"
    assert events[4] == NackReceived(1, 9, False, True)
    assert events[5] == NackReceived(1, 11, False, False, reject=True)
    assert events[6] == NackReceived(2, 12, True, False)
    q = events[7].method
    assert isinstance(q, commands.Queue.Declare)
    assert (q.queue, q.durable, q.arguments) == ("q", True, {"x-queue-type": "quorum"})
    assert len(events) == 8


def test_many_frames_in_one_read() -> None:
    conn = opened(1)
    data = b"".join(publish(1, b"m%d" % i) + method(1, commands.Basic.Ack(i)) for i in range(500))
    events = feed(conn, data)
    assert len(events) == 1000
    assert [e.body for e in events[::2]] == [b"m%d" % i for i in range(500)]
    assert [e.delivery_tag for e in events[1::2]] == list(range(500))


PUB = method(1, commands.Basic.Publish(routing_key="k"))
HDR3 = content_header(1, 3)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("data", "code"),
    [
        (HDR3, UNEXPECTED_FRAME),  # header without publish
        (body_frame(1, b"abc"), UNEXPECTED_FRAME),  # body without publish
        (PUB + body_frame(1, b"abc"), UNEXPECTED_FRAME),  # body before header
        (PUB + method(1, commands.Basic.Ack(1)), UNEXPECTED_FRAME),  # method awaiting header
        (PUB + HDR3 + method(1, commands.Basic.Ack(1)), UNEXPECTED_FRAME),  # awaiting body
        (PUB + HDR3 + HDR3, UNEXPECTED_FRAME),  # second header
        (PUB + HDR3 + body_frame(1, b"abcd"), UNEXPECTED_FRAME),  # overruns body size
        (PUB + HDR3 + body_frame(1, b"ab") + body_frame(1, b"cd"), UNEXPECTED_FRAME),
        (PUB + raw(2, 1, b"\x00\x32\x00\x00" + bytes(10)), UNEXPECTED_FRAME),  # class 50
        (PUB + raw(2, 1, b"\x00\x3c\x00\x01" + bytes(10)), UNEXPECTED_FRAME),  # weight 1
        (PUB + raw(2, 1, b"\x00\x3c\x00\x00" + bytes(6)), FRAME_ERROR),  # truncated header
    ],
)
def test_content_errors(data: bytes, code: int, mode: str) -> None:
    conn = opened(1)
    events = feed(conn, data, mode)
    assert len(events) == 1 and isinstance(events[0], AMQPConnectionError), events
    assert events[0].reply_code == code


@pytest.mark.parametrize("mode", MODES)
def test_message_too_large_is_soft(mode: str) -> None:
    conn = opened(1, max_message_size=10)
    data = b"".join(
        [
            open_channel(2),
            publish(1, b"x" * 11),  # refused: the body frame is dropped
            method(1, commands.Basic.Ack(1)),  # dropped: channel 1 is closing
            publish(2, b"y" * 10),  # other channels carry on
            method(1, commands.Channel.CloseOk()),
            open_channel(1),
            publish(1, b"z"),
        ]
    )
    events = feed(conn, data, mode)
    assert isinstance(events[0], MethodReceived)
    err = events[1]
    assert isinstance(err, ChannelError)
    assert (err.channel, err.reply_code, err.class_id, err.method_id) == (
        1, PRECONDITION_FAILED, 60, 40,
    )  # fmt: skip
    assert events[2].body == b"y" * 10
    assert isinstance(events[3].method, commands.Channel.CloseOk)
    assert isinstance(events[4].method, commands.Channel.Open)
    assert events[5].body == b"z"
    assert len(events) == 6


def test_accepts_any_buffer_type_and_partial_reads() -> None:
    conn = opened(1)
    data = publish(1, b"payload" * 1000) * 3
    third = len(data) // 3
    conn.receive_data(memoryview(data)[: third + 5])
    conn.receive_data(bytearray(data[third + 5 : 2 * third + 9]))
    events = feed(conn, data[2 * third + 9 :])  # nothing was drained before this
    assert [e.body for e in events] == [b"payload" * 1000] * 3
