"""Flow control, every decision of it in one place (uvicorn's FlowControl is the model).

Per connection, :class:`FlowControl`:

* **Reading** pauses for reasons (:data:`REASONS`): the socket is read again only
  when no reason is left, whoever lifts theirs first.
* **Writing**: when the transport's buffer passes its high-water mark (a
  consumer that does not read), the node is told (``on_writable(False)``) so
  that deliveries to this connection stop at the source, in the state machine,
  instead of piling up here; they resume when the buffer drains below the
  low-water mark (``on_writable(True)``). Messages meanwhile stay in their
  queues, ready for other consumers. Past ``OUTPUT_MAX`` (replies to a client
  that keeps sending requests and reads nothing) its input is not read either.
* **Alarms** (node/services/alarms.py): as RabbitMQ does, only a publisher is
  blocked (a connection that published, or is sending a content now): it is no
  longer read (its acks neither), and a client that announced the
  ``connection.blocked`` capability gets connection.blocked / unblocked.

Per node, :class:`Backlog`: publishers are paused while a consumed queue backs
up, with the scan of every queue kept to a share of the loop's time.

Nothing here touches a socket: the transport is anything with the few methods of
:class:`Transport`, the time comes from an injected clock
(tests/node/test_flow.py drives both with fakes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

from pamqp import commands as spec

# The transport's write buffer: pause deliveries above HIGH bytes, resume below LOW.
WRITE_HIGH = 1 << 20
WRITE_LOW = 256 << 10
# Above this much unsent output the client's input is not read either: its requests
# would only add replies (a client that sends and never reads cannot grow the buffer
# past this by more than one reply). Lifted when the buffer drains below WRITE_LOW.
OUTPUT_MAX = 8 << 20

# Why a connection's reading is paused (any of them holds it).
FLOW = "flow"  # Backlog: a consumed queue backs up
ALARM = "alarm"  # a publisher blocked by an alarm
LOGIN = "login"  # a login answer held back by the throttle (node/amqp/login.py)
PUBLISH = "publish"  # INPUT_WINDOW ahead of what is applied (node/amqp/session.py)
TURN = "turn"  # its loop turn's budget is spent (node/amqp/connection.py)
OUTPUT = "output"  # OUTPUT_MAX unsent
DRAIN = "drain"  # the node is draining (node/services/maintenance.py)
REASONS = (FLOW, ALARM, LOGIN, PUBLISH, TURN, OUTPUT, DRAIN)

# Backlog: acks stopped this long ago: consumers are stuck or gone, never block
# publishers on them.
ACKS_STALLED_S = 0.25
# It looks at every queue at most this often, and the scan takes at most
# 1/FLOW_SCAN_SHARE of the loop's time: a tenant with 100,000 queues makes it look less
# often, not stall everyone (the scan is linear in the queues).
FLOW_CHECK_S = 0.005
FLOW_SCAN_SHARE = 20
# Publishers are the connections that published within this many seconds.
RECENT_PUBLISH_S = 1.0

Notice = spec.Connection.Blocked | spec.Connection.Unblocked


class Transport(Protocol):
    """What flow control uses of an ``asyncio.Transport``."""

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...

    def get_write_buffer_size(self) -> int: ...

    def is_closing(self) -> bool: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class FlowControl:
    def __init__(self, transport: Transport,
                 on_writable: Callable[[bool], None] = lambda writable: None,
                 on_resumed: Callable[[], None] = lambda: None) -> None:
        """``on_resumed()``: reading resumed (the connection's timers restart)."""
        self._transport = transport
        self._on_writable = on_writable
        self._on_resumed = on_resumed
        self._read_pauses: set[str] = set()
        self.write_paused = False
        self.blocked = False  # by an alarm (reading paused, connection.blocked sent)
        self.notify = False  # the client announced the connection.blocked capability
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)

    @property
    def reading_paused(self) -> bool:
        return bool(self._read_pauses)

    def pause_reading(self, reason: str) -> None:
        if not self._read_pauses and not self._transport.is_closing():
            self._transport.pause_reading()
        self._read_pauses.add(reason)

    def resume_reading(self, reason: str) -> None:
        """Lift ``reason``; reading resumes if it was the last."""
        if reason not in self._read_pauses:
            return
        self._read_pauses.discard(reason)
        if self._read_pauses:
            return
        if not self._transport.is_closing():
            self._transport.resume_reading()
        self._on_resumed()

    def pause_writing(self) -> None:
        if not self.write_paused:
            self.write_paused = True
            self._on_writable(False)

    def resume_writing(self) -> None:
        if self.write_paused:
            self.write_paused = False
            self._on_writable(True)
        self.resume_reading(OUTPUT)  # if it had stopped for OUTPUT_MAX

    def wrote(self) -> None:
        """After a write: stop reading while the output is over OUTPUT_MAX."""
        if self.write_paused and OUTPUT not in self._read_pauses \
                and self._transport.get_write_buffer_size() > OUTPUT_MAX:
            self.pause_reading(OUTPUT)

    @property
    def buffered(self) -> int:
        """Bytes written and not yet taken by the kernel."""
        return self._transport.get_write_buffer_size()

    def alarm(self, reason: str | None, publisher: bool) -> Notice | None:
        """An alarm in the cluster (``reason``) or none any more; ``publisher``: the
        connection published, or is sending a content now (as rabbit_reader, blocked at
        its first content frame: many connections each sending one message of up to
        max_message_size cannot fill the memory the alarm protects). What to send the
        client, if anything."""
        if reason is None:
            if not self.blocked:
                return None
            self.blocked = False
            self.resume_reading(ALARM)
            return spec.Connection.Unblocked() if self.notify else None
        if self.blocked or not publisher:
            return None  # not a publisher (yet): blocked at its first content frame
        self.blocked = True
        self.pause_reading(ALARM)
        return spec.Connection.Blocked(reason) if self.notify else None


class Publisher(Protocol):
    """What :class:`Backlog` needs of a connection."""

    @property
    def last_publish(self) -> float:
        """When it last published (the clock's time), 0 if never."""

    def pause_reading(self, reason: str) -> None: ...

    def resume_reading(self, reason: str) -> None: ...


QueueStats = Iterable[tuple[str, str, int, int, int]]  # vhost, name, ready, unacked, consumers


class Backlog:
    """Pause reading from publishers while a consumed queue backs up.

    Without this, publishing outruns delivery on one core and end-to-end latency
    grows without bound (measured: seconds). Queues without consumers may grow
    freely, as in RabbitMQ, and so may queues whose consumers stopped
    acknowledging: pausing only helps while acks flow. Paused above ``high``
    messages ready, resumed at ``high // 2``."""

    def __init__(self, high: int, acked: Callable[[], int], queues: Callable[[], QueueStats],
                 publishers: Callable[[], Iterable[Publisher]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``acked()``: messages acknowledged so far (a counter); ``queues()``: every
        queue's stats (a scan, made only when it is due); ``publishers()``: the node's
        connections."""
        self.high = high  # 0: never
        self._acked = acked
        self._queues = queues
        self._publishers = publishers
        self._clock = clock
        self.paused: list[Publisher] = []
        self.every = FLOW_CHECK_S  # the interval between scans (the scan budget)
        self._checked = float("-inf")
        self._acked_seen = 0
        self._acked_at = 0.0

    def check(self) -> None:
        """Called on every tick; looks when due."""
        high = self.high
        now = self._clock()
        if not high or now - self._checked < self.every:
            return
        self._checked = now
        acked = self._acked()
        if acked != self._acked_seen:
            self._acked_seen, self._acked_at = acked, now
        worst = max((ready for _, _, ready, _, consumers in self._queues() if consumers),
                    default=0)
        self.every = max(FLOW_CHECK_S, FLOW_SCAN_SHARE * (self._clock() - now))
        if now - self._acked_at > ACKS_STALLED_S:
            worst = 0
        if not self.paused and worst > high:
            recent = now - RECENT_PUBLISH_S
            self.paused = [p for p in self._publishers() if p.last_publish > recent]
            for p in self.paused:
                p.pause_reading(FLOW)
        elif self.paused and worst <= high // 2:
            for p in self.paused:
                p.resume_reading(FLOW)
            self.paused = []
