"""Routing for each exchange type, including topic edge cases and headers matching."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from cluster import commands as C
from cluster.effects import ChannelError
from cluster.machine.amqp_table import message_headers
from cluster.machine.routing import split_words, topic_matches
from tests.cluster.helpers import CH, Machine, bind, pub, q_declare, x_declare


def _value(v: Any) -> bytes:
    if v is None:
        return b"V"
    if isinstance(v, bool):
        return b"t" + bytes([v])
    if isinstance(v, int):
        return b"I" + struct.pack(">i", v)
    if isinstance(v, float):
        return b"d" + struct.pack(">d", v)
    if isinstance(v, dict):
        return b"F" + _table(v)
    raw = v.encode() if isinstance(v, str) else v
    return b"S" + struct.pack(">I", len(raw)) + raw


def _table(d: dict[str, Any]) -> bytes:
    body = b"".join(bytes([len(k)]) + k.encode() + _value(v) for k, v in d.items())
    return struct.pack(">I", len(body)) + body


def props_with_headers(headers: dict[str, Any], content_type: str | None = None) -> bytes:
    flags = 0x2000
    out = b""
    if content_type is not None:
        flags |= 0x8000
        out += bytes([len(content_type)]) + content_type.encode()
    return struct.pack(">H", flags) + out + _table(headers)


def routed(m: Machine, exchange: str, key: str, props: bytes = b"\x00\x00") -> list[str]:
    """Names of the queues a publish reached (each queue's ready count went up)."""
    queues = m.state.vhosts["/"].queues
    before = {n: q.ready_count() for n, q in queues.items()}
    eff = m.run(pub(CH, exchange, key, props=props))
    assert not [e for e in eff if isinstance(e, ChannelError)]
    return sorted(n for n, q in queues.items() if q.ready_count() > before[n])


# --- topic -------------------------------------------------------------------------------


def test_split_words() -> None:
    assert split_words("") == []
    assert split_words("a") == ["a"]
    assert split_words("a.") == ["a", ""]
    assert split_words(".") == ["", ""]
    assert split_words("a..b") == ["a", "", "b"]


@pytest.mark.parametrize("pattern,key,expected", [
    ("#", "", True),
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("#", ".", True),
    ("*", "", False),
    ("*", "a", True),
    ("*", "a.b", False),
    ("*", ".", False),
    ("*.*", ".", True),  # two empty words
    ("", "", True),
    ("", "a", False),
    ("a", "a", True),
    ("a", "a.b", False),
    ("a.*", "a", False),
    ("a.*", "a.", True),
    ("a.*", "a.b", True),
    ("a.*", "a.b.c", False),
    ("a.#", "a", True),
    ("a.#", "a.b.c", True),
    ("a.#", "ab", False),
    ("#.a", "a", True),
    ("#.a", "x.y.a", True),
    ("#.a", "x.y.a.b", False),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.x.y.c", False),
    ("a.#.b", "a.b.b", True),
    ("#.#", "", True),
    ("#.#", "a.b", True),
    ("#.*", "", False),
    ("#.*", "a", True),
    ("*.#", "a.b.c", True),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b", True),
    ("a..b", "a..b", True),
    ("a.*.b", "a..b", True),
    ("#.b.#", "a.b.c", True),
    ("#.b.#", "b", True),
    ("#.b.#", "a.c", False),
    ("*.*.*", "a.b", False),
    ("#.#.#.#.#.#.x", "a.b.c.d.e.f.g.h.i.j.k.l.m.n", False),
])
def test_topic_matching(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected


def test_topic_exchange_routes_each_queue_once(m: Machine) -> None:
    m.run(x_declare(CH, "t", "topic"))
    for q, key in [("q1", "a.*"), ("q1", "a.#"), ("q2", "#"), ("q3", "a.b"), ("q4", "*.c")]:
        m.run(q_declare(CH, q), bind(CH, q, "t", key))
    assert routed(m, "t", "a.b") == ["q1", "q2", "q3"]
    assert m.state.vhosts["/"].queues["q1"].ready_count() == 1
    assert routed(m, "t", "x.c") == ["q2", "q4"]
    assert routed(m, "t", "") == ["q2"]
    # the route cache must follow binding changes
    m.run(C.QueueUnbind(CH, "q2", "t", "#", {}))
    assert routed(m, "t", "a.b") == ["q1", "q3"]
    assert routed(m, "t", "") == []


# --- direct / fanout / default --------------------------------------------------------------


def test_direct_and_default(m: Machine) -> None:
    for q in ("q1", "q2", "q3"):
        m.run(q_declare(CH, q))
    m.run(bind(CH, "q1", "amq.direct", "k"), bind(CH, "q2", "amq.direct", "k"),
          bind(CH, "q3", "amq.direct", "other"))
    assert routed(m, "amq.direct", "k") == ["q1", "q2"]
    assert routed(m, "amq.direct", "K") == []
    assert routed(m, "", "q3") == ["q3"]
    assert routed(m, "", "nope") == []


def test_fanout_ignores_key(m: Machine) -> None:
    for q in ("q1", "q2"):
        m.run(q_declare(CH, q), bind(CH, q, "amq.fanout", q))
    assert routed(m, "amq.fanout", "whatever") == ["q1", "q2"]


def test_binding_args_distinguish_bindings(m: Machine) -> None:
    m.run(q_declare(CH, "q"), bind(CH, "q", "amq.direct", "k", {"a": 1}),
          bind(CH, "q", "amq.direct", "k", {"a": 2}))
    assert routed(m, "amq.direct", "k") == ["q"]  # still once
    m.run(C.QueueUnbind(CH, "q", "amq.direct", "k", {"a": 1}))
    assert routed(m, "amq.direct", "k") == ["q"]
    m.run(C.QueueUnbind(CH, "q", "amq.direct", "k", {"a": 2}))
    assert routed(m, "amq.direct", "k") == []


# --- exchange to exchange --------------------------------------------------------------------


def test_exchange_to_exchange_with_cycle(m: Machine) -> None:
    m.run(x_declare(CH, "a", "fanout"), x_declare(CH, "b", "fanout"),
          x_declare(CH, "c", "topic"))
    m.run(C.ExchangeBind(CH, "b", "a", "", False, {}), C.ExchangeBind(CH, "a", "b", "", False, {}),
          C.ExchangeBind(CH, "c", "b", "", False, {}))
    m.run(q_declare(CH, "qa"), bind(CH, "qa", "a"), q_declare(CH, "qb"), bind(CH, "qb", "b"),
          bind(CH, "qa", "b"), q_declare(CH, "qc"), bind(CH, "qc", "c", "x.*"))
    assert routed(m, "a", "x.y") == ["qa", "qb", "qc"]
    assert routed(m, "b", "z") == ["qa", "qb"]
    assert m.state.vhosts["/"].queues["qa"].ready_count() == 2


def test_deleting_destination_exchange_removes_bindings(m: Machine) -> None:
    m.run(x_declare(CH, "src", "fanout", auto_delete=True), x_declare(CH, "dst", "fanout"))
    m.run(C.ExchangeBind(CH, "dst", "src", "", False, {}))
    m.run(C.ExchangeDelete(CH, "dst", False, False))
    # src was auto-delete and lost its last binding
    assert "src" not in m.state.vhosts["/"].exchanges


# --- headers -----------------------------------------------------------------------------------


def test_message_headers_decoding() -> None:
    p = props_with_headers({"a": "x", "n": 5, "b": True, "v": None, "t": {"k": 1}},
                           content_type="text/plain")
    h = message_headers(p)
    assert h["a"] == ("str", b"x") and h["n"] == ("num", 5) and h["b"] == ("bool", True)
    assert list(h) == ["a", "n", "b", "v", "t"]
    assert message_headers(b"\x00\x00") == {}
    assert message_headers(b"\x20\x00\x00\x00\x00\x09\x01") == {}  # truncated: no crash


@pytest.mark.parametrize("args,headers,expected", [
    ({"x-match": "all", "a": "1", "b": "2"}, {"a": "1", "b": "2", "c": "3"}, True),
    ({"x-match": "all", "a": "1", "b": "2"}, {"a": "1"}, False),
    ({"x-match": "all", "a": "1", "b": "2"}, {"a": "1", "b": "x"}, False),
    ({"a": "1", "b": "2"}, {"a": "1", "b": "2"}, True),  # default is all
    ({"a": "1"}, {}, False),
    ({"x-match": "any", "a": "1", "b": "2"}, {"b": "2"}, True),
    ({"x-match": "any", "a": "1", "b": "2"}, {"a": "2", "b": "1"}, False),
    ({"x-match": "any"}, {"a": "1"}, False),
    ({"x-match": "all"}, {"a": "1"}, True),  # empty pattern: all matches everything
    ({"x-match": "all", "x-foo": "1", "a": "1"}, {"a": "1"}, True),  # x- keys ignored
    ({"x-match": "all-with-x", "x-foo": "1", "a": "1"}, {"a": "1"}, False),
    ({"x-match": "all-with-x", "x-foo": "1"}, {"x-foo": "1"}, True),
    ({"x-match": "any-with-x", "x-foo": "1"}, {"x-foo": "1"}, True),
    ({"x-match": "any", "x-foo": "1"}, {"x-foo": "1"}, False),
    ({"a": None}, {"a": "anything"}, True),  # void binding value: presence
    ({"a": None}, {"b": "1"}, False),
    ({"n": 5}, {"n": 5}, True),
    ({"n": 5}, {"n": 5.0}, True),  # Erlang ==: numbers by value
    ({"n": 5}, {"n": "5"}, False),
    ({"b": True}, {"b": True}, True),
    ({"b": True}, {"b": 1}, False),  # bool is not a number
    ({"t": {"k": 1}}, {"t": {"k": 1}}, True),
])
def test_headers_exchange(m: Machine, args: dict, headers: dict, expected: bool) -> None:
    m.run(q_declare(CH, "q"), bind(CH, "q", "amq.headers", "", args))
    assert routed(m, "amq.headers", "ignored", props_with_headers(headers)) == (
        ["q"] if expected else [])


def test_headers_without_headers_property(m: Machine) -> None:
    m.run(q_declare(CH, "q"), bind(CH, "q", "amq.match", "", {"x-match": "all"}))
    assert routed(m, "amq.match", "k") == ["q"]


def test_headers_invalid_x_match_406(m: Machine) -> None:
    m.run(q_declare(CH, "q"))
    (e,) = m.run(bind(CH, "q", "amq.headers", "", {"x-match": "some"}))
    assert isinstance(e, ChannelError) and e.reply_code == 406 and "x-match" in e.reply_text
