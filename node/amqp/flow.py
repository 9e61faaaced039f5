"""Flow control for one connection, both directions (uvicorn's FlowControl is the model).

* **Reading** pauses for reasons (the broker holding publishers back while a
  consumed queue backs up, a login held by the throttle, ...): the socket is
  read again only when no reason is left, whoever lifts theirs first.
* **Writing**: when the transport's buffer passes its high-water mark (a
  consumer that does not read), the node is told (``on_writable(False)``) so
  that deliveries to this connection stop at the source, in the state machine,
  instead of piling up here; they resume when the buffer drains below the
  low-water mark (``on_writable(True)``). Messages meanwhile stay in their
  queues, ready for other consumers. Past ``OUTPUT_MAX`` (replies to a client
  that keeps sending requests and reads nothing) its input is not read either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

# The transport's write buffer: pause deliveries above HIGH bytes, resume below LOW.
WRITE_HIGH = 1 << 20
WRITE_LOW = 256 << 10
# Above this much unsent output the client's input is not read either: its requests
# would only add replies (a client that sends and never reads cannot grow the buffer
# past this by more than one reply). Lifted when the buffer drains below WRITE_LOW.
OUTPUT_MAX = 8 << 20


class FlowControl:
    def __init__(self, transport: asyncio.Transport,
                 on_writable: Callable[[bool], None] = lambda writable: None) -> None:
        self._transport = transport
        self._on_writable = on_writable
        self._read_pauses: set[str] = set()
        self.write_paused = False
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)

    @property
    def reading_paused(self) -> bool:
        return bool(self._read_pauses)

    def pause_reading(self, reason: str) -> None:
        if not self._read_pauses and not self._transport.is_closing():
            self._transport.pause_reading()
        self._read_pauses.add(reason)

    def resume_reading(self, reason: str) -> bool:
        """Lift ``reason``; True if that resumed reading."""
        if reason not in self._read_pauses:
            return False
        self._read_pauses.discard(reason)
        if self._read_pauses:
            return False
        if not self._transport.is_closing():
            self._transport.resume_reading()
        return True

    def pause_writing(self) -> None:
        if not self.write_paused:
            self.write_paused = True
            self._on_writable(False)

    def resume_writing(self) -> bool:
        """True if reading resumed with it (it had stopped for OUTPUT_MAX)."""
        if self.write_paused:
            self.write_paused = False
            self._on_writable(True)
        return self.resume_reading("output")

    def wrote(self) -> None:
        """After a write: stop reading while the output is over OUTPUT_MAX."""
        if self.write_paused and "output" not in self._read_pauses \
                and self._transport.get_write_buffer_size() > OUTPUT_MAX:
            self.pause_reading("output")

    @property
    def buffered(self) -> int:
        """Bytes written and not yet taken by the kernel."""
        return self._transport.get_write_buffer_size()
