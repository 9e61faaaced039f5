"""node/mgmt_listing.py: RabbitMQ's listing parameters as pure functions, each limit
pushed against (pattern length, the filter's time budget, page sizes), sorting total over
every JSON value, and RE2 keeping a pathological pattern linear."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from node import mgmt_listing as L


def query(**params: str) -> L.Query:
    return L.parse(params)


def test_regex_filter_is_case_insensitive_search() -> None:
    match = L.matcher("^ORD", True)
    assert match("orders") and not match("x-orders")
    assert L.matcher("Ders", False)("ORDERS")  # the substring filter too (string:to_lower)


@pytest.mark.parametrize("pattern", ["(a+)+$", "(a|aa)+$", "(a*b*){999}", "(.*a){20}"])
def test_pathological_patterns_stay_linear(pattern: str) -> None:
    """Each took seconds per name (or forever) under a backtracking engine."""
    match = L.matcher(pattern, True)
    names = [("a" * 250) + "!" for _ in range(10)]
    t0 = time.perf_counter()
    for n in names:
        match(n)
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize(("pattern", "says"), [
    (r"(a)\1", "no backreferences or lookaround"),
    ("(?<=a)b", "no backreferences or lookaround"),
    ("a{1001}", "invalid repetition size"),
    ("(", "missing )"),
])
def test_patterns_re2_cannot_run_are_refused_with_why(pattern: str, says: str) -> None:
    with pytest.raises(L.QueryError, match=r"invalid regular expression in name") as info:
        L.matcher(pattern, True)
    assert says in str(info.value)


def test_pattern_length_is_bounded() -> None:
    assert query(name="a" * L.PATTERN_MAX, use_regex="true").name
    with pytest.raises(L.QueryError, match="longer than 1000"):
        query(name="a" * (L.PATTERN_MAX + 1), use_regex="true")


def test_filter_gives_up_past_its_budget() -> None:
    ticks = itertools.count()
    items = [{"name": str(i)} for i in range(100)]
    with pytest.raises(L.QueryError, match="took longer than 1s over 100 items"):
        L.filter_names(items, lambda s: True, budget_s=1.0, clock=lambda: next(ticks) * 0.1)
    assert len(L.filter_names(items, lambda s: True, budget_s=1.0)) == 100


def test_page_limits() -> None:
    assert query(page="1", page_size=str(L.PAGE_SIZE_MAX)).page_size == 500
    for bad in ({"page": "0"}, {"page": "1", "page_size": "501"}, {"page": "1", "page_size": "0"},
                {"page": "one"}):
        with pytest.raises(L.QueryError):
            L.parse(bad)
    items = [{"name": f"q{i}", "vhost": "/"} for i in range(7)]
    got = L.finish(items, query(page="3", page_size="3", sort="name"), None)
    assert got == {"filtered_count": 7, "item_count": 1, "items": [items[6]], "page": 3,
                   "page_count": 3, "page_size": 3, "total_count": 7}
    assert L.finish(items, query(page="1", name="q1"), L.matcher("q1", False))[
        "filtered_count"] == 1
    with pytest.raises(L.QueryError, match="Page out of range"):
        L.finish(items, query(page="5", page_size="3"), None)
    assert L.finish([], query(page="1"), None)["items"] == []


JSON_VALUES: list[Any] = [None, True, False, 0, -1, 2.5, float("nan"), "", "a", [], [1, "x"],
                          {}, {"a": 1}, {"a": {"b": [None, {"c": "d"}]}}, [[[[[[[[[[1]]]]]]]]]],
                          10 ** 30]


def test_sort_is_total_over_json_values() -> None:
    items = [{"name": str(i), "vhost": "/", "v": v} for i, v in enumerate(JSON_VALUES)]
    for reverse in (False, True):
        ordered = L.sort(items, query(sort="v").sort, reverse)
        assert len(ordered) == len(items)
    kinds = [type(i["v"]).__name__ for i in L.sort(items, query(sort="v").sort, False)]
    # Erlang's term order: numbers, atoms (booleans, null), objects, arrays, strings
    assert kinds.index("str") > kinds.index("list") > kinds.index("dict") > \
        kinds.index("NoneType") > kinds.index("int")


def test_sort_merges_the_default_keys_and_missing_is_zero() -> None:
    items: list[dict[str, Any]] = [{"name": "b", "vhost": "/"},
                                   {"name": "a", "vhost": "/", "n": 5},
                                   {"name": "c", "vhost": "/", "n": -1}]
    assert [i["name"] for i in L.sort(items, query(sort="n").sort, False)] == ["c", "b", "a"]
    assert [i["name"] for i in L.sort(items, query(sort="n").sort, True)] == ["a", "b", "c"]
    assert L.sort(items, query().sort, False) == items  # no sort asked: as listed


def test_columns_keep_nested_paths() -> None:
    item = {"name": "q", "vhost": "/", "arguments": {"x": 1, "y": 2}, "n": None}
    assert L.columns(item, (("name",), ("arguments", "x"), ("n",))) == {
        "name": "q", "arguments": {"x": 1}}
