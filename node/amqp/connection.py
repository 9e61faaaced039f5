"""One client connection: the socket, its timers, and the objects that decide.

Bytes go to the sans-I/O :class:`protocol.connection.ServerConnection`. Events on
channel 0 go to a :class:`node.amqp.handshake.Handshake` (the login, tune, open,
close), events on other channels to the connection's
:class:`node.amqp.session.Session`, which turns them into commands for the Raft log
and turns the effects of applied entries back into frames. Heartbeats and timeouts
are decided by :class:`node.amqp.heartbeat.Liveness`, flow control by
:class:`node.amqp.flow.FlowControl`; none of them has a socket or a timer, this
module carries out what they decide. What a connection needs from its node is the
small :class:`Node` protocol (node/broker.py implements it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

from cluster import commands as c
from cluster import effects as e
from cluster.machine import policies
from cluster.machine.qargs import consumer_timeout
from cluster.proposer import Proposer
from cluster.replica import Replica
from node.amqp import flow
from node.amqp import handshake as hs
from node.amqp.flow import FlowControl
from node.amqp.handshake import Handshake
from node.amqp.heartbeat import MISSED, SEND, Liveness
from node.amqp.login import Authenticator
from node.amqp.session import Session
from node.amqp.stats import Octets
from node.config import Config
from node.services.metrics import Metrics
from protocol.connection import ServerConnection
from protocol.constants import FRAME_ERROR, INTERNAL_ERROR
from protocol.errors import AMQPConnectionError, BadProtocolHeader, ChannelError
from protocol.events import NEED_DATA, MessagePublished
from protocol.frames import HEARTBEAT

log = logging.getLogger(__name__)

# How long a server-initiated close waits for the client's close-ok.
CLOSE_TIMEOUT_S = 2.0
# One connection's input handled in one loop turn: at most this long, then the rest in
# later turns with its reading paused meanwhile. 30,000 basic.consume pipelined in one
# read were 0.3 s of decoding and one Raft entry of 30,000 commands (0.3 s to apply on
# every replica): everyone else waited for both.
TURN_BUDGET_S = 0.01
TURN_CHECK_EVERY = 64  # events between looks at the clock
# A dispatch's output goes to the socket whenever this many frames (or pieces of big
# contents) are buffered, not only at its end: an entry of a burst applies 500 and more
# deliveries to one consumer at once, and building them all took 10-40 ms on a busy
# machine before the client got the first (bench/burst.py, issue 22).
FLUSH_EVERY = 128
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
        self.octets = Octets()  # the management API's recv_oct, send_oct, ... (node/amqp/stats.py)
        self.liveness = Liveness(self.cfg.handshake_timeout)  # node/amqp/heartbeat.py
        self.handshake = Handshake(self.proto, node.auth, node.may_open)
        self.session = Session(self.key, self.proto, node.propose, node.after_apply,
                               self._write, node.metrics, clock=lambda: self.liveness.last_recv,
                               flush=self._flush_writes, may_open_channel=node.may_open_channel,
                               turn=node.proposer.turn, settled=node.proposer.settled,
                               hold_reading=self._hold_for_publishes,
                               write_parts=self._out.extend, read=node.raft.read,
                               level=lambda: node.raft.state.level)
        self.session.max_consumers = self.cfg.max_consumers_per_channel
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.opened = False  # connection.open done and proposed
        self.closed = False
        self._released = False  # unregistered, its ConnectionClose proposed
        self._draining = False  # close-ok sent: input is read and discarded
        self.peer: tuple[Any, ...] | None = None
        self.tls = False
        self.certificate_user: str | None = None  # a verified client certificate's CN
        self._heartbeat_handle: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._turn_held = False  # input left for the next loop turn (TURN_BUDGET_S)
        self._auth_timer: asyncio.TimerHandle | None = None  # a login held (Handshake)

    @property
    def user(self) -> str:
        return self.session.user

    @property
    def last_publish(self) -> float:
        return self.session.last_publish

    @property
    def channels(self) -> dict[int, Any]:
        return self.session.channels

    @property
    def vhost(self) -> str:
        return self.handshake.vhost

    @property
    def client_properties(self) -> dict[str, Any]:
        return self.handshake.client_properties

    @property
    def created(self) -> float:
        """When the socket was accepted (time.monotonic())."""
        return self.liveness.created

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
        self.handshake.peer, self.handshake.certificate_user = self.peer, self.certificate_user
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
        self.liveness.received()
        self.octets.received(len(data))
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
        self.liveness.resumed(self.proto.incomplete)

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
        handshake = self.handshake
        n = 0
        deadline = time.monotonic() + TURN_BUDGET_S
        try:
            while not self.closed and not handshake.held:
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
                        self._do(handshake.receive(ev))
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
        self.liveness.progress(proto.incomplete, proto.frames_parsed, self.reading_paused)
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

    def _do(self, actions: list[hs.Action]) -> None:
        """Carry out what the handshake decided (node/amqp/handshake.py)."""
        for act in actions:
            if type(act) is hs.Send:
                self._write(act.data)
            elif type(act) is hs.LoggedIn:
                self.session.user = act.user
                self.session.cancel_notify = self.handshake.announces("consumer_cancel_notify")
                if self.flow is not None:
                    self.flow.notify = self.handshake.announces("connection.blocked")
            elif type(act) is hs.Tuned:
                delay = self.liveness.start(act.heartbeat)
                if delay is not None and self._heartbeat_handle is None:
                    self._heartbeat_handle = self.node.loop.call_later(delay, self._heartbeat)
            elif type(act) is hs.Opened:
                self.opened = True
                self.node.propose(c.ConnectionOpen(self.key, act.vhost, act.user))
            elif type(act) is hs.Hold:
                self._hold(act.delay)
            elif type(act) is hs.Refuse:
                self.force_close(act.code, act.text, act.class_id, act.method_id)
            elif type(act) is hs.Closed:
                self._flush_writes()
                self._drain()
            elif type(act) is hs.Drop:
                self._drop()

    def _hold(self, delay: float) -> None:
        """Read nothing more (and parse nothing buffered: ``handshake.held``) for
        ``delay`` s, then let the handshake go on."""
        self.pause_reading(flow.LOGIN)

        def resume() -> None:
            self._auth_timer = None
            if self.closed:
                return
            self._do(self.handshake.resume())
            if not self.closed and not self.handshake.held:
                self.resume_reading(flow.LOGIN)
                self._process()  # frames the client pipelined behind its start-ok
            self._flush_writes()

        self._auth_timer = self.node.loop.call_later(delay, resume)

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

    # --- timeouts and heartbeats -----------------------------------------------------

    def check_timeouts(self, now: float) -> None:
        """Called about once a second: the handshake's and a stalled frame's deadlines
        (node/amqp/heartbeat.py)."""
        if self.closed:
            return
        expired = self.liveness.expired(now, self.opened, self.reading_paused)
        if expired is None:
            if self.session.channels:
                self.session.check_acks(now, self._oldest_unacked)
            return
        if expired.handshake:
            log.info("connection %s did not complete the AMQP handshake within %gs; "
                     "closing it", self.peer, expired.limit)
            self.node.metrics.handshake_timeouts += 1
            self._drop()
            return
        log.info("connection %s stalled inside a frame for %gs; closing it",
                 self.peer, expired.waited)
        self.node.metrics.frame_timeouts += 1
        with contextlib.suppress(Exception):
            self._write(self.proto.close_connection(
                FRAME_ERROR, f"FRAME_ERROR - no complete frame within {expired.limit:g}s"))
            self._flush_writes()
        self._drop()

    def _oldest_unacked(self, key: c.ChKey) -> tuple[int, int] | None:
        """The consumer timeout's view of channel ``key`` in the local replica: its oldest
        delivery awaiting an ack (tags are in delivery order) and the timeout in ms for
        it: its queue's x-consumer-timeout (or its policy's consumer-timeout), else
        --consumer-timeout (0: none)."""
        state = self.node.raft.state
        ch = state.channels.get(key)
        if ch is None or not ch.unacked:
            return None
        tag, entry = next(iter(ch.unacked.items()))
        q = entry[0]
        vh = state.vhosts.get(q.vhost)
        args = policies.effective_arguments(vh, q) if vh is not None else q.arguments
        return tag, consumer_timeout(args, self.cfg.consumer_timeout)

    def _heartbeat(self) -> None:
        beat = self.liveness.beat(self.reading_paused)
        if beat == MISSED:
            log.info("connection %s missed heartbeats; closing", self.peer)
            self._drop()
            return
        if beat == SEND:
            self._write(HEARTBEAT)
            self._flush_writes()
        self._heartbeat_handle = self.node.loop.call_later(self.liveness.interval / 2,
                                                           self._heartbeat)

    # --- effects ---------------------------------------------------------------------

    def run_effect(self, ef: e.Effect) -> None:
        try:
            self.session.run_effect(ef)
        except AMQPConnectionError as err:  # the machine closed the connection
            self.force_close(err.reply_code, err.reply_text, err.class_id, err.method_id)
        if len(self._out) >= FLUSH_EVERY:
            self._flush_writes()

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
            self.octets.sent(self._out)
            self.liveness.sent()
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
