"""The message store beside the replica, and pysyncobj's snapshots around it.

The machine keeps message ids, not bytes (cluster/machine/messages.py): the replica
(cluster/raft/node.py ``_Replica``) carries out on the store what each entry decided
(:meth:`Snapshots.run`), and the node reads a delivery's bytes through it. A snapshot holds
the store's index as the state's ``store`` (cluster/store.py ``with_store``); loading one
takes it back out (:meth:`Snapshots.adopt`). pysyncobj's serializer is hooked so that the
store follows snapshots: written out before one starts, its dead segments deleted once one
is on disk, its segments streamed to a follower after the snapshot file, and installed
beside a received one (two PATCHES rows, cluster/raft/patches.py).
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pysyncobj.config import SERIALIZER_STATE

from cluster import log_rules, machine, snapshot_stream
from cluster import store as stores
from cluster.raft import patches
from cluster.raft.patches import Internals
from cluster.store import FileStore, MemoryStore, new_generation

log = logging.getLogger(__name__)


class Snapshots:
    """The replica's message store (a FileStore under ``store_root``, or in memory) and
    the snapshot hooks that keep it and the snapshots in step."""

    def __init__(self, store_root: Path | None) -> None:
        self.store_root = store_root
        self.store: Any = MemoryStore()
        if store_root is not None:
            self.store = FileStore()
            self.store.attach(store_root, restored=False)

    def run(self, writes: list[Any]) -> None:
        """Carry out what an entry decided about records (State.writes); a disk error
        stops the node (the log holds them: a restart writes them again)."""
        try:
            stores.run(self.store, writes)
        except OSError as e:
            patches.stop_on_disk_error("writing to the message store in", str(self.store_root),
                                       e)

    def load(self, internals: Internals) -> Any:
        """The snapshot file, read as cluster/store.py's load_snapshot reads it (one from
        before the message store gives up the bytes its entries held)."""
        path = internals.conf.fullDumpFile
        if path is None or "deserialize" in vars(internals.serializer):
            return internals.serializer.deserialize()  # in memory, or read already
        with open(path, "rb") as f, gzip.GzipFile(fileobj=f) as g:
            return stores.load_snapshot(g)

    def adopt(self, state: Any) -> None:
        """A snapshot was loaded: take the store it carried, open the files its index
        refers to (cut back to what it recorded: the log after it writes the rest again),
        let go of the store the replica had before, and give the machine the headers it
        keeps that the snapshot lacked (machine.rebuild_headers)."""
        loaded = stores.take_store(state)
        closing = getattr(self.store, "close", None)
        if closing is not None and self.store is not loaded:
            closing()
        root = self.store_root
        if root is None:
            self.store = loaded if loaded is not None else MemoryStore()
        elif isinstance(loaded, FileStore):
            loaded.attach(root, restored=True)
            self.store = loaded
        else:
            # a snapshot from before the message store (or from a replica without one)
            migrated = FileStore()
            migrated.attach(root, restored=False)
            if loaded is not None:
                for msg_id, refs in sorted(loaded.live().items()):
                    exchange, routing_key, properties, body = loaded.read(msg_id)
                    migrated.put(msg_id, exchange, routing_key, properties, body, refs)
            migrated.flush()
            self.store = migrated
        machine.rebuild_headers(state, self.store.read)

    def hook_writes(self, internals: Internals) -> None:
        """Tell the message store when pysyncobj starts a snapshot (it writes out its
        buffer; the forked writer fsyncs the files the snapshot refers to) and when the
        snapshot is on disk (segments that died before it started can go)."""
        serializer = internals.serializer
        serialize, check = serializer.serialize, serializer.checkSerializing

        def serialize_hooked(data: Any, idx: Any) -> Any:
            st = self.store
            if not patches.serializer_busy(serializer):
                if isinstance(st, FileStore):
                    st.before_snapshot()
                fields = data[0]
                if isinstance(fields, dict) and "state" in fields:
                    fields["state"] = stores.with_store(fields["state"], st)
            return serialize(data, idx)

        def check_hooked() -> Any:
            status, idx = check()
            st = self.store
            if isinstance(st, FileStore) and status in (SERIALIZER_STATE.SUCCESS,
                                                        SERIALIZER_STATE.FAILED):
                st.snapshot_done(status == SERIALIZER_STATE.SUCCESS)
            return status, idx

        serializer.serialize = serialize_hooked
        serializer.checkSerializing = check_hooked
        self._hook_sending(internals)

    def _hook_sending(self, internals: Internals) -> None:
        """A snapshot goes to a follower followed by the store segments it refers to,
        streamed from disk (cluster/snapshot_stream.py)."""
        conf, serializer = internals.conf, internals.serializer
        outgoing: dict[Any, snapshot_stream.Outgoing] = {}
        check = serializer.checkSerializing

        def check_hooked() -> Any:
            status, idx = check()
            if status == SERIALIZER_STATE.SUCCESS:  # a newer snapshot: transfers start over
                for out in outgoing.values():
                    out.close()
                outgoing.clear()
            return status, idx

        def get_transmission_data(transmission_id: Any) -> Any:
            if patches.serializer_busy(serializer):
                return None
            out = outgoing.get(transmission_id)
            first = out is None
            if out is None:
                parts = [(snapshot_stream.SNAPSHOT, "snapshot", Path(conf.fullDumpFile),
                          os.path.getsize(conf.fullDumpFile))]
                store = self.store
                if isinstance(store, FileStore):
                    parts += [(snapshot_stream.SEGMENT, path.name, path, length)
                              for path, length in store.snapshot_files]
                try:
                    out = outgoing[transmission_id] = snapshot_stream.Outgoing(parts)
                except OSError:
                    log.exception("cannot open the snapshot to send it")
                    return None
            try:
                data = out.read(conf.logCompactionBatchSize)
            except (OSError, snapshot_stream.StreamError):
                log.exception("sending a snapshot failed")
                out.close()
                outgoing.pop(transmission_id, None)
                return False
            if out.done:
                outgoing.pop(transmission_id, None)
            return data, first, out.done

        serializer.checkSerializing = check_hooked
        serializer.getTransmissionData = get_transmission_data

    def hook_install(self, internals: Internals, read_once: Callable[[Any], None]) -> None:
        """Install a snapshot streamed by the leader (cluster/snapshot_stream.py): the
        snapshot file, then the store segments it refers to, each written as it arrives.

        On the last chunk, a snapshot that is not newer than what this replica applied is
        refused (:func:`~cluster.log_rules.snapshot_is_stale`; pysyncobj installed whatever
        it was sent). Otherwise the segments become a new store generation and the snapshot
        is rewritten to refer to it, then renamed into place (fsynced): a crash at any
        point leaves the old snapshot with its own store, or the new one with its own."""
        serializer = internals.serializer
        dump_path = Path(internals.conf.fullDumpFile)
        tmp_path = dump_path.with_name(dump_path.name + ".1.tmp")
        incoming_root = dump_path.parent / "store-incoming"
        state: dict[str, Any] = {"in": None}

        def discard() -> None:
            inc = state["in"]
            state["in"] = None
            if inc is not None:
                inc.close()
            shutil.rmtree(incoming_root, ignore_errors=True)
            tmp_path.unlink(missing_ok=True)

        def set_transmission_data(data: Any) -> bool:
            if data is None:
                return False
            chunk, first, last = data
            if first:
                discard()
                state["in"] = snapshot_stream.Incoming(tmp_path, incoming_root / new_generation())
            inc: snapshot_stream.Incoming | None = state["in"]
            if inc is None or inc.complete:
                return False  # the rest of a stream already installed or given up: a new one
                # starts with a first chunk
            try:
                inc.feed(chunk)
            except (OSError, snapshot_stream.StreamError):
                log.exception("receiving a snapshot failed")
                discard()
                return False
            if not last:
                return False
            if not inc.complete:
                log.error("a snapshot stream ended early")
                discard()
                return False
            return self._install_received(internals, inc, tmp_path, dump_path, discard,
                                          read_once)

        serializer.setTransmissionData = set_transmission_data

    def _install_received(self, internals: Internals, inc: Any, tmp_path: Path,
                          dump_path: Path, discard: Callable[[], None],
                          read_once: Callable[[Any], None]) -> bool:
        try:
            with open(tmp_path, "rb") as f, gzip.GzipFile(fileobj=f) as g:
                snapshot = stores.load_snapshot(g)
        except Exception:
            log.exception("a received snapshot does not load")
            discard()
            return False
        applied = internals.last_applied
        if log_rules.snapshot_is_stale(snapshot[1][1], applied):
            log.warning("ignoring a snapshot up to index %d: already applied up to %d",
                        snapshot[1][1], applied)
            discard()
            return False
        store = getattr(snapshot[0].get("state"), "store", None) if snapshot[0] else None
        if isinstance(store, FileStore) and self.store_root is not None:
            # the segments become a store generation of this node's own
            generation = inc.segment_dir.name
            self.store_root.mkdir(parents=True, exist_ok=True)
            os.replace(inc.segment_dir, self.store_root / generation)
            patches.fsync_path(str(self.store_root))
            store.generation = generation
            with open(tmp_path, "wb") as out, patches.fast_gzip.GzipFile(fileobj=out, mode="wb") as g:
                g.write(patches.dumps(snapshot))
        inc.close()
        patches.durable_replace(str(tmp_path), str(dump_path))
        shutil.rmtree(tmp_path.parent / "store-incoming", ignore_errors=True)
        read_once(snapshot)
        return True
