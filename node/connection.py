"""One client connection: bytes in, commands out; effects in, bytes out.

The sans-I/O :class:`protocol.connection.ServerConnection` parses and encodes;
this class decides. Methods that change broker state become commands proposed
to the Raft log; their replies come back as effects once applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from pamqp import commands as spec

from cluster import commands as c
from cluster import effects as e
from cluster import machine
from node.auth import credentials
from protocol import properties
from protocol.connection import ServerConnection
from protocol.constants import (
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    CONNECTION_FORCED,
    NOT_ALLOWED,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
)
from protocol.errors import AMQPConnectionError, AMQPError, BadProtocolHeader, ChannelError
from protocol.events import (
    NEED_DATA,
    AckReceived,
    HeartbeatReceived,
    MessagePublished,
    MethodReceived,
    NackReceived,
    ProtocolHeaderReceived,
)
from protocol.methods import build

if TYPE_CHECKING:
    from node.broker import Broker

log = logging.getLogger(__name__)

PRODUCT = "RaftMQ"
VERSION = "0.1.0"

SERVER_CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
}


class Channel:
    """Node-side channel state (the replicated part lives in the machine)."""

    __slots__ = ("number", "key", "confirm", "publish_seq", "confirm_upto", "acked_upto",
                 "unconfirmed", "early", "tx", "tx_commands", "closing")

    def __init__(self, number: int, key: c.ChKey) -> None:
        self.number = number
        self.key = key
        self.confirm = False
        self.publish_seq = 0
        self.confirm_upto = 0  # acks accumulated during one dispatch, sent with multiple
        self.acked_upto = 0  # highest seq covered by an ack already sent
        # Publish seqs not yet confirmed, in order, and confirms that arrived
        # ahead of an earlier seq (a batch resubmitted after a leader change
        # can apply after a later one): an ack with multiple=True may only
        # cover a contiguous run.
        self.unconfirmed: deque[int] = deque()
        self.early: set[int] = set()
        self.tx = False
        self.tx_commands: list[c.Command] = []
        self.closing = False


class AMQPConnection(asyncio.Protocol):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.cfg = broker.cfg
        self.conn_no = broker.new_conn_no()
        self.key: c.ConnKey = (broker.node_id, self.conn_no)
        self.proto = ServerConnection(
            frame_max=self.cfg.frame_max or 131072,
            channel_max=self.cfg.channel_max,
            heartbeat=self.cfg.heartbeat,
        )
        self.transport: asyncio.Transport | None = None
        self.channels: dict[int, Channel] = {}
        self.user = ""
        self.vhost = ""
        self.opened = False  # connection.open done and proposed
        self.closed = False
        self.client_properties: dict[str, Any] = {}
        self.peer: tuple[Any, ...] | None = None
        self._out: list[bytes] = []
        self._write_scheduled = False
        self._last_recv = time.monotonic()
        self._last_send = time.monotonic()
        self._heartbeat_handle: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._reading_paused = False
        self.last_publish = 0.0
        self.cancel_notify = False
        self._channel_gen = 0
        self.created = time.monotonic()
        # Since when an unfinished frame has made no progress (None: nothing pending).
        self._stall_since: float | None = None
        self._frames_seen = 0
        # A login being held back by the throttle: parsing waits for its answer.
        self._auth_pending = False
        self._auth_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.peer = transport.get_extra_info("peername")
        if self.broker.isolated:
            # Cut off from the majority: send the client to another member.
            self.closed = True
            transport.close()
            return
        self.broker.connections[self.conn_no] = self
        self.broker.metrics.connections_opened += 1

    def data_received(self, data: bytes) -> None:
        self._last_recv = time.monotonic()
        try:
            self.proto.receive_data(data)
        except Exception:
            log.exception("internal error on connection %s", self.peer)
            self._drop()
            return
        self._process()

    def _process(self) -> None:
        """Handle every whole event buffered (until a login answer is held back)."""
        proto = self.proto
        try:
            while not self.closed and not self._auth_pending:
                try:
                    ev = proto.next_event()
                    if ev is NEED_DATA:
                        break
                    self._handle(ev)
                except ChannelError as err:
                    # Soft error: that channel closes, the rest of the input
                    # is still parsed.
                    self._channel_error(err.channel, err)
        except BadProtocolHeader as err:
            self._write(err.reply)
            self._flush_writes()
            self._drop()
        except AMQPConnectionError as err:
            if err.framing_lost and self.proto.close_sent:
                self._drop()  # our close is out; the client's close-ok can no longer be found
            else:
                self.force_close(err.reply_code, err.reply_text, err.class_id, err.method_id)
                if err.framing_lost:
                    self._drop()  # nothing more can be parsed, so no close-ok will come
        except Exception:
            log.exception("internal error on connection %s", self.peer)
            self.broker.metrics.faults += 1
            self.force_close(541, "INTERNAL_ERROR - see the broker log")
        self._note_progress()
        self._flush_writes()

    def _note_progress(self) -> None:
        """Track an unfinished frame that does not move (see :meth:`check_timeouts`)."""
        proto = self.proto
        if proto.incomplete and not self._reading_paused:
            if self._stall_since is None or proto.frames_parsed != self._frames_seen:
                self._stall_since = self._last_recv
        else:
            self._stall_since = None
        self._frames_seen = proto.frames_parsed

    def check_timeouts(self, now: float) -> None:
        """Called about once a second. A connection must finish its handshake within
        ``--handshake-timeout`` (RabbitMQ: 10 s) and may not stall inside a frame for
        longer (for clients with heartbeats: not longer than two heartbeats either):
        otherwise idle, half-open and byte-a-second connections are held forever."""
        if self.closed:
            return
        limit = self.cfg.handshake_timeout
        if not self.opened:
            if now - self.created > limit:
                log.info("connection %s did not complete the AMQP handshake within %gs; "
                         "closing it", self.peer, limit)
                self.broker.metrics.handshake_timeouts += 1
                self._drop()
            return
        since = self._stall_since
        if since is None or self._reading_paused:
            return
        heartbeat = self.proto.heartbeat
        if heartbeat:
            limit = max(limit, 2.0 * heartbeat)
        if now - since > limit:
            log.info("connection %s stalled inside a frame for %gs; closing it",
                     self.peer, now - since)
            self.broker.metrics.frame_timeouts += 1
            with contextlib.suppress(Exception):
                self._write(self.proto.close_connection(
                    501, f"FRAME_ERROR - no complete frame within {limit:g}s"))
                self._flush_writes()
            self._drop()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for timer in (self._heartbeat_handle, self._close_timer, self._auth_timer):
            if timer is not None:
                timer.cancel()
        self.broker.connections.pop(self.conn_no, None)
        if self.opened:
            self.broker.propose(c.ConnectionClose(self.key))
        self.broker.metrics.connections_closed += 1

    def pause_reading(self) -> None:
        if self.transport is not None and not self._reading_paused and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self._reading_paused:
            self._reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()
            if self.proto.incomplete:
                self._stall_since = time.monotonic()  # our pause, not the client's stall

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    # --- output -------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self._out.append(data)

    def _flush_writes(self) -> None:
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(self._out)
            self._last_send = time.monotonic()
        self._out.clear()

    def _drop(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the socket at once, unsent output and all."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def force_close(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        """Start a server-initiated connection.close; drop the socket if the
        client does not answer close-ok in time."""
        if self.closed or self.transport is None:
            return
        try:
            self._write(self.proto.close_connection(code, text, class_id, method_id))
        except Exception:
            self._drop()
            return
        self._flush_writes()
        if self._close_timer is None:
            self._close_timer = self.broker.loop.call_later(2.0, self._drop)

    # --- events ---------------------------------------------------------------------------

    def _handle(self, ev: object) -> None:
        t = type(ev)
        if t is MessagePublished:
            self._on_publish(ev)  # type: ignore[arg-type]
        elif t is AckReceived:
            ch = self._channel(ev.channel)  # type: ignore[attr-defined]
            if ch is not None:
                self._propose(ch, c.Ack(ch.key, ev.delivery_tag, ev.multiple))  # type: ignore[attr-defined]
                self.broker.last_ack = self._last_recv
                self.broker.metrics.acked += 1
        elif t is NackReceived:
            ch = self._channel(ev.channel)  # type: ignore[attr-defined]
            if ch is not None:
                self._propose(ch, c.Nack(ch.key, ev.delivery_tag, ev.multiple, ev.requeue, ev.reject))  # type: ignore[attr-defined]
        elif t is MethodReceived:
            self._on_method(ev.channel, ev.method)  # type: ignore[attr-defined]
        elif t is ProtocolHeaderReceived:
            props = {
                "product": PRODUCT,
                "version": VERSION,
                "platform": "Python",
                "copyright": "RaftMQ authors",
                "information": "https://example.invalid/raftmq",
                "cluster_name": "raftmq",
                "capabilities": SERVER_CAPABILITIES,
            }
            self._write(self.proto.start(props))
        elif t is HeartbeatReceived:
            pass

    def _channel(self, number: int) -> Channel | None:
        ch = self.channels.get(number)
        if ch is None or ch.closing:
            return None
        return ch

    def _propose(self, ch: Channel, cmd: c.Command) -> None:
        if ch.tx and isinstance(cmd, c.Publish | c.Ack | c.Nack):
            ch.tx_commands.append(cmd)
        else:
            self.broker.propose(cmd)

    def _on_publish(self, ev: MessagePublished) -> None:
        ch = self._channel(ev.channel)
        if ch is None:
            return
        if ev.immediate:
            raise AMQPConnectionError(NOT_IMPLEMENTED, "immediate=true", 60, 40)
        uid = properties.user_id(ev.properties)
        if uid is not None and uid != self.user:
            raise ChannelError(ch.number, PRECONDITION_FAILED,
                               f"user_id property set to '{uid}' but authenticated user was "
                               f"'{self.user}'", 60, 40)
        seq = 0
        if ch.confirm:
            ch.publish_seq += 1
            seq = ch.publish_seq
            ch.unconfirmed.append(seq)
        self._propose(ch, c.Publish(ch.key, ev.exchange, ev.routing_key, ev.mandatory,
                                    ev.properties, ev.body, seq))
        self.last_publish = self._last_recv
        self.broker.metrics.published += 1

    # --- methods ----------------------------------------------------------------------------

    def _on_method(self, channel: int, m: Any) -> None:
        if channel == 0:
            self._on_connection_method(m)
            return
        if isinstance(m, spec.Channel.Open):
            # The key carries a generation above the channel number, so effects
            # meant for a closed channel never reach a reopened one.
            self._channel_gen += 1
            key = (self.broker.node_id, self.conn_no, channel | (self._channel_gen << 16))
            self.channels[channel] = Channel(channel, key)
            self.broker.propose(c.ChannelOpen(key))
            self._write(self.proto.channel_open_ok(channel))
            self.broker.metrics.channels_opened += 1
            return
        if isinstance(m, spec.Channel.CloseOk):
            self.channels.pop(channel, None)
            return
        ch = self.channels.get(channel)
        if ch is None:
            return
        if isinstance(m, spec.Channel.Close):
            self.channels.pop(channel, None)
            self.broker.propose(c.ChannelClose(ch.key))
            self._write(self.proto.channel_close_ok(channel))
            return
        if ch.closing:
            return
        handler = _METHODS.get(type(m))
        if handler is None:
            raise AMQPConnectionError(NOT_IMPLEMENTED, f"NOT_IMPLEMENTED - {m.name}", *_ids(m))
        handler(self, ch, m)

    def _on_connection_method(self, m: Any) -> None:
        if isinstance(m, spec.Connection.StartOk):
            self._authenticate(m)
        elif isinstance(m, spec.Connection.TuneOk):
            self._start_heartbeats(self.proto.heartbeat)
        elif isinstance(m, spec.Connection.Open):
            vhost = m.virtual_host or "/"
            if not machine.vhost_exists(self.broker.raft.state, vhost):
                raise AMQPConnectionError(NOT_ALLOWED, f"NOT_ALLOWED - vhost {vhost} not found", 10, 40)
            self.vhost = vhost
            self.opened = True
            self.broker.propose(c.ConnectionOpen(self.key, vhost, self.user))
            self._write(self.proto.open_ok())
        elif isinstance(m, spec.Connection.Close):
            self._write(self.proto.close_ok())
            self._flush_writes()
            self._drop()
        elif isinstance(m, spec.Connection.CloseOk):
            self._drop()
        elif isinstance(m, spec.Connection.Blocked | spec.Connection.Unblocked):
            pass
        elif isinstance(m, spec.Connection.UpdateSecret):
            # Credentials here do not expire; accept the new secret as RabbitMQ does.
            self._write(self.proto.send_method(0, build(spec.Connection.UpdateSecretOk)))
        else:
            raise AMQPConnectionError(COMMAND_INVALID, f"COMMAND_INVALID - unexpected {m.name}", *_ids(m))

    def _authenticate(self, m: Any) -> None:
        """connection.start-ok: the login, answered at once or after the throttle's
        delay for this address and user (:class:`node.auth.LoginThrottle`)."""
        self.client_properties = m.client_properties or {}
        caps = self.client_properties.get("capabilities")
        # RabbitMQ ignores a capabilities value that is not a table; so do we.
        self.cancel_notify = isinstance(caps, dict) and caps.get("consumer_cancel_notify") is True
        user, password = credentials(m.mechanism, m.response)
        if user is None:
            raise AMQPConnectionError(
                ACCESS_REFUSED, f"ACCESS_REFUSED - unsupported mechanism {m.mechanism}", 10, 11)
        key = f"{self._peer_ip()} {user}"
        wait = self.broker.login_throttle.wait(key, time.monotonic())
        if wait is None:
            # Too many attempts queued for this address and user: refused unchecked.
            self._refuse_login(m, key, user, "too many failed logins; not checked")
        elif wait <= 0:
            self._check_login(m, key, user, password)
        else:
            self._auth_pending = True
            self.pause_reading()
            self._auth_timer = self.broker.loop.call_later(
                wait, self._resume_login, m, key, user, password)

    def _resume_login(self, m: Any, key: str, user: str, password: str) -> None:
        self._auth_timer = None
        self._auth_pending = False
        if self.closed:
            return
        try:
            self._check_login(m, key, user, password)
        except AMQPConnectionError as err:
            self.force_close(err.reply_code, err.reply_text, err.class_id, err.method_id)
        if not self.closed and not self._auth_pending:
            self.resume_reading()
            self._process()  # frames the client pipelined behind its start-ok
        self._flush_writes()

    def _check_login(self, m: Any, key: str, user: str, password: str) -> None:
        expected = self.cfg.users.get(user)
        if expected is None or expected != password:
            self._refuse_login(m, key, user, "unknown user" if expected is None else
                               "invalid credentials")
            return
        self.broker.login_throttle.succeeded(key)
        if user in self.cfg.loopback_users and not _is_loopback(self.peer):
            raise AMQPConnectionError(
                ACCESS_REFUSED, f"ACCESS_REFUSED - user '{user}' can only connect via localhost", 10, 11)
        self.user = user
        self._write(self.proto.tune())

    def _refuse_login(self, m: Any, key: str, user: str, why: str) -> None:
        """Log and count the failure, then refuse with 403 after the throttle's delay
        (reading stays paused: nothing more from this client is looked at)."""
        throttle = self.broker.login_throttle
        self.broker.metrics.auth_failures += 1
        delay = throttle.failed(key, time.monotonic())
        self.broker.auth_log.warning(
            "login refused: user %r from %s, mechanism %s: %s (%d in a row)",
            user, self._peer_ip(), m.mechanism, why, throttle.failures(key))
        text = (f"ACCESS_REFUSED - Login was refused using authentication mechanism "
                f"{m.mechanism}. For details see the broker logfile.")
        self._auth_pending = True
        self.pause_reading()

        def refuse() -> None:
            self._auth_timer = None
            self.force_close(ACCESS_REFUSED, text, 10, 11)

        self._auth_timer = self.broker.loop.call_later(delay, refuse)

    def _peer_ip(self) -> str:
        return str(self.peer[0]) if self.peer else ""

    # --- heartbeats ----------------------------------------------------------------------

    def _start_heartbeats(self, interval: int) -> None:
        if interval > 0 and self._heartbeat_handle is None:
            self._heartbeat_handle = self.broker.loop.call_later(interval / 2, self._heartbeat, interval)

    def _heartbeat(self, interval: int) -> None:
        now = time.monotonic()
        if now - self._last_recv > 2 * interval:
            log.info("connection %s missed heartbeats; closing", self.peer)
            self._drop()
            return
        if now - self._last_send >= interval / 2:
            self._write(self.proto.heartbeat_frame())
            self._flush_writes()
        self._heartbeat_handle = self.broker.loop.call_later(interval / 2, self._heartbeat, interval)

    # --- channel errors --------------------------------------------------------------

    def _channel_error(self, number: int, err: AMQPError) -> None:
        ch = self.channels.get(number)
        if ch is None or ch.closing:
            return
        ch.closing = True
        self.broker.propose(c.ChannelClose(ch.key))
        self._write(self.proto.close_channel(number, err.reply_code, err.reply_text, err.class_id, err.method_id))

    # --- effects -------------------------------------------------------------------------

    def run_effect(self, ef: e.Effect) -> None:
        handler = _EFFECTS.get(type(ef))
        if handler is not None:
            handler(self, ef)

    def effects_done(self) -> None:
        for ch in self.channels.values():
            if ch.confirm_upto:
                self._send_confirm_acks(ch)
        self._flush_writes()

    def _send_confirm_acks(self, ch: Channel) -> None:
        # Confirms arrive in sequence order; everything up to confirm_upto is acked.
        upto = ch.confirm_upto
        ch.confirm_upto = 0
        ch.acked_upto = upto
        self._write(self.proto.ack(ch.number, upto, multiple=True))


def _ids(m: Any) -> tuple[int, int]:
    return m.frame_id >> 16, m.frame_id & 0xFFFF


def _is_loopback(peer: tuple[Any, ...] | None) -> bool:
    if not peer:
        return True  # unix socket / unknown: treat as local
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except ValueError:
        return False


# --- method handlers (channel methods) ------------------------------------------------


def _exchange_declare(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    conn.broker.propose(c.ExchangeDeclare(ch.key, m.exchange, m.exchange_type, m.passive, m.durable,
                                          m.auto_delete, m.internal, m.nowait, m.arguments or {}))


def _exchange_delete(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    conn.broker.propose(c.ExchangeDelete(ch.key, m.exchange, m.if_unused, m.nowait))


def _exchange_bind(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    conn.broker.propose(c.ExchangeBind(ch.key, m.destination, m.source, m.routing_key, m.nowait,
                                       m.arguments or {}))


def _exchange_unbind(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    conn.broker.propose(c.ExchangeUnbind(ch.key, m.destination, m.source, m.routing_key, m.nowait,
                                         m.arguments or {}))


def _queue_declare(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    conn.broker.propose(c.QueueDeclare(ch.key, m.queue, m.passive, m.durable, m.exclusive,
                                       m.auto_delete, m.nowait, m.arguments or {}))


def _queue_bind(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    conn.broker.propose(c.QueueBind(ch.key, m.queue, m.exchange, m.routing_key, m.nowait,
                                    m.arguments or {}))


def _queue_unbind(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    conn.broker.propose(c.QueueUnbind(ch.key, m.queue, m.exchange, m.routing_key, m.arguments or {}))


def _queue_purge(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    conn.broker.propose(c.QueuePurge(ch.key, m.queue, m.nowait))


def _queue_delete(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    conn.broker.propose(c.QueueDelete(ch.key, m.queue, m.if_unused, m.if_empty, m.nowait))


def _basic_qos(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    if m.prefetch_size:
        raise AMQPConnectionError(NOT_IMPLEMENTED, f"prefetch_size!={m.prefetch_size}", 60, 10)
    conn.broker.propose(c.Qos(ch.key, m.prefetch_count, m.global_))


def _basic_consume(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    conn.broker.propose(c.Consume(ch.key, m.queue, m.consumer_tag or "", m.no_ack, m.exclusive,
                                  m.nowait, m.arguments or {}))


def _basic_cancel(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    conn.broker.propose(c.Cancel(ch.key, m.consumer_tag or "", m.nowait))


def _basic_get(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    conn.broker.propose(c.Get(ch.key, m.queue, m.no_ack))


def _basic_recover(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    if not m.requeue:
        # RabbitMQ does not implement redelivery to the original consumer either.
        raise AMQPConnectionError(NOT_IMPLEMENTED, "NOT_IMPLEMENTED - requeue=false", 60, 110)
    conn.broker.propose(c.Recover(ch.key))


def _basic_recover_async(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    conn.broker.propose(c.Recover(ch.key, nowait=True))


def _channel_flow(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    conn.broker.propose(c.Flow(ch.key, m.active))


def _confirm_select(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    if ch.tx:
        raise ChannelError(ch.number, PRECONDITION_FAILED,
                           "PRECONDITION_FAILED - cannot switch from tx to confirm mode", 85, 10)
    ch.confirm = True
    if not m.nowait:
        conn._write(conn.proto.send_method(ch.number, build(spec.Confirm.SelectOk)))


def _tx_select(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    if ch.confirm:
        raise ChannelError(ch.number, PRECONDITION_FAILED,
                           "PRECONDITION_FAILED - cannot switch from confirm to tx mode", 90, 10)
    ch.tx = True
    conn._write(conn.proto.send_method(ch.number, build(spec.Tx.SelectOk)))


def _tx_commit(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    if not ch.tx:
        raise ChannelError(ch.number, PRECONDITION_FAILED, "PRECONDITION_FAILED - channel is not transactional", 90, 20)
    # The whole transaction goes into one Raft entry: applied atomically.
    for cmd in ch.tx_commands:
        conn.broker.propose(cmd)
    ch.tx_commands = []
    number = ch.number

    def reply() -> None:
        if conn.channels.get(number) is ch and not ch.closing:
            conn._write(conn.proto.send_method(number, build(spec.Tx.CommitOk)))
            conn._flush_writes()

    conn.broker.after_apply(reply)


def _tx_rollback(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    if not ch.tx:
        raise ChannelError(ch.number, PRECONDITION_FAILED, "PRECONDITION_FAILED - channel is not transactional", 90, 30)
    ch.tx_commands = []
    conn._write(conn.proto.send_method(ch.number, build(spec.Tx.RollbackOk)))


def _unexpected(conn: AMQPConnection, ch: Channel, m: Any) -> None:
    raise AMQPConnectionError(COMMAND_INVALID, f"COMMAND_INVALID - unexpected {m.name}", *_ids(m))


_METHODS: dict[type, Any] = {
    spec.Exchange.Declare: _exchange_declare,
    spec.Exchange.Delete: _exchange_delete,
    spec.Exchange.Bind: _exchange_bind,
    spec.Exchange.Unbind: _exchange_unbind,
    spec.Queue.Declare: _queue_declare,
    spec.Queue.Bind: _queue_bind,
    spec.Queue.Unbind: _queue_unbind,
    spec.Queue.Purge: _queue_purge,
    spec.Queue.Delete: _queue_delete,
    spec.Basic.Qos: _basic_qos,
    spec.Basic.Consume: _basic_consume,
    spec.Basic.Cancel: _basic_cancel,
    spec.Basic.Get: _basic_get,
    spec.Basic.Recover: _basic_recover,
    spec.Basic.RecoverAsync: _basic_recover_async,
    spec.Channel.Flow: _channel_flow,
    spec.Channel.FlowOk: lambda conn, ch, m: None,
    spec.Confirm.Select: _confirm_select,
    spec.Tx.Select: _tx_select,
    spec.Tx.Commit: _tx_commit,
    spec.Tx.Rollback: _tx_rollback,
    spec.Basic.CancelOk: lambda conn, ch, m: None,  # answer to our basic.cancel
}


# --- effect handlers -------------------------------------------------------------------


def _live_channel(conn: AMQPConnection, key: c.ChKey) -> Channel | None:
    ch = conn.channels.get(key[2] & 0xFFFF)
    if ch is None or ch.key != key or ch.closing:
        return None
    return ch


def _reply(method: type, fields: Any = lambda ef: ()) -> Any:
    """An effect handler sending ``method`` with the values ``fields(effect)``."""
    def run(conn: AMQPConnection, ef: Any) -> None:
        ch = _live_channel(conn, ef.ch)
        if ch is not None:
            conn._write(conn.proto.send_method(ch.number, build(method, *fields(ef))))

    return run


def _deliver(conn: AMQPConnection, ef: e.Deliver) -> None:
    ch = _live_channel(conn, ef.ch)
    if ch is None:
        return  # the channel is closing: the machine requeues on ChannelClose
    conn._write(conn.proto.deliver(ch.number, ef.consumer_tag, ef.delivery_tag, ef.redelivered,
                                   ef.exchange, ef.routing_key, ef.properties, ef.body))
    conn.broker.metrics.delivered += 1


def _get_ok(conn: AMQPConnection, ef: e.GetOk) -> None:
    ch = _live_channel(conn, ef.ch)
    if ch is None:
        return
    conn._write(conn.proto.get_ok(ch.number, ef.delivery_tag, ef.redelivered, ef.exchange,
                                  ef.routing_key, ef.message_count, ef.properties, ef.body))
    conn.broker.metrics.delivered += 1


def _return(conn: AMQPConnection, ef: e.Return) -> None:
    ch = _live_channel(conn, ef.ch)
    if ch is None:
        return
    if ch.confirm_upto:
        conn._send_confirm_acks(ch)
    conn._write(conn.proto.basic_return(ch.number, ef.reply_code, ef.reply_text, ef.exchange,
                                        ef.routing_key, ef.properties, ef.body))


def _confirm(conn: AMQPConnection, ef: e.Confirm) -> None:
    ch = _live_channel(conn, ef.ch)
    if ch is None or not ch.confirm:
        return
    pending = ch.unconfirmed
    if pending and pending[0] == ef.seq:
        pending.popleft()
        while pending and pending[0] in ch.early:
            ch.early.discard(pending.popleft())
    elif ef.seq > ch.acked_upto and ef.seq not in ch.early:
        ch.early.add(ef.seq)
    else:
        return  # a confirm seen twice (effects can repeat across a leader change)
    conn.broker.metrics.confirmed += 1
    if not ef.ack:
        if ch.confirm_upto:
            conn._send_confirm_acks(ch)
        conn._write(conn.proto.nack(ch.number, ef.seq, multiple=False))
    upto = pending[0] - 1 if pending else ch.publish_seq
    if upto > max(ch.acked_upto, ch.confirm_upto):
        ch.confirm_upto = upto


def _consumer_cancelled(conn: AMQPConnection, ef: e.ConsumerCancelled) -> None:
    ch = _live_channel(conn, ef.ch)
    if ch is not None and conn.cancel_notify:
        conn._write(conn.proto.send_method(ch.number, build(spec.Basic.Cancel, ef.consumer_tag,
                                                            True)))


def _channel_error_effect(conn: AMQPConnection, ef: e.ChannelError) -> None:
    ch = _live_channel(conn, ef.ch)
    if ch is None:
        return
    ch.closing = True
    # The machine already closed the channel in the replicated state.
    conn._write(conn.proto.close_channel(ch.number, ef.reply_code, ef.reply_text, ef.class_id,
                                         ef.method_id))


def _connection_error_effect(conn: AMQPConnection, ef: e.ConnectionError) -> None:
    conn.force_close(ef.reply_code, ef.reply_text, ef.class_id, ef.method_id)


_EFFECTS: dict[type, Any] = {
    e.Deliver: _deliver,
    e.Confirm: _confirm,
    e.GetOk: _get_ok,
    e.GetEmpty: _reply(spec.Basic.GetEmpty),
    e.Return: _return,
    e.ExchangeDeclareOk: _reply(spec.Exchange.DeclareOk),
    e.ExchangeDeleteOk: _reply(spec.Exchange.DeleteOk),
    e.ExchangeBindOk: _reply(spec.Exchange.BindOk),
    e.ExchangeUnbindOk: _reply(spec.Exchange.UnbindOk),
    e.QueueDeclareOk: _reply(spec.Queue.DeclareOk,
                             lambda ef: (ef.queue, ef.message_count, ef.consumer_count)),
    e.QueueBindOk: _reply(spec.Queue.BindOk),
    e.QueueUnbindOk: _reply(spec.Queue.UnbindOk),
    e.QueuePurgeOk: _reply(spec.Queue.PurgeOk, lambda ef: (ef.message_count,)),
    e.QueueDeleteOk: _reply(spec.Queue.DeleteOk, lambda ef: (ef.message_count,)),
    e.ConsumeOk: _reply(spec.Basic.ConsumeOk, lambda ef: (ef.consumer_tag,)),
    e.CancelOk: _reply(spec.Basic.CancelOk, lambda ef: (ef.consumer_tag,)),
    e.QosOk: _reply(spec.Basic.QosOk),
    e.FlowOk: _reply(spec.Channel.FlowOk, lambda ef: (ef.active,)),
    e.RecoverOk: _reply(spec.Basic.RecoverOk),
    e.ConsumerCancelled: _consumer_cancelled,
    e.ChannelError: _channel_error_effect,
    e.ConnectionError: _connection_error_effect,
}

__all__ = ["AMQPConnection", "CHANNEL_ERROR", "CONNECTION_FORCED"]
