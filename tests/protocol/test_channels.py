"""Channel open / close handshakes in both directions."""

from __future__ import annotations

import pytest
from pamqp import commands

from protocol import AMQPConnectionError, MessagePublished, MethodReceived
from protocol.constants import CHANNEL_ERROR, NOT_FOUND
from tests.protocol.client import (
    MODES,
    decode_frames,
    feed,
    method,
    open_channel,
    opened,
    publish,
    raw,
)

CLOSE = method(1, commands.Channel.Close(200, "bye", 0, 0))
CLOSE_OK = method(1, commands.Channel.CloseOk())


def test_open_ok_and_close_ok_encoding() -> None:
    conn = opened(0)
    [(ch, ok)] = decode_frames(conn.channel_open_ok(5))
    assert ch == 5 and isinstance(ok, commands.Channel.OpenOk)
    [(ch, ok)] = decode_frames(conn.channel_close_ok(5))
    assert ch == 5 and isinstance(ok, commands.Channel.CloseOk)
    [(ch, close)] = decode_frames(conn.close_channel(5, 404, "no queue", 50, 10))
    assert (ch, close.reply_code, close.reply_text, close.class_id, close.method_id) == (
        5, 404, "no queue", 50, 10,
    )  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
def test_client_close_frees_channel(mode: str) -> None:
    conn = opened(1)
    events = feed(conn, CLOSE + open_channel(1) + publish(1, b"again"), mode)
    assert isinstance(events[0].method, commands.Channel.Close)  # client.respond sent close-ok
    assert isinstance(events[1].method, commands.Channel.Open)
    assert isinstance(events[2], MessagePublished)
    assert conn.open_channels == frozenset({1})


def test_client_close_without_reply_keeps_channel_until_close_ok() -> None:
    conn = opened(1)
    conn.receive_data(CLOSE)
    ev = conn.next_event()
    assert isinstance(ev, MethodReceived)
    assert 1 in conn.open_channels
    conn.channel_close_ok(1)
    assert 1 not in conn.open_channels


@pytest.mark.parametrize("mode", MODES)
def test_server_close_discards_until_close_ok(mode: str) -> None:
    conn = opened(1)
    out = conn.close_channel(1, NOT_FOUND, "no exchange 'x'", 60, 40)
    assert decode_frames(out)[0][1].reply_code == NOT_FOUND
    data = b"".join(
        [
            publish(1, b"dropped" * 100),  # whole content sequence dropped
            method(1, commands.Basic.Ack(3)),
            method(1, commands.Queue.Declare(queue="q")),
            raw(1, 1, b"\x00\x3c\x00\x63"),  # even unknown methods are just dropped
            open_channel(2),
            CLOSE_OK,
            method(1, commands.Queue.Declare(queue="late")),  # channel no longer open
        ]
    )
    events = feed(conn, data, mode)
    assert isinstance(events[0].method, commands.Channel.Open) and events[0].channel == 2
    assert isinstance(events[1].method, commands.Channel.CloseOk) and events[1].channel == 1
    assert isinstance(events[2], AMQPConnectionError) and events[2].reply_code == CHANNEL_ERROR
    assert len(events) == 3


def test_server_close_mid_content() -> None:
    conn = opened(1)
    data = publish(1, b"abcdef")
    conn.receive_data(data[:-5])  # publish + header + part of the body
    assert conn.next_event().__class__.__name__ == "_NeedData"
    conn.close_channel(1, 406, "nope")
    events = feed(conn, data[-5:] + CLOSE_OK + open_channel(1) + publish(1, b"ok"))
    assert isinstance(events[0].method, commands.Channel.CloseOk)
    assert events[2].body == b"ok"


def test_crossing_closes() -> None:
    conn = opened(1)
    conn.close_channel(1, 406, "precondition")
    conn.receive_data(CLOSE)
    ev = conn.next_event()
    assert isinstance(ev, MethodReceived)
    assert isinstance(ev.method, commands.Channel.Close)
    conn.channel_close_ok(1)  # answering the client's close does not free it yet
    assert 1 in conn.open_channels
    events = feed(conn, CLOSE_OK)
    assert isinstance(events[0].method, commands.Channel.CloseOk)
    assert 1 not in conn.open_channels


def test_flow_and_long_tail_methods_pass_through() -> None:
    conn = opened(1)
    events = feed(
        conn,
        method(1, commands.Channel.Flow(active=False))
        + method(1, commands.Basic.Qos(prefetch_count=100))
        + method(
            1, commands.Basic.Consume(queue="q", consumer_tag="c1", arguments={"x-priority": 5})
        )
        + method(1, commands.Confirm.Select())
        + method(1, commands.Exchange.Bind(destination="d", source="s", routing_key="rk"))
        + method(1, commands.Tx.Select()),
    )
    kinds = [type(e.method) for e in events]
    assert kinds == [
        commands.Channel.Flow,
        commands.Basic.Qos,
        commands.Basic.Consume,
        commands.Confirm.Select,
        commands.Exchange.Bind,
        commands.Tx.Select,
    ]
    assert events[2].method.arguments == {"x-priority": 5}
    assert events[1].method.prefetch_count == 100
