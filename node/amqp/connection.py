"""One client connection: the socket, the handshake on channel 0, heartbeats,
timeouts and flow control.

Bytes go to the sans-I/O :class:`protocol.connection.ServerConnection`; events on
channels go to the connection's :class:`node.amqp.session.Session`, which turns them
into commands for the Raft log and turns the effects of applied entries back
into frames. What a connection needs from its node is the small
:class:`Node` protocol (node/broker.py implements it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

from pamqp import commands as spec

from cluster import commands as c
from cluster import effects as e
from cluster.proposer import Proposer
from cluster.replica import Replica
from node.amqp import flow
from node.amqp.flow import FlowControl
from node.amqp.login import Accepted, Attempt, Authenticator, Refused
from node.amqp.session import Session
from node.config import Config
from node.services.metrics import Metrics
from protocol.connection import ServerConnection, server_properties
from protocol.constants import (
    COMMAND_INVALID,
    FRAME_ERROR,
    INTERNAL_ERROR,
    NOT_ALLOWED,
)
from protocol.errors import AMQPConnectionError, BadProtocolHeader, ChannelError
from protocol.events import (
    NEED_DATA,
    HeartbeatReceived,
    MessagePublished,
    MethodReceived,
    ProtocolHeaderReceived,
)
from protocol.frames import HEARTBEAT
from protocol.methods import build

log = logging.getLogger(__name__)

PRODUCT = "RaftMQ"
VERSION = "0.1.0"
# How long a server-initiated close waits for the client's close-ok.
CLOSE_TIMEOUT_S = 2.0
# One connection's input handled in one loop turn: at most this long, then the rest in
# later turns with its reading paused meanwhile. 30,000 basic.consume pipelined in one
# read were 0.3 s of decoding and one Raft entry of 30,000 commands (0.3 s to apply on
# every replica): everyone else waited for both.
TURN_BUDGET_S = 0.01
TURN_CHECK_EVERY = 64  # events between looks at the clock
# After close-ok, how long the socket stays open (its input read and discarded) for the
# client to close it first.
CLOSE_DRAIN_S = 5.0


class Node(Protocol):
    """What a connection needs from the node it runs in."""

    cfg: Config
    loop: asyncio.AbstractEventLoop
    node_id: str
    metrics: Metrics
    auth: Authenticator
    isolated: bool
    proposer: Proposer
    raft: Replica  # (its ``read``: the bytes of the messages delivered)

    @property
    def alarm(self) -> str | None:
        """Why publishers are blocked (node/services/alarms.py), None if they are not."""

    def new_conn_no(self) -> int: ...

    def connection_count(self) -> int: ...

    def register(self, conn: AMQPConnection) -> None: ...

    def unregister(self, conn: AMQPConnection) -> None: ...

    def propose(self, cmd: c.Command) -> None: ...

    def after_apply(self, fn: Callable[[], None]) -> None: ...

    def may_open(self, user: str, vhost: str) -> str | None:
        """Why ``user`` may not open a connection to ``vhost`` (None: it may)."""

    def may_open_channel(self, user: str) -> str | None:
        """Why ``user`` may not open one more channel (None: it may)."""


class AMQPConnection(asyncio.Protocol):
    def __init__(self, node: Node) -> None:
        self.node = node
        self.cfg = node.cfg
        self.conn_no = node.new_conn_no()
        self.key: c.ConnKey = (node.node_id, self.conn_no)
        self.proto = ServerConnection(
            frame_max=self.cfg.frame_max or 131072,
            channel_max=self.cfg.channel_max,
            heartbeat=self.cfg.heartbeat,
        )
        self._out: list[bytes | memoryview] = []  # one writelines per flush
        self.session = Session(self.key, self.proto, node.propose, node.after_apply,
                               self._write, node.metrics, clock=lambda: self._last_recv,
                               flush=self._flush_writes, may_open_channel=node.may_open_channel,
                               turn=node.proposer.turn, settled=node.proposer.settled,
                               hold_reading=self._hold_for_publishes,
                               write_parts=self._out.extend, read=node.raft.read)
        self.session.max_consumers = self.cfg.max_consumers_per_channel
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.vhost = ""
        self.opened = False  # connection.open done and proposed
        self.closed = False
        self._released = False  # unregistered, its ConnectionClose proposed
        self._draining = False  # close-ok sent: input is read and discarded
        self.client_properties: dict[str, Any] = {}
        self.peer: tuple[Any, ...] | None = None
        self.tls = False
        self.certificate_user: str | None = None  # a verified client certificate's CN
        now = time.monotonic()
        self.created = now
        self._last_recv = now
        self._last_send = now
        self._heartbeat_handle: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        # Since when an unfinished frame has made no progress (None: nothing pending).
        self._stall_since: float | None = None
        self._frames_seen = 0
        # A login held back by the throttle: parsing waits for its answer.
        self._auth_pending = False
        self._turn_held = False  # input left for the next loop turn (TURN_BUDGET_S)
        self._auth_timer: asyncio.TimerHandle | None = None

    @property
    def user(self) -> str:
        return self.session.user

    @property
    def last_publish(self) -> float:
        return self.session.last_publish

    @property
    def channels(self) -> dict[int, Any]:
        return self.session.channels

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        self.flow = FlowControl(transport, self._writable, self._reading_resumed)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.peer = transport.get_extra_info("peername")
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.tls = True
            self.certificate_user = common_name(ssl_object.getpeercert())
        if self.node.isolated:
            # Cut off from the majority: send the client to another member.
            self.closed = True
            transport.close()
            return
        limit = self.cfg.max_connections
        if limit and self.node.connection_count() >= limit:
            # As RabbitMQ at connection_max: the socket is closed before any AMQP.
            log.warning("connection from %s refused: %d connections, the node's limit "
                        "(--max-connections)", self.peer, limit)
            self.closed = True
            transport.close()
            return
        self.node.register(self)

    def data_received(self, data: bytes) -> None:
        self._last_recv = time.monotonic()
        if self._draining:
            return
        self.session.received(len(data))
        try:
            self.proto.receive_data(data)
        except Exception:
            log.exception("internal error on connection %s", self.peer)
            self._drop()
            return
        self._process()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for timer in (self._heartbeat_handle, self._close_timer, self._auth_timer):
            if timer is not None:
                timer.cancel()
        self._release()

    def _release(self) -> None:
        """The connection is over for the broker: no more effects reach it, and the
        machine closes its channels (consumers, exclusive queues, unacked messages)."""
        if self._released:
            return
        self._released = True
        self.node.unregister(self)
        if self.opened:
            self.node.propose(c.ConnectionClose(self.key))

    def pause_writing(self) -> None:
        if self.flow is not None:
            self.node.metrics.write_pauses += 1
            self.flow.pause_writing()

    def resume_writing(self) -> None:
        if self.flow is not None:
            self.flow.resume_writing()

    def _writable(self, writable: bool) -> None:
        """The client stopped (or resumed) taking what we write: deliveries to it stop
        in the state machine (node/amqp/flow.py)."""
        if self.opened and not self.closed:
            self.node.propose(c.ConnectionFlow(self.key, writable))
            self.session.set_writable(writable)

    def pause_reading(self, reason: str) -> None:
        """Read nothing more for ``reason`` (node/amqp/flow.py REASONS) until it is lifted."""
        if self.flow is not None and not self.closed:
            self.flow.pause_reading(reason)

    def resume_reading(self, reason: str) -> None:
        if self.flow is not None:
            self.flow.resume_reading(reason)

    def _reading_resumed(self) -> None:
        # Our pause, not the client's silence: neither a stalled frame nor missed
        # heartbeats while it lasted.
        now = time.monotonic()
        self._last_recv = max(self._last_recv, now)
        if self.proto.incomplete:
            self._stall_since = now

    def _hold_for_publishes(self, hold: bool) -> None:
        """It sent INPUT_WINDOW bytes ahead of what is applied (node/amqp/session.py): read
        no more until its commands are."""
        if hold:
            self.pause_reading(flow.PUBLISH)
        else:
            self.resume_reading(flow.PUBLISH)

    @property
    def reading_paused(self) -> bool:
        return self.flow is not None and self.flow.reading_paused

    # --- input ---------------------------------------------------------------------

    def _process(self) -> None:
        """Handle every whole event buffered (until a login answer is held back)."""
        proto = self.proto
        n = 0
        deadline = time.monotonic() + TURN_BUDGET_S
        try:
            while not self.closed and not self._auth_pending:
                n += 1
                if n % TURN_CHECK_EVERY == 0 and time.monotonic() > deadline:
                    self._continue_next_turn()
                    break
                try:
                    ev = proto.next_event()
                    if ev is NEED_DATA:
                        break
                    if getattr(ev, "channel", 0):
                        self.session.on_event(ev)
                        if type(ev) is MessagePublished and self.node.alarm is not None \
                                and not self.blocked:
                            self.alarm(self.node.alarm)
                    else:
                        self._on_channel_zero(ev)
                except ChannelError as err:
                    # Soft error: that channel closes, the rest of the input is still parsed.
                    self.session.channel_error(err.channel, err)
        except BadProtocolHeader as err:
            self._write(err.reply)
            self._flush_writes()
            self._drop()
        except AMQPConnectionError as err:
            if err.framing_lost and proto.close_sent:
                self._drop()  # our close is out; the client's close-ok can no longer be found
            else:
                self.force_close(err.reply_code, err.reply_text, err.class_id, err.method_id)
                if err.framing_lost:
                    self._drop()  # nothing more can be parsed, so no close-ok will come
        except Exception:
            log.exception("internal error on connection %s", self.peer)
            self.node.metrics.faults += 1
            self.force_close(INTERNAL_ERROR, "INTERNAL_ERROR - see the broker log")
        if proto.receiving_content and not self.blocked and self.node.alarm is not None:
            # As rabbit_reader blocks at a content frame: a first message (up to
            # max_message_size) is not read in whole during an alarm either, so many
            # connections each sending one cannot fill the memory the alarm protects.
            self.alarm(self.node.alarm, publishing=True)
        self._note_progress()
        self._flush_writes()

    def _continue_next_turn(self) -> None:
        """Its turn's budget is spent: read nothing more until what it sent so far is
        handled, one budget per loop turn (other connections and Raft in between)."""
        if not self._turn_held:
            self._turn_held = True
            self.pause_reading(flow.TURN)
            self.node.loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._turn_held = False
        if self.closed:
            return
        self._process()
        if not self._turn_held:
            self.resume_reading(flow.TURN)

    def _on_channel_zero(self, ev: Any) -> None:
        if type(ev) is MethodReceived:
            self._on_connection_method(ev.method)
        elif type(ev) is ProtocolHeaderReceived:
            mechanisms = "PLAIN AMQPLAIN" + (" EXTERNAL" if self.certificate_user else "")
            self._write(self.proto.start(server_properties(PRODUCT, VERSION), mechanisms))
        elif type(ev) is HeartbeatReceived:
            pass

    def _on_connection_method(self, m: Any) -> None:
        if isinstance(m, spec.Connection.StartOk):
            self._authenticate(m)
        elif isinstance(m, spec.Connection.TuneOk):
            self._start_heartbeats(self.proto.heartbeat)
        elif isinstance(m, spec.Connection.Open):
            vhost = m.virtual_host or "/"
            refused = self.node.may_open(self.user, vhost)
            if refused is not None:
                raise AMQPConnectionError(NOT_ALLOWED, f"NOT_ALLOWED - {refused}", 10, 40)
            self.vhost = vhost
            self.opened = True
            self.node.propose(c.ConnectionOpen(self.key, vhost, self.user))
            self._write(self.proto.open_ok())
        elif isinstance(m, spec.Connection.Close):
            self._write(self.proto.close_ok())
            self._flush_writes()
            self._drain()
        elif isinstance(m, spec.Connection.CloseOk):
            self._drop()
        elif isinstance(m, spec.Connection.Blocked | spec.Connection.Unblocked):
            pass
        elif isinstance(m, spec.Connection.UpdateSecret):
            # Credentials here do not expire; accept the new secret as RabbitMQ does.
            self._write(self.proto.send_method(0, build(spec.Connection.UpdateSecretOk)))
        else:
            raise AMQPConnectionError(COMMAND_INVALID, f"COMMAND_INVALID - unexpected {m.name}",
                                      m.frame_id >> 16, m.frame_id & 0xFFFF)

    # --- alarms ----------------------------------------------------------------------

    @property
    def blocked(self) -> bool:
        """Held by an alarm (node/amqp/flow.py)."""
        return self.flow is not None and self.flow.blocked

    def alarm(self, reason: str | None, publishing: bool = False) -> None:
        """An alarm in the cluster (``reason``) or none any more; ``publishing``: it is
        sending a content now. Blocked or not, and told or not: node/amqp/flow.py."""
        if self.closed or not self.opened or self.flow is None:
            return
        notice = self.flow.alarm(reason, publishing or bool(self.session.last_publish))
        if notice is not None:
            self._write(self.proto.send_method(0, notice))
            self._flush_writes()

    # --- login ---------------------------------------------------------------------

    def _authenticate(self, m: Any) -> None:
        """connection.start-ok: the login (node/amqp/login.py), answered at once or after the
        throttle's delay; nothing more from the client is parsed meanwhile."""
        self.client_properties = m.client_properties or {}
        caps = self.client_properties.get("capabilities")
        # RabbitMQ ignores a capabilities value that is not a table; so do we.
        self.session.cancel_notify = (isinstance(caps, dict)
                                      and caps.get("consumer_cancel_notify") is True)
        if self.flow is not None:
            self.flow.notify = isinstance(caps, dict) and caps.get("connection.blocked") is True
        step = self.node.auth.start(self.peer, m.mechanism, m.response, self.certificate_user)
        if isinstance(step, Refused):
            self._login_refused(step)
        elif isinstance(step, Accepted):
            self._login_accepted(step)
        elif step.wait > 0:
            self._hold(step.wait, lambda: self._login_checked(step))
        else:
            self._login_checked(step)

    def _login_checked(self, attempt: Attempt) -> None:
        result = self.node.auth.check(attempt, self.peer)
        if isinstance(result, Refused):
            self._login_refused(result)
        else:
            self._login_accepted(result)

    def _login_accepted(self, accepted: Accepted) -> None:
        self.session.user = accepted.user
        self._write(self.proto.tune())

    def _login_refused(self, refused: Refused) -> None:
        def refuse() -> None:
            self._auth_pending = True  # stays held: the connection is closing
            self.force_close(refused.code, refused.text, 10, 11)

        if refused.delay > 0:
            self._hold(refused.delay, refuse)
        else:
            refuse()

    def _hold(self, delay: float, then: Callable[[], None]) -> None:
        """Read nothing more (and parse nothing buffered) for ``delay`` s, then ``then``."""
        self._auth_pending = True
        self.pause_reading(flow.LOGIN)

        def resume() -> None:
            self._auth_timer = None
            self._auth_pending = False
            if self.closed:
                return
            then()
            if not self.closed and not self._auth_pending:
                self.resume_reading(flow.LOGIN)
                self._process()  # frames the client pipelined behind its start-ok
            self._flush_writes()

        self._auth_timer = self.node.loop.call_later(delay, resume)

    # --- timeouts and heartbeats -----------------------------------------------------

    def _note_progress(self) -> None:
        """Track an unfinished frame that does not move (see :meth:`check_timeouts`)."""
        proto = self.proto
        if proto.incomplete and not self.reading_paused:
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
                self.node.metrics.handshake_timeouts += 1
                self._drop()
            return
        since = self._stall_since
        if since is None or self.reading_paused:
            return
        heartbeat = self.proto.heartbeat
        if heartbeat:
            limit = max(limit, 2.0 * heartbeat)
        if now - since > limit:
            log.info("connection %s stalled inside a frame for %gs; closing it",
                     self.peer, now - since)
            self.node.metrics.frame_timeouts += 1
            with contextlib.suppress(Exception):
                self._write(self.proto.close_connection(
                    FRAME_ERROR, f"FRAME_ERROR - no complete frame within {limit:g}s"))
                self._flush_writes()
            self._drop()

    def _start_heartbeats(self, interval: int) -> None:
        if interval > 0 and self._heartbeat_handle is None:
            self._heartbeat_handle = self.node.loop.call_later(interval / 2, self._heartbeat,
                                                               interval)

    def _heartbeat(self, interval: int) -> None:
        now = time.monotonic()
        if now - self._last_recv > 2 * interval and not self.reading_paused:
            log.info("connection %s missed heartbeats; closing", self.peer)
            self._drop()
            return
        if now - self._last_send >= interval / 2:
            self._write(HEARTBEAT)
            self._flush_writes()
        self._heartbeat_handle = self.node.loop.call_later(interval / 2, self._heartbeat,
                                                           interval)

    # --- effects ---------------------------------------------------------------------

    def run_effect(self, ef: e.Effect) -> None:
        try:
            self.session.run_effect(ef)
        except AMQPConnectionError as err:  # the machine closed the connection
            self.force_close(err.reply_code, err.reply_text, err.class_id, err.method_id)

    def effects_done(self) -> None:
        self.session.effects_done()
        self._flush_writes()

    # --- output ----------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self._out.append(data)

    def _flush_writes(self) -> None:
        if self._draining:  # nothing may follow close-ok
            self._out.clear()
            return
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(self._out)
            self._last_send = time.monotonic()
            if self.flow is not None and self.flow.write_paused:
                self.flow.wrote()
        self._out.clear()

    def _drain(self) -> None:
        """close-ok is out. As RabbitMQ does, the socket stays open, its input read and
        discarded, until the client closes it (or CLOSE_DRAIN_S): a socket closed with
        unread input is reset, and a client whose last frames were still on the way
        would get ECONNRESET instead of its close-ok."""
        self.closed = True
        self._draining = True
        self._release()
        for timer in (self._heartbeat_handle, self._auth_timer):
            if timer is not None:
                timer.cancel()
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.resume_reading()  # a paused reader would never see the client's EOF
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._close_timer = self.node.loop.call_later(CLOSE_DRAIN_S, self._drop)

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
        """Start a server-initiated connection.close; drop the socket if the client does
        not answer close-ok in time."""
        if self.closed or self.transport is None:
            return
        if not self.proto.close_sent:
            try:
                self._write(self.proto.close_connection(code, text, class_id, method_id))
            except Exception:
                self._drop()
                return
        self._flush_writes()
        if self._close_timer is None:
            self._close_timer = self.node.loop.call_later(CLOSE_TIMEOUT_S, self._drop)


def common_name(cert: dict[str, Any] | None) -> str | None:
    """The subject's common name of a verified peer certificate (``getpeercert()``)."""
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
