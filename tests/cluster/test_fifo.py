"""IdFifo: a plain queue's ready ids in arrays, against a deque as the model."""

from __future__ import annotations

import pickle
from collections import deque

from hypothesis import given
from hypothesis import strategies as st

from cluster.machine.fifo import CHUNK, IdFifo


@given(st.lists(st.one_of(st.integers(1, 3 * CHUNK), st.just(-1), st.just(-2)), max_size=40))
def test_behaves_as_a_deque(ops: list[int]) -> None:
    """Runs of appends (n > 0), pops (-1) and pickle round trips (-2) across chunk ends."""
    fifo, model, next_id = IdFifo(), deque[int](), 1
    for op in ops:
        if op > 0:
            for _ in range(op):
                fifo.append(next_id)
                model.append(next_id)
                next_id += 1
        elif op == -1:
            for _ in range(min(len(model), CHUNK + 7)):
                assert fifo[0] == model[0]
                assert fifo.popleft() == model.popleft()
        else:
            fifo = pickle.loads(pickle.dumps(fifo))
        assert len(fifo) == len(model) and bool(fifo) == bool(model)
        assert list(fifo) == list(model)
    assert fifo == IdFifo(model)


def test_empty_and_clear() -> None:
    fifo = pickle.loads(pickle.dumps(IdFifo()))  # an empty state still unpickles
    assert not fifo and list(fifo) == []
    fifo.append(7)
    fifo.clear()
    assert len(fifo) == 0
    for bad in (lambda: fifo.popleft(), lambda: fifo[0]):
        try:
            bad()
        except IndexError:
            continue
        raise AssertionError("an empty IdFifo gave something")


def test_chunks_are_let_go() -> None:
    """Memory follows the backlog: used-up arrays are dropped, not kept."""
    fifo = IdFifo(range(10 * CHUNK))
    for _ in range(9 * CHUNK):
        fifo.popleft()
    assert len(fifo._chunks) == 1 and len(fifo) == CHUNK
