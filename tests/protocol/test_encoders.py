"""Server output: hot-path encoders round-tripped through pamqp, frame_max splitting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp.common import FieldTable

from protocol import MessagePublished, ServerConnection, frames
from protocol.properties import EMPTY, encode_properties
from tests.protocol.client import decode_content, decode_frames, feed, opened, publish

PROPS = encode_properties(
    content_type="text/plain", delivery_mode=2, headers={"k": "v", "n": 1}, priority=3
)


def _conn(frame_max: int) -> ServerConnection:
    return opened(0, frame_max=frame_max)


@pytest.mark.parametrize("size", [0, 1, 4087, 4088, 4089, 8176, 8177, 100_000])
def test_deliver_splits_body(size: int) -> None:
    conn = _conn(4096)
    body = bytes(i % 251 for i in range(size))
    out = conn.deliver(3, "ctag-1", 42, True, "amq.direct", "rk", PROPS, body)
    m, props, got, nframes = decode_content(out)
    assert isinstance(m, commands.Basic.Deliver)
    assert (m.consumer_tag, m.delivery_tag, m.redelivered, m.exchange, m.routing_key) == (
        "ctag-1", 42, True, "amq.direct", "rk",
    )  # fmt: skip
    assert props == PROPS and got == body
    assert nframes == -(-size // 4088)  # ceil: at most frame_max - 8 per body frame
    for _ch, frame in decode_frames(out):
        assert len(getattr(frame, "value", b"")) <= 4088
    assert all(ch == 3 for ch, _ in decode_frames(out))


def test_deliver_matches_pamqp_encoding() -> None:
    from pamqp import frame as pframe
    from pamqp import header

    conn = _conn(131072)
    out = conn.deliver(1, "c", 7, False, "ex", "k", PROPS, b"hello")
    props = commands.Basic.Properties(
        content_type="text/plain", delivery_mode=2, headers={"k": "v", "n": 1}, priority=3
    )
    ref = (
        pframe.marshal(commands.Basic.Deliver("c", 7, False, "ex", "k"), 1)
        + pframe.marshal(header.ContentHeader(0, 5, props), 1)
        + pframe.marshal(__import__("pamqp.body").body.ContentBody(b"hello"), 1)
    )
    assert out == ref


def test_get_ok_and_return() -> None:
    conn = _conn(4096)
    m, props, body, _ = decode_content(conn.get_ok(2, 9, False, "", "q", 17, EMPTY, b"x" * 5000))
    assert isinstance(m, commands.Basic.GetOk)
    assert (m.delivery_tag, m.redelivered, m.exchange, m.routing_key, m.message_count) == (
        9, False, "", "q", 17,
    )  # fmt: skip
    assert props == EMPTY and body == b"x" * 5000
    m, props, body, _ = decode_content(
        conn.basic_return(2, 312, "NO_ROUTE", "ex", "nowhere", PROPS, b"")
    )
    assert isinstance(m, commands.Basic.Return)
    assert (m.reply_code, m.reply_text, m.exchange, m.routing_key) == (
        312,
        "NO_ROUTE",
        "ex",
        "nowhere",
    )
    assert props == PROPS and body == b""


@pytest.mark.parametrize("multiple", [False, True])
@pytest.mark.parametrize("requeue", [False, True])
def test_ack_nack(multiple: bool, requeue: bool) -> None:
    # pamqp decodes longlong as signed, so stay below 2**63 when checking with it
    [(ch, a)] = decode_frames(frames.ack(4, 2**63 - 1, multiple))
    assert ch == 4 and isinstance(a, commands.Basic.Ack)
    assert (a.delivery_tag, a.multiple) == (2**63 - 1, multiple)
    assert frames.ack(4, 2**64 - 1, multiple)[-10:-2] == b"\xff" * 8
    [(ch, n)] = decode_frames(frames.nack(4, 5, multiple, requeue))
    assert isinstance(n, commands.Basic.Nack)
    assert (n.delivery_tag, n.multiple, n.requeue) == (5, multiple, requeue)


def test_send_method_and_close() -> None:
    conn = _conn(4096)
    [(ch, m)] = decode_frames(conn.send_method(1, commands.Queue.DeclareOk("q", 3, 1)))
    assert ch == 1 and (m.queue, m.message_count, m.consumer_count) == ("q", 3, 1)
    [(ch, m)] = decode_frames(conn.close_connection(320, "x" * 300, 0, 0))
    assert isinstance(m, commands.Connection.Close) and len(m.reply_text) == 255
    [(ch, m)] = decode_frames(conn.close_ok())
    assert isinstance(m, commands.Connection.CloseOk)
    assert decode_frames(frames.HEARTBEAT)[0][1].name == "Heartbeat"


def test_long_shortstr_rejected() -> None:
    conn = _conn(4096)
    with pytest.raises(ValueError):
        conn.deliver(1, "c" * 256, 1, False, "", "k", EMPTY, b"")


shortstrs = st.text(max_size=60).filter(lambda s: len(s.encode()) <= 255)
# pamqp (our test client) only lets these characters into exchange names
exchange_names = st.from_regex(r"[a-zA-Z0-9_.:@#,/+ -]{0,127}", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(
    body=st.binary(max_size=20000),
    exchange=shortstrs,
    routing_key=shortstrs,
    tag=shortstrs,
    delivery_tag=st.integers(0, 2**63 - 1),
    redelivered=st.booleans(),
    frame_max=st.integers(4096, 20000),
)
def test_deliver_roundtrip(
    body: bytes,
    exchange: str,
    routing_key: str,
    tag: str,
    delivery_tag: int,
    redelivered: bool,
    frame_max: int,
) -> None:
    conn = _conn(frame_max)
    out = conn.deliver(1, tag, delivery_tag, redelivered, exchange, routing_key, PROPS, body)
    m, props, got, nframes = decode_content(out)
    assert (m.consumer_tag, m.delivery_tag, m.redelivered, m.exchange, m.routing_key) == (
        tag, delivery_tag, redelivered, exchange, routing_key,
    )  # fmt: skip
    assert props == PROPS and got == body
    assert nframes == -(-len(body) // (frame_max - 8))


@settings(max_examples=150, deadline=None)
@given(
    body=st.binary(max_size=20000),
    exchange=exchange_names,
    routing_key=shortstrs,
    frame_max=st.integers(4096, 20000),
    cuts=st.lists(st.integers(0, 40000), max_size=8),
    headers=st.dictionaries(st.text(max_size=10), st.integers(-(2**63), 2**63 - 1), max_size=4),
)
def test_publish_roundtrip(
    body: bytes,
    exchange: str,
    routing_key: str,
    frame_max: int,
    cuts: list[int],
    headers: FieldTable,
) -> None:
    conn = opened(1, frame_max=frame_max)
    props = commands.Basic.Properties(headers=headers or None, delivery_mode=1)
    data = publish(1, body, exchange, routing_key, props, frame_max=frame_max) * 2
    events = []
    prev = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        if cut > prev:  # b"" would mean EOF
            events += feed(conn, data[prev:cut])
            prev = cut
    expected = MessagePublished(1, exchange, routing_key, False, False, props.marshal(), body)
    assert events == [expected, expected]


@pytest.mark.parametrize("frame_max", [131072, 0])
def test_big_body_is_written_from_the_body_itself(frame_max: int) -> None:
    """From JOIN_MAX on, a delivery is not joined into one bytes (a copy of the whole
    body): the encoder returns the pieces, each body piece a slice of the body."""
    body = bytes(range(256)) * (frames.JOIN_MAX // 256 + 3)
    conn = _conn(frame_max) if frame_max else opened(0, frame_max=0)
    for out in (conn.deliver(1, "c", 1, False, "", "q", PROPS, body),
                conn.get_ok(1, 1, False, "", "q", 0, PROPS, body),
                conn.basic_return(1, 312, "NO_ROUTE", "", "q", PROPS, body)):
        assert isinstance(out, list)
        pieces = [p for p in out if isinstance(p, memoryview)]
        if frame_max:
            assert len(pieces) == -(-len(body) // (frame_max - 8))
            assert all(p.obj is body for p in pieces)
        else:
            assert any(p is body for p in out)  # one body frame: the body object itself
        _, props, got, _ = decode_content(b"".join(out))
        assert props == PROPS and got == body
    small = conn.deliver(1, "c", 1, False, "", "q", PROPS, body[: frames.JOIN_MAX - 1])
    assert isinstance(small, bytes)
