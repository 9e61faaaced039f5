"""Tiny builders for machine tests (in the spirit of rabbit_fifo_SUITE's enq/checkout/settle)."""

from __future__ import annotations

import pickle
import weakref
from collections import Counter
from typing import Any

from cluster import commands as C
from cluster.effects import Effect, Stored
from cluster.machine import State, apply, new_state, restore, snapshot, take_writes
from cluster.store import MemoryStore, run

SHA256 = "rabbit_password_hashing_sha256"

# The command level guest_state() starts at: a running cluster enables this release's
# LEVEL within its first entries. tests/cluster/conftest.py runs the expiry modules at
# level 2 too (behaviour that changed at a level keeps its earlier form for mixed releases).
LEVEL_UNDER_TEST = C.LEVEL


def guest_state() -> State:
    """A new cluster's state as every node starts it: the default user ``guest``
    (password ``guest``) with every permission on "/" (the Bootstrap command a node
    proposes at start-up)."""
    from node.amqp.passwords import hash_password

    state = new_state()
    # a fixed salt: states built apart must compare equal
    guest = hash_password("guest", SHA256, salt=b"salt")
    apply(state, 0, C.Bootstrap("guest", guest, SHA256), [])
    state.level = LEVEL_UNDER_TEST
    return state

CH = ("n1", 1, 1)
CH2 = ("n1", 1, 2)  # another channel of the same connection
CONN = ("n1", 1)
EMPTY_PROPS = b"\x00\x00"


def q_declare(ch: C.ChKey, name: str, *, passive: bool = False, durable: bool = False,
              exclusive: bool = False, auto_delete: bool = False, nowait: bool = False,
              arguments: dict[str, Any] | None = None) -> C.QueueDeclare:
    return C.QueueDeclare(ch, name, passive, durable, exclusive, auto_delete, nowait,
                          arguments or {})


def x_declare(ch: C.ChKey, name: str, type_: str = "direct", *, passive: bool = False,
              durable: bool = False, auto_delete: bool = False, internal: bool = False,
              nowait: bool = False, arguments: dict[str, Any] | None = None) -> C.ExchangeDeclare:
    return C.ExchangeDeclare(ch, name, type_, passive, durable, auto_delete, internal, nowait,
                             arguments or {})


def bind(ch: C.ChKey, queue: str, exchange: str, key: str = "",
         arguments: dict[str, Any] | None = None, nowait: bool = False) -> C.QueueBind:
    return C.QueueBind(ch, queue, exchange, key, nowait, arguments or {})


def unbind(ch: C.ChKey, queue: str, exchange: str, key: str = "",
           arguments: dict[str, Any] | None = None) -> C.QueueUnbind:
    return C.QueueUnbind(ch, queue, exchange, key, arguments or {})


def pub(ch: C.ChKey, exchange: str, key: str, body: bytes = b"m", *, mandatory: bool = False,
        props: bytes = EMPTY_PROPS, confirm: int = 0) -> C.Publish:
    return C.Publish(ch, exchange, key, mandatory, props, body, confirm)


def enq(ch: C.ChKey, queue: str, body: bytes = b"m", **kw: Any) -> C.Publish:
    return pub(ch, "", queue, body, **kw)


def consume(ch: C.ChKey, queue: str, tag: str = "", *, no_ack: bool = False,
            exclusive: bool = False, nowait: bool = False,
            arguments: dict[str, Any] | None = None) -> C.Consume:
    return C.Consume(ch, queue, tag, no_ack, exclusive, nowait, arguments or {})


def ack(ch: C.ChKey, tag: int, multiple: bool = False) -> C.Ack:
    return C.Ack(ch, tag, multiple)


def nack(ch: C.ChKey, tag: int, multiple: bool = False, requeue: bool = True) -> C.Nack:
    return C.Nack(ch, tag, multiple, requeue)


def reject(ch: C.ChKey, tag: int, requeue: bool = False) -> C.Nack:
    return C.Nack(ch, tag, False, requeue, reject=True)


def props(**kwargs: Any) -> bytes:
    """Content-header properties by pamqp name, e.g. ``props(expiration="100", priority=3)``."""
    from protocol.properties import encode_properties

    return encode_properties(**kwargs)


# The store of each state a test builds (keyed by id, dropped with the state): the machine
# holds none, the replica keeps one beside it (cluster/raft/node.py).
_STORES: dict[int, MemoryStore] = {}


def store_of(state: State) -> MemoryStore:
    """The MemoryStore of ``state``, with what applying decided so far (State.writes)
    carried out on it, as the replica does after each entry. Never collected: a record
    let go stays readable (as it is until the node's next collect)."""
    st = _STORES.get(id(state))
    if st is None:
        st = _STORES[id(state)] = MemoryStore()
        weakref.finalize(state, _STORES.pop, id(state), None)
    writes = take_writes(state)
    if writes:
        run(st, writes)
    return st


def use_store(state: State, store: Any) -> None:
    """Carry out ``state``'s writes on ``store`` (a FileStore, as a node runs it)."""
    assert id(state) not in _STORES and not state.writes
    _STORES[id(state)] = store
    weakref.finalize(state, _STORES.pop, id(state), None)


def clone(state: State) -> State:
    """A replica restored from a snapshot of ``state``, with a copy of its store (the
    store's own pickled form: its live records)."""
    copy = restore(snapshot(state))
    src = store_of(state)
    dst = _STORES[id(copy)] = MemoryStore.__new__(MemoryStore)
    dst.__dict__.update(pickle.loads(pickle.dumps(src.__getstate__())))
    weakref.finalize(copy, _STORES.pop, id(copy), None)
    return copy


def stored(state: State, msg: Any) -> tuple[str, str, bytes, bytes]:
    """(exchange, routing key, properties, body) of a queued message (a Msg, an id, or a
    Deliver / GetOk) from the state's store."""
    from cluster.machine.state import entry_id

    msg_id = msg.msg_id if isinstance(msg, Stored) else entry_id(msg)
    return store_of(state).read(msg_id)


def qos(ch: C.ChKey, n: int, global_: bool = False) -> C.Qos:
    return C.Qos(ch, n, global_)


def open_cmds(ch: C.ChKey = CH, vhost: str = "/") -> list[C.Command]:
    return [C.ConnectionOpen(ch[:2], vhost, "guest"), C.ChannelOpen(ch)]


class Machine:
    """A state plus a convenience runner returning the effects of some commands."""

    def __init__(self, state: State | None = None) -> None:
        self.state = state or guest_state()
        self.now = 0

    def at(self, now: int, *cmds: C.Command) -> list[Effect]:
        """Advance the clock to ``now`` and run the commands (a Tick if none)."""
        self.now = now
        return self.run(*(cmds or (C.Tick(),)))

    def run(self, *cmds: C.Command) -> list[Effect]:
        out = Effects()
        out.machine = self
        for cmd in cmds:
            apply(self.state, self.now, cmd, out)
        return out

    def body(self, ef: Any) -> bytes:
        """The body of a Deliver's or GetOk's message, as the node reads it."""
        return stored(self.state, ef)[3]

    def open(self, ch: C.ChKey = CH) -> C.ChKey:
        if ch[:2] not in self.state.conns:
            self.run(C.ConnectionOpen(ch[:2], "/", "guest"))
        self.run(C.ChannelOpen(ch))
        return ch


class Effects(list[Effect]):
    """Machine.run's effects, with the machine whose store holds their messages' bytes."""

    machine: Machine

    def __getitem__(self, i: Any) -> Any:
        got = super().__getitem__(i)
        if isinstance(i, slice):
            part = Effects(got)
            part.machine = self.machine
            return part
        return got


def body(effects: list[Effect], ef: Any) -> bytes:
    """The body of a Deliver or GetOk among the effects of a Machine.run."""
    assert isinstance(effects, Effects)
    return effects.machine.body(ef)


def of_type(effects: list[Effect], cls: type) -> list[Any]:
    return [e for e in effects if isinstance(e, cls)]


def expected_headers(state: State) -> dict[int, list[Any]]:
    """State.headers as rebuilt from the store (what a replica loading a snapshot without
    them computes): equal to the headers kept while applying."""
    from cluster.machine import rebuild_headers

    shadow = object.__new__(State)
    shadow.__dict__.update(state.__dict__)
    shadow.headers_built = False
    rebuild_headers(shadow, store_of(state).read)
    return shadow.headers


def held_references(state: State) -> tuple[Counter[int], Counter[int]]:
    """(what queues and channels hold of each message, what the store counts): equal
    when every queue entry and unacked delivery holds one reference and nothing else does."""
    from cluster.machine.state import entry_id

    held: Counter[int] = Counter()
    for q in state.queues.values():
        held.update(entry_id(m) for m in q.ready)
        held.update(m.id for _, m in q.returned)
    for ch in state.channels.values():
        held.update(entry_id(m) for _q, m, _c in ch.unacked.values())
    held.update(h[1] for h in state.delayed)  # held by x-delayed-message exchanges
    return held, Counter(store_of(state).live())
