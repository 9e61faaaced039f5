"""cluster/store.py: records on disk, the index that travels in snapshots, and when
segment files may go."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from cluster import store as S
from cluster.store import FileStore, MemoryStore, StoreError


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments of 1 KiB, a cache of 256 bytes: rollover and disk reads are exercised."""
    monkeypatch.setattr(S, "SEGMENT_MAX", 1024)
    monkeypatch.setattr(S, "CACHE_MAX", 256)


def fill(st: FileStore, ids: range, size: int = 100) -> None:
    for i in ids:
        st.put(i, "ex", f"rk{i}", b"\x00\x00", bytes([i % 256]) * size)


def segment_files(root: Path, st: FileStore) -> list[str]:
    return sorted(p.name for p in (root / st.generation).iterdir())


def test_records_read_back_from_cache_buffer_and_disk(tmp_path: Path, small: None) -> None:
    st = FileStore()
    st.attach(tmp_path, restored=False)
    fill(st, range(1, 31))
    assert st.read(30) == ("ex", "rk30", b"\x00\x00", bytes([30]) * 100)  # cache
    assert st.read(1) == ("ex", "rk1", b"\x00\x00", bytes([1]) * 100)  # disk
    st.flush()
    assert [st.read(i)[3][0] for i in range(1, 31)] == list(range(1, 31))
    assert len(segment_files(tmp_path, st)) == st.stats()["segments"] > 1
    with pytest.raises(StoreError):
        st.read(99)


def test_dead_segments_go_only_after_a_snapshot_taken_after_they_died(
        tmp_path: Path, small: None) -> None:
    st = FileStore()
    st.attach(tmp_path, restored=False)
    fill(st, range(1, 31))
    st.flush()
    before = segment_files(tmp_path, st)
    for i in range(1, 11):  # the first segment's messages (9 a segment at 118 bytes)
        st.release(i)
    st.snapshot_done(True)  # a snapshot that started before they died: nothing goes
    assert segment_files(tmp_path, st) == before
    st.before_snapshot()
    st.snapshot_done(False)  # failed: still kept, tried again with the next one
    assert segment_files(tmp_path, st) == before
    st.before_snapshot()
    st.snapshot_done(True)
    assert segment_files(tmp_path, st) == before[1:]
    assert st.read(5)[1] == "rk5"  # readable (open file) until collect
    st.collect()
    with pytest.raises(StoreError):
        st.read(5)
    assert st.read(11)[1] == "rk11"


def test_shared_messages_live_until_the_last_reference(tmp_path: Path, small: None) -> None:
    st = FileStore()
    st.attach(tmp_path, restored=False)
    st.put(1, "", "q", b"", b"x" * 900, refs=3)
    fill(st, range(2, 12))
    for _ in range(2):
        st.release(1)
    st.before_snapshot()
    st.snapshot_done(True)
    st.collect()
    assert st.read(1)[3] == b"x" * 900
    st.release(1)
    st.before_snapshot()
    st.snapshot_done(True)
    st.collect()
    with pytest.raises(StoreError):
        st.read(1)


def test_restore_cuts_back_to_the_snapshot_and_drops_what_it_does_not_know(
        tmp_path: Path, small: None) -> None:
    st = FileStore()
    st.attach(tmp_path, restored=False)
    fill(st, range(1, 20))
    st.before_snapshot()
    snap = pickle.dumps(st)  # what the forked writer pickles (after an fsync)
    st.snapshot_done(True)
    fill(st, range(20, 40))  # after the snapshot: the log would write these again
    st.close()
    (tmp_path / "g-other").mkdir()  # another generation: not referred to, goes
    restored = pickle.loads(snap)
    restored.attach(tmp_path, restored=True)
    assert not (tmp_path / "g-other").exists()
    assert [restored.read(i)[1] for i in (1, 19)] == ["rk1", "rk19"]
    with pytest.raises(StoreError):
        restored.read(20)
    fill(restored, range(20, 40))  # replayed
    restored.flush()
    assert [restored.read(i)[3][0] for i in range(1, 40)] == list(range(1, 40))
    restored.close()


def test_restore_refuses_a_store_that_lost_what_the_snapshot_needs(tmp_path: Path,
                                                                   small: None) -> None:
    st = FileStore()
    st.attach(tmp_path, restored=False)
    fill(st, range(1, 20))
    st.before_snapshot()
    snap = pickle.dumps(st)
    st.close()
    first = sorted((tmp_path / st.generation).iterdir())[0]
    os.truncate(first, 10)
    with pytest.raises(StoreError, match="has 10 bytes; the snapshot needs"):
        pickle.loads(snap).attach(tmp_path, restored=True)
    first.unlink()
    with pytest.raises(StoreError, match="is missing"):
        pickle.loads(snap).attach(tmp_path, restored=True)


def test_memory_store_counts_references_strictly() -> None:
    st = MemoryStore()
    st.put(1, "", "q", b"", b"a", refs=2)
    st.release(1)
    st.release(1)
    assert st.read(1) == ("", "q", b"", b"a")  # until collect
    st.collect()
    with pytest.raises(StoreError):
        st.read(1)
    with pytest.raises(StoreError, match="once too often"):
        st.release(1)
    with pytest.raises(StoreError, match="stored already"):
        st.put(2, "", "q", b"", b"b")
        st.put(2, "", "q", b"", b"b")
