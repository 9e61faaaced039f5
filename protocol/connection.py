"""Server side of one AMQP 0-9-1 connection, without I/O (h11 style).

    conn = ServerConnection()
    conn.receive_data(data)                 # b"" = EOF
    while (event := conn.next_event()) is not NEED_DATA:
        ...                                 # node reacts, writes conn.<encoder>(...)

``next_event`` raises :class:`AMQPConnectionError` (hard: write
``close_connection(e.reply_code, ...)``), :class:`ChannelError` (soft: write
``close_channel(e.channel, ...)``; parsing carries on) or
:class:`BadProtocolHeader` (write ``e.reply``, drop the socket).

After a hard error ``next_event`` returns NEED_DATA (it does not raise again)
until the node calls ``close_connection``; from then on frames are parsed in
closing mode and only connection.close / close-ok come out. If the error
broke framing (``e.framing_lost``) nothing is ever parsed again.

Error codes follow the spec; where it is loose we follow RabbitMQ's
rabbit_reader / rabbit_command_assembler and say so inline.
"""

from __future__ import annotations

import enum
import struct
from typing import Any

from pamqp import base, commands

from protocol import frames
from protocol.constants import (
    CHANNEL_ERROR,
    COMMAND_INVALID,
    FRAME_ERROR,
    FRAME_MIN_SIZE,
    NOT_ALLOWED,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    PROTOCOL_HEADER,
    UNEXPECTED_FRAME,
)
from protocol.content import ContentAssembler, ContentError
from protocol.errors import AMQPConnectionError, BadProtocolHeader, ChannelError
from protocol.events import (
    NEED_DATA,
    AckReceived,
    Event,
    HeartbeatReceived,
    MethodReceived,
    NackReceived,
    ProtocolHeaderReceived,
    _NeedData,
)
from protocol.fields import ARGUMENTS_MAX_BYTES, ARGUMENTS_MAX_ITEMS, count_items, truncate_short
from protocol.methods import METHODS, DecodeError, decode_method

_FRAME_HDR = struct.Struct(">BHI")
_CLASS_METHOD = struct.Struct(">I")
_CONTENT_HDR = struct.Struct(">HHQ")
_TAG_BITS = struct.Struct(">QB")


def _idx(class_id: int, method_id: int) -> int:
    return class_id << 16 | method_id


# Connection-class methods, as (class << 16 | method) indices.
_C_START_OK = _idx(10, 11)
_C_SECURE_OK = _idx(10, 21)
_C_TUNE_OK = _idx(10, 31)
_C_OPEN = _idx(10, 40)
_C_CLOSE = _idx(10, 50)
_C_CLOSE_OK = _idx(10, 51)
_C_UPDATE_SECRET = _idx(10, 70)
# Channel-level methods with special handling.
_CH_OPEN = _idx(20, 10)
_CH_CLOSE = _idx(20, 40)
_CH_CLOSE_OK = _idx(20, 41)
_PUBLISH = _idx(60, 40)
_ACK = _idx(60, 80)
_REJECT = _idx(60, 90)
_NACK = _idx(60, 120)

# Methods carrying an arguments table (bounded: protocol/fields.py ARGUMENTS_MAX_*).
_WITH_ARGUMENTS = frozenset({
    _idx(40, 10), _idx(40, 30), _idx(40, 40),  # exchange.declare / bind / unbind
    _idx(50, 10), _idx(50, 20), _idx(50, 50),  # queue.declare / bind / unbind
    _idx(60, 20),  # basic.consume
})  # fmt: skip

# Methods a client may send on an open channel (spec chassis "server", plus
# RabbitMQ's extensions). Known but server-to-client methods -> 503, as
# RabbitMQ's rabbit_channel answers "unimplemented method" with command_invalid.
CLIENT_CHANNEL_METHODS = frozenset(
    {
        _idx(20, 20), _idx(20, 21),  # channel.flow / flow-ok
        _idx(40, 10), _idx(40, 20), _idx(40, 30), _idx(40, 40),  # exchange.*
        _idx(50, 10), _idx(50, 20), _idx(50, 30), _idx(50, 40), _idx(50, 50),  # queue.*
        _idx(60, 10), _idx(60, 20), _idx(60, 30), _idx(60, 70),  # qos consume cancel get
        _idx(60, 100), _idx(60, 110),  # recover-async, recover
        _idx(90, 10), _idx(90, 20), _idx(90, 30),  # tx.*
        _idx(85, 10),  # confirm.select
    }
)  # fmt: skip

class State(enum.Enum):
    HEADER = "waiting for the protocol header"
    START = "header seen (node sends start); waiting for start-ok"
    SECURE = "start-ok seen; the node authenticates, then sends tune"
    TUNE = "tune sent; waiting for tune-ok"
    OPENING = "tune-ok seen; waiting for connection.open"
    OPEN = "connection.open seen: channels may be used"
    CLOSING = "we sent connection.close: only close / close-ok matter"
    CLIENT_CLOSING = "client sent connection.close: everything else is dropped"
    CLOSED = "close handshake finished; input ignored"
    ERROR = "hard error raised, close_connection not called yet"
    DEAD = "framing lost or bad header: input ignored forever"


class Trigger(enum.Enum):
    HEADER_OK = enum.auto()  # the client's protocol header
    BAD_HEADER = enum.auto()
    START_OK = enum.auto()  # the client's connection.start-ok
    TUNE_SENT = enum.auto()  # the node's connection.tune (the login succeeded)
    TUNE_OK = enum.auto()
    OPEN = enum.auto()  # the client's connection.open
    CLIENT_CLOSE = enum.auto()  # the client's connection.close
    CLOSE_SENT = enum.auto()  # the node's connection.close
    CLOSE_OK_RECEIVED = enum.auto()
    CLOSE_OK_SENT = enum.auto()
    HARD_ERROR = enum.auto()  # a connection error was raised
    FRAMING_LOST = enum.auto()  # ... one after which no frame boundary can be found


S, T = State, Trigger
_HANDSHAKING = (S.START, S.SECURE, S.TUNE, S.OPENING)
_LIVE = (S.HEADER, *_HANDSHAKING, S.OPEN, S.CLOSING, S.CLIENT_CLOSING)

# Every transition, in one place (h11's _state.py is the model). A trigger missing
# for a state is a bug in this module or in the node's use of it.
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (S.HEADER, T.HEADER_OK): S.START,
    (S.HEADER, T.BAD_HEADER): S.DEAD,
    (S.START, T.START_OK): S.SECURE,
    (S.SECURE, T.TUNE_SENT): S.TUNE,
    (S.TUNE, T.TUNE_OK): S.OPENING,
    (S.OPENING, T.OPEN): S.OPEN,
    **{(s, T.CLIENT_CLOSE): S.CLIENT_CLOSING for s in (*_HANDSHAKING, S.OPEN)},
    **{(s, T.CLOSE_SENT): S.CLOSING for s in (S.HEADER, *_HANDSHAKING, S.OPEN, S.ERROR,
                                              S.CLOSING)},
    (S.CLOSING, T.CLOSE_OK_RECEIVED): S.CLOSED,
    (S.CLOSING, T.CLOSE_OK_SENT): S.CLOSED,  # closes crossed
    (S.CLIENT_CLOSING, T.CLOSE_OK_SENT): S.CLOSED,
    (S.CLIENT_CLOSING, T.CLOSE_SENT): S.CLIENT_CLOSING,  # our close-ok ends it anyway
    **{(s, T.CLOSE_SENT): s for s in (S.CLOSED, S.DEAD)},
    **{(s, T.CLOSE_OK_SENT): s for s in (S.CLOSED, S.DEAD)},
    **{(s, T.HARD_ERROR): S.ERROR for s in _LIVE},
    **{(s, T.FRAMING_LOST): S.DEAD for s in (*_LIVE, S.ERROR)},
}
# Enum member lookups cost on the per-frame path: plain module globals there. And tuples,
# not sets, for the state tests made per frame: ``in`` a tuple compares by identity, a set
# calls Enum.__hash__, a Python function (~0.3 µs a frame, 5 % of parsing a publish).
_NOT_PARSING = (S.CLOSED, S.ERROR, S.DEAD)  # next_event reports nothing
_HEADER_STATE, _OPEN_STATE, _CLOSING_STATE = S.HEADER, S.OPEN, S.CLOSING
_GONE = (S.CLOSED, S.DEAD)
_CLOSING_STATES = (S.CLOSING, S.CLIENT_CLOSING)

# Which connection-class method each handshake state accepts.
_HANDSHAKE_EXPECTS = {
    S.START: _C_START_OK,
    S.SECURE: _C_SECURE_OK,
    S.TUNE: _C_TUNE_OK,
    S.OPENING: _C_OPEN,
}

# Channel states.
_CH_IS_OPEN = 1
_CH_IS_CLOSING = 2  # we sent channel.close: drop everything but close / close-ok

_COMPACT_AT = 1 << 16  # drop consumed bytes once this many have piled up

# What RaftMQ supports, as RabbitMQ advertises it in connection.start; clients switch
# features on by these (e.g. pika sends basic.cancel notifications only with
# consumer_cancel_notify). Not direct_reply_to: amq.rabbitmq.reply-to is not here.
CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
}


def server_properties(product: str, version: str, cluster_name: str = "raftmq") -> dict[str, Any]:
    """The server-properties table of connection.start."""
    return {
        "product": product,
        "version": version,
        "platform": "Python",
        "copyright": "RaftMQ authors",
        "information": "Licensed under the Apache License 2.0",
        "cluster_name": cluster_name,
        "capabilities": dict(CAPABILITIES),
    }


class ServerConnection:
    """Parses client bytes into events and encodes server frames. Pure."""

    def __init__(
        self,
        *,
        frame_max: int = 131072,
        channel_max: int = 2047,
        heartbeat: int = 60,
        max_message_size: int = 128 * 1024 * 1024,
    ) -> None:
        if frame_max and frame_max < FRAME_MIN_SIZE:
            raise ValueError(f"frame_max must be 0 or >= {FRAME_MIN_SIZE}")
        # Offered in connection.tune; 0 = no limit, as in the spec.
        self.server_frame_max = frame_max
        self.server_channel_max = channel_max
        self.server_heartbeat = heartbeat
        # Larger declared bodies are refused with a soft 406, like RabbitMQ's
        # max_message_size; it also bounds what one publish can make us buffer,
        # and all unfinished contents of one connection together (its channels
        # may interleave them) may not announce more than this either.
        self.max_message_size = max_message_size
        self._unlimited_frame = max(max_message_size, FRAME_MIN_SIZE)
        # Negotiated values (set by tune-ok). Until then frames up to
        # frame-min-size must be accepted (spec), and RabbitMQ accepts no more.
        self.frame_max = FRAME_MIN_SIZE
        self.channel_max = channel_max or 65535
        self.heartbeat = heartbeat
        self.client_properties: dict[str, Any] = {}
        self.vhost: str | None = None
        self.eof = False
        self._state = S.HEADER
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._channels: dict[int, int] = {}
        self._content = ContentAssembler(max_message_size)
        self._error: AMQPConnectionError | None = None
        self.close_sent = False  # close_connection() was called: the node sent close
        # Frames parsed so far: the node compares it across reads to tell a
        # slow but moving client from one that stalls inside a frame.
        self.frames_parsed = 0

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            self.eof = True
            return
        if self.eof:
            raise RuntimeError("receive_data after EOF")
        if self._state in _GONE:
            # Nothing more will be parsed: keep nothing (a client that goes on
            # sending after the close must not grow a buffer).
            self._buf, self._pos = b"", 0
            return
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            # Usual case: reads end on frame boundaries. Parse the caller's
            # bytes in place: no copy, and slices of bytes are bytes.
            self._buf = data if type(data) is bytes else bytes(data)
            self._pos = 0
        elif type(buf) is bytes:
            # A partial frame is pending: accumulate in a bytearray (amortised
            # growth, so a client trickling bytes costs linear time).
            acc = bytearray(memoryview(buf)[pos:])
            acc += data
            self._buf = acc
            self._pos = 0
        else:
            assert isinstance(buf, bytearray)
            if pos >= _COMPACT_AT:
                del buf[:pos]  # O(1) in CPython: moves the start pointer
                self._pos = 0
            buf += data

    @property
    def is_open(self) -> bool:
        """True once connection.open has been received and no close started."""
        return self._state is _OPEN_STATE

    @property
    def open_channels(self) -> frozenset[int]:
        return frozenset(self._channels)

    @property
    def incomplete(self) -> bool:
        """Bytes of an unfinished frame (or protocol header) are buffered."""
        return self._state not in _NOT_PARSING and len(self._buf) > self._pos

    def _pending_content(self) -> int:
        return self._content.pending_bytes()

    @property
    def receiving_content(self) -> bool:
        """A basic.publish waits for its header or body frames."""
        return self._content.busy()

    def next_event(self) -> Event | _NeedData:
        state = self._state
        if state in _NOT_PARSING:
            return NEED_DATA
        if state is _HEADER_STATE:
            return self._read_header()
        buf = self._buf
        while True:
            pos = self._pos
            if len(buf) - pos < 8:
                return NEED_DATA
            ftype, ch, size = _FRAME_HDR.unpack_from(buf, pos)
            # RabbitMQ tolerates payloads up to frame_max (not frame_max - 8):
            # several clients get the overhead wrong. We do the same. frame_max 0
            # ("no limit") still buffers no frame larger than a whole message.
            if size > (self.frame_max or self._unlimited_frame):
                raise self._hard(
                    FRAME_ERROR,
                    f"frame payload {size} larger than negotiated frame_max {self.frame_max}"
                    if self.frame_max else f"frame payload {size} larger than the largest "
                    f"message ({self.max_message_size}) with frame_max 0",
                    framing_lost=True,
                )
            end = pos + 7 + size
            if end >= len(buf):
                return NEED_DATA
            if buf[end] != 0xCE:
                raise self._hard(
                    FRAME_ERROR, f"invalid frame end marker 0x{buf[end]:02x}", framing_lost=True
                )
            self._pos = end + 1
            self.frames_parsed += 1
            start = pos + 7
            if self._state in _CLOSING_STATES:
                event = self._on_closing_frame(ftype, ch, buf, start, end)
            elif ftype == 1:
                event = self._on_method(ch, buf, start, end)
            elif ftype == 3:
                event = self._on_body(ch, buf, start, end)
            elif ftype == 2:
                event = self._on_header(ch, buf, start, end)
            elif ftype == 8:
                event = self._on_heartbeat(ch, size)
            else:
                # rabbit_reader: frame_error(unknown_frame); the frame itself was
                # well delimited, so the stream is still in sync.
                raise self._hard(FRAME_ERROR, f"unknown frame type {ftype}")
            if event is not None:
                return event
            if self._state in _NOT_PARSING:
                return NEED_DATA

    def _read_header(self) -> Event | _NeedData:
        got = bytes(self._buf[self._pos : self._pos + 8])
        n = min(len(got), 4)
        if got[:n] != PROTOCOL_HEADER[:n] or (len(got) == 8 and got != PROTOCOL_HEADER):
            self._to(T.BAD_HEADER)
            raise BadProtocolHeader(got)
        if len(got) < 8:
            return NEED_DATA
        self._pos += 8
        self._to(T.HEADER_OK)
        return ProtocolHeaderReceived()

    def _to(self, trigger: Trigger) -> None:
        try:
            self._state = TRANSITIONS[(self._state, trigger)]
        except KeyError:
            raise RuntimeError(f"{trigger.name} in state {self._state.name}") from None

    def _hard(
        self,
        code: int,
        text: str,
        class_id: int = 0,
        method_id: int = 0,
        *,
        framing_lost: bool = False,
    ) -> AMQPConnectionError:
        err = AMQPConnectionError(code, text, class_id, method_id, framing_lost=framing_lost)
        self._to(T.FRAMING_LOST if framing_lost else T.HARD_ERROR)
        self._error = err
        self._content.clear()
        return err

    # -------------------------------------------------------------- frames

    def _on_closing_frame(
        self, ftype: int, ch: int, buf: bytes | bytearray, start: int, end: int
    ) -> Event | None:
        """A whole frame while the connection closes. Spec: after sending
        connection.close, discard everything but close and close-ok; after the
        client's close, everything (the node answers close-ok). Nothing here is
        an error any more: a malformed frame is discarded like any other."""
        if ftype == 8 and ch == 0 and end == start:
            return HeartbeatReceived()
        if self._state is not _CLOSING_STATE or ftype != 1 or ch != 0 or end - start < 4:
            return None
        (index,) = _CLASS_METHOD.unpack_from(buf, start)
        if index == _C_CLOSE_OK:
            self._to(T.CLOSE_OK_RECEIVED)
            return MethodReceived(0, commands.Connection.CloseOk())
        if index == _C_CLOSE:  # closes crossed: the node answers with close_ok()
            try:
                return MethodReceived(0, decode_method(index, bytes(buf[start + 4 : end])))
            except DecodeError:
                return MethodReceived(0, commands.Connection.Close(0, "", 0, 0))
        return None

    def _on_heartbeat(self, ch: int, size: int) -> Event | None:
        if ch != 0 or size != 0:
            # Spec 4.2.7: a heartbeat on a non-zero channel is a 501 frame
            # error (RabbitMQ answers 505 unexpected_frame; we follow the spec).
            raise self._hard(FRAME_ERROR, f"invalid heartbeat frame (channel {ch}, size {size})")
        return HeartbeatReceived()

    def _check_channel(self, ch: int, what: str) -> int | None:
        """Common checks for a frame on channel ``ch`` != 0; returns its state."""
        if self._state is _OPEN_STATE:
            return self._channels.get(ch, 0)
        if self._state in _CLOSING_STATES:
            return None  # being torn down: drop silently
        raise self._hard(
            UNEXPECTED_FRAME if what != "method" else COMMAND_INVALID,
            f"{what} frame on channel {ch} before connection.open",
        )

    def _on_method(self, ch: int, buf: bytes | bytearray, start: int, end: int) -> Event | None:
        if end - start < 4:
            raise self._hard(FRAME_ERROR, "method frame shorter than class and method ids")
        (index,) = _CLASS_METHOD.unpack_from(buf, start)
        class_id = index >> 16
        if ch == 0:
            return self._on_connection_method(index, buf, start + 4, end)
        chstate = self._check_channel(ch, "method")
        if chstate is None:
            return None
        if class_id == 10:
            raise self._hard(
                COMMAND_INVALID, "connection class method on a non-zero channel", 10, index & 0xFFFF
            )
        if chstate != _CH_IS_OPEN:
            return self._on_unopened_channel(ch, chstate, index, buf, start, end)
        if self._content.expecting(ch):
            # rabbit_command_assembler: unexpected_frame("expected content ...")
            raise self._hard(
                UNEXPECTED_FRAME, f"method frame on channel {ch} while content expected",
                class_id, index & 0xFFFF,
            )  # fmt: skip
        # Hot path: fixed layouts decoded by hand.
        try:
            if index == _PUBLISH:
                return self._on_publish(ch, buf, start + 4, end)
            if index in (_ACK, _NACK, _REJECT):
                if end - start != 13:
                    raise IndexError
                tag, bits = _TAG_BITS.unpack_from(buf, start + 4)
                if index == _ACK:
                    return AckReceived(ch, tag, bool(bits & 1))
                if index == _NACK:
                    return NackReceived(ch, tag, bool(bits & 1), bool(bits & 2))
                return NackReceived(ch, tag, False, bool(bits & 1), reject=True)
        except (IndexError, struct.error, UnicodeDecodeError):
            raise self._hard(
                FRAME_ERROR, "cannot decode method fields", class_id, index & 0xFFFF
            ) from None
        if index == _CH_CLOSE_OK:
            # Close-ok without our close: free the channel anyway, as
            # rabbit_reader's post_process_frame does.
            del self._channels[ch]
            return MethodReceived(ch, commands.Channel.CloseOk())
        if index == _CH_OPEN:
            raise self._hard(CHANNEL_ERROR, f"second channel.open on channel {ch}", 20, 10)
        if index not in CLIENT_CHANNEL_METHODS and index != _CH_CLOSE:
            if index in METHODS:
                raise self._hard(
                    COMMAND_INVALID, f"{METHODS[index].name} cannot be sent by a client",
                    class_id, index & 0xFFFF,
                )  # fmt: skip
            raise self._hard(
                NOT_IMPLEMENTED, f"unknown method {class_id}.{index & 0xFFFF}",
                class_id, index & 0xFFFF,
            )  # fmt: skip
        if index in _WITH_ARGUMENTS:
            return MethodReceived(ch, self._decode_with_arguments(ch, index, buf, start, end))
        return MethodReceived(ch, self._decode(index, buf, start + 4, end))

    def _decode_with_arguments(self, ch: int, index: int, buf: bytes | bytearray, start: int,
                               end: int) -> base.Frame:
        """Whatever frame_max was negotiated, a declare / bind / consume carries no more
        than ARGUMENTS_MAX_BYTES, and its table no more than ARGUMENTS_MAX_ITEMS: a soft
        406 for that channel, as RabbitMQ refuses arguments it does not accept."""
        ids = index >> 16, index & 0xFFFF
        if end - start > ARGUMENTS_MAX_BYTES:
            raise ChannelError(ch, PRECONDITION_FAILED, "method of "
                               f"{end - start} bytes; at most {ARGUMENTS_MAX_BYTES} with "
                               "arguments", *ids)
        method = self._decode(index, buf, start + 4, end)
        arguments = getattr(method, "arguments", None)
        if arguments and count_items(arguments, ARGUMENTS_MAX_ITEMS) > ARGUMENTS_MAX_ITEMS:
            raise ChannelError(ch, PRECONDITION_FAILED, "arguments table with more than "
                               f"{ARGUMENTS_MAX_ITEMS} keys and array elements", *ids)
        return method

    def _on_unopened_channel(self, ch: int, chstate: int, index: int, buf: bytes | bytearray,
                             start: int, end: int) -> Event | None:
        """A method on a channel that is closing (ours) or not open: only close /
        close-ok, respectively channel.open, mean anything."""
        class_id, method_id = index >> 16, index & 0xFFFF
        if chstate == _CH_IS_CLOSING:
            if index == _CH_CLOSE_OK:
                del self._channels[ch]
                return MethodReceived(ch, commands.Channel.CloseOk())
            if index == _CH_CLOSE:  # closes crossed: node answers close-ok
                return MethodReceived(ch, self._decode(index, buf, start + 4, end))
            return None  # spec: discard everything else until close-ok
        if index != _CH_OPEN:
            raise self._hard(CHANNEL_ERROR, f"channel {ch} is not open (expected channel.open)",
                             class_id, method_id)
        method = self._decode(index, buf, start + 4, end)
        if ch > self.channel_max:
            # Spec (connection.tune): "usable channel numbers are in the range
            # 1..channel-max". RabbitMQ only counts open channels; a number above
            # the limit gets the same hard 530 as one channel too many there.
            raise self._hard(
                NOT_ALLOWED, f"channel number {ch} is above the negotiated channel_max "
                f"({self.channel_max})", class_id, method_id,
            )  # fmt: skip
        if len(self._channels) >= self.channel_max:
            raise self._hard(
                NOT_ALLOWED, f"number of channels opened ({len(self._channels)}) has reached "
                f"the negotiated channel_max ({self.channel_max})", class_id, method_id,
            )  # fmt: skip
        self._channels[ch] = _CH_IS_OPEN
        return MethodReceived(ch, method)

    def _on_publish(self, ch: int, buf: bytes | bytearray, pos: int, end: int) -> Event | None:
        self._content.publish(ch, buf, pos, end)
        return None

    def _on_header(self, ch: int, buf: bytes | bytearray, start: int, end: int) -> Event | None:
        if ch == 0:
            raise self._hard(UNEXPECTED_FRAME, "content header frame on channel 0")
        chstate = self._check_channel(ch, "content header")
        if chstate is None or chstate == _CH_IS_CLOSING:
            return None
        if chstate != _CH_IS_OPEN:
            raise self._hard(CHANNEL_ERROR, f"content header on channel {ch} which is not open")
        try:
            return self._content.header(ch, buf, start, end)
        except ContentError as e:
            raise self._hard(e.code, e.text, 60, 40) from None
        except ChannelError:
            self._channels[ch] = _CH_IS_CLOSING  # the body frames will be dropped
            raise

    def _on_body(self, ch: int, buf: bytes | bytearray, start: int, end: int) -> Event | None:
        if ch == 0:
            raise self._hard(UNEXPECTED_FRAME, "content body frame on channel 0")
        chstate = self._check_channel(ch, "content body")
        if chstate is None or chstate == _CH_IS_CLOSING:
            return None
        if chstate != _CH_IS_OPEN:
            raise self._hard(CHANNEL_ERROR, f"content body on channel {ch} which is not open")
        try:
            return self._content.body(ch, buf, start, end)
        except ContentError as e:
            raise self._hard(e.code, e.text, 60, 40) from None

    def _decode(self, index: int, buf: bytes | bytearray, start: int, end: int) -> base.Frame:
        try:
            return decode_method(index, bytes(buf[start:end]))
        except KeyError:
            raise self._hard(
                NOT_IMPLEMENTED, f"unknown method {index >> 16}.{index & 0xFFFF}",
                index >> 16, index & 0xFFFF,
            ) from None  # fmt: skip
        except DecodeError as exc:
            # RabbitMQ: rabbit_misc:frame_error -> 501 "cannot decode".
            raise self._hard(
                FRAME_ERROR, f"cannot decode method fields: {exc}", index >> 16, index & 0xFFFF
            ) from None

    # ---------------------------------------------------------- channel 0

    def _on_connection_method(
        self, index: int, buf: bytes | bytearray, start: int, end: int
    ) -> Event | None:
        state = self._state
        class_id, method_id = index >> 16, index & 0xFFFF
        if class_id != 10:
            # Spec: channel 0 carries only connection-class methods. (RabbitMQ
            # answers 504 "unexpected method in connection state"; 503 says more.)
            raise self._hard(
                COMMAND_INVALID, f"method {class_id}.{method_id} on channel 0", class_id, method_id
            )
        if index == _C_CLOSE:
            # The client may give up at any point of the handshake or later.
            method = self._decode(index, buf, start, end)
            self._to(T.CLIENT_CLOSE)
            self._content.clear()
            return MethodReceived(0, method)
        if state is S.OPEN:
            if index == _C_UPDATE_SECRET:
                return MethodReceived(0, self._decode(index, buf, start, end))
            expected = -1
        else:
            expected = _HANDSHAKE_EXPECTS.get(state, -1)
        if index != expected:
            if index not in METHODS:
                raise self._hard(
                    NOT_IMPLEMENTED, f"unknown method {class_id}.{method_id}", class_id, method_id
                )
            # RabbitMQ: channel_error "unexpected method in connection state";
            # 503 COMMAND_INVALID ("invalid sequence of frames") fits the spec better.
            raise self._hard(
                COMMAND_INVALID,
                f"{METHODS[index].name} not expected in this connection state",
                class_id, method_id,
            )  # fmt: skip
        decoded: Any = self._decode(index, buf, start, end)
        if index == _C_START_OK:
            self.client_properties = decoded.client_properties or {}
            self._to(T.START_OK)
        elif index == _C_TUNE_OK:
            self._negotiate(decoded.frame_max, decoded.channel_max, decoded.heartbeat)
            self._to(T.TUNE_OK)
        elif index == _C_OPEN:
            self.vhost = decoded.virtual_host
            self._to(T.OPEN)
        return MethodReceived(0, decoded)

    def _negotiate(self, frame_max: int, channel_max: int, heartbeat: int) -> None:
        # Same rules as rabbit_reader:validate_negotiated_integer_value, except
        # that 0 ("no limit") takes the server's offer instead of failing.
        server = self.server_frame_max
        if frame_max and frame_max < FRAME_MIN_SIZE:
            raise self._hard(
                NOT_ALLOWED, f"negotiated frame_max = {frame_max} is lower than the minimum "
                f"allowed value ({FRAME_MIN_SIZE})", 10, 31,
            )  # fmt: skip
        if server and frame_max > server:
            raise self._hard(
                NOT_ALLOWED, f"negotiated frame_max = {frame_max} is higher than the maximum "
                f"allowed value ({server})", 10, 31,
            )  # fmt: skip
        server_ch = self.server_channel_max
        if server_ch and channel_max > server_ch:
            raise self._hard(
                NOT_ALLOWED, f"negotiated channel_max = {channel_max} is higher than the maximum "
                f"allowed value ({server_ch})", 10, 31,
            )  # fmt: skip
        self.frame_max = frame_max or server
        self.channel_max = channel_max or server_ch or 65535
        # The client's heartbeat wins (what RabbitMQ does): it has seen our offer.
        self.heartbeat = heartbeat

    # ----------------------------------------------------------------- output

    def start(
        self,
        server_properties: dict[str, Any],
        mechanisms: str = "PLAIN AMQPLAIN",
        locales: str = "en_US",
    ) -> bytes:
        """connection.start (protocol 0-9)."""
        return frames.method_frame(
            0, commands.Connection.Start(0, 9, server_properties, mechanisms, locales)
        )

    def tune(self) -> bytes:
        """connection.tune with the offered limits; tune-ok is accepted after it."""
        if self._state is S.SECURE:  # after start-ok, once the login succeeded
            self._to(T.TUNE_SENT)
        return frames.method_frame(
            0,
            commands.Connection.Tune(
                self.server_channel_max, self.server_frame_max, self.server_heartbeat
            ),
        )

    def open_ok(self) -> bytes:
        return _OPEN_OK

    def close_ok(self) -> bytes:
        """connection.close-ok, answering the client's close: we are done."""
        self._to(T.CLOSE_OK_SENT)
        self._channels.clear()
        self._content.clear()
        return _CONNECTION_CLOSE_OK

    def close_connection(
        self, reply_code: int, reply_text: str, class_id: int = 0, method_id: int = 0
    ) -> bytes:
        """connection.close; afterwards only close / close-ok are reported."""
        self._to(T.CLOSE_SENT)
        self.close_sent = True
        self._content.clear()
        return frames.method_frame(
            0, commands.Connection.Close(reply_code, truncate_short(reply_text), class_id, method_id)
        )

    def channel_open_ok(self, channel: int) -> bytes:
        return frames.raw_frame(1, channel, b"\x00\x14\x00\x0b\x00\x00\x00\x00")

    def channel_close_ok(self, channel: int) -> bytes:
        """channel.close-ok for the client's channel.close; frees the channel,
        unless our own close is in flight (closes crossed): then the client's
        close-ok frees it."""
        if self._channels.get(channel) == _CH_IS_OPEN:
            del self._channels[channel]
        self._content.drop(channel)
        return frames.raw_frame(1, channel, b"\x00\x14\x00\x29")

    def close_channel(
        self,
        channel: int,
        reply_code: int,
        reply_text: str,
        class_id: int = 0,
        method_id: int = 0,
    ) -> bytes:
        """Server-initiated channel.close: until the client's close-ok, frames
        on the channel are dropped (spec)."""
        if channel in self._channels:
            self._channels[channel] = _CH_IS_CLOSING
        self._content.drop(channel)
        return frames.method_frame(
            channel,
            commands.Channel.Close(reply_code, truncate_short(reply_text), class_id, method_id),
        )

    def send_method(self, channel: int, method: base.Frame) -> bytes:
        """Any other method (declare-ok, consume-ok, qos-ok, ...), via pamqp."""
        return frames.method_frame(channel, method)

    def deliver(
        self,
        channel: int,
        consumer_tag: str,
        delivery_tag: int,
        redelivered: bool,
        exchange: str,
        routing_key: str,
        properties: bytes,
        body: bytes,
    ) -> frames.Frames:
        return frames.deliver(
            channel, consumer_tag, delivery_tag, redelivered, exchange, routing_key,
            properties, body, self.frame_max,
        )  # fmt: skip

    def get_ok(
        self,
        channel: int,
        delivery_tag: int,
        redelivered: bool,
        exchange: str,
        routing_key: str,
        message_count: int,
        properties: bytes,
        body: bytes,
    ) -> frames.Frames:
        return frames.get_ok(
            channel, delivery_tag, redelivered, exchange, routing_key, message_count,
            properties, body, self.frame_max,
        )  # fmt: skip

    def basic_return(
        self,
        channel: int,
        reply_code: int,
        reply_text: str,
        exchange: str,
        routing_key: str,
        properties: bytes,
        body: bytes,
    ) -> frames.Frames:
        return frames.basic_return(
            channel, reply_code, reply_text, exchange, routing_key, properties, body,
            self.frame_max,
        )  # fmt: skip


_OPEN_OK = frames.method_frame(0, commands.Connection.OpenOk())
_CONNECTION_CLOSE_OK = frames.method_frame(0, commands.Connection.CloseOk())
