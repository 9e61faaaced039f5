"""Connection handshake, negotiation and connection-level errors."""

from __future__ import annotations

import pytest
from pamqp import commands

from protocol import (
    NEED_DATA,
    AMQPConnectionError,
    AMQPError,
    BadProtocolHeader,
    HeartbeatReceived,
    MethodReceived,
    ProtocolHeaderReceived,
    ServerConnection,
)
from protocol.constants import (
    CHANNEL_ERROR,
    COMMAND_INVALID,
    FRAME_ERROR,
    NOT_ALLOWED,
    NOT_IMPLEMENTED,
    UNEXPECTED_FRAME,
)
from tests.protocol.client import (
    HEADER,
    HEARTBEAT,
    MODES,
    feed,
    finish_trailing,
    handshake,
    method,
    open_channel,
    opened,
    publish,
    raw,
)


@pytest.mark.parametrize("mode", MODES)
def test_handshake(mode: str) -> None:
    conn = ServerConnection(frame_max=65536, channel_max=100, heartbeat=30)
    events = feed(conn, handshake(frame_max=32768, channel_max=50, heartbeat=10, vhost="v1"), mode)
    assert isinstance(events[0], ProtocolHeaderReceived)
    kinds = [type(e.method) for e in events[1:]]
    assert kinds == [
        commands.Connection.StartOk,
        commands.Connection.TuneOk,
        commands.Connection.Open,
    ]
    assert all(e.channel == 0 for e in events[1:])
    assert events[1].method.response == "\x00guest\x00guest"
    assert conn.frame_max == 32768
    assert conn.channel_max == 50
    assert conn.heartbeat == 10
    assert conn.vhost == "v1"
    assert conn.client_properties["capabilities"] == {"basic.nack": True}
    assert conn.is_open
    if mode == "trailing":
        assert finish_trailing(conn) == [HeartbeatReceived()]


def test_start_and_tune_encoding() -> None:
    from protocol import server_properties
    from tests.protocol.client import decode_frames

    conn = ServerConnection(frame_max=65536, channel_max=100, heartbeat=30)
    props = server_properties("RaftMQ", "0.1.0")
    [(ch, start)] = decode_frames(conn.start(props))
    assert ch == 0 and isinstance(start, commands.Connection.Start)
    assert (start.version_major, start.version_minor) == (0, 9)
    assert start.mechanisms == "PLAIN AMQPLAIN" and start.locales == "en_US"
    caps = start.server_properties["capabilities"]
    assert isinstance(caps, dict)
    for cap in (
        "publisher_confirms", "exchange_exchange_bindings", "basic.nack",
        "consumer_cancel_notify", "connection.blocked", "consumer_priorities",
        "authentication_failure_close", "per_consumer_qos",
    ):  # fmt: skip
        assert caps[cap] is True
    [(_, tune)] = decode_frames(conn.tune())
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (100, 65536, 30)
    [(_, ok)] = decode_frames(conn.open_ok())
    assert isinstance(ok, commands.Connection.OpenOk)


@pytest.mark.parametrize(
    "data",
    [
        b"AMQP\x01\x01\x00\x09",  # 0-9 style header
        b"AMQP\x00\x00\x08\x00",  # 0-8
        b"AMQP\x00\x01\x00\x00",  # 1.0
        b"AMQP\x00\x00\x09\x00",
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01",  # TLS client hello
    ],
)
@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_bad_protocol_header(data: bytes, mode: str) -> None:
    conn = ServerConnection()
    events = feed(conn, data, mode)
    assert len(events) == 1
    err = events[0]
    assert isinstance(err, BadProtocolHeader)
    assert err.reply == b"AMQP\x00\x00\x09\x01"
    # dead from now on
    conn.receive_data(HEADER)
    assert conn.next_event() is NEED_DATA


def test_header_waits_for_eight_bytes_but_fails_fast() -> None:
    conn = ServerConnection()
    conn.receive_data(b"AMQP\x00\x00\x09")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\x01")
    assert isinstance(conn.next_event(), ProtocolHeaderReceived)

    conn = ServerConnection()
    conn.receive_data(b"G")  # not "A": no need to wait for 8 bytes
    with pytest.raises(BadProtocolHeader):
        conn.next_event()

    conn = ServerConnection()
    conn.receive_data(b"AMQP\x01")  # could still be anything until 8 bytes
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\x01\x00\x09")
    with pytest.raises(BadProtocolHeader):
        conn.next_event()


def _error(conn: ServerConnection, data: bytes, mode: str = "whole") -> AMQPConnectionError:
    events = feed(conn, data, mode)
    errors = [e for e in events if isinstance(e, Exception)]
    assert len(errors) == 1, events
    assert events[-1] is errors[0], "no event may follow a hard error"
    assert isinstance(errors[0], AMQPConnectionError)
    return errors[0]


def _after_header(*frames: bytes) -> bytes:
    return HEADER + b"".join(frames)


START_OK = method(0, commands.Connection.StartOk(response="\x00a\x00b"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("data", "code"),
    [
        # methods out of order
        (_after_header(method(0, commands.Connection.Open("/"))), COMMAND_INVALID),
        (_after_header(method(0, commands.Connection.TuneOk(10, 8192, 0))), COMMAND_INVALID),
        (_after_header(START_OK, START_OK), COMMAND_INVALID),
        (_after_header(START_OK, method(0, commands.Connection.Open("/"))), COMMAND_INVALID),
        # channel traffic before connection.open
        (_after_header(START_OK, open_channel(1)), COMMAND_INVALID),
        (_after_header(START_OK, raw(2, 1, b"\x00\x3c" + bytes(12))), UNEXPECTED_FRAME),
        (_after_header(START_OK, raw(3, 1, b"x")), UNEXPECTED_FRAME),
        # non-connection method on channel 0
        (_after_header(method(0, commands.Channel.Open())), COMMAND_INVALID),
        # unknown method on channel 0
        (_after_header(raw(1, 0, b"\x00\x0a\x00\x63")), NOT_IMPLEMENTED),
        # frame-level errors
        (_after_header(raw(1, 0, bytes(4097))), FRAME_ERROR),  # > frame-min-size before tune
        (_after_header(raw(1, 0, b"\x00\x0a\x00\x0b", end=b"\xcd")), FRAME_ERROR),
        (_after_header(raw(4, 0, b"")), FRAME_ERROR),  # unknown frame type
        (_after_header(raw(8, 0, b"x")), FRAME_ERROR),  # heartbeat with payload
        (_after_header(raw(8, 1, b"")), FRAME_ERROR),  # heartbeat on channel 1
        (_after_header(raw(1, 0, b"\x00\x0a")), FRAME_ERROR),  # shorter than ids
        # undecodable start-ok (truncated table)
        (_after_header(raw(1, 0, b"\x00\x0a\x00\x0b\x00\x00\x01\x00")), FRAME_ERROR),
        # start-ok with trailing garbage
        (_after_header(raw(1, 0, START_OK[7:-1] + b"zz")), FRAME_ERROR),
        # content on channel 0
        (_after_header(raw(2, 0, b"\x00\x3c" + bytes(12))), UNEXPECTED_FRAME),
        (_after_header(raw(3, 0, b"x")), UNEXPECTED_FRAME),
    ],
)  # fmt: skip
def test_handshake_errors(data: bytes, code: int, mode: str) -> None:
    conn = ServerConnection()
    err = _error(conn, data, mode)
    assert err.reply_code == code, err


@pytest.mark.parametrize(
    ("frame_max", "channel_max", "code", "fm", "cm"),
    [
        (0, 10, None, 131072, 10),  # 0 = no limit: take the server's offer
        (4096, 0, None, 4096, 2047),
        (131072, 2047, None, 131072, 2047),
        (131073, 10, NOT_ALLOWED, 0, 0),  # above the offer
        (4095, 10, NOT_ALLOWED, 0, 0),  # below frame-min-size
        (8192, 2048, NOT_ALLOWED, 0, 0),
    ],
)
def test_tune_negotiation(
    frame_max: int, channel_max: int, code: int | None, fm: int, cm: int
) -> None:
    conn = ServerConnection()
    events = feed(conn, handshake(frame_max=frame_max, channel_max=channel_max))
    errors = [e for e in events if isinstance(e, Exception)]
    if code is None:
        assert not errors
        assert (conn.frame_max, conn.channel_max) == (fm, cm)
    else:
        assert len(errors) == 1 and isinstance(errors[0], AMQPError)
        assert errors[0].reply_code == code
        assert (errors[0].class_id, errors[0].method_id) == (10, 31)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("data", "code"),
    [
        (method(0, commands.Queue.Declare(queue="q")), COMMAND_INVALID),  # class 50 on channel 0
        (method(1, commands.Connection.Open("/")), COMMAND_INVALID),  # connection class on ch 1
        (method(0, commands.Connection.Open("/")), COMMAND_INVALID),  # second open
        (method(0, commands.Connection.StartOk()), COMMAND_INVALID),
        (method(2, commands.Queue.Declare(queue="q")), CHANNEL_ERROR),  # channel not open
        (raw(2, 2, b"\x00\x3c" + bytes(12)), CHANNEL_ERROR),
        (raw(3, 2, b"x"), CHANNEL_ERROR),
        (method(1, commands.Channel.Open()), CHANNEL_ERROR),  # already open
        (raw(1, 1, b"\x00\x3c\x00\x63"), NOT_IMPLEMENTED),  # unknown basic method 99
        (raw(1, 1, b"\x00\x07\x00\x01"), NOT_IMPLEMENTED),  # unknown class
        (
            method(1, commands.Basic.Deliver("t", 1, False, "", "rk")),
            COMMAND_INVALID,
        ),  # server-to-client method
        (method(1, commands.Queue.DeclareOk("q", 0, 0)), COMMAND_INVALID),
        (raw(1, 1, b"\x00\x32\x00\x0a\x00\x00\x05ab"), FRAME_ERROR),  # truncated queue.declare
        (raw(1, 1, b"\x00\x3c\x00\x50" + bytes(8)), FRAME_ERROR),  # short basic.ack
        (raw(1, 1, b"\x00\x3c\x00\x28\x00\x00\x05ab"), FRAME_ERROR),  # short basic.publish
        (raw(1, 1, b"\x00\x3c\x00\x28\x00\x00\x01\xff\x00\x00"), FRAME_ERROR),  # bad utf-8
        (raw(1, 1, bytes(131073)), FRAME_ERROR),  # larger than frame_max
        (raw(1, 1, b"\x00\x14\x00\x0a\x00", end=b"\x00"), FRAME_ERROR),
        (raw(9, 1, b""), FRAME_ERROR),
        (raw(8, 1, b""), FRAME_ERROR),
    ],
)
def test_open_connection_errors(data: bytes, code: int, mode: str) -> None:
    conn = opened(1)
    err = _error(conn, data, mode)
    assert err.reply_code == code, err


def test_error_carries_method_ids() -> None:
    conn = opened(1)
    err = _error(conn, method(2, commands.Queue.Declare(queue="q")))
    assert (err.class_id, err.method_id) == (50, 10)


def test_after_hard_error_close_handshake() -> None:
    conn = opened(1)
    err = _error(conn, method(0, commands.Queue.Declare(queue="q")))
    assert not err.framing_lost
    # more input is ignored until the node decides to close
    conn.receive_data(open_channel(2))
    assert conn.next_event() is NEED_DATA
    conn.close_connection(err.reply_code, err.reply_text, err.class_id, err.method_id)
    events = feed(
        conn,
        publish(1, b"dropped") + open_channel(3) + HEARTBEAT
        + method(0, commands.Connection.CloseOk()) + open_channel(4),
    )  # fmt: skip
    assert events[0] == HeartbeatReceived()
    assert isinstance(events[1].method, commands.Connection.CloseOk)
    assert len(events) == 2


def test_framing_lost_stops_parsing() -> None:
    conn = opened(1)
    err = _error(conn, raw(1, 1, b"\x00\x14\x00\x0a\x00", end=b"\x00"))
    assert err.framing_lost
    conn.close_connection(err.reply_code, err.reply_text)
    conn.receive_data(method(0, commands.Connection.CloseOk()))
    assert conn.next_event() is NEED_DATA


def test_server_close_discards_until_close_ok() -> None:
    conn = opened(1)
    conn.close_connection(320, "shutdown")
    assert not conn.is_open
    events = feed(
        conn,
        publish(1, b"x")
        + method(1, commands.Basic.Ack(1))
        + method(0, commands.Connection.CloseOk()),
    )
    assert [type(e.method) for e in events] == [commands.Connection.CloseOk]
    conn.receive_data(publish(1, b"after close"))
    assert conn.next_event() is NEED_DATA


def test_server_close_crossing_client_close() -> None:
    conn = opened(1)
    conn.close_connection(320, "shutdown")
    events = feed(conn, method(0, commands.Connection.Close(200, "bye", 0, 0)))
    assert isinstance(events[0].method, commands.Connection.Close)


def test_client_close() -> None:
    conn = opened(1)
    events = feed(
        conn, method(0, commands.Connection.Close(200, "bye", 0, 0)) + publish(1, b"late")
    )
    assert len(events) == 1
    assert events[0] == MethodReceived(0, events[0].method)
    assert events[0].method.reply_text == "bye"


def test_client_close_during_handshake() -> None:
    conn = ServerConnection()
    events = feed(conn, HEADER + START_OK + method(0, commands.Connection.Close(200, "bye", 0, 0)))
    assert isinstance(events[-1].method, commands.Connection.Close)


@pytest.mark.parametrize("mode", MODES)
def test_heartbeats(mode: str) -> None:
    conn = opened(0)
    assert feed(conn, HEARTBEAT * 3, mode) == [HeartbeatReceived()] * 3


def test_eof() -> None:
    conn = opened(0)
    conn.receive_data(HEARTBEAT[:3])
    conn.receive_data(b"")
    assert conn.eof
    assert conn.next_event() is NEED_DATA
    with pytest.raises(RuntimeError):
        conn.receive_data(b"x")


def test_update_secret_passes_through() -> None:
    conn = opened(0)
    [ev] = feed(conn, method(0, commands.Connection.UpdateSecret("s", "r")))
    assert isinstance(ev.method, commands.Connection.UpdateSecret)


def test_tune_ok_before_tune_sent() -> None:
    conn = ServerConnection()
    conn.receive_data(HEADER + START_OK + method(0, commands.Connection.TuneOk(10, 8192, 0)))
    assert isinstance(conn.next_event(), ProtocolHeaderReceived)
    assert isinstance(conn.next_event(), MethodReceived)  # start-ok; node has not sent tune
    with pytest.raises(AMQPConnectionError) as info:
        conn.next_event()
    assert info.value.reply_code == COMMAND_INVALID


def test_secure_ok_round() -> None:
    conn = ServerConnection()
    conn.receive_data(HEADER + START_OK)
    conn.next_event()
    conn.next_event()
    conn.send_method(0, commands.Connection.Secure("challenge"))
    conn.receive_data(method(0, commands.Connection.SecureOk("answer")))
    ev = conn.next_event()
    assert isinstance(ev, MethodReceived) and ev.method.response == "answer"


def test_channel_max_caps_open_channels() -> None:
    """No more than channel_max channels may be open at once (530, as RabbitMQ)."""
    conn = ServerConnection(channel_max=3)
    events = feed(conn, handshake(channel_max=3) + method(3, commands.Channel.Open())
                  + method(2, commands.Channel.Open()) + method(1, commands.Channel.Open())
                  + method(1, commands.Channel.Close(200, "", 0, 0))
                  + method(1, commands.Channel.Open()) + method(1, commands.Channel.Close(200, "", 0, 0))
                  + method(1, commands.Channel.Open()))
    errors = [e for e in events if isinstance(e, Exception)]
    opened = [e.channel for e in events if isinstance(e, MethodReceived)
              and isinstance(e.method, commands.Channel.Open)]
    assert opened == [3, 2, 1, 1, 1] and not errors


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("offered", "asked", "number", "limit"), [
    (3, 3, 4, 3),
    (3, 0, 4, 3),  # the client takes the server's offer
    (2047, 10, 11, 10),  # the client's lower value is the limit
    (2047, 2047, 2048, 2047),
    (0, 0, 65535, None),  # no limit on either side: every number is usable
])
def test_channel_number_above_channel_max_is_refused(
    mode: str, offered: int, asked: int, number: int, limit: int | None
) -> None:
    """Spec (connection.tune): usable channel numbers are 1..channel-max. A channel.open
    above it is a hard 530, like one channel too many; channel_max itself is usable."""
    conn = ServerConnection(channel_max=offered)
    events = feed(conn, handshake(channel_max=asked) + method(number - 1, commands.Channel.Open())
                  + method(number, commands.Channel.Open()), mode)
    errors = [e for e in events if isinstance(e, Exception)]
    opened = [e.channel for e in events if isinstance(e, MethodReceived)
              and isinstance(e.method, commands.Channel.Open)]
    if limit is None:
        assert opened == [number - 1, number] and not errors
        return
    assert opened == [number - 1]
    assert len(errors) == 1 and isinstance(errors[0], AMQPError)
    err = errors[0]
    assert (err.reply_code, err.class_id, err.method_id) == (NOT_ALLOWED, 20, 10)
    assert err.hard
    assert f"channel number {number} is above the negotiated channel_max ({limit})" in err.reply_text
    assert conn.open_channels == frozenset({number - 1})
