"""Logins: SASL responses, and the per-peer delay that stops password guessing.

Without a delay a client can try thousands of passwords a second over parallel
connections. :class:`LoginThrottle` answers the login attempts of a key with
recent failures one at a time, each slot a little longer than the last
(doubling per consecutive failure, capped), so parallel connections gain
nothing: at the cap a key gets one answer per ``cap`` seconds, successes
included, so a guess that happens to be right is not revealed any faster. A
success clears the key's record; records are forgotten after a quiet period and
their number is bounded.

The node's key is (peer address, user name): guessing one user's password from
one address is slowed down, while other users logging in from the same address
(several applications behind one NAT, or on one host) are not held up by it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from protocol.fields import FieldError, decode_table


def credentials(mechanism: str, response: Any) -> tuple[str | None, str]:
    """(user, password) from a PLAIN or AMQPLAIN response; user None if unusable."""
    if isinstance(response, str):
        response = response.encode("utf-8", "surrogateescape")
    if not isinstance(response, bytes | bytearray):
        return None, ""
    raw = bytes(response)
    if mechanism == "PLAIN":
        parts = raw.split(b"\x00")
        if len(parts) != 3:
            return None, ""
        return parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
    if mechanism == "AMQPLAIN":
        try:
            # AMQPLAIN's response is a field table without its length prefix.
            table, _ = decode_table(len(raw).to_bytes(4, "big") + raw)
        except FieldError:
            return None, ""
        login, password = table.get("LOGIN"), table.get("PASSWORD")
        if not isinstance(login, str | bytes) or not isinstance(password, str | bytes | None):
            return None, ""
        return _text(login), _text(password or "")
    return None, ""


def _text(v: str | bytes) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


@dataclass
class _Peer:
    failures: int = 0
    next_slot: float = 0.0  # monotonic time before which no attempt is answered
    last: float = 0.0  # last failure


class LoginThrottle:
    def __init__(self, base: float = 0.1, cap: float = 2.0, max_wait: float = 5.0,
                 forget_after: float = 600.0, max_peers: int = 65536) -> None:
        """``base``: delay after a first failure, doubling per consecutive failure up to
        ``cap``. An attempt that would wait longer than ``max_wait`` for its slot is
        refused at once, unchecked. ``max_peers`` bounds the table (oldest out)."""
        self.base, self.cap, self.max_wait = base, cap, max_wait
        self.forget_after, self.max_peers = forget_after, max_peers
        self._peers: dict[str, _Peer] = {}

    def penalty(self, failures: int) -> float:
        return min(self.base * 2 ** min(failures - 1, 30), self.cap)

    def _get(self, peer: str, now: float) -> _Peer | None:
        p = self._peers.get(peer)
        if p is not None and now - p.last > self.forget_after:
            del self._peers[peer]
            return None
        return p

    def wait(self, peer: str, now: float) -> float | None:
        """Seconds to wait before checking this attempt's password; None: refuse it now
        (the peer has too many attempts queued)."""
        p = self._get(peer, now)
        if p is None:
            return 0.0
        start = max(now, p.next_slot)
        if start - now > self.max_wait:
            return None
        p.next_slot = start + self.penalty(p.failures)
        return start - now

    def failed(self, peer: str, now: float) -> float:
        """Record a failure; returns how long to hold the refusal back."""
        p = self._get(peer, now)
        if p is None:
            if len(self._peers) >= self.max_peers:
                del self._peers[next(iter(self._peers))]
            p = self._peers[peer] = _Peer()
        else:
            del self._peers[peer]  # move to the end: the table's order is by recency
            self._peers[peer] = p
        p.failures += 1
        p.last = now
        delay = self.penalty(p.failures)
        p.next_slot = max(p.next_slot, now + delay)
        return delay

    def succeeded(self, peer: str) -> None:
        self._peers.pop(peer, None)

    def failures(self, peer: str) -> int:
        p = self._peers.get(peer)
        return p.failures if p is not None else 0

    def __len__(self) -> int:
        return len(self._peers)


class RateLimitedLog:
    """At most ``per_second`` lines a second; what is held back is counted and
    reported with the next line that gets through (a flood of bad logins must not
    become a flood of log lines)."""

    def __init__(self, logger: logging.Logger, per_second: int = 20) -> None:
        self.logger, self.per_second = logger, per_second
        self._window = 0.0
        self._count = 0
        self._suppressed = 0

    def warning(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._window >= 1.0:
            self._window, self._count = now, 0
        if self._count >= self.per_second:
            self._suppressed += 1
            return
        self._count += 1
        if self._suppressed:
            msg += " (%d similar lines suppressed)"
            args = (*args, self._suppressed)
            self._suppressed = 0
        self.logger.warning(msg, *args)
