"""node/mgmt_listing.py: RabbitMQ's listing parameters as pure functions, each limit
pushed against (pattern length, the filter's time budget, page sizes), sorting total over
every JSON value, and RE2 keeping a pathological pattern linear."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from node.mgmt import listing as L


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


def test_lone_surrogates_are_refused_or_unmatched() -> None:
    with pytest.raises(L.QueryError, match="not valid Unicode"):
        L.matcher("\ud800", True)
    assert not L.matcher("a", True)("\ud800a")


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
    # no sort asked: by vhost and name, as RabbitMQ's default
    assert [i["name"] for i in L.sort(items, query().sort, False)] == ["a", "b", "c"]
    assert [i["name"] for i in L.sort(items, query(sort_reverse="true").sort, True)] == [
        "c", "b", "a"]


def test_columns_keep_nested_paths() -> None:
    item = {"name": "q", "vhost": "/", "arguments": {"x": 1, "y": 2}, "n": None}
    assert L.columns(item, (("name",), ("arguments", "x"), ("n",))) == {
        "name": "q", "arguments": {"x": 1}}


# --- the handler's side: node/mgmt/framework.py ``listing`` -------------------------------------


async def _loop_gaps(done: asyncio.Event, gaps: list[float]) -> None:
    last = time.perf_counter()
    while not done.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def _timed_listing(path: str, rows: Iterator[dict[str, Any]]) -> tuple[Any, float]:
    from node.mgmt.framework import listing

    done, gaps = asyncio.Event(), []  # type: ignore[var-annotated]
    ticker = asyncio.create_task(_loop_gaps(done, gaps))
    await asyncio.sleep(0.01)
    try:
        response = await listing(make_mocked_request("GET", path), rows)
    finally:
        done.set()
        await ticker
    return response, max(gaps)


def _costly_rows(n: int) -> Iterator[dict[str, Any]]:
    """Items that cost about what a queue's JSON costs to build."""
    for i in range(n):
        yield {"name": f"queue-{i:06d}", "vhost": "/", "arguments": {"x": i},
               "message_stats": {"publish": sum(range(300))}}


async def test_a_long_listing_never_holds_the_loop() -> None:
    """20,000 items built, filtered by a regex, sorted on an object field and encoded: the
    loop runs between slices and while the worker thread sorts and encodes (all on the
    loop at once: ~950 ms standing still here). The cyclic GC is off while measuring: its
    generation-2 passes (~80 ms here, longer in a node with a big state) stop every
    thread whoever allocates, and are the process's cost, not the listing's."""
    gc.disable()
    try:
        response, worst = await _timed_listing(
            "/api/queues?use_regex=true&name=queue-00&sort=arguments&sort_reverse=true",
            _costly_rows(20_000))
    finally:
        gc.enable()
    assert response.status == 200
    found = json.loads(response.text)
    assert len(found) == 10_000 and found[0]["name"] == "queue-009999"
    assert worst < 0.1, f"the loop stood still {worst * 1000:.0f} ms"


async def test_a_bad_query_is_a_400_before_any_item_is_built() -> None:
    from node.mgmt.framework import Refusal

    built = []

    def rows() -> Iterator[dict[str, Any]]:
        built.append(1)
        yield {"name": "q"}

    for path in ("/api/queues?use_regex=true&name=(a)%5C1", "/api/queues?page=0",
                 "/api/queues?page=1&page_size=501"):
        with pytest.raises(Refusal) as info:
            await _timed_listing(path, rows())
        assert info.value.response.status == 400
    assert built == []


def test_encoding_item_by_item_is_the_same_json() -> None:
    items = [{"name": f"q{i}", "vhost": "/", "arguments": {"a": [1, None, "x"]}}
             for i in range(5)]
    for answer in (items, [], L.finish(items, query(page="2", page_size="2"), None),
                   L.finish([], query(page="1"), None), {"other": 1}):
        assert json.loads(L.encode(answer)) == answer


def test_sorting_in_runs_is_stable_and_whole() -> None:
    items = [{"name": f"q{i:05d}", "vhost": "/", "k": i % 7} for i in range(3 * L.SORT_RUN + 5)]
    ordered = L.sort(items, query(sort="k").sort, False)
    assert ordered == sorted(items, key=lambda i: (i["k"], i["name"]))


async def test_queued_listings_are_bounded_per_user_and_in_all() -> None:
    """While the worker is busy, a user has at most PENDING_PER_USER listings waiting for
    it (the next one is a 503 at once), and PENDING_MAX wait in all."""
    import node.mgmt.framework as objects
    from node.mgmt.framework import Refusal

    release = threading.Event()
    blocker = asyncio.get_running_loop().run_in_executor(objects._LISTING_POOL, release.wait, 10)

    def ask(user: str) -> Any:
        request = make_mocked_request("GET", "/api/queues?use_regex=true&name=q")
        request["user"] = user
        return asyncio.ensure_future(objects.listing(request, iter([{"name": "q"}])))

    waiting = [ask("mallory") for _ in range(objects.PENDING_PER_USER)]
    await asyncio.sleep(0.05)
    for who in ("mallory", *(f"user-{i}" for i in range(objects.PENDING_MAX))):
        answer = ask(who)
        await asyncio.sleep(0)
        if who == "mallory" or len(waiting) >= objects.PENDING_MAX:
            with pytest.raises(Refusal) as info:
                await answer
            assert info.value.response.status == 503
        else:
            waiting.append(answer)
            await asyncio.sleep(0.01)
    release.set()
    await blocker
    assert all(r.status == 200 for r in await asyncio.gather(*waiting))
    assert objects._pending == {}


async def test_slices_are_timed_not_counted() -> None:
    """300 items (fewer than a count-based slice) of 1 ms each: the loop still runs every
    few ms, and the encoding of such costly items goes to the worker thread."""

    def slow_rows() -> Iterator[dict[str, Any]]:
        for i in range(300):
            until = time.perf_counter() + 0.001
            while time.perf_counter() < until:
                pass
            yield {"name": f"q{i}", "client_properties": {"big": "x" * 1000}}

    gc.disable()
    try:
        response, worst = await _timed_listing("/api/connections", slow_rows())
    finally:
        gc.enable()
    assert response.status == 200 and len(json.loads(response.text)) == 300
    assert worst < 0.05, f"the loop stood still {worst * 1000:.0f} ms"


def test_breathing_only_off_the_loops_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker lets go of the GIL every ms; the loop's thread (a short listing
    finished inline) never does: it would then wait for the worker."""
    slept: list[str] = []
    monkeypatch.setattr(L.time, "sleep", lambda s: slept.append(
        threading.current_thread().name))

    def spin() -> None:
        pause = L.breathe(every_s=0.0)
        for _ in range(5):
            pause()

    spin()
    assert slept == []
    worker = threading.Thread(target=spin, name="worker")
    worker.start()
    worker.join(5)
    assert slept == ["worker"] * 5
