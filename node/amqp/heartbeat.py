"""Is the client still there? One connection's clocks, without a socket.

* **Heartbeats** (negotiated at tune-ok, the client's value wins): one is sent
  when nothing else was for half the interval; a client silent for two
  intervals has missed its heartbeats and is dropped (as RabbitMQ).
* **The handshake** must be done (connection.open) within
  ``--handshake-timeout`` (RabbitMQ: 10 s) of the socket's accept.
* **A frame** may not stall, unfinished, for longer than that either (with
  heartbeats: not longer than two intervals): otherwise idle, half-open and
  byte-a-second connections are held forever.

Time the node spends with the connection's reading paused (node/amqp/flow.py) is
its own, not the client's: neither a stall nor missed heartbeats while it lasts.
:class:`Liveness` only keeps the times and decides; the connection
(node/amqp/connection.py) keeps the timer and closes the socket
(tests/node/test_heartbeat.py drives it with a fake clock).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# What a heartbeat check (Liveness.beat) asks for.
SEND = "send"  # send a heartbeat frame
MISSED = "missed"  # the client missed its heartbeats: drop the socket


@dataclass(frozen=True, slots=True)
class Expired:
    """A deadline passed: ``handshake`` (not opened in time) or a stalled frame."""

    handshake: bool
    limit: float  # seconds allowed
    waited: float  # seconds it took so far


class Liveness:
    def __init__(self, handshake_timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.handshake_timeout = handshake_timeout
        self._clock = clock
        now = clock()
        self.created = now
        self.last_recv = now
        self.last_send = now
        self.interval = 0  # the negotiated heartbeat (s), 0: none
        # Since when an unfinished frame has made no progress (None: nothing pending).
        self.stall_since: float | None = None
        self._frames_seen = 0

    def received(self) -> None:
        """Bytes came in."""
        self.last_recv = self._clock()

    def sent(self) -> None:
        """Bytes went out."""
        self.last_send = self._clock()

    def resumed(self, incomplete: bool) -> None:
        """Reading resumed after our pause; ``incomplete``: a frame is half read."""
        now = self._clock()
        self.last_recv = max(self.last_recv, now)
        if incomplete:
            self.stall_since = now

    def progress(self, incomplete: bool, frames_parsed: int, paused: bool) -> None:
        """After input was handled: track an unfinished frame that does not move."""
        if incomplete and not paused:
            if self.stall_since is None or frames_parsed != self._frames_seen:
                self.stall_since = self.last_recv
        else:
            self.stall_since = None
        self._frames_seen = frames_parsed

    def start(self, interval: int) -> float | None:
        """tune-ok with ``interval``: the first :meth:`beat` is due in the returned
        seconds (None: no heartbeats, or they run already)."""
        if interval <= 0 or self.interval:
            return None
        self.interval = interval
        return interval / 2

    def beat(self, paused: bool) -> str | None:
        """The heartbeat timer (every ``interval / 2``): :data:`MISSED`, :data:`SEND` or
        None."""
        now = self._clock()
        if now - self.last_recv > 2 * self.interval and not paused:
            return MISSED
        if now - self.last_send >= self.interval / 2:
            return SEND
        return None

    def expired(self, now: float, opened: bool, paused: bool) -> Expired | None:
        """The handshake or a frame took too long (checked about once a second)."""
        limit = self.handshake_timeout
        if not opened:
            if now - self.created > limit:
                return Expired(True, limit, now - self.created)
            return None
        since = self.stall_since
        if since is None or paused:
            return None
        if self.interval:
            limit = max(limit, 2.0 * self.interval)
        if now - since > limit:
            return Expired(False, limit, now - since)
        return None
