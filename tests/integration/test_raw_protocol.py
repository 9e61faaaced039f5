"""Wire-level behaviour, checked with a raw socket (no client library).

Protocol header negotiation, malformed frames, framing errors and their reply codes, and that
garbage on one connection never disturbs another.
"""

from __future__ import annotations

import contextlib
import os
import struct

import pytest
from pamqp import body, commands, header
from pamqp import frame as pframe

from tests.integration.helpers import close_quietly, connect, consume_n, roundtrip_ok
from tests.integration.rawclient import PROTOCOL_HEADER, ConnectionClosedError, RawClient

pytestmark = pytest.mark.timeout(30)


def open_channel(c: RawClient, number: int = 1) -> None:
    c.send_frame(number, commands.Channel.Open())
    ch, ok = c.recv_method()
    assert (ch, type(ok)) == (number, commands.Channel.OpenOk)


def expect_connection_close(c: RawClient, code: int, await_close: bool = False) -> commands.Connection.Close:
    """The next method must be connection.close(code); answer close-ok.

    With ``await_close`` the socket must then be closed by the broker within 5 s (after a
    framing error a broker may not read our close-ok and instead time out, RabbitMQ after 3 s).
    """
    ch, m = c.recv_method()
    assert isinstance(m, commands.Connection.Close), m
    assert ch == 0
    assert m.reply_code == code, (m.reply_code, m.reply_text)
    with contextlib.suppress(OSError):  # the broker may already have closed its side
        c.send_frame(0, commands.Connection.CloseOk())
    if await_close:
        c.wait_closed(5)
    return m


@pytest.mark.parametrize("bad", [
    b"AMQP\x00\x01\x00\x00",        # AMQP 1.0
    b"AMQP\x00\x00\x0a\x00",        # a 0-10 header
    b"GET / HTTP/1.1\r\n\r\n",      # not AMQP at all
    b"XYZW\x00\x00\x09\x01",
], ids=["amqp1.0", "amqp0-10", "http", "bad-magic"])
def test_wrong_protocol_header_gets_supported_header_and_close(broker, bad):
    with RawClient(broker.host, broker.port) as c:
        c.send(bad)
        received = c.wait_closed(5)
    assert received == PROTOCOL_HEADER


def test_correct_header_gets_connection_start(broker):
    with RawClient(broker.host, broker.port) as c:
        c.send(PROTOCOL_HEADER)
        ch, start = c.recv_method()
        assert ch == 0
        assert isinstance(start, commands.Connection.Start)
        assert (start.version_major, start.version_minor) == (0, 9)
        assert "PLAIN" in start.mechanisms.split()
        assert "en_US" in start.locales.split()
        caps = start.server_properties.get("capabilities", {})
        assert isinstance(caps, dict)
        for cap in ("publisher_confirms", "exchange_exchange_bindings", "basic.nack",
                    "consumer_cancel_notify", "per_consumer_qos", "authentication_failure_close"):
            assert caps.get(cap) is True, cap


def test_full_handshake_and_clean_close(broker):
    with RawClient(broker.host, broker.port) as c:
        c.handshake()
        open_channel(c)
        c.send_frame(1, commands.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
        assert isinstance(c.recv_method()[1], commands.Channel.CloseOk)
        c.send_frame(0, commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
        assert isinstance(c.recv_method()[1], commands.Connection.CloseOk)


def test_bad_frame_end_gets_connection_close_501(broker):
    with RawClient(broker.host, broker.port) as c:
        c.handshake()
        raw = bytearray(pframe.marshal(commands.Channel.Open(), 1))
        assert raw[-1] == 0xCE
        raw[-1] = 0x00
        c.send(bytes(raw))
        m = expect_connection_close(c, 501, await_close=True)
        assert "FRAME_ERROR" in m.reply_text
    roundtrip_ok(broker.url)


def test_unknown_frame_type_gets_connection_close_501(broker):
    with RawClient(broker.host, broker.port) as c:
        c.handshake()
        payload = b"\x00\x01\x02"
        c.send(struct.pack(">BHI", 9, 0, len(payload)) + payload + b"\xce")
        expect_connection_close(c, 501)


def test_frame_larger_than_frame_max_gets_501(broker):
    with RawClient(broker.host, broker.port) as c:
        c.handshake()  # negotiates the server's frame_max (RabbitMQ: 131072)
        open_channel(c)
        size = 4 * 1024 * 1024  # far above any negotiated frame_max
        c.send(pframe.marshal(commands.Basic.Publish(exchange="", routing_key="x"), 1)
               + pframe.marshal(header.ContentHeader(0, size, commands.Basic.Properties()), 1))
        # announce the oversized body frame; the size in its header alone is a framing error
        c.send(struct.pack(">BHI", 3, 1, size) + b"\x00" * 1024)
        expect_connection_close(c, 501)


def test_method_on_unopened_channel_gets_504(broker):
    with RawClient(broker.host, broker.port) as c:
        c.handshake()
        c.send_frame(3, commands.Queue.Declare(queue="", exclusive=True))
        m = expect_connection_close(c, 504, await_close=True)
        assert "CHANNEL_ERROR" in m.reply_text


@pytest.mark.raftmq_only  # RabbitMQ only counts open channels, whatever their numbers
def test_channel_number_above_channel_max_gets_530(broker):
    """Spec: usable channel numbers are 1..channel-max. channel_max itself opens; the
    next number is refused like one channel too many (530, connection closed)."""
    with RawClient(broker.host, broker.port) as c:
        c.handshake()  # takes the server's channel_max (2047)
        open_channel(c, 2047)
        c.send_frame(2048, commands.Channel.Open())
        m = expect_connection_close(c, 530, await_close=True)
        assert "channel number 2048 is above the negotiated channel_max (2047)" in m.reply_text


def test_content_body_without_publish_gets_505(broker):
    with RawClient(broker.host, broker.port) as c:
        c.handshake()
        open_channel(c)
        c.send_frame(1, body.ContentBody(b"orphan"))
        m = expect_connection_close(c, 505)
        assert "UNEXPECTED_FRAME" in m.reply_text


def test_reused_consumer_tag_closes_connection_530(broker):
    with RawClient(broker.host, broker.port) as c:
        c.handshake()
        open_channel(c)
        c.send_frame(1, commands.Queue.Declare(queue="", exclusive=True))
        _, ok = c.recv_method()
        q = ok.queue
        c.send_frame(1, commands.Basic.Consume(queue=q, consumer_tag="dup"))
        assert isinstance(c.recv_method()[1], commands.Basic.ConsumeOk)
        c.send_frame(1, commands.Basic.Consume(queue=q, consumer_tag="dup"))
        m = expect_connection_close(c, 530)
        assert "NOT_ALLOWED" in m.reply_text


def test_garbage_connections_do_not_disturb_others(broker, names):
    """A healthy pika connection with a consumer keeps working while raw sockets misbehave."""
    conn = connect(broker.url)
    try:
        ch = conn.channel()
        q = names.queue()
        ch.queue_declare(q)
        for i in range(5):
            with RawClient(broker.host, broker.port) as c:
                if i % 2:
                    c.handshake()
                    c.send(os.urandom(4096))  # then hang up
                else:
                    c.send(b"AMQP" + os.urandom(64))  # then just hang up
        ch.basic_publish("", q, b"alive")
        assert consume_n(conn, ch, q, 1)[0].body == b"alive"
    finally:
        close_quietly(conn)
    roundtrip_ok(broker.url)


def test_client_that_vanishes_mid_frame_does_not_disturb_others(broker):
    with RawClient(broker.host, broker.port) as c:
        c.handshake()
        open_channel(c)
        full = pframe.marshal(commands.Queue.Declare(queue="", exclusive=True), 1)
        c.send(full[: len(full) // 2])  # half a frame, then close
    roundtrip_ok(broker.url)


def test_missed_heartbeats_close_connection(broker):
    """Negotiate heartbeat=1 s and stay silent: the broker sends heartbeats, then hangs up."""
    with RawClient(broker.host, broker.port, timeout=10) as c:
        c.send(PROTOCOL_HEADER)
        _, start = c.recv_method()
        c.send_frame(0, commands.Connection.StartOk(
            client_properties={"product": "raw"}, mechanism="PLAIN",
            response="\0guest\0guest", locale="en_US"))
        _, tune = c.recv_method()
        c.send_frame(0, commands.Connection.TuneOk(channel_max=tune.channel_max,
                                                   frame_max=tune.frame_max, heartbeat=1))
        c.send_frame(0, commands.Connection.Open(virtual_host="/"))
        assert isinstance(c.recv_method()[1], commands.Connection.OpenOk)
        saw_heartbeat = False
        closed = False
        for _ in range(50):  # bounded: at ~1 s per heartbeat the broker gives up long before
            try:
                _, f = c.recv_frame(timeout=10)
            except ConnectionClosedError:
                closed = True
                break
            if f.name == "Heartbeat":
                saw_heartbeat = True
        assert saw_heartbeat, "broker never sent a heartbeat"
        assert closed, "broker kept a silent client open"


def _publish_frames(n: int, size: int) -> bytes:
    payload = b"x" * size
    one = (pframe.marshal(commands.Basic.Publish(exchange="", routing_key="nowhere"), 1)
           + pframe.marshal(header.ContentHeader(0, size, commands.Basic.Properties()), 1)
           + pframe.marshal(body.ContentBody(payload), 1))
    return one * n


def test_frames_still_arriving_after_close_get_no_reset(broker):
    """A client closes while its publishes are still on the way (amqplib and the Go
    client do this): the broker answers close-ok and reads what follows until the client
    closes, so the client's writes and its read of close-ok see no ECONNRESET / EPIPE."""
    with RawClient(broker.host, broker.port) as c:
        c.handshake()
        open_channel(c)
        c.send_frame(0, commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
        chunk = _publish_frames(16, 4000)  # ~64 KiB
        for _ in range(64):  # 4 MiB after the close: far more than the socket buffers
            c.sock.sendall(chunk)  # raises ConnectionResetError / BrokenPipeError on a reset
        c.sock.settimeout(5)
        data = b""
        while len(data) < 12:  # close-ok: 7 header + 4 method id + frame end
            chunk_in = c.sock.recv(4096)  # a reset raises here
            assert chunk_in, f"socket closed before close-ok ({data!r})"
            data += chunk_in
        _, ch, ok = pframe.unmarshal(data[:12])
        assert (ch, type(ok)) == (0, commands.Connection.CloseOk)


@pytest.mark.raftmq_only  # RabbitMQ waits longer than this test does
def test_socket_is_closed_after_close_ok_if_the_client_does_not(broker):
    """The wait after close-ok is bounded (RaftMQ: 5 s)."""
    with RawClient(broker.host, broker.port) as c:
        c.handshake()
        c.send_frame(0, commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
        _, ok = c.recv_method()
        assert isinstance(ok, commands.Connection.CloseOk)
        c.wait_closed(15)
