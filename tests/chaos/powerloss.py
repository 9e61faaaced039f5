"""Simulated power loss: what a node's data directory would hold after the machine lost power.

RaftMQ's journal (pysyncobj's ``raft.journal``) is written through an mmap and made durable by
``fdatasync`` (``cluster/raft/node.py``, ``node/broker.py``). Whatever was written after the last
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
after killing the node. Model ``strict`` also treats the other files (``raft.journal.meta``: Raft
term and vote; ``raft.dump``: the snapshot) as lost unless the tracker saw them fsynced (or
fsynced under a temporary name and renamed); model ``journal`` (the default) keeps them as they
are.

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
# A directory for the tracker's own files (shadow journal, synced-files list, apply log) instead
# of the data directory: for a data directory on a small file system that the full-disk fault
# fills, where the harness's writes must not be what fails.
SIDE_DIR_ENV = "RAFTMQ_CHAOS_SIDE_DIR"


def side_dir(data_dir: str) -> str:
    """Where this process keeps the tracker's files for ``data_dir``."""
    return os.environ.get(SIDE_DIR_ENV) or data_dir


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
    shadow = os.path.join(side_dir(os.path.dirname(path)), SHADOW)
    fd = os.open(shadow, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for start, data in chunks:
            os.pwrite(fd, data, start)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


_synced_paths: set[str] = set()  # files fsynced in this process (a snapshot's temporary file)


def _note_synced(path: str) -> None:
    name = os.path.basename(path)
    if name in UNSYNCED_FILES:
        with open(os.path.join(side_dir(os.path.dirname(path)), SYNCED_FILES), "a") as f:
            f.write(name + "\n")


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
        _synced_paths.add(path)
        _note_synced(path)

    return sync


def _wrap_rename(real: Callable[..., None]) -> Callable[..., None]:
    """A file fsynced and then renamed is durable under its new name (the directory is fsynced
    too; the model does not track directories)."""
    def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        real(src, dst, *args, **kwargs)
        source = os.path.realpath(src) if isinstance(src, str) else ""
        if source in _synced_paths:
            _synced_paths.discard(source)
            _note_synced(os.path.realpath(dst))

    return rename


def install() -> None:
    """Hook pysyncobj's journal writes and ``os.fdatasync``/``os.fsync`` in this process."""
    from pysyncobj import journal

    # Imported before anything here wraps ResizableFile.write: the patches read the private
    # names pysyncobj's own methods use when they are imported (check_version).
    from cluster.raft import patches as pysyncobj_patches

    resizable: Any = journal.ResizableFile
    original_init = resizable.__init__

    def init(self: Any, fileName: str, *args: Any, **kwargs: Any) -> None:  # noqa: N803
        original_init(self, fileName, *args, **kwargs)
        path = os.path.realpath(fileName)
        self._chaos_path = path
        if os.path.basename(path) == JOURNAL:
            with _tracker.lock:
                _tracker.fresh.add(path)

    def track_writes() -> None:
        """Wrap whatever ``ResizableFile.write`` is now (once)."""
        original_write = resizable.write
        if getattr(original_write, "_chaos_tracked", False):
            return

        def write(self: Any, offset: int, values: bytes) -> None:
            original_write(self, offset, values)
            # Marked after the write: a capture in between reads it next time (pessimistic),
            # never takes the range before the bytes are there.
            _tracker.wrote(self._chaos_path, offset, len(values))

        write._chaos_tracked = True  # type: ignore[attr-defined]
        resizable.write = write

    resizable.__init__ = init
    track_writes()
    # The broker's own pysyncobj patches may *replace* ResizableFile.write when a replica is
    # built (a469ccc: blocks reserved before the mmap grows): wrap it again after them, or the
    # tracker would see no journal write and a power loss would cut the journal to nothing.
    broker_install = pysyncobj_patches.install

    def install_then_track() -> None:
        broker_install()
        track_writes()

    pysyncobj_patches.install = install_then_track
    setattr(os, "fdatasync", _wrap_sync(os.fdatasync))  # noqa: B010 - a test hook, typed loosely
    setattr(os, "fsync", _wrap_sync(os.fsync))  # noqa: B010
    setattr(os, "replace", _wrap_rename(os.replace))  # noqa: B010
    setattr(os, "rename", _wrap_rename(os.rename))  # noqa: B010


APPLIED = "raft.applied"  # the apply log: which (index, term) this node applied, per life


def install_apply_log(data_dir: str) -> None:
    """Record every log entry pysyncobj applies to the state machine, as ``A first last term``
    runs, every snapshot loaded as ``S last_applied``, and each process life as ``L pid``, in
    ``<data_dir>/raft.applied``. :func:`tests.chaos.checker.check_applied` compares the nodes:
    an index applied with different terms means a replica applied an entry that was not the
    committed one; an index applied twice in one life means its effects (deliveries, confirms)
    ran twice."""
    from pysyncobj import syncobj

    cls: Any = syncobj.SyncObj
    os.makedirs(side_dir(data_dir), exist_ok=True)
    out = open(os.path.join(side_dir(data_dir), APPLIED), "a", buffering=1)  # noqa: SIM115 - process-long
    out.write(f"L {os.getpid()}\n")
    apply_entries, load_dump = cls._SyncObj__applyLogEntries, cls._SyncObj__loadDumpFile

    def applied(self: Any) -> Any:
        before = self._SyncObj__raftLastApplied
        result = apply_entries(self)
        after = self._SyncObj__raftLastApplied
        if after > before:
            entries = self._SyncObj__getEntries(before + 1, after - before)
            run: list[int] = []  # first, last, term
            for _cmd, idx, term in entries:
                if run and term == run[2] and idx == run[1] + 1:
                    run[1] = idx
                else:
                    if run:
                        out.write(f"A {run[0]} {run[1]} {run[2]}\n")
                    run = [idx, idx, term]
            if run:
                out.write(f"A {run[0]} {run[1]} {run[2]}\n")
        return result

    def loaded(self: Any, clearJournal: bool) -> None:  # noqa: N803
        load_dump(self, clearJournal)
        out.write(f"S {self._SyncObj__raftLastApplied}\n")

    cls._SyncObj__applyLogEntries = applied
    cls._SyncObj__loadDumpFile = loaded


TRACE_ENV = "RAFTMQ_CHAOS_TRACE"  # a directory: trace pysyncobj's Raft decisions to <node>.trace


def install_trace(path: str) -> None:
    """Test-only diagnostics: append one line per Raft state change, per received Raft message
    (type, term, indexes) and per commit/apply step to ``path``."""
    import time as _time

    from pysyncobj import syncobj

    cls: Any = syncobj.SyncObj
    out = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def state(self: Any) -> str:
        st = self.getStatus()
        return (f"state={st.get('state')} term={st.get('raft_term')} "
                f"commit={st.get('commit_idx')} applied={st.get('last_applied')} "
                f"log={st.get('log_len')}/{self._SyncObj__getCurrentLogIndex()}")

    def line(text: str) -> None:
        out.write(f"{_time.strftime('%H:%M:%S')}.{int(_time.time() * 1000) % 1000:03d} {text}\n")

    set_state, on_message = cls._SyncObj__setState, cls._SyncObj__onMessageReceived
    apply_entries = cls._SyncObj__applyLogEntries

    def traced_set_state(self: Any, new: int) -> None:
        old = self._SyncObj__raftState
        set_state(self, new)
        if old != new:
            line(f"setState {old}->{new} {state(self)}")

    def traced_message(self: Any, node: Any, message: Any) -> None:
        if isinstance(message, dict):
            keys = ("term", "prevLogIdx", "prevLogTerm", "commit_index", "next_node_idx",
                    "success", "reset", "last_log_index", "last_log_term")
            info = " ".join(f"{k}={message[k]}" for k in keys if k in message)
            if "entries" in message:
                ents = message["entries"]
                info += f" entries={len(ents)}" + (f"[{ents[0][1]}..{ents[-1][1]}]" if ents else "")
            if message.get("serialized") is not None:
                info += " snapshot"
            line(f"recv {getattr(node, 'id', node)} {message.get('type')} {info} | {state(self)}")
        on_message(self, node, message)

    def traced_apply(self: Any) -> Any:
        before = self._SyncObj__raftLastApplied
        result = apply_entries(self)
        if self._SyncObj__raftLastApplied != before:
            line(f"applied {before + 1}..{self._SyncObj__raftLastApplied} {state(self)}")
        return result

    cls._SyncObj__setState = traced_set_state
    cls._SyncObj__onMessageReceived = traced_message
    cls._SyncObj__applyLogEntries = traced_apply


def cut_back(data_dir: Path, model: str = "journal", side: Path | None = None) -> dict[str, Any]:
    """Turn a killed node's data directory into what a power loss would have left; returns what
    was cut (for the report). The node must be dead. ``side``: where its tracker kept its files
    (``RAFTMQ_CHAOS_SIDE_DIR``; default the data directory)."""
    side = data_dir if side is None else side
    if model not in MODELS:
        raise ValueError(f"power loss model {model!r}: one of {MODELS}")
    journal, shadow = data_dir / JOURNAL, side / SHADOW
    report: dict[str, Any] = {"model": model, "before": last_entry(journal)}
    if shadow.exists():
        shutil.copyfile(shadow, journal)
    elif journal.exists():
        journal.unlink()  # never synced: gone
    report["after"] = last_entry(journal)
    if model == "strict":
        synced_file = side / SYNCED_FILES
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
    import sys

    argv = sys.argv
    install()
    if "--data-dir" in argv:
        install_apply_log(argv[argv.index("--data-dir") + 1])
    if os.environ.get(TRACE_ENV):
        node = argv[argv.index("--node-id") + 1] if "--node-id" in argv else "node"
        install_trace(os.path.join(os.environ[TRACE_ENV], f"{node}.trace"))
    from node.cli import main as node_main

    return node_main()


if __name__ == "__main__":
    raise SystemExit(main())
