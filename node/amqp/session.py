"""The channels of one AMQP connection, without a socket.

A :class:`Session` turns what a client sends on its channels into commands for
the Raft log, and the effects applied entries address to those channels into
frames: method translation, publisher confirms (coalesced with ``multiple``),
transactions (a commit is one Raft entry), channel open/close bookkeeping. The
connection (node/amqp/connection.py) owns the socket, the handshake on channel 0,
heartbeats and flow control; tests drive a session with plain callables
(tests/node/test_session.py).
"""

from __future__ import annotations

import hmac
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pamqp import commands as spec

from cluster import commands as c
from cluster import effects as e
from cluster.machine import reply_to
from cluster.machine.features import NOACK_WINDOW
from cluster.records import Record
from node.amqp.stats import ChannelStats, Declared
from protocol.connection import ServerConnection
from protocol.constants import NOT_ALLOWED, NOT_IMPLEMENTED, PRECONDITION_FAILED
from protocol.errors import AMQPConnectionError, AMQPError, ChannelError
from protocol.events import AckReceived, MessagePublished, MethodReceived, NackReceived
from protocol.fields import REPLY_TO, USER_ID, FieldError, property_offset, short_property
from protocol.frames import Frames
from protocol.frames import ack as ack_frame
from protocol.frames import nack as nack_frame
from protocol.methods import build

# No-ack deliveries are reported written (c.Sent) in runs of at least this many: well
# under the machine's window per consumer, so the window never closes for want of it.
SENT_BATCH = NOACK_WINDOW // 4

# What one connection may hold uncommitted in transactions (tx.select, then publishes,
# acks and nacks without tx.commit), all its channels together: the buffer lives here
# until the commit, which proposes it as one Raft entry that every replica holds in
# memory. RabbitMQ has no such limit (its memory alarm is the bound); a transaction
# past it closes its channel with 406, as a message past max_message_size does.
TX_MAX_BYTES = 128 << 20  # message bodies and properties (RabbitMQ's max_message_size)
TX_MAX_COMMANDS = 65536
# Bytes one connection may send before its reading waits, once, until everything it
# sent so far is applied: so it is never more than this ahead of the cluster. A client
# pipelining publishes, basic.gets or declares faster than the cluster commits (or
# than a follower forwards to the leader) would otherwise grow Raft's in-flight
# entries without bound. The wait is one commit round trip per 16 MiB: nothing at
# full speed.
INPUT_WINDOW = 16 << 20
# Consumer timeout: a channel's delivery tags seen at each timeout check (with the time),
# at most this many kept (past it the newest mark moves: a timeout fires late, never early).
MARKS_MAX = 4096
_REPLY_QUEUE = reply_to.PREFIX.encode()

Propose = Callable[[c.Command], None]


class SessionCounters(Protocol):
    """What a session counts (node/services/metrics.py exports them)."""

    published: int
    acked: int
    delivered: int
    confirmed: int
    channels_opened: int


class Counters:
    published = acked = delivered = confirmed = channels_opened = 0


class Channel:
    """Node-side channel state (the replicated part lives in the machine)."""

    __slots__ = ("stats", "number", "key", "confirm", "publish_seq", "confirm_upto", "acked_upto",
                 "unconfirmed", "early", "tx", "tx_commands", "tx_bytes", "closing",
                 "last_turn", "sent", "reply_tag", "reply_rk", "last_delivered", "marked", "marks")

    def __init__(self, number: int, key: c.ChKey) -> None:
        self.stats = ChannelStats()  # the management API's message_stats (node/amqp/stats.py)
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
        self.tx_bytes = 0  # bodies and properties in tx_commands
        self.closing = False
        self.last_turn = 0  # the proposer's turn in which this channel last proposed
        # no-ack deliveries written per consumer tag, not yet reported with Sent
        self.sent: dict[str, int] = {}
        # direct reply-to (cluster/machine/reply_to.py): the reply consumer's tag, and the
        # routing key replies to it use (its token holds a random key only this node
        # knows; the machine has its digest)
        self.reply_tag: str | None = None
        self.reply_rk = b""
        # consumer timeout: the last delivery tag written that waits for an ack, and the
        # (tag, time) of the checks that saw it grow (check_acks)
        self.last_delivered = 0
        self.marked = 0  # the highest tag in a mark so far
        self.marks: deque[tuple[int, float]] = deque()


def _no_store(msg_id: int) -> Record:
    raise LookupError(f"message {msg_id}: this session reads no store")


class Session:
    def __init__(self, conn: c.ConnKey, proto: ServerConnection, propose: Propose,
                 after_apply: Callable[[Callable[[], None]], None],
                 write: Callable[[bytes], None], counters: SessionCounters | None = None,
                 clock: Callable[[], float] = lambda: 0.0,
                 flush: Callable[[], None] = lambda: None,
                 may_open_channel: Callable[[str], str | None] = lambda user: None,
                 turn: Callable[[], int] = lambda: 0,
                 settled: Callable[[int], bool] = lambda turn: True,
                 hold_reading: Callable[[bool], None] = lambda hold: None,
                 write_parts: Callable[[Sequence[bytes | memoryview]], None] | None = None,
                 read: Callable[[int], Record] | None = None,
                 level: Callable[[], int] = lambda: c.LEVEL,
                 ) -> None:
        """``write`` buffers a frame; ``flush`` sends what is buffered (needed only for
        replies sent outside a dispatch, which flushes by itself). ``turn`` and
        ``settled`` are the proposer's (cluster/proposer.py): replies made here wait
        behind the effects of what the channel proposed before. ``hold_reading(True)``
        stops reading the socket until ``hold_reading(False)`` (INPUT_WINDOW).
        ``write_parts`` buffers the pieces of a big content (protocol.frames.JOIN_MAX)
        unjoined (default: joined, then ``write``). ``read``: a stored message's record
        by id (the replica's store), for Deliver and GetOk. ``level``: the cluster's enabled
        command level (direct reply-to from 4)."""
        self.conn = conn
        self.proto = proto
        self.propose = propose
        self.after_apply = after_apply
        self.write = write
        self.write_parts: Callable[[Sequence[bytes | memoryview]], None] = (
            write_parts or (lambda parts: write(b"".join(parts))))
        self.flush = flush
        self.may_open_channel = may_open_channel
        self.turn = turn
        self.settled = settled
        self.hold_reading = hold_reading
        self.read: Callable[[int], Record] = read or _no_store
        self.level = level
        self.max_consumers = 0  # per channel (--max-consumers-per-channel)
        self.counters: SessionCounters = counters or Counters()
        self.clock = clock  # when the event being handled arrived
        self.channels: dict[int, Channel] = {}
        self.user = ""
        self.cancel_notify = False
        self.last_publish = 0.0
        self.last_ack = 0.0
        self._generation = 0
        # False while the socket takes no more writes: no-ack deliveries are reported
        # written (freeing the consumer's window in the machine) only once it drains
        self.writable = True
        self.tx_bytes = 0  # uncommitted, all channels (TX_MAX_BYTES)
        self.tx_commands = 0  # likewise (TX_MAX_COMMANDS)
        self.unapplied = 0  # bytes read since reading last waited (INPUT_WINDOW)
        self.held = False  # reading held until they are

    # --- client -> node ---------------------------------------------------------------

    def on_event(self, ev: Any) -> None:
        """An event on a channel (not channel 0). Raises the protocol's errors."""
        t = type(ev)
        if t is MessagePublished:
            self._on_publish(ev)
        elif t is AckReceived:
            ch = self._open(ev.channel)
            if ch is not None:
                self._propose(ch, c.Ack(ch.key, ev.delivery_tag, ev.multiple))
                self.last_ack = self.clock()
                self.counters.acked += 1
                ch.stats.ack += 1
        elif t is NackReceived:
            ch = self._open(ev.channel)
            if ch is not None:
                self._propose(ch, c.Nack(ch.key, ev.delivery_tag, ev.multiple, ev.requeue,
                                         ev.reject))
        elif t is MethodReceived:
            self._on_method(ev.channel, ev.method)

    def _open(self, number: int) -> Channel | None:
        ch = self.channels.get(number)
        if ch is None or ch.closing:
            return None
        return ch

    def _propose(self, ch: Channel, cmd: c.Command, size: int = 0) -> None:
        """``size``: a publish's body and properties."""
        if ch.tx and isinstance(cmd, c.Publish | c.Ack | c.Nack):
            self._buffer_tx(ch, cmd, size)
            return
        self.propose(cmd)
        ch.last_turn = self.turn()

    def _buffer_tx(self, ch: Channel, cmd: c.Command, size: int) -> None:
        if self.tx_bytes + size > TX_MAX_BYTES or self.tx_commands >= TX_MAX_COMMANDS:
            raise ChannelError(ch.number, PRECONDITION_FAILED,
                               f"PRECONDITION_FAILED - uncommitted transactions of this "
                               f"connection hold more than {TX_MAX_COMMANDS} commands or "
                               f"{TX_MAX_BYTES} bytes", *_TX_METHOD[type(cmd)])
        ch.tx_commands.append(cmd)
        ch.tx_bytes += size
        self.tx_bytes += size
        self.tx_commands += 1

    def _take_tx(self, ch: Channel) -> list[c.Command]:
        """The channel's uncommitted commands, no longer counted against the limits."""
        cmds = ch.tx_commands
        self.tx_bytes -= ch.tx_bytes
        self.tx_commands -= len(cmds)
        ch.tx_commands, ch.tx_bytes = [], 0
        return cmds

    def received(self, size: int) -> None:
        """``size`` bytes read from the client (before they are parsed)."""
        self.unapplied += size
        if self.unapplied > INPUT_WINDOW and not self.held:
            self.held = True
            self.hold_reading(True)
            # what they carry joins this turn's entry (reading stops now); a content
            # still incomplete waits for the next read anyway
            self.after_apply(self._applied)

    def _applied(self) -> None:
        self.unapplied = 0
        if self.held:
            self.held = False
            self.hold_reading(False)

    def reply_in_order(self, ch: Channel, frame: bytes) -> None:
        """A reply made here, not by the machine: it waits until what the channel sent
        before has been applied and its effects (a basic.return, a get-ok) written, so
        the channel's replies keep the order of its requests, as the spec asks."""
        if self.settled(ch.last_turn):
            self.write(frame)
            return
        number = ch.number

        def reply() -> None:
            if self.channels.get(number) is ch and not ch.closing:
                self.write(frame)
                self.flush()

        self.after_apply(reply)

    def _on_publish(self, ev: MessagePublished) -> None:
        ch = self._open(ev.channel)
        if ch is None:
            return
        if ev.immediate:
            raise AMQPConnectionError(NOT_IMPLEMENTED, "immediate=true", 60, 40)
        props = ev.properties
        if len(props) >= 2 and props[1] & 0x10:  # the user-id flag (validated by the edge)
            try:
                uid = short_property(props, USER_ID)
            except FieldError:
                uid = None
            if uid is not None and uid != self.user:
                raise ChannelError(ch.number, PRECONDITION_FAILED,
                                   f"user_id property set to '{uid}' but authenticated user "
                                   f"was '{self.user}'", 60, 40)
        if len(props) >= 2 and props[0] & 0x02 and self.level() >= 4:  # the reply-to flag
            props = _reply_to(ch, props)
        seq = 0
        if ch.confirm:
            ch.publish_seq += 1
            seq = ch.publish_seq
            ch.unconfirmed.append(seq)
        self._propose(ch, c.Publish(ch.key, ev.exchange, ev.routing_key, ev.mandatory,
                                    props, ev.body, seq), len(ev.body) + len(props))
        self.last_publish = self.clock()
        self.counters.published += 1
        ch.stats.publish += 1

    def _on_method(self, number: int, m: Any) -> None:
        if isinstance(m, spec.Channel.Open):
            refused = self.may_open_channel(self.user)
            if refused is not None:
                raise AMQPConnectionError(NOT_ALLOWED, f"NOT_ALLOWED - {refused}", 20, 10)
            # The key carries a generation above the channel number, so effects
            # meant for a closed channel never reach a reopened one.
            self._generation += 1
            key = (self.conn[0], self.conn[1], number | (self._generation << 16))
            self.channels[number] = Channel(number, key)
            self.propose(c.ChannelOpen(key))
            self.write(self.proto.channel_open_ok(number))
            self.counters.channels_opened += 1
            return
        if isinstance(m, spec.Channel.CloseOk):
            gone = self.channels.pop(number, None)
            if gone is not None:
                self._take_tx(gone)
            return
        ch = self.channels.get(number)
        if ch is None:
            return
        if isinstance(m, spec.Channel.Close):
            self.channels.pop(number, None)
            self._take_tx(ch)
            self.propose(c.ChannelClose(ch.key))
            self.write(self.proto.channel_close_ok(number))
            return
        if ch.closing:
            return
        handler = _METHODS.get(type(m))
        if handler is None:
            raise AMQPConnectionError(NOT_IMPLEMENTED, f"NOT_IMPLEMENTED - {m.name}", *_ids(m))
        handler(self, ch, m)
        if handler not in _LOCAL:
            ch.last_turn = self.turn()

    def channel_error(self, number: int, err: AMQPError) -> None:
        """A soft error the protocol layer raised for channel ``number``."""
        ch = self.channels.get(number)
        if ch is None or ch.closing:
            return
        ch.closing = True
        self._take_tx(ch)
        self.propose(c.ChannelClose(ch.key))
        self.write(self.proto.close_channel(number, err.reply_code, err.reply_text,
                                            err.class_id, err.method_id))

    def check_acks(self, now: float,
                   oldest: Callable[[c.ChKey], tuple[int, int] | None]) -> None:
        """The consumer timeout, called every few tenths of a second with the monotonic
        ``now``: a channel whose oldest unacknowledged delivery (``oldest(key)``: its tag
        and the timeout in ms that applies to it, 0 for none; None when nothing waits for
        an ack) is older than the timeout is closed with 406, which requeues what it
        holds, as RabbitMQ's channel does. Only the oldest delivery is looked at; its age
        is measured from the first check that saw a tag as high as its own (so a timeout
        fires up to one check late, never early)."""
        for ch in list(self.channels.values()):
            if ch.closing:
                continue
            marks = ch.marks
            if ch.last_delivered > ch.marked:
                ch.marked = ch.last_delivered
                if len(marks) >= MARKS_MAX:
                    marks[-1] = (ch.marked, now)
                else:
                    marks.append((ch.marked, now))
            if not marks:
                continue
            found = oldest(ch.key)
            if found is None:
                marks.clear()  # every delivery written so far is settled
                continue
            tag, timeout_ms = found
            while marks and marks[0][0] < tag:
                marks.popleft()
            if marks and timeout_ms and (now - marks[0][1]) * 1000 > timeout_ms:
                self._ack_timed_out(ch, timeout_ms)

    def _ack_timed_out(self, ch: Channel, timeout_ms: int) -> None:
        ch.closing = True
        self._take_tx(ch)
        self.propose(c.ChannelClose(ch.key))
        self.write(self.proto.close_channel(ch.number, PRECONDITION_FAILED,
                                            ack_timeout_text(ch.number, timeout_ms), 0, 0))
        self.flush()

    # --- node -> client ---------------------------------------------------------------

    def run_effect(self, ef: e.Effect) -> None:
        handler = _EFFECTS.get(type(ef))
        if handler is not None:
            handler(self, ef)

    def effects_done(self) -> None:
        """End of one dispatch: send the confirms it accumulated (one ack with
        ``multiple`` per channel)."""
        for ch in self.channels.values():
            if ch.confirm_upto:
                self._send_confirm_acks(ch)
            if ch.sent and self.writable:
                self._report_sent(ch, SENT_BATCH)

    def _report_sent(self, ch: Channel, at_least: int) -> None:
        for tag, n in list(ch.sent.items()):
            if n >= at_least:
                self.propose(c.Sent(ch.key, tag, n))
                del ch.sent[tag]

    def set_writable(self, writable: bool) -> None:
        """The socket stopped (or resumed) taking writes."""
        self.writable = writable
        if writable:
            for ch in self.channels.values():
                if ch.sent:
                    self._report_sent(ch, 1)

    def _send_confirm_acks(self, ch: Channel) -> None:
        upto = ch.confirm_upto
        ch.confirm_upto = 0
        ch.acked_upto = upto
        self.write(ack_frame(ch.number, upto, True))

    def write_content(self, out: Frames) -> None:
        """A content's frames: one bytes, or a big body's pieces."""
        if type(out) is bytes:
            self.write(out)
        else:
            self.write_parts(out)  # type: ignore[arg-type]

    def live(self, key: c.ChKey) -> Channel | None:
        """The channel an effect is addressed to, if it is still the same and open."""
        ch = self.channels.get(key[2] & 0xFFFF)
        if ch is None or ch.key != key or ch.closing:
            return None
        return ch


def ack_timeout_text(channel: int, timeout_ms: int) -> str:
    """RabbitMQ 3.10's reason for a consumer timeout (checked side by side in
    tests/integration/test_consumer_timeout.py)."""
    return (f"PRECONDITION_FAILED - delivery acknowledgement on channel {channel} timed out. "
            f"Timeout value used: {timeout_ms} ms. This timeout value can be configured, see "
            "consumers doc guide to learn more")


def _reply_to(ch: Channel, props: bytes) -> bytes:
    """A publish with ``reply_to = amq.rabbitmq.reply-to``: the property rewritten to the
    channel's reply routing key (RabbitMQ's maybe_set_fast_reply_to); 406 if the channel
    has no reply consumer. Any other reply_to is left as it is."""
    try:
        pos = property_offset(props, REPLY_TO)
    except FieldError:
        return props  # refused as the publish is (the machine reads the properties)
    n = props[pos]
    if props[pos + 1:pos + 1 + n] != _REPLY_QUEUE:
        return props
    if ch.reply_tag is None:
        raise ChannelError(ch.number, PRECONDITION_FAILED,
                           "PRECONDITION_FAILED - fast reply consumer does not exist", 60, 40)
    rk = ch.reply_rk
    return b"".join((props[:pos], bytes((len(rk),)), rk, props[pos + 1 + n:]))


# The method a buffered command came from (for the error's class and method ids).
_TX_METHOD = {c.Publish: (60, 40), c.Ack: (60, 80), c.Nack: (60, 120)}


def _ids(m: Any) -> tuple[int, int]:
    return m.frame_id >> 16, m.frame_id & 0xFFFF


# --- channel methods ------------------------------------------------------------------


def _args(m: Any) -> dict[str, Any]:
    return m.arguments or {}


def _exchange_declare(s: Session, ch: Channel, m: Any) -> None:
    s.propose(c.ExchangeDeclare(ch.key, m.exchange, m.exchange_type, m.passive, m.durable,
                                m.auto_delete, m.internal, m.nowait, _args(m)))


def _exchange_delete(s: Session, ch: Channel, m: Any) -> None:
    s.propose(c.ExchangeDelete(ch.key, m.exchange, m.if_unused, m.nowait))


def _exchange_bind(s: Session, ch: Channel, m: Any) -> None:
    s.propose(c.ExchangeBind(ch.key, m.destination, m.source, m.routing_key, m.nowait, _args(m)))


def _exchange_unbind(s: Session, ch: Channel, m: Any) -> None:
    s.propose(c.ExchangeUnbind(ch.key, m.destination, m.source, m.routing_key, m.nowait,
                               _args(m)))


def _queue_declare(s: Session, ch: Channel, m: Any) -> None:
    s.propose(c.QueueDeclare(ch.key, m.queue, m.passive, m.durable, m.exclusive, m.auto_delete,
                             m.nowait, _args(m)))


def _queue_bind(s: Session, ch: Channel, m: Any) -> None:
    s.propose(c.QueueBind(ch.key, m.queue, m.exchange, m.routing_key, m.nowait, _args(m)))


def _queue_unbind(s: Session, ch: Channel, m: Any) -> None:
    s.propose(c.QueueUnbind(ch.key, m.queue, m.exchange, m.routing_key, _args(m)))


def _queue_purge(s: Session, ch: Channel, m: Any) -> None:
    s.propose(c.QueuePurge(ch.key, m.queue, m.nowait))


def _queue_delete(s: Session, ch: Channel, m: Any) -> None:
    s.propose(c.QueueDelete(ch.key, m.queue, m.if_unused, m.if_empty, m.nowait))


def _basic_qos(s: Session, ch: Channel, m: Any) -> None:
    if m.prefetch_size:
        raise AMQPConnectionError(NOT_IMPLEMENTED, f"prefetch_size!={m.prefetch_size}", 60, 10)
    s.propose(c.Qos(ch.key, m.prefetch_count, m.global_))


def _basic_consume(s: Session, ch: Channel, m: Any) -> None:
    if m.queue == reply_to.PREFIX and s.level() >= 4:
        _reply_consume(s, ch, m)
        return
    if ch.reply_tag is not None and m.consumer_tag == ch.reply_tag:
        raise AMQPConnectionError(NOT_ALLOWED, f"NOT_ALLOWED - attempt to reuse consumer tag "
                                               f"'{m.consumer_tag}'", 60, 20)
    s.propose(c.Consume(ch.key, m.queue, m.consumer_tag or "", m.no_ack, m.exclusive, m.nowait,
                        _args(m), s.max_consumers))


def _reply_consume(s: Session, ch: Channel, m: Any) -> None:
    """basic.consume of ``amq.rabbitmq.reply-to``: a key of 128 random bits for the
    channel's token, kept here; the machine gets its digest and checks the consumer
    (cluster/machine/reply_to.py consume: a refusal closes the channel or connection)."""
    tag = m.consumer_tag or "amq.ctag-" + secrets.token_urlsafe(16)
    key = secrets.token_urlsafe(16)
    rk = reply_to.encode(ch.key, key).encode()
    if len(rk) > 255:  # a node id too long for a short string
        raise ChannelError(ch.number, PRECONDITION_FAILED,
                           "PRECONDITION_FAILED - node id too long for direct reply-to", 60, 20)
    if ch.reply_tag is None:  # (a second one is refused by the machine)
        ch.reply_tag, ch.reply_rk = tag, rk
    s.propose(c.ReplyConsume(ch.key, tag, reply_to.digest(key), m.no_ack, m.nowait))


def _basic_cancel(s: Session, ch: Channel, m: Any) -> None:
    if ch.reply_tag is not None and m.consumer_tag == ch.reply_tag:
        ch.reply_tag, ch.reply_rk = None, b""
        s.propose(c.ReplyCancel(ch.key, m.consumer_tag, m.nowait))
        return
    s.propose(c.Cancel(ch.key, m.consumer_tag or "", m.nowait))


def _basic_get(s: Session, ch: Channel, m: Any) -> None:
    s.propose(c.Get(ch.key, m.queue, m.no_ack))


def _basic_recover(s: Session, ch: Channel, m: Any) -> None:
    if not m.requeue:
        # RabbitMQ does not implement redelivery to the original consumer either.
        raise AMQPConnectionError(NOT_IMPLEMENTED, "NOT_IMPLEMENTED - requeue=false", 60, 110)
    s.propose(c.Recover(ch.key))


def _basic_recover_async(s: Session, ch: Channel, m: Any) -> None:
    s.propose(c.Recover(ch.key, nowait=True))


def _channel_flow(s: Session, ch: Channel, m: Any) -> None:
    s.propose(c.Flow(ch.key, m.active))


def _confirm_select(s: Session, ch: Channel, m: Any) -> None:
    if ch.tx:
        raise ChannelError(ch.number, PRECONDITION_FAILED,
                           "PRECONDITION_FAILED - cannot switch from tx to confirm mode", 85, 10)
    ch.confirm = True
    if not m.nowait:
        s.reply_in_order(ch, s.proto.send_method(ch.number, build(spec.Confirm.SelectOk)))


def _tx_select(s: Session, ch: Channel, m: Any) -> None:
    if ch.confirm:
        raise ChannelError(ch.number, PRECONDITION_FAILED,
                           "PRECONDITION_FAILED - cannot switch from confirm to tx mode", 90, 10)
    ch.tx = True
    s.reply_in_order(ch, s.proto.send_method(ch.number, build(spec.Tx.SelectOk)))


def _tx_commit(s: Session, ch: Channel, m: Any) -> None:
    if not ch.tx:
        raise ChannelError(ch.number, PRECONDITION_FAILED,
                           "PRECONDITION_FAILED - channel is not transactional", 90, 20)
    # The whole transaction goes into one Raft entry: applied atomically.
    for cmd in s._take_tx(ch):
        s.propose(cmd)
    number = ch.number

    def reply() -> None:
        if s.channels.get(number) is ch and not ch.closing:
            s.write(s.proto.send_method(number, build(spec.Tx.CommitOk)))
            s.flush()

    s.after_apply(reply)


def _tx_rollback(s: Session, ch: Channel, m: Any) -> None:
    if not ch.tx:
        raise ChannelError(ch.number, PRECONDITION_FAILED,
                           "PRECONDITION_FAILED - channel is not transactional", 90, 30)
    s._take_tx(ch)
    s.reply_in_order(ch, s.proto.send_method(ch.number, build(spec.Tx.RollbackOk)))


def _ignore(s: Session, ch: Channel, m: Any) -> None:
    """channel.flow-ok, basic.cancel-ok: answers to our own flow / cancel."""


_METHODS: dict[type, Callable[[Session, Channel, Any], None]] = {
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
    spec.Channel.FlowOk: _ignore,
    spec.Confirm.Select: _confirm_select,
    spec.Tx.Select: _tx_select,
    spec.Tx.Commit: _tx_commit,
    spec.Tx.Rollback: _tx_rollback,
    spec.Basic.CancelOk: _ignore,
}
# Handlers that propose nothing (their replies go through reply_in_order).
_LOCAL = frozenset({_confirm_select, _tx_select, _tx_rollback, _ignore})


# --- effects --------------------------------------------------------------------------


def _reply(method: type, fields: Callable[[Any], tuple[Any, ...]] = lambda ef: ()) -> Any:
    """An effect handler sending ``method`` with the values ``fields(effect)``."""

    def run(s: Session, ef: Any) -> None:
        ch = s.live(ef.ch)
        if ch is not None:
            s.write(s.proto.send_method(ch.number, build(method, *fields(ef))))

    return run


def _deliver(s: Session, ef: e.Deliver) -> None:
    ch = s.live(ef.ch)
    if ch is None:
        return  # the channel is closing: the machine requeues on ChannelClose
    exchange, routing_key, properties, body = s.read(ef.msg_id)
    s.write_content(s.proto.deliver(ch.number, ef.consumer_tag, ef.delivery_tag,
                                    ef.redelivered, exchange, routing_key, properties, body))
    s.counters.delivered += 1
    ch.stats.delivered(ef.no_ack, ef.redelivered)
    if ef.no_ack:
        ch.sent[ef.consumer_tag] = ch.sent.get(ef.consumer_tag, 0) + 1
    else:
        ch.last_delivered = ef.delivery_tag


def _reply_deliver(s: Session, ef: e.ReplyDeliver) -> None:
    """A direct reply-to reply: to the channel's reply consumer, if the routing key is
    its token (the key compared in constant time); dropped otherwise, as RabbitMQ does."""
    ch = s.live(ef.ch)
    if ch is None or ch.reply_tag is None:
        return
    if not hmac.compare_digest(ch.reply_rk, ef.routing_key.encode()):
        return
    s.write_content(s.proto.deliver(ch.number, ch.reply_tag, ef.delivery_tag, False,
                                    ef.exchange, ef.routing_key, ef.properties, ef.body))
    s.counters.delivered += 1
    ch.stats.delivered(True, False)


def _get_ok(s: Session, ef: e.GetOk) -> None:
    ch = s.live(ef.ch)
    if ch is None:
        return
    exchange, routing_key, properties, body = s.read(ef.msg_id)
    s.write_content(s.proto.get_ok(ch.number, ef.delivery_tag, ef.redelivered, exchange,
                                   routing_key, ef.message_count, properties, body))
    s.counters.delivered += 1
    ch.stats.got(ef.redelivered)
    ch.last_delivered = ef.delivery_tag  # (a no-ack get is never among the unacked)


def _return(s: Session, ef: e.Return) -> None:
    ch = s.live(ef.ch)
    if ch is None:
        return
    ch.stats.return_unroutable += 1
    if ch.confirm_upto:
        s._send_confirm_acks(ch)
    s.write_content(s.proto.basic_return(ch.number, ef.reply_code, ef.reply_text, ef.exchange,
                                         ef.routing_key, ef.properties, ef.body))


def _confirm(s: Session, ef: e.Confirm) -> None:
    ch = s.live(ef.ch)
    if ch is None or not ch.confirm:
        return
    pending = ch.unconfirmed
    seq = ef.seq
    if pending and pending[0] == seq:
        pending.popleft()
        while pending and pending[0] in ch.early:
            ch.early.discard(pending.popleft())
    elif pending and pending[0] < seq <= ch.publish_seq and seq not in ch.early:
        ch.early.add(seq)  # ahead of an earlier one: acked once the run is contiguous
    else:
        return  # a confirm seen twice (effects can repeat across a leader change)
    s.counters.confirmed += 1
    ch.stats.confirm += 1
    if not ef.ack:
        if ch.confirm_upto:
            s._send_confirm_acks(ch)
        s.write(nack_frame(ch.number, ef.seq, False))
    upto = pending[0] - 1 if pending else ch.publish_seq
    if upto > max(ch.acked_upto, ch.confirm_upto):
        ch.confirm_upto = upto


def _consumer_cancelled(s: Session, ef: e.ConsumerCancelled) -> None:
    ch = s.live(ef.ch)
    if ch is not None and s.cancel_notify:
        s.write(s.proto.send_method(ch.number, build(spec.Basic.Cancel, ef.consumer_tag, True)))


def _channel_error(s: Session, ef: e.ChannelError) -> None:
    ch = s.live(ef.ch)
    if ch is None:
        return
    ch.closing = True
    s._take_tx(ch)
    # The machine already closed the channel in the replicated state.
    s.write(s.proto.close_channel(ch.number, ef.reply_code, ef.reply_text, ef.class_id,
                                  ef.method_id))


def _connection_error(s: Session, ef: e.ConnectionError) -> None:
    raise AMQPConnectionError(ef.reply_code, ef.reply_text, ef.class_id, ef.method_id)


_reply_get_empty = _reply(spec.Basic.GetEmpty)
_reply_declare_ok = _reply(spec.Queue.DeclareOk,
                           lambda ef: (ef.queue, ef.message_count, ef.consumer_count))


def _get_empty(s: Session, ef: e.GetEmpty) -> None:
    ch = s.live(ef.ch)
    if ch is not None:
        ch.stats.get_empty += 1
    _reply_get_empty(s, ef)


def _queue_declare_ok(s: Session, ef: e.QueueDeclareOk) -> None:
    Declared.count(s.conn[0])  # the overview's churn_rates.queue_declared
    _reply_declare_ok(s, ef)


_EFFECTS: dict[type, Any] = {
    e.Deliver: _deliver,
    e.ReplyDeliver: _reply_deliver,
    e.Confirm: _confirm,
    e.GetOk: _get_ok,
    e.GetEmpty: _get_empty,
    e.Return: _return,
    e.ExchangeDeclareOk: _reply(spec.Exchange.DeclareOk),
    e.ExchangeDeleteOk: _reply(spec.Exchange.DeleteOk),
    e.ExchangeBindOk: _reply(spec.Exchange.BindOk),
    e.ExchangeUnbindOk: _reply(spec.Exchange.UnbindOk),
    e.QueueDeclareOk: _queue_declare_ok,
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
    e.ChannelError: _channel_error,
    e.ConnectionError: _connection_error,
}
