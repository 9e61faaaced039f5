"""Simulated power loss: what a node's data directory would hold after the machine lost power.

RaftMQ's journal (pysyncobj's ``raft.journal``) is written through an mmap and made durable by
``fdatasync`` (``cluster/raft.py``, ``node/broker.py``). Whatever was written after the last
completed ``fdatasync`` is only in the page cache: a kill -9 keeps it (the kernel still has it), a
power loss does not. The broker records nowhere how far its journal is synced, and the journal is
not append-only (pysyncobj rewrites its header on every append, moves it back in
``deleteEntriesFrom`` and rewrites every entry after compaction), so a synced *length* would
not even be enough.

So this module runs inside the node process, as a test-only wrapper (``python -m
tests.chaos.powerloss serve …``, the same arguments as ``python -m node serve``), without
touching broker code:

* every write pysyncobj makes to the journal (``ResizableFile.write``) marks a byte range dirty;
* when the node calls ``os.fdatasync``/``os.fsync`` on the journal, the dirty ranges are taken
  (and read back from the file) *before* the real call, and copied into ``raft.journal.synced``
  once it has returned: that file is exactly the journal as a power loss would leave it (the
  pessimistic case: writes made while the sync ran count as lost);
* a new life of the process starts by marking the whole journal dirty (its unsynced tail from
  the previous life is still only in the page cache).

The harness side (:func:`cut_back`) then replaces ``raft.journal`` by ``raft.journal.synced``
after killing the node. Model ``strict`` also treats the files RaftMQ never fsyncs
(``raft.journal.meta``: Raft term and vote; ``raft.dump``: the snapshot) as lost unless the tracker
saw them synced; model ``journal`` (the default) keeps them as they are.

What broker support would make this unnecessary: after each ``fdatasync`` of the journal, write
(and fsync) a small record of the synced state, e.g. ``raft.journal.synced`` holding the synced
image's (generation, length) where the generation changes whenever pysyncobj rewrites earlier
bytes — or simply keep this shadow copy behind a test flag.
"""

from __future__ import annotations

import os
import shutil
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

JOURNAL = "raft.journal"
SHADOW = "raft.journal.synced"
SYNCED_FILES = "raft.synced-files"  # names of other files the tracker saw fsynced (strict model)
UNSYNCED_FILES = ("raft.journal.meta", "raft.dump")
MODELS = ("journal", "strict")


class _Tracker:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.dirty: dict[str, list[tuple[int, int]]] = {}  # journal path -> [(start, end)]
        self.fresh: set[str] = set()  # journals whose whole content is dirty (new life)
        self.generation = 0
        # Captures not yet known durable, oldest first: (generation, path, size, chunks).
        self.pending: list[tuple[int, str, int, list[tuple[int, bytes]]]] = []

    def wrote(self, path: str, offset: int, size: int) -> None:
        with self.lock:
            ranges = self.dirty.setdefault(path, [])
            if ranges and ranges[-1][1] == offset:  # the common case: appending
                ranges[-1] = (ranges[-1][0], offset + size)
            else:
                ranges.append((offset, offset + size))

    def capture(self, fd: int, path: str) -> int:
        """Take the dirty ranges and read them back now, before the sync; returns the
        capture's generation."""
        with self.lock:
            whole = path in self.fresh
            self.fresh.discard(path)
            ranges = self.dirty.pop(path, [])
            size = os.fstat(fd).st_size
            if whole:
                ranges = [(0, size)]
            chunks = []
            for start, end in _merge(ranges):
                end = min(end, size)
                if end > start:
                    chunks.append((start, os.pread(fd, end - start, start)))
            self.generation += 1
            self.pending.append((self.generation, path, size, chunks))
            return self.generation

    def synced(self, generation: int) -> None:
        """The sync that took capture ``generation`` returned: that capture and every older one
        are durable (fdatasync waits for all the file's dirty pages, also those another sync
        is writing). Apply them to the shadow, oldest first."""
        with self.lock:
            done = [c for c in self.pending if c[0] <= generation]
            self.pending = [c for c in self.pending if c[0] > generation]
            for _, path, size, chunks in done:
                _commit(path, size, chunks)


_tracker = _Tracker()


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _path_of(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _commit(path: str, size: int, chunks: list[tuple[int, bytes]]) -> None:
    shadow = os.path.join(os.path.dirname(path), SHADOW)
    fd = os.open(shadow, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for start, data in chunks:
            os.pwrite(fd, data, start)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _wrap_sync(real: Callable[[int], None]) -> Callable[[int], None]:
    def sync(fd: int) -> None:
        path = _path_of(fd)
        name = os.path.basename(path)
        if name == JOURNAL:
            generation = _tracker.capture(fd, path)
            real(fd)
            _tracker.synced(generation)
            return
        real(fd)
        if name in UNSYNCED_FILES:
            with open(os.path.join(os.path.dirname(path), SYNCED_FILES), "a") as f:
                f.write(name + "\n")

    return sync


def install() -> None:
    """Hook pysyncobj's journal writes and ``os.fdatasync``/``os.fsync`` in this process."""
    from pysyncobj import journal

    resizable: Any = journal.ResizableFile
    original_init, original_write = resizable.__init__, resizable.write

    def init(self: Any, fileName: str, *args: Any, **kwargs: Any) -> None:  # noqa: N803
        original_init(self, fileName, *args, **kwargs)
        path = os.path.realpath(fileName)
        self._chaos_path = path
        if os.path.basename(path) == JOURNAL:
            with _tracker.lock:
                _tracker.fresh.add(path)

    def write(self: Any, offset: int, values: bytes) -> None:
        original_write(self, offset, values)
        # Marked after the write: a capture in between reads it next time (pessimistic), never
        # takes the range before the bytes are there.
        _tracker.wrote(self._chaos_path, offset, len(values))

    resizable.__init__ = init
    resizable.write = write
    os.fdatasync = _wrap_sync(os.fdatasync)
    os.fsync = _wrap_sync(os.fsync)


def cut_back(data_dir: Path, model: str = "journal") -> dict[str, Any]:
    """Turn a killed node's data directory into what a power loss would have left; returns what
    was cut (for the report). The node must be dead."""
    if model not in MODELS:
        raise ValueError(f"power loss model {model!r}: one of {MODELS}")
    journal, shadow = data_dir / JOURNAL, data_dir / SHADOW
    report: dict[str, Any] = {"model": model, "before": last_entry(journal)}
    if shadow.exists():
        shutil.copyfile(shadow, journal)
    elif journal.exists():
        journal.unlink()  # never synced: gone
    report["after"] = last_entry(journal)
    if model == "strict":
        synced_file = data_dir / SYNCED_FILES
        synced = set(synced_file.read_text().split()) if synced_file.exists() else set()
        for name in UNSYNCED_FILES:
            if name not in synced and (data_dir / name).exists():
                (data_dir / name).unlink()
                report.setdefault("removed", []).append(name)
    return report


def journal_entries(path: Path) -> list[tuple[int, int]]:
    """(index, term) of every entry of a pysyncobj journal file ([] if there is none)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    if len(data) < 40:
        return []
    end = min(struct.unpack_from("<I", data, 36)[0], len(data))
    out, offset = [], 40
    while offset + 4 <= end:
        size = struct.unpack_from("<I", data, offset)[0]
        if size < 16 or offset + 8 + size > end:
            break
        out.append(struct.unpack_from("<QQ", data, offset + 4))
        offset += size + 8
    return out


def last_entry(path: Path) -> tuple[int, int] | None:
    """(index, term) of the journal's last entry, or None."""
    entries = journal_entries(path)
    return entries[-1] if entries else None


def main() -> int:
    install()
    from node.cli import main as node_main

    return node_main()


if __name__ == "__main__":
    raise SystemExit(main())
