"""node/mgmt/input.py: the management API's checks of client values, as pure functions."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.mgmt.input import (
    MAX_ARGUMENT_ITEMS,
    MAX_ARGUMENTS_BYTES,
    MAX_DEPTH,
    MAX_MARKS,
    InputError,
    check_arguments,
    check_name,
    check_regex,
    nesting_exceeds,
    parse_json,
)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


# strings full of what could fool a bracket count: brackets, quotes, backslashes
tricky = st.text(alphabet='[]{}"\\\\ab', max_size=8)
documents = st.recursive(st.none() | st.integers() | tricky,
                         lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(tricky, inner, max_size=3), max_leaves=40)


@settings(max_examples=300, deadline=None)
@given(documents, st.integers(min_value=1, max_value=8))
def test_nesting_is_measured_exactly_on_the_raw_text(doc, limit):
    raw = json.dumps(doc).encode()
    assert nesting_exceeds(raw, limit) == (depth(doc) > limit)


def test_nesting_check_is_linear_and_without_recursion():
    raw = b"[" * 1_000_000 + b"]" * 1_000_000
    started = time.perf_counter()
    with pytest.raises(InputError, match=f"nested deeper than {MAX_DEPTH}"):
        parse_json(raw)
    assert time.perf_counter() - started < 1.0
    with pytest.raises(InputError):
        parse_json(b"[" * 100_000 + b"}" * 100_000)  # malformed, never recursed into
    started = time.perf_counter()
    for raw in (b"[]" * (MAX_MARKS // 2 + 1), b'["[",' * (MAX_MARKS // 2) + b"1]"):
        with pytest.raises(InputError, match=f"more than {MAX_MARKS}"):
            parse_json(raw)
    assert time.perf_counter() - started < 1.0
    assert parse_json(b"[" + b"[]," * (MAX_MARKS // 2 - 2) + b"1]")  # within the bound


@pytest.mark.parametrize("raw", [b"NaN", b"[Infinity]", b'{"a": -Infinity}', b"1e400",
                                 b"[-1e999]", b"1" * 41, b"{", b"\xff",
                                 '["\\u005b"]'.encode("utf-16")])
def test_json_that_is_refused(raw):
    with pytest.raises(InputError, match="invalid JSON"):
        parse_json(raw)


def test_json_that_is_accepted():
    assert parse_json(b"") == {} and parse_json(b"  ") == {}
    assert parse_json(b'{"a": [1.5, -2, "\\ud83d\\ude00", null, true]}') == \
        {"a": [1.5, -2, "\U0001F600", None, True]}
    assert parse_json(b"1" * 40) == int("1" * 40)  # (refused later: it fits no long)


def test_arguments_within_and_beyond_each_bound():
    ok = {"i": -(1 << 63), "j": (1 << 63) - 1, "f": 1.5, "s": "x", "n": None, "b": True,
          "t": {"k": [1, {"z": "y"}]}}
    assert check_arguments(ok) is ok and check_arguments(None) == {}
    assert check_arguments({f"k{i}": i for i in range(MAX_ARGUMENT_ITEMS)})
    for bad, reason in [
        ({"x": 1 << 63}, "64 bits"), ({"x": [-(1 << 63) - 1]}, "64 bits"),
        ({"x": float("nan")}, "finite"), ({"x": {"y": float("inf")}}, "finite"),
        ({f"k{i}": i for i in range(MAX_ARGUMENT_ITEMS + 1)}, "entries"),
        ({"x": list(range(MAX_ARGUMENT_ITEMS))}, "entries"),
        ({"x": "y" * MAX_ARGUMENTS_BYTES}, "bytes"),
        ({"k" * 256: 1}, "255"), ({"x": "\ud800"}, "surrogate"), ({"\udc00": 1}, "surrogate"),
        ({"x": b"bytes"}, "not supported"), ([1], "object"),
        ({"x-dead-letter-routing-key": "r" * 256}, "255"),
        ({"alternate-exchange": "é" * 128}, "255"),
    ]:
        with pytest.raises(InputError, match=reason):
            check_arguments(bad)


def test_names_and_patterns():
    assert check_name("é" * 127, "name") == "é" * 127
    for bad in ("", "é" * 128, "\ud800", 5, None):
        with pytest.raises(InputError):
            check_name(bad, "name")
    assert check_regex("^a.*$", "read") == "^a.*$"
    for bad in ("(", "[", 1, None):
        with pytest.raises(InputError):
            check_regex(bad, "read")


async def test_the_export_is_strict_json_whatever_the_state_holds():
    from node.mgmt.definitions import encode

    doc = {"queues": [{"name": "q", "arguments": {"x": float("nan"), "y": [float("inf")],
                                                  "z": 1.5}}], "rabbit_version": "3.10.8"}
    text = await encode(doc)
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {
        "queues": [{"name": "q", "arguments": {"x": None, "y": [None], "z": 1.5}}],
        "rabbit_version": "3.10.8"}
