"""Dynamic shovels in the machine (cluster/machine/shovels.py): RabbitMQ's validation of a
shovel's definition, the replicated set / clear / status, a snapshot without shovels
(the previous release's) loading, and the encoding through a Raft entry."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from cluster import commands as C
from cluster.machine import apply, new_state, restore, snapshot
from cluster.machine.shovels import DEFAULT_PREFETCH, definition
from cluster.machine.state import State

SRC = "amqp://guest:guest@127.0.0.1:5672/%2F"


def value(**kw: Any) -> dict[str, Any]:
    v: dict[str, Any] = {"src-uri": SRC, "src-queue": "q", "dest-uri": "amqp://",
                         "dest-queue": "q2"}
    v.update(kw)
    return {k: x for k, x in v.items() if x is not None}


def test_defaults_are_rabbitmqs() -> None:
    d = definition(value())
    assert d.src_uris == (SRC,) and d.dest_uris == ("amqp://",)
    assert (d.prefetch, d.ack_mode, d.reconnect_delay, d.delete_after) == \
        (DEFAULT_PREFETCH, "on-confirm", 1.0, "never")
    assert d.dest_queue == "q2" and d.dest_exchange is None
    d = definition(value(**{"dest-queue": None, "dest-exchange": "x",
                            "dest-exchange-key": "k", "src-uri": [SRC, "amqps://h"],
                            "prefetch-count": 5, "ack-mode": "on-publish",
                            "src-delete-after": "queue-length", "reconnect-delay": 0}))
    assert (d.dest_exchange, d.dest_exchange_key, d.prefetch, d.ack_mode, d.delete_after,
            len(d.src_uris)) == ("x", "k", 5, "on-publish", "queue-length", 2)
    # neither dest-queue nor dest-exchange: the message's own exchange and routing key
    assert definition(value(**{"dest-queue": None})).dest_queue is None


@pytest.mark.parametrize(("change", "reason"), [
    ({"src-uri": None}, 'Key "src-uri" not found in shovel'),
    ({"dest-uri": []}, "dest-uri"),
    ({"src-uri": "http://h/"}, "not an amqp"),
    ({"src-uri": "amqp://h:99999/"}, "not a valid URI"),
    ({"src-queue": None}, "Must specify 'src-exchange' or 'src-queue'"),
    ({"src-exchange": "x"}, "src-exchange is not supported"),
    ({"dest-exchange": "x"}, "Cannot specify 'dest-exchange' and 'dest-queue'"),
    ({"ack-mode": "later"}, 'actually was "later"'),
    ({"src-prefetch-count": 0}, "src-prefetch-count"),
    ({"src-prefetch-count": True}, "src-prefetch-count"),
    ({"reconnect-delay": -1}, "reconnect-delay"),
    ({"src-delete-after": "soon"}, 'or "queue-length", actually was "soon"'),
    ({"src-protocol": "amqp10"}, "only amqp091"),
    ({"dest-add-forward-headers": "yes"}, "true or false"),
    ({"dest-publish-properties": {"delivery_mode": 2}}, "not supported"),
    ({"colour": "blue"}, "Unrecognised terms ['colour']"),
    ({"src-queue": "q" * 256}, "255 bytes"),
])
def test_refused_definitions(change: dict[str, Any], reason: str) -> None:
    v = value()
    for k, x in change.items():
        if x is None:
            v.pop(k)
        else:
            v[k] = x
    with pytest.raises(ValueError, match=None) as e:
        definition(v)
    assert reason in str(e.value)
    with pytest.raises(ValueError):
        definition([v])


def _state() -> State:
    st = new_state()
    st.level = 4
    return st


def test_set_status_restart_clear() -> None:
    st = _state()
    apply(st, 10, C.ShovelSet("/", "s", value()), [])
    apply(st, 11, C.ShovelSet("nope", "s", value()), [])  # no such vhost: ignored
    apply(st, 11, C.ShovelSet("/", "bad", {"src-uri": SRC}), [])  # invalid: ignored
    assert list(st.shovels) == [("/", "s")]
    sh = st.shovels[("/", "s")]
    assert (sh.state, sh.moved, sh.generation, sh.at_ms) == ("starting", 0, 0, 10)
    apply(st, 20, C.ShovelStatus("/", "s", "n1", "running", "", 5), [])
    apply(st, 21, C.ShovelStatus("/", "s", "n1", "running", "", 3), [])  # late: kept at 5
    assert (sh.state, sh.node, sh.moved, sh.at_ms) == ("running", "n1", 5, 20)
    apply(st, 22, C.ShovelStatus("/", "s", "n1", "exploded", "", 9), [])  # unknown state
    assert sh.state == "running"
    apply(st, 30, C.ShovelStatus("/", "s", "n1", "terminated", "boom", 6), [])
    assert (sh.state, sh.reason, sh.moved) == ("terminated", "boom", 6)
    apply(st, 40, C.ShovelStatus("/", "s", "", "restart"), [])
    assert (sh.state, sh.generation, sh.moved) == ("starting", 1, 6)
    apply(st, 50, C.ShovelSet("/", "s", value()), [])  # the same definition: unchanged
    assert st.shovels[("/", "s")] is sh
    apply(st, 51, C.ShovelSet("/", "s", value(**{"src-prefetch-count": 7})), [])
    new = st.shovels[("/", "s")]
    assert new is not sh and (new.generation, new.moved) == (2, 0)  # restarted, recounted
    apply(st, 60, C.ShovelClear("/", "s"), [])
    apply(st, 61, C.ShovelStatus("/", "s", "n1", "running", "", 1), [])  # gone: ignored
    assert st.shovels == {}


def test_through_a_raft_entry_and_a_snapshot() -> None:
    """Replicas decode the command from msgpack (lists as tuples): equal state; a
    snapshot with shovels restores equal, and one without the field (the previous
    release's) loads with none."""
    cmd = C.ShovelSet("/", "s", value(**{"src-uri": [SRC, SRC]}))
    batch = C.decode_batch(C.encode_batch(C.Batch("n1", 1, 1, 5, (cmd,))))
    a, b = _state(), _state()
    apply(a, 5, cmd, [])
    apply(b, 5, batch.commands[0], [])
    assert list(a.shovels) == list(b.shovels) == [("/", "s")]
    assert definition(b.shovels[("/", "s")].value) == definition(a.shovels[("/", "s")].value)
    assert restore(snapshot(a)) == a
    old = _state()
    d = old.__getstate__()
    del d["shovels"]
    assert "shovels" not in pickle.loads(pickle.dumps(d))
    fresh = State.__new__(State)
    fresh.__setstate__(d)
    assert fresh.shovels == {}


def test_commands_need_level_4() -> None:
    assert C.ShovelSet.SINCE == C.ShovelClear.SINCE == C.ShovelStatus.SINCE == 4
    assert {C.ShovelSet.TAG, C.ShovelClear.TAG, C.ShovelStatus.TAG} == {70, 71, 72}


def test_a_deleted_vhost_takes_its_shovels() -> None:
    st = _state()
    apply(st, 1, C.VHostPut("v"), [])
    apply(st, 2, C.ShovelSet("v", "s", value()), [])
    apply(st, 3, C.ShovelSet("/", "s", value()), [])
    apply(st, 4, C.VHostDelete("v"), [])
    assert list(st.shovels) == [("/", "s")]
    apply(st, 5, C.VHostPut("v"), [])  # a new vhost of that name has none
    assert list(st.shovels) == [("/", "s")]
