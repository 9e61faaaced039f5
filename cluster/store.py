"""The message store: message bytes out of the heap (docs/storage.md).

The replicated state keeps an index entry per queued message; the exchange, routing
key, properties and body are written here when an entry is applied, and read back when
the message is delivered. Two implementations of one interface:

* :class:`MemoryStore` keeps records in a dict: the machine's tests, and a replica
  without a data directory.
* :class:`FileStore` appends records to segment files in a generation directory
  (``<root>/<generation>/00000001.seg``...), with a compact index (arrays, 16 bytes a
  message) that is pickled with the state into snapshots, and a small cache of the
  records written last.

The machine never calls a store: it writes what it decided to ``State.writes``
(cluster/records.py) and the replica carries that out here (:func:`run`) after each entry.
Both count references: a message routed to N queues is put once with ``refs=N`` and
released N times. A released record stays readable until :meth:`collect` (the node calls
it once the effects of what it applied are written), so an effect made while applying
can still read the message it delivers.
"""

from __future__ import annotations

import os
import pickle
import shutil
import time
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from cluster.records import (  # noqa: F401 - the record format, re-exported
    HEADER,
    MAX_BLOB,
    MAX_NAME,
    Copy,
    Record,
    RecordError,
    StoreError,
    Write,
    check,
    decode,
    encode,
)

SEGMENT_MAX = 64 << 20
CACHE_MAX = 16 << 20  # bytes of recently written records kept in memory
WRITE_BUFFER = 1 << 20  # written to the file when this much is buffered (and every tick)


class Store(Protocol):
    def put(self, msg_id: int, exchange: str, routing_key: str, properties: bytes,
            body: bytes, refs: int = 1) -> None: ...

    def read(self, msg_id: int) -> Record: ...

    def release(self, msg_id: int) -> None: ...

    def collect(self) -> None: ...

    def flush(self) -> None: ...


def run(store: Store, writes: list[Write]) -> None:
    """Carry out what applying decided (``State.writes``, cluster/records.py), in order."""
    put, release = store.put, store.release
    for w in writes:
        if type(w) is int:
            release(w)
        elif type(w) is tuple:
            put(*w)
        else:
            assert isinstance(w, Copy)
            body = store.read(w.source)[3]
            put(w.msg_id, w.exchange, w.routing_key, w.properties, body, w.refs)


# --- in memory ---------------------------------------------------------------------------


class MemoryStore:
    """Records in a dict; strict about references (a release too many raises), which
    is what the machine's property tests rely on."""

    def __init__(self) -> None:
        self.records: dict[int, Record] = {}
        self.refs: dict[int, int] = {}
        self._released: list[int] = []

    def put(self, msg_id: int, exchange: str, routing_key: str, properties: bytes,
            body: bytes, refs: int = 1) -> None:
        if msg_id in self.refs:
            raise StoreError(f"message {msg_id} is stored already")
        check(exchange, routing_key, properties, body)  # refused as FileStore refuses it
        self.records[msg_id] = (exchange, routing_key, properties, body)
        self.refs[msg_id] = refs

    def read(self, msg_id: int) -> Record:
        try:
            return self.records[msg_id]
        except KeyError:
            raise StoreError(f"message {msg_id} is not in the store") from None

    def release(self, msg_id: int) -> None:
        n = self.refs.get(msg_id, 0)
        if n <= 0:
            raise StoreError(f"message {msg_id} released once too often")
        if n == 1:
            del self.refs[msg_id]
            self._released.append(msg_id)
        else:
            self.refs[msg_id] = n - 1

    def live(self) -> dict[int, int]:
        """Message id -> references, for every message still referenced."""
        return dict(self.refs)

    def collect(self) -> None:
        for msg_id in self._released:
            if msg_id not in self.refs:
                self.records.pop(msg_id, None)
        self._released.clear()

    def flush(self) -> None:
        pass

    def __getstate__(self) -> dict[str, Any]:
        return {"records": {i: r for i, r in self.records.items() if i in self.refs},
                "refs": dict(self.refs), "_released": []}


# --- on disk -----------------------------------------------------------------------------


class _Segment:
    __slots__ = ("number", "length", "ids", "offs", "lens", "live", "fd", "gone")

    def __init__(self, number: int) -> None:
        self.number = number
        self.length = 0  # bytes written to it (buffered ones included)
        self.ids = array("q")
        self.offs = array("Q")
        self.lens = array("I")
        self.live = 0  # records still referenced
        self.fd: int | None = None
        self.gone = False  # unlinked; dropped from the index at the next collect

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.number, self.length, self.ids, self.offs, self.lens, self.live)

    def __setstate__(self, st: tuple[Any, ...]) -> None:
        self.number, self.length, self.ids, self.offs, self.lens, self.live = st
        self.fd = None
        self.gone = False


def _name(number: int) -> str:
    return f"{number:08d}.seg"


def new_generation() -> str:
    return f"g{time.time_ns():x}"


class FileStore:
    """Segments on disk, an index in memory. Not thread-safe: the event loop only."""

    def __init__(self, generation: str | None = None) -> None:
        self.generation = generation or new_generation()
        self.segments: list[_Segment] = []
        self._firsts: list[int] = []  # first message id of each segment, for bisect
        self.refs: dict[int, int] = {}  # references of messages routed to several queues
        self.dir: Path | None = None
        self._buf = bytearray()
        self._buf_at = 0  # offset in the active segment where the buffer starts
        self._cache: dict[int, Record] = {}
        # (id, encoded size) in the order written: the oldest goes first. Not the dict's
        # own order: taking a dict's first key again and again after deleting from its
        # front scans the deleted slots each time (measured: 17 µs a put, 120k entries).
        self._cache_order: deque[tuple[int, int]] = deque()
        self._cache_bytes = 0
        self._dead: list[_Segment] = []  # no live message; deleted after the next snapshot
        self._snapshotting: list[_Segment] = []
        self._gone: list[_Segment] = []
        # (path, length) of the segments the snapshot on disk refers to: what a follower
        # that installs it receives after it (cluster/snapshot_stream.py)
        self.snapshot_files: list[tuple[Path, int]] = []
        self._pending_files: list[tuple[Path, int]] = []

    # --- pickling (the index travels in snapshots; files and caches do not) ----------------

    def __getstate__(self) -> dict[str, Any]:
        # Runs in pysyncobj's forked snapshot writer: what the snapshot refers to must be
        # on disk before the snapshot is (the parent wrote the buffer out before forking).
        self.sync()
        dead = {id(s) for s in self._dead} | {id(s) for s in self._snapshotting}
        return {"generation": self.generation, "refs": self.refs,
                "segments": [s for s in self.segments if id(s) not in dead and not s.gone]}

    def __setstate__(self, st: dict[str, Any]) -> None:
        self.__init__(st["generation"])  # type: ignore[misc]
        self.refs = st["refs"]
        self.segments = st["segments"]
        self._firsts = [s.ids[0] if s.ids else -1 for s in self.segments]

    # --- files ------------------------------------------------------------------------------

    def attach(self, root: Path, *, restored: bool) -> None:
        """Open the generation's files under ``root``. ``restored``: this index comes from a
        snapshot: its segments must be there (at least as long as recorded), the last one
        is cut back to its recorded length, and files it does not know are deleted (also
        other generations). Otherwise this is a new, empty store that deletes nothing (a
        snapshot may still be loaded)."""
        self.dir = root / self.generation
        self.dir.mkdir(parents=True, exist_ok=True)
        if not restored:
            return
        known = {_name(s.number) for s in self.segments}
        for seg in self.segments:
            path = self.dir / _name(seg.number)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise StoreError(f"store segment {path} is missing; the snapshot needs "
                                 f"{seg.length} bytes of it") from None
            if size < seg.length:
                raise StoreError(f"store segment {path} has {size} bytes; the snapshot "
                                 f"needs {seg.length}")
            seg.fd = os.open(path, os.O_RDWR)
            if size > seg.length:
                os.ftruncate(seg.fd, seg.length)  # records after the snapshot: replayed
        for path in self.dir.iterdir():
            if path.name not in known:
                path.unlink()
        for other in root.iterdir():
            if other.is_dir() and other.name != self.generation:
                shutil.rmtree(other, ignore_errors=True)
        if self.segments and self.segments[-1].fd is not None:
            self._buf_at = self.segments[-1].length
        self.snapshot_files = list(self.files())

    def close(self) -> None:
        self.flush()
        for seg in self.segments + self._gone:
            if seg.fd is not None:
                os.close(seg.fd)
                seg.fd = None

    def _active(self, size: int) -> _Segment:
        segs = self.segments
        if segs and (segs[-1].length + size <= SEGMENT_MAX or not segs[-1].ids):
            return segs[-1]
        self.flush()
        if segs and segs[-1].live == 0:
            self._dead.append(segs[-1])
        assert self.dir is not None, "store not attached"
        number = max([s.number for s in segs] + [self._max_on_disk()]) + 1
        seg = _Segment(number)
        seg.fd = os.open(self.dir / _name(number), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        segs.append(seg)
        self._firsts.append(-1)
        self._buf_at = 0
        return seg

    def _max_on_disk(self) -> int:
        assert self.dir is not None
        numbers = [int(p.stem) for p in self.dir.glob("*.seg") if p.stem.isdigit()]
        return max(numbers, default=0)

    def flush(self) -> None:
        """Write buffered records to the active segment's file (no fsync: the Raft log
        holds them; a snapshot syncs what it refers to)."""
        if not self._buf:
            return
        seg = self.segments[-1]
        assert seg.fd is not None
        view = memoryview(self._buf)
        at = self._buf_at
        while view:
            n = os.pwrite(seg.fd, view, at)
            view = view[n:]
            at += n
        view.release()
        self._buf_at = at
        self._buf.clear()

    def sync(self) -> None:
        """fsync every segment and the directory."""
        for seg in self.segments:
            if seg.fd is not None and not seg.gone:
                os.fsync(seg.fd)
        if self.dir is not None:
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # --- records ------------------------------------------------------------------------------

    def put(self, msg_id: int, exchange: str, routing_key: str, properties: bytes,
            body: bytes, refs: int = 1) -> None:
        data = encode(msg_id, exchange, routing_key, properties, body)
        seg = self._active(len(data))
        if not seg.ids:
            self._firsts[-1] = msg_id
        seg.ids.append(msg_id)
        seg.offs.append(seg.length)
        seg.lens.append(len(data))
        seg.length += len(data)
        seg.live += 1
        self._buf += data
        if refs > 1:
            self.refs[msg_id] = refs
        if len(body) <= CACHE_MAX // 8:
            self._cache[msg_id] = (exchange, routing_key, properties, body)
            self._cache_order.append((msg_id, len(data)))
            self._cache_bytes += len(data)
            while self._cache_bytes > CACHE_MAX:
                old, size = self._cache_order.popleft()
                del self._cache[old]
                self._cache_bytes -= size
        if len(self._buf) >= WRITE_BUFFER:
            self.flush()

    def _locate(self, msg_id: int) -> tuple[_Segment, int]:
        i = bisect_right(self._firsts, msg_id) - 1
        if i >= 0:
            seg = self.segments[i]
            j = bisect_left(seg.ids, msg_id)
            if j < len(seg.ids) and seg.ids[j] == msg_id:
                return seg, j
        raise StoreError(f"message {msg_id} is not in the store")

    def read(self, msg_id: int) -> Record:
        rec = self._cache.get(msg_id)
        if rec is not None:
            return rec
        seg, j = self._locate(msg_id)
        off, n = seg.offs[j], seg.lens[j]
        if seg is self.segments[-1] and off >= self._buf_at:
            start = off - self._buf_at
            return decode(memoryview(self._buf)[start:start + n], msg_id)
        assert seg.fd is not None
        data = os.pread(seg.fd, n, off)
        if len(data) != n:
            raise StoreError(f"message {msg_id}: {len(data)} of {n} bytes in segment "
                             f"{seg.number}")
        return decode(data, msg_id)

    def release(self, msg_id: int) -> None:
        n = self.refs.get(msg_id)
        if n is not None:
            if n > 1:
                self.refs[msg_id] = n - 1
                return
            del self.refs[msg_id]
        i = bisect_right(self._firsts, msg_id) - 1
        if i < 0:
            raise StoreError(f"message {msg_id} is not in the store")
        seg = self.segments[i]
        seg.live -= 1
        if seg.live == 0 and seg is not self.segments[-1]:
            self._dead.append(seg)

    # --- snapshots and space --------------------------------------------------------------------

    def before_snapshot(self) -> None:
        """The parent, just before pysyncobj forks its snapshot writer: segments dead by now
        may be deleted once that snapshot is on disk."""
        self.flush()
        self._snapshotting = self._dead
        self._dead = []
        if self.dir is not None:
            self._pending_files = list(self.files())

    def snapshot_done(self, ok: bool) -> None:
        """The snapshot written since :meth:`before_snapshot` is on disk (``ok``) or failed."""
        done, self._snapshotting = self._snapshotting, []
        if not ok:
            self._dead = done + self._dead
            return
        self.snapshot_files = self._pending_files
        assert self.dir is not None
        for seg in done:
            if seg.live == 0 and not seg.gone:
                (self.dir / _name(seg.number)).unlink(missing_ok=True)
                seg.gone = True
                self._gone.append(seg)
        if self.dir.parent.is_dir():
            for other in self.dir.parent.iterdir():
                if other.is_dir() and other.name != self.generation:
                    shutil.rmtree(other, ignore_errors=True)

    def collect(self) -> None:
        """Forget deleted segments (their records may have been read until now)."""
        if not self._gone:
            return
        gone = {id(s) for s in self._gone}
        for seg in self._gone:
            if seg.fd is not None:
                os.close(seg.fd)
                seg.fd = None
        self._gone.clear()
        keep = [s for s in self.segments if id(s) not in gone]
        self.segments = keep
        self._firsts = [s.ids[0] if s.ids else -1 for s in keep]

    def files(self) -> Iterable[tuple[Path, int]]:
        """(path, length) of every segment the snapshot would refer to now."""
        assert self.dir is not None
        dead = {id(s) for s in self._dead} | {id(s) for s in self._snapshotting}
        for seg in self.segments:
            if id(seg) not in dead and not seg.gone:
                yield self.dir / _name(seg.number), seg.length

    def stats(self) -> dict[str, int]:
        return {"segments": len(self.segments), "live": sum(s.live for s in self.segments),
                "bytes": sum(s.length for s in self.segments),
                "cached": len(self._cache), "cache_bytes": self._cache_bytes}


# --- snapshots: the state and the store's index in one pickle ------------------------------
# The machine's State holds no store. A snapshot holds the state with the store (for a
# FileStore: its index) as the state's attribute ``store``, where releases that kept the
# store in the state read it: snapshots go both ways between releases in a rolling upgrade.


def with_store(state: Any, store: Any) -> Any:
    """A shallow copy of ``state`` that pickles with ``store`` as its ``store``."""
    shim = object.__new__(type(state))
    shim.__dict__.update(state.__dict__)
    shim.__dict__["store"] = store
    return shim


def take_store(state: Any) -> Any:
    """The store a loaded snapshot's state carried (None: it had none), taken out of it."""
    return state.__dict__.pop("store", None) if state is not None else None


def load_snapshot(file: Any) -> Any:
    """Unpickle a snapshot (pysyncobj's tuple). One written before the message store (its
    Msg entries held the bytes) gets them as a MemoryStore in its state's ``store``."""
    loader = _Loader(file)
    snapshot = loader.load()
    if loader.records:
        data = snapshot[0] if isinstance(snapshot, tuple) and snapshot else None
        state = data.get("state") if isinstance(data, dict) else None
        if state is not None:
            store = MemoryStore()
            for msg_id, (rec, refs) in sorted(loader.records.items()):
                store.records[msg_id] = rec
                store.refs[msg_id] = refs
            state.__dict__["store"] = store
    return snapshot


def _legacy_priority(properties: bytes) -> int:
    from protocol.fields import PRIORITY, FieldError, octet_property

    try:
        return int(octet_property(properties, PRIORITY) or 0) if properties[:1] and \
            properties[0] & 0x08 else 0
    except FieldError:
        return 0


class _Loader(pickle.Unpickler):
    """Unpickles Msg entries through a subclass that takes the bytes a snapshot from
    before the store kept in them (one reference per entry) and then becomes a Msg."""

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        from cluster.machine.state import Msg

        self.records: dict[int, tuple[Record, int]] = {}
        records = self.records

        class _OldMsg(Msg):
            __slots__ = ()

            def __setstate__(self, state: Any) -> None:
                values = state[1] if isinstance(state, tuple) else state
                if "body" in values:
                    values = dict(values)
                    rec = (values.pop("exchange"), values.pop("routing_key"),
                           values.pop("properties"), values.pop("body"))
                    values["size"] = len(rec[3])
                    values["priority"] = _legacy_priority(rec[2])
                    _, refs = records.get(values["id"], (rec, 0))
                    records[values["id"]] = (rec, refs + 1)
                Msg.__setstate__(self, values)
                self.__class__ = Msg  # type: ignore[assignment]  # same slots

        self._msg = _OldMsg

    def find_class(self, module: str, name: str) -> Any:
        if name == "Msg" and module == "cluster.machine.state":
            return self._msg
        return super().find_class(module, name)
