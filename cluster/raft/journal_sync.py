"""The Raft journal's fdatasync: on the loop's thread, or on a worker thread for a large
append on the leader.

A sync of a few KiB takes ~0.1 ms here and runs where it is asked for (a hand-off to a
thread costs more). A leader's sync of a multi-MB entry (a 20 MiB message) can take a
second on a busy shared disk, and on the loop's thread the leader sends no heartbeat for
that long: its followers stood for election while it was merely writing (CI: "an election
ran while the large entries replicated"). Such a sync runs on a worker thread while the
loop goes on serving clients and sending followers their entries (Raft lets a leader write
its log in parallel with replicating it); the leader does not tick, and so commits nothing,
until it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable

from cluster.raft import patches

# A leader's appends since its last sync from this size on are synced on a worker thread.
BACKGROUND_FROM = 1 << 20
# close() waits this long for a sync in progress (a dead disk: the process is stopping).
JOIN_S = 30.0


class JournalSync:
    """fdatasync of one journal file (``enabled`` False: every sync is a no-op)."""

    def __init__(self, path: str, enabled: bool) -> None:
        self._path = path
        self._enabled = enabled
        self._fd: int | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """A background sync has started and not yet reported back on the loop."""
        return self._thread is not None

    def now(self) -> None:
        """Sync on this thread: every write made before the call is durable after it."""
        fd = self._open()
        if fd is not None:
            _sync(fd, self._path)

    def start(self, loop: asyncio.AbstractEventLoop, done: Callable[[], None]) -> None:
        """Sync on a worker thread; ``done`` runs on ``loop`` afterwards. Writes made before
        the call are durable when ``done`` runs (later ones may or may not be)."""
        assert self._thread is None, "one background sync at a time"
        fd = self._open()

        def run() -> None:
            if fd is not None:
                _sync(fd, self._path)  # a failure stops the process (fail-stop)
            # RuntimeError: the loop closed meanwhile (the node is stopping)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(finished)

        def finished() -> None:
            self._thread = None
            done()

        self._thread = threading.Thread(target=run, name="raft-journal-sync", daemon=True)
        self._thread.start()

    def close(self) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(JOIN_S)
            self._thread = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int | None:
        if not self._enabled:
            return None
        if self._fd is None:
            try:
                self._fd = os.open(self._path, os.O_RDONLY)
            except FileNotFoundError:
                return None
        return self._fd


def _sync(fd: int, path: str) -> None:
    try:
        os.fdatasync(fd)
    except OSError as e:
        patches.stop_on_disk_error("fdatasync of", path, e)
