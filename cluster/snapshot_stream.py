"""A snapshot as it travels to a follower: the snapshot file, then the message-store
segments it refers to (docs/storage.md), as one byte stream cut into chunks.

pysyncobj sends a snapshot as chunks of one file. With message bodies in the store, the
snapshot file holds only their index; a follower also needs the segments. The leader
streams them after the snapshot file, each read from disk as it is sent (never held in
memory); the follower writes each part where it belongs as it arrives.

Framing: per part a header ``>4sBHQ`` (magic, kind, name length, content length), the
name, the content; a last header of kind END closes the stream.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

MAGIC = b"RMQ1"
PART = struct.Struct(">4sBHQ")
SNAPSHOT, SEGMENT, END = 1, 2, 0


class StreamError(ValueError):
    """The stream is not one this module wrote (or was cut short)."""


class Outgoing:
    """Reads ``parts`` ((kind, name, path, length)) into chunks of at most ``size`` bytes.
    Files are opened when the stream starts: one deleted meanwhile is still read."""

    def __init__(self, parts: list[tuple[int, str, Path, int]]) -> None:
        self._files: list[tuple[int, str, BinaryIO, int]] = []
        try:
            for kind, name, path, length in parts:
                self._files.append((kind, name, open(path, "rb"), length))  # noqa: SIM115
        except OSError:
            self.close()
            raise
        self._i = 0
        self._left = -1  # bytes of the current part's content still to send (-1: header)
        self.done = False

    def read(self, size: int) -> bytes:
        out = bytearray()
        while len(out) < size and not self.done:
            if self._i == len(self._files):
                out += PART.pack(MAGIC, END, 0, 0)
                self.done = True
                break
            kind, name, f, length = self._files[self._i]
            if self._left < 0:
                raw = name.encode()
                out += PART.pack(MAGIC, kind, len(raw), length) + raw
                self._left = length
            room = size - len(out)
            if room <= 0 and self._left:
                break  # the header filled this chunk (a header is never split)
            chunk = f.read(min(room, self._left)) if self._left else b""
            if self._left and not chunk:
                raise StreamError(f"{name} ended {self._left} bytes early")
            out += chunk
            self._left -= len(chunk)
            if self._left == 0:
                f.close()
                self._i += 1
                self._left = -1
        if self.done:
            self.close()
        return bytes(out)

    def close(self) -> None:
        for _, _, f, _ in self._files:
            f.close()


class Incoming:
    """Writes a stream's parts as they arrive: the snapshot to ``snapshot_path``, each
    segment into ``segment_dir``. ``complete`` once the END header is read."""

    def __init__(self, snapshot_path: Path, segment_dir: Path,
                 fsync: Callable[[int], None] = os.fsync) -> None:
        self.snapshot_path = snapshot_path
        self.segment_dir = segment_dir
        segment_dir.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._buf = bytearray()
        self._file: BinaryIO | None = None
        self._left = 0
        self.complete = False
        self.segments: list[str] = []

    def feed(self, data: bytes) -> None:
        if not data:
            # (the sender's last chunk is empty when the stream ended exactly at a chunk's
            # end: it only says "that was all")
            return
        if self.complete:
            raise StreamError("data after the end of the stream")
        self._buf += data
        while self._buf and not self.complete:
            if self._file is None:
                if len(self._buf) < PART.size:
                    return
                magic, kind, name_len, length = PART.unpack_from(self._buf)
                if magic != MAGIC or kind not in (SNAPSHOT, SEGMENT, END):
                    raise StreamError("not a RaftMQ snapshot stream")
                if kind == END:
                    del self._buf[:PART.size]
                    if self._buf:
                        raise StreamError("data after the end of the stream")
                    self.complete = True
                    return
                if len(self._buf) < PART.size + name_len:
                    return
                name = bytes(self._buf[PART.size:PART.size + name_len]).decode()
                del self._buf[:PART.size + name_len]
                self._file = self._open(kind, name)
                self._left = length
            take = min(self._left, len(self._buf))
            self._file.write(self._buf[:take])
            del self._buf[:take]
            self._left -= take
            if self._left == 0:
                self._finish_part()

    def _open(self, kind: int, name: str) -> BinaryIO:
        if kind == SNAPSHOT:
            return open(self.snapshot_path, "wb")  # noqa: SIM115
        if "/" in name or name.startswith("."):
            raise StreamError(f"bad segment name {name!r}")
        self.segments.append(name)
        return open(self.segment_dir / name, "wb")  # noqa: SIM115

    def _finish_part(self) -> None:
        assert self._file is not None
        self._file.flush()
        self._fsync(self._file.fileno())
        self._file.close()
        self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
