"""Pure routing: which destinations a message published to one exchange reaches.

Each exchange keeps, as derived data (``Exchange.index``), an index built from
its bindings the first time it routes after a binding change:

* direct: routing key -> destinations,
* fanout: all destinations,
* topic: a word trie (as rabbit_exchange_type_topic) plus a bounded cache
  routing key -> destinations,
* headers: the compiled binding patterns.

Destination order is the bindings' insertion order, which every replica (and
every restored snapshot) shares, so routing is deterministic.
"""

from __future__ import annotations

from typing import Any

from cluster.machine.amqp_table import is_void, message_headers, norm
from cluster.machine.delayed import routing_type
from cluster.machine.state import Dest, Exchange, Queue, VHost

ROUTE_CACHE_MAX = 4096


def freeze(v: Any) -> Any:
    """A hashable, order-insensitive form of a field-table value (binding identity)."""
    if isinstance(v, dict):
        return tuple(sorted((str(k), freeze(x)) for k, x in v.items()))
    if isinstance(v, list | tuple):
        return ("__list__", *(freeze(x) for x in v))
    if isinstance(v, bytearray | memoryview):
        return bytes(v)
    return v


# --- topic ---------------------------------------------------------------------------


def split_words(key: str) -> list[str]:
    """RabbitMQ's split_topic_key: "" has no words, "a." is ["a", ""]."""
    return key.split(".") if key else []


class _TrieNode:
    __slots__ = ("children", "dests")

    def __init__(self) -> None:
        self.children: dict[str, _TrieNode] = {}
        self.dests: dict[Dest, None] = {}


def _trie_insert(root: _TrieNode, key: str, dest: Dest) -> None:
    node = root
    for w in split_words(key):
        nxt = node.children.get(w)
        if nxt is None:
            nxt = node.children[w] = _TrieNode()
        node = nxt
    node.dests[dest] = None


def _trie_match(root: _TrieNode, words: list[str]) -> dict[Dest, None]:
    out: dict[Dest, None] = {}
    n = len(words)
    seen: set[tuple[int, int]] = set()  # (id(node), position): avoids "#.#.#" blowups

    def walk(node: _TrieNode, i: int) -> None:
        k = (id(node), i)
        if k in seen:
            return
        seen.add(k)
        children = node.children
        if i == n:
            out.update(node.dests)
        else:
            c = children.get(words[i])
            if c is not None:
                walk(c, i + 1)
            if words[i] != "*":
                c = children.get("*")
                if c is not None:
                    walk(c, i + 1)
        c = children.get("#")
        if c is not None:  # "#" eats zero or more words
            for j in range(i, n + 1):
                walk(c, j)

    walk(root, 0)
    return out


def topic_matches(pattern: str, key: str) -> bool:
    """Reference matcher for one binding key (used by tests)."""
    root = _TrieNode()
    _trie_insert(root, pattern, (False, "x"))
    return bool(_trie_match(root, split_words(key)))


# --- headers -------------------------------------------------------------------------

_X_MATCH = {"all": (True, False), "any": (False, False), "all-with-x": (True, True),
            "any-with-x": (False, True)}


def x_match_valid(args: dict[str, Any]) -> str | None:
    """None if the binding's x-match is valid, else RabbitMQ's complaint."""
    v = args.get("x-match")
    if v is None:
        return None
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if not isinstance(v, str):
        return f"Invalid x-match field type {type(v).__name__} (value {v!r}); expected longstr"
    if v not in _X_MATCH:
        return f"Invalid x-match field value {v!r}; expected all, any, all-with-x, or any-with-x"
    return None


def compile_headers(args: dict[str, Any]) -> tuple[bool, tuple[tuple[str, Any], ...]]:
    """(match_all, ((key, normalised value), ...)) for a headers binding."""
    mode = args.get("x-match", "all")
    if isinstance(mode, bytes):
        mode = mode.decode("utf-8", "replace")
    match_all, with_x = _X_MATCH.get(mode, (True, False))  # RabbitMQ: legacy default "all"
    pattern = tuple(
        (k, norm(v))
        for k, v in args.items()
        if k != "x-match" and (with_x or not k.startswith("x-"))
    )
    return match_all, pattern


def headers_match(match_all: bool, pattern: tuple[tuple[str, Any], ...],
                  headers: dict[str, Any]) -> bool:
    if match_all:
        for k, v in pattern:
            hv = headers.get(k, _MISSING)
            if hv is _MISSING or (not is_void(v) and hv != v):
                return False
        return True
    for k, v in pattern:
        hv = headers.get(k, _MISSING)
        if hv is not _MISSING and (is_void(v) or hv == v):
            return True
    return False


_MISSING = object()


# --- index & matching ----------------------------------------------------------------


class _Index:
    __slots__ = ("by_key", "all", "trie", "cache", "headers", "has_exchange_dests")

    def __init__(self) -> None:
        self.by_key: dict[str, dict[Dest, None]] = {}
        self.all: tuple[Dest, ...] = ()
        self.trie: _TrieNode | None = None
        self.cache: dict[str, tuple[Dest, ...]] = {}
        self.headers: list[tuple[bool, tuple[tuple[str, Any], ...], Dest]] = []
        self.has_exchange_dests = False


def _build(ex: Exchange) -> _Index:
    idx = _Index()
    alld: dict[Dest, None] = {}
    t = routing_type(ex)  # (an x-delayed-message exchange's x-delayed-type)
    for (dest, key, _frozen), args in ex.bindings.items():
        alld[dest] = None
        if dest[0]:
            idx.has_exchange_dests = True
        if t == "headers":
            match_all, pattern = compile_headers(args)
            idx.headers.append((match_all, pattern, dest))
        else:
            idx.by_key.setdefault(key, {})[dest] = None
    idx.all = tuple(alld)
    if t == "topic":
        root = _TrieNode()
        for key, dests in idx.by_key.items():
            for d in dests:
                _trie_insert(root, key, d)
        idx.trie = root
    return idx


def index_of(ex: Exchange) -> _Index:
    idx = ex.index
    if idx is None:
        idx = ex.index = _build(ex)
    return idx


_EMPTY: tuple[Dest, ...] = ()


def match(ex: Exchange, routing_key: str, properties: bytes) -> tuple[Dest, ...] | dict[Dest, None]:
    """Destinations bound to ``ex`` that a message matches (one exchange, no e2e)."""
    idx = index_of(ex)
    t = ex.type
    if t[:2] == "x-":  # x-delayed-message, x-message-deduplication
        t = routing_type(ex)
    if t == "direct":
        return idx.by_key.get(routing_key, _EMPTY)
    if t == "fanout":
        return idx.all
    if t == "topic":
        r = idx.cache.get(routing_key)
        if r is None:
            if len(idx.cache) >= ROUTE_CACHE_MAX:
                idx.cache.clear()
            assert idx.trie is not None
            r = idx.cache[routing_key] = tuple(_trie_match(idx.trie, split_words(routing_key)))
        return r
    # headers
    if not idx.headers:
        return _EMPTY
    headers = message_headers(properties)
    out: dict[Dest, None] = {}
    for match_all, pattern, dest in idx.headers:
        if dest not in out and headers_match(match_all, pattern, headers):
            out[dest] = None
    return out


# --- routing through exchange-to-exchange bindings and alternate exchanges ------------


def alternate_exchange(ex: Exchange) -> str | None:
    ae = ex.arguments.get("alternate-exchange") if ex.arguments else None
    if ae is None:
        ae = ex.policy_ae  # a policy's (cluster/machine/policies.py): the argument wins
    if isinstance(ae, bytes):
        return ae.decode("utf-8", "replace")
    return ae if isinstance(ae, str) else None


def route(vh: VHost, ex: Exchange, routing_key: str, properties: bytes) -> list[Queue]:
    """Queues a message published to ``ex`` reaches, each once, following
    exchange-to-exchange bindings without looping. An exchange whose own bindings
    match nothing passes the message to its alternate exchange, if it has one
    (rabbit_exchange:route's process_alternate), also cycle-safe."""
    dests = match(ex, routing_key, properties)
    queues = vh.queues
    if not index_of(ex).has_exchange_dests and (dests or not (ex.arguments or ex.policy_ae)):
        return [queues[name] for _, name in dests]
    found: dict[str, Queue] = {}
    seen = {ex.name}
    pending: list[tuple[Exchange, tuple[Dest, ...] | dict[Dest, None]]] = [(ex, dests)]
    exchanges = vh.exchanges
    while pending:
        source, matched = pending.pop(0)
        if not matched:
            ae = alternate_exchange(source)
            if ae is not None and ae not in seen:
                seen.add(ae)
                ax = exchanges.get(ae)
                if ax is not None:
                    pending.append((ax, match(ax, routing_key, properties)))
            continue
        for is_ex, name in matched:
            if is_ex:
                if name not in seen:
                    seen.add(name)
                    pending.append((exchanges[name], match(exchanges[name], routing_key,
                                                           properties)))
            elif name not in found:
                found[name] = queues[name]
    return list(found.values())
