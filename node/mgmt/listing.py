"""RabbitMQ's query parameters on list endpoints, as pure functions over built items:
``name`` (a case-insensitive substring, or with ``use_regex=true`` a regular expression
searched case-insensitively: rabbit_mgmt_util's ``re:run(Value, Re, [caseless])``),
``sort`` / ``sort_reverse``, ``columns``, and ``page`` / ``page_size`` (at most 500).

Every cost here is bounded by what the request asks of the items the user can see:

* a user's regular expression runs on RE2 (linear in the name, no backtracking: ``(a+)+$``
  stalled the event loop 33 s under Python's ``re``), at most PATTERN_MAX characters, and
  the whole filter within FILTER_BUDGET_S (checked per item);
* sorting never raises: any two JSON values compare, in Erlang's term order as
  RabbitMQ sorts them (numbers < atoms < objects < arrays < strings), nesting cut off at
  SORT_DEPTH;
* the caller (node/mgmt/framework.py) runs ``finish`` off the event loop for big lists.
"""

from __future__ import annotations

import heapq
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import re2

PATTERN_MAX = 1000  # characters of a ``name`` filter
FILTER_BUDGET_S = 5.0  # wall time one regex filter may take over a whole listing
PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX = 100, 500  # rabbit_mgmt_util's
SORT_DEPTH = 8  # nesting a sort key looks into (beyond: compared as its JSON text)
DEFAULT_SORT = ("vhost", "name")  # merged after the user's sort key, as RabbitMQ's


def breathe(every_s: float = 0.001) -> Callable[[], None]:
    """A call to make between items of a long job in the listings' worker thread: every
    ``every_s`` it lets go of the GIL (time.sleep(0)), so the event loop's thread waits
    at most that long for it each time it wakes (otherwise up to the 5 ms switch interval,
    and a publish->confirm round trip wakes the loop many times: 500 ms round trips were
    measured while 5,000 queues were sorted and encoded). On the loop's own thread (a
    short listing finished inline) it does nothing: letting go there would make the loop
    wait for the worker instead."""
    if threading.current_thread() is threading.main_thread():
        return _nothing
    last = [time.perf_counter()]

    def maybe() -> None:
        now = time.perf_counter()
        if now - last[0] > every_s:
            time.sleep(0)
            last[0] = time.perf_counter()

    return maybe


def _nothing() -> None:
    pass


class QueryError(ValueError):
    """A bad query parameter: the reason goes back as a 400."""


@dataclass(frozen=True, slots=True)
class Query:
    name: str | None = None
    use_regex: bool = False
    sort: tuple[tuple[str, ...], ...] = ()
    reverse: bool = False
    columns: tuple[tuple[str, ...], ...] = ()
    page: int | None = None
    page_size: int = PAGE_SIZE_DEFAULT


def parse(q: Mapping[str, str]) -> Query:
    """The listing parameters of a query string; raises QueryError."""
    name = q.get("name") or None
    use_regex = q.get("use_regex", "").lower() == "true"
    if name is not None and len(name) > PATTERN_MAX:
        raise QueryError(f"name filter longer than {PATTERN_MAX} characters")
    # RabbitMQ sorts every listing by vhost and name, after the user's key if any
    first = q.get("sort") or None
    sort = tuple(tuple(k for k in s.split(".") if k) or (s,)
                 for s in ((first,) if first else ()) + tuple(d for d in DEFAULT_SORT
                                                              if d != first))
    columns = tuple(tuple(c.split(".")) for c in q.get("columns", "").split(",") if c)
    page, size = None, PAGE_SIZE_DEFAULT
    if "page" in q:
        try:
            page, size = int(q["page"]), int(q.get("page_size", PAGE_SIZE_DEFAULT))
        except ValueError:
            raise QueryError("page and page_size must be integers") from None
        if page < 1 or not 1 <= size <= PAGE_SIZE_MAX:
            raise QueryError(f"invalid pagination parameters: page number {page}, page size "
                             f"{size} (page >= 1, page_size 1 to {PAGE_SIZE_MAX})")
    return Query(name, use_regex, sort, q.get("sort_reverse") == "true", columns, page, size)


# --- the name filter ------------------------------------------------------------------------


def matcher(pattern: str, use_regex: bool) -> Callable[[str], bool]:
    """RabbitMQ's name filter: case-insensitive substring, or regex search. A pattern RE2
    cannot run is a QueryError saying why (also when Python's re would have taken it:
    backreferences and lookaround have no linear-time algorithm, so RE2 has neither)."""
    if not use_regex:
        folded = pattern.casefold()
        return lambda s: folded in s.casefold()
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False  # a user's bad pattern is a 400, not a line on stderr
    try:
        pattern.encode()
    except UnicodeEncodeError:
        raise QueryError("name is not valid Unicode (a lone surrogate)") from None
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as e:
        reason = e.args[0].decode(errors="replace") if e.args and isinstance(
            e.args[0], bytes) else str(e)
        if _python_accepts(pattern):
            reason += (" (name filters run on RE2, in time linear in the name: it has no "
                       "backreferences or lookaround)")
        raise QueryError(f"invalid regular expression in name: {reason}") from None
    search = compiled.search

    def match(name: str) -> bool:
        try:
            return search(name) is not None
        except UnicodeEncodeError:  # RE2 reads UTF-8: a name that is not cannot match
            return False

    return match


def _python_accepts(pattern: str) -> bool:
    try:
        re.compile(pattern)  # compiling only (matching is what backtracks)
    except (re.error, RecursionError, OverflowError):
        return False
    return True


def filter_names(items: Sequence[dict[str, Any]], match: Callable[[str], bool],
                 budget_s: float = FILTER_BUDGET_S,
                 clock: Callable[[], float] = time.monotonic) -> list[dict[str, Any]]:
    deadline = clock() + budget_s
    out = []
    pause = breathe()
    for i in items:
        pause()
        if clock() > deadline:
            raise QueryError(f"the name filter took longer than {budget_s:g}s over "
                             f"{len(items)} items: use a simpler pattern")
        name = i.get("name")
        if match(name if isinstance(name, str) else str(name if name is not None else "")):
            out.append(i)
    return out


# --- sorting --------------------------------------------------------------------------------


def _term(v: Any, depth: int = 0) -> tuple[Any, ...]:
    """A sort key for any JSON value, total over them all: Erlang's term order as
    RabbitMQ's sort_list sees JSON (number < atom < map < list < binary); booleans and
    null are atoms (false < null < true, by name)."""
    if isinstance(v, bool):
        return (1, "true" if v else "false")
    if isinstance(v, int | float):
        return (0, v) if v == v else (0, float("inf"))  # NaN (never equal) sorts last
    if v is None:
        return (1, "null")
    if isinstance(v, str):
        return (4, v)
    if depth >= SORT_DEPTH:
        return (5, json.dumps(v, sort_keys=True, default=str))
    if isinstance(v, dict):
        return (2, len(v), tuple((str(k), _term(x, depth + 1)) for k, x in sorted(
            v.items(), key=lambda kv: str(kv[0]))))
    if isinstance(v, list | tuple):
        return (3, tuple(_term(x, depth + 1) for x in v))
    return (4, str(v))


def _dotted(item: Any, path: tuple[str, ...]) -> Any:
    for k in path:
        item = item.get(k, 0) if isinstance(item, dict) else 0  # missing: 0, as RabbitMQ
    return item


def sort(items: list[dict[str, Any]], keys: tuple[tuple[str, ...], ...],
         reverse: bool) -> list[dict[str, Any]]:
    """Stable, by ``keys``. Sorted in runs of SORT_RUN merged by heapq.merge: one C-level
    sort holds the GIL throughout (100,000 items: ~150 ms in which the event loop's
    thread cannot run); runs and a Python-level merge let it in every few ms."""
    if not keys:
        return items
    pause = breathe()
    keyed = []
    for n, i in enumerate(items):
        keyed.append((tuple(_term(_dotted(i, k)) for k in keys), n))
        pause()
    runs = []
    for at in range(0, len(keyed), SORT_RUN):
        runs.append(sorted(keyed[at: at + SORT_RUN]))
        pause()
    ordered = [items[n] for _, n in heapq.merge(*runs)]
    if reverse:
        ordered.reverse()
    return ordered


SORT_RUN = 512  # sorting one run holds the GIL: ~0.5 ms


# --- columns and pages ------------------------------------------------------------------------


def columns(item: dict[str, Any], cols: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in cols:
        v: Any = item
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        if v is None:
            continue
        dst = out
        for k in path[:-1]:
            nxt = dst.setdefault(k, {})
            if not isinstance(nxt, dict):  # "a" and "a.b" both asked: "a" wins
                break
            dst = nxt
        else:
            dst[path[-1]] = v
    return out


def encode(answer: Any) -> str:
    """``answer`` as JSON, a list's items one by one: json.dumps of a whole listing holds
    the GIL for as long as it takes (10,000 queues: ~50 ms); per item, the event loop's
    thread gets its turns."""
    if isinstance(answer, list):
        pause = breathe()
        parts = []
        for i in answer:
            parts.append(json.dumps(i))
            pause()
        return "[" + ",".join(parts) + "]"
    if isinstance(answer, dict) and isinstance(answer.get("items"), list):
        rest = json.dumps({k: v for k, v in answer.items() if k != "items"})
        return f'{rest[:-1]}, "items": {encode(answer["items"])}}}'
    return json.dumps(answer)


def finish(items: list[dict[str, Any]], query: Query,
           match: Callable[[str], bool] | None) -> Any:
    """The answer: filtered, sorted, paged and cut to columns. RabbitMQ's paged answer is
    an object with ``items`` and the counts (``total_count`` before the name filter); an
    unpaged one is the list itself."""
    total = len(items)
    if match is not None:
        items = filter_names(items, match)
    items = sort(items, query.sort, query.reverse)
    if query.page is None:
        return [columns(i, query.columns) for i in items] if query.columns else items
    filtered, size = len(items), query.page_size
    offset = (query.page - 1) * size
    if offset > filtered:  # RabbitMQ's page_out_of_range
        raise QueryError(f"Page out of range, page: {query.page} page size: {size}, "
                         f"len: {filtered}")
    chunk = items[offset: offset + size]
    if query.columns:
        chunk = [columns(i, query.columns) for i in chunk]
    return {"filtered_count": filtered, "item_count": len(chunk), "items": chunk,
            "page": query.page, "page_count": -(-filtered // size), "page_size": size,
            "total_count": total}
