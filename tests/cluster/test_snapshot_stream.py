"""cluster/snapshot_stream.py: a snapshot and its store segments as one chunked stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.snapshot_stream import SEGMENT, SNAPSHOT, Incoming, Outgoing, StreamError


def parts(tmp_path: Path) -> list[tuple[int, str, Path, int]]:
    (tmp_path / "snap").write_bytes(b"S" * 1000)
    (tmp_path / "00000001.seg").write_bytes(bytes(range(256)) * 40)
    (tmp_path / "00000002.seg").write_bytes(b"grown after the snapshot" * 10)
    return [(SNAPSHOT, "snapshot", tmp_path / "snap", 1000),
            (SEGMENT, "00000001.seg", tmp_path / "00000001.seg", 256 * 40),
            (SEGMENT, "00000002.seg", tmp_path / "00000002.seg", 24)]  # its recorded length


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_round_trip_in_any_chunk_size(tmp_path: Path, chunk: int) -> None:
    out = Outgoing(parts(tmp_path))
    inc = Incoming(tmp_path / "recv.snap", tmp_path / "recv")
    sent = 0
    while not out.done:
        data = out.read(chunk)
        assert len(data) <= chunk or chunk < 23  # a header may exceed a tiny chunk
        sent += len(data)
        inc.feed(data)
    assert inc.complete and inc.segments == ["00000001.seg", "00000002.seg"]
    assert (tmp_path / "recv.snap").read_bytes() == b"S" * 1000
    assert (tmp_path / "recv" / "00000001.seg").read_bytes() == bytes(range(256)) * 40
    assert (tmp_path / "recv" / "00000002.seg").read_bytes() == b"grown after the snapshot"


def test_a_file_deleted_while_sending_is_still_sent(tmp_path: Path) -> None:
    out = Outgoing(parts(tmp_path))
    (tmp_path / "00000001.seg").unlink()  # the store dropped it after a newer snapshot
    inc = Incoming(tmp_path / "recv.snap", tmp_path / "recv")
    while not out.done:
        inc.feed(out.read(3000))
    assert inc.complete


def test_garbage_and_hostile_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StreamError):
        Incoming(tmp_path / "s", tmp_path / "r").feed(b"GET / HTTP/1.1\r\n" * 3)
    from cluster.snapshot_stream import MAGIC, PART

    evil = PART.pack(MAGIC, SEGMENT, 9, 1) + b"../escape" + b"x"
    with pytest.raises(StreamError, match="bad segment name"):
        Incoming(tmp_path / "s", tmp_path / "r").feed(evil)
    assert not (tmp_path / "escape").exists()


def test_an_empty_last_chunk_after_the_end_is_fine(tmp_path: Path) -> None:
    """The sender's last chunk can be empty (the stream ended exactly at a chunk's end)."""
    out = Outgoing(parts(tmp_path))
    inc = Incoming(tmp_path / "recv.snap", tmp_path / "recv")
    while not out.done:
        inc.feed(out.read(4096))
    inc.feed(b"")
    assert inc.complete
    with pytest.raises(StreamError):
        inc.feed(b"more")
