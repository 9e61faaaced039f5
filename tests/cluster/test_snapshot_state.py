"""Snapshots with the store beside the state (cluster/store.py ``with_store``, ``take_store``,
``load_snapshot``) and the dead-letter headers the machine keeps (State.headers).

The machine's State holds no store; a snapshot still holds the store's index as the state's
``store``, where the releases that kept it in the state read it (snapshots travel between
releases in a rolling upgrade); a snapshot of an earlier release has no headers, or stale
ones, and they are rebuilt from the store before anything is applied.
"""

from __future__ import annotations

import copyreg
import io
import pickle
from typing import Any

import pytest

from cluster import commands as C
from cluster.machine import apply_batch, rebuild_headers, restore, snapshot
from cluster.machine.state import Msg, State
from cluster.store import MemoryStore, load_snapshot, take_store, with_store
from tests.cluster import helpers
from tests.cluster.helpers import CH, Machine, consume, enq, q_declare, stored

DLX_ARGS = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"}


def dlx_machine() -> Machine:
    """Messages held by queues with a dead-letter exchange: ready, returned, unacked, one
    routed to two such queues."""
    m = Machine()
    m.open()
    m.run(q_declare(CH, "dlq"), q_declare(CH, "a", arguments=DLX_ARGS),
          q_declare(CH, "b", arguments=DLX_ARGS), C.ExchangeDeclare(CH, "fan", "fanout", False,
                                                                     False, False, False, False,
                                                                     {}),
          C.QueueBind(CH, "a", "fan", "", False, {}), C.QueueBind(CH, "b", "fan", "", False, {}))
    m.run(*(enq(CH, "a", b"a%d" % i) for i in range(3)))
    m.run(C.Publish(CH, "fan", "k", False, b"\x00\x00", b"both", 0))
    m.run(consume(CH, "a", "c"), C.Nack(CH, 1, False, True))  # one back in a (returned)
    return m


def test_headers_follow_the_messages_held() -> None:
    m = dlx_machine()
    held = {i: h[4] for i, h in m.state.headers.items()}
    assert held == {1: 1, 2: 1, 3: 1, 4: 2}  # "both" is held by a and b
    m.run(C.Cancel(CH, "c", False), C.QueuePurge(CH, "a", False), C.QueuePurge(CH, "b", False))
    m.run(C.ChannelClose(CH))  # its unacked go back to a, then purged
    m.open()
    m.run(C.QueuePurge(CH, "a", False))
    assert m.state.headers == {} and helpers.store_of(m.state).live() == {}


@pytest.mark.parametrize("how", ["none", "stale"])
def test_a_snapshot_without_current_headers_rebuilds_them_from_the_store(how: str) -> None:
    m = dlx_machine()
    d = pickle.loads(pickle.dumps(m.state.__getstate__(), 5))  # (a deep copy)
    if how == "none":  # this code's predecessor: no headers at all
        del d["headers"], d["headers_built"], d["headers_at"]
    else:  # written by a release that carried them along without keeping them
        d["headers"] = {1: ["stale", "", b"", 0, 1]}
        d["headers_at"] = d["next_msg_id"] - 1
    old = State.__new__(State)
    old.__setstate__(d)
    assert not old.headers_built and old == m.state
    with pytest.raises(RuntimeError, match="rebuild_headers"):
        apply_batch(old, C.Batch("n1", 1, 99, 0, (C.Tick(),)))
    rebuild_headers(old, helpers.store_of(m.state).read)
    assert old.headers == m.state.headers and old.headers_built
    # and it dead-letters as the live state does
    batch = C.Batch("n1", 1, 99, 0, (helpers.reject(CH, 2),))
    assert apply_batch(old, batch) == apply_batch(m.state, batch)
    assert old == m.state and old.headers == m.state.headers


def test_a_snapshot_of_this_release_keeps_its_headers() -> None:
    m = dlx_machine()
    again = restore(snapshot(m.state))
    assert again.headers_built and again.headers == m.state.headers
    assert "writes" not in again.__dict__ or again.writes == []


def test_the_store_travels_as_the_state_s_store() -> None:
    """What releases that kept the store in the state read: ``state.store``."""
    m = dlx_machine()
    store = helpers.store_of(m.state)
    data = pickle.dumps(({"state": with_store(m.state, store)}, ("last",), ("before",)), 5)
    loaded = load_snapshot(io.BytesIO(data))
    state = loaded[0]["state"]
    assert isinstance(state.__dict__["store"], MemoryStore)  # an older release's view
    got = take_store(state)
    assert "store" not in state.__dict__ and state == m.state
    assert got.live() == store.live()
    assert "store" not in m.state.__dict__  # the live state was not touched


def _old_pickle(obj: Any, bytes_of: dict[int, tuple[bytes, bytes]]) -> bytes:
    """``obj`` pickled with its Msg entries as a release before the message store pickled
    them: the exchange, routing key, properties and body inside (``bytes_of``: by msg id)."""

    class Old(pickle.Pickler):
        def reducer_override(self, o: Any) -> Any:
            if type(o) is not Msg:
                return NotImplemented
            body, props = bytes_of[o.id]
            values = {"id": o.id, "redelivered": o.redelivered,
                      "delivery_count": o.delivery_count, "exchange": "",
                      "routing_key": "q", "properties": props, "body": body}
            return copyreg.__newobj__, (Msg,), (None, values)  # type: ignore[attr-defined]

    f = io.BytesIO()
    Old(f, 5).dump(obj)
    return f.getvalue()


def test_a_snapshot_from_before_the_store_gives_up_the_bytes_its_entries_held() -> None:
    prio = helpers.props(priority=3)
    bytes_of = {7: (b"seven", prio), 9: (b"nine", b"")}
    state = State()
    old = [Msg(7, 0), Msg(7, 0), Msg(9, 0)]  # one message in two queues, one in one
    data = _old_pickle(({"state": with_store(state, None)}, old), bytes_of)
    snap = load_snapshot(io.BytesIO(data))
    msgs = snap[1]
    assert [type(x) for x in msgs] == [Msg, Msg, Msg]
    assert msgs[0] == Msg(7, 5, priority=3) and msgs[2] == Msg(9, 4)
    store = take_store(snap[0]["state"])
    assert isinstance(store, MemoryStore)
    assert store.live() == {7: 2, 9: 1}
    assert store.read(7) == ("", "q", prio, b"seven")


def test_a_test_machine_reads_through_its_store() -> None:
    m = dlx_machine()
    assert stored(m.state, 1)[3] == b"a0"


def test_force_members_reads_a_snapshot_as_the_node_does(tmp_path: Any) -> None:
    """force-members rewrites the snapshot it read (cluster/raft/recovery.py): one from
    before the store keeps the bytes its entries held."""
    import gzip

    from cluster.raft import recovery

    state = State()
    data = _old_pickle(({"state": with_store(state, None)}, [Msg(3, 0)]), {3: (b"b", b"")})
    path = tmp_path / "raft.dump"
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb") as g:
        g.write(data)
    snap = recovery._read_snapshot(path)
    assert take_store(snap[0]["state"]).read(3) == ("", "q", b"", b"b")
