"""IdFifo: the ready messages of a plain queue, as message ids in fixed-size arrays.

A plain queue's never-delivered messages need nothing but their ids (everything else is
in the store), so they are kept 8 bytes apiece in chunks of ``array('q')`` rather than
as a Python int object plus a deque slot each (~40 bytes). With a backlog of millions
this is what keeps the index small (docs/storage.md). It has the part of the deque
interface the machine uses on ``Queue.ready``: append, popleft, [0], len, iteration,
clear; slow queues (features.py) keep a deque of Msg instead.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

CHUNK = 4096  # ids per array: 32 KiB, freed as soon as its last id is taken


class IdFifo:
    __slots__ = ("_chunks", "_head", "_len")

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._chunks: deque[array[int]] = deque()
        self._head = 0  # index of the first id in _chunks[0]
        self._len = 0
        for i in ids:
            self.append(i)

    def append(self, msg_id: int) -> None:
        chunks = self._chunks
        if not chunks or len(chunks[-1]) == CHUNK:
            chunks.append(array("q"))
        chunks[-1].append(msg_id)
        self._len += 1

    def popleft(self) -> int:
        if not self._len:
            raise IndexError("pop from an empty IdFifo")
        first = self._chunks[0]
        head = self._head
        msg_id = first[head]
        self._len -= 1
        head += 1
        if head == len(first):  # used up: let it go (or reuse it if it is the only one)
            if len(self._chunks) > 1:
                self._chunks.popleft()
            else:
                del first[:]
            head = 0
        self._head = head
        return msg_id

    def __getitem__(self, index: int) -> int:
        """Only the head ([0]) is ever looked at."""
        if index != 0:
            raise IndexError("IdFifo gives its head only")
        if not self._len:
            raise IndexError("IdFifo is empty")
        return self._chunks[0][self._head]

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[int]:
        head = self._head
        for chunk in self._chunks:
            yield from chunk[head:] if head else chunk
            head = 0

    def clear(self) -> None:
        self._chunks.clear()
        self._head = 0
        self._len = 0

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IdFifo):
            return self._len == other._len and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __repr__(self) -> str:
        return f"IdFifo(len={self._len})"

    # Pickled as one array of ids: compact, and independent of the chunking. (In a
    # tuple: pickle skips __setstate__ for a false state, such as an empty array.)
    def __getstate__(self) -> tuple[array[int]]:
        flat = array("q")
        for chunk in self._chunks:
            flat.extend(chunk)
        return (flat[self._head:] if self._head else flat,)

    def __setstate__(self, state: Any) -> None:
        (flat,) = state
        self._chunks = deque(flat[i:i + CHUNK] for i in range(0, len(flat), CHUNK))
        self._head = 0
        self._len = len(flat)
