"""node.services.metrics.RenderCache: an unauthenticated scrape cannot take the loop."""

from __future__ import annotations

from node.services.metrics import RenderCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def cache_with(clock: Clock, **kw: float) -> RenderCache:
    c = RenderCache(**kw)  # type: ignore[arg-type]
    c._clock = clock
    return c


def test_slow_rendering_is_reused_for_share_times_its_cost() -> None:
    clock = Clock()
    cache = cache_with(clock, share=20, quick_s=0.005)
    calls = 0

    def render() -> bytes:
        nonlocal calls
        calls += 1
        clock.now += 0.1  # 100 ms: a node with very many queues
        return b"body%d" % calls

    assert cache.get("", render) == b"body1"
    clock.now += 1.0  # fresh for 20 x 0.1 s from the start of the rendering
    assert cache.get("", render) == b"body1"
    clock.now += 1.0
    assert cache.get("", render) == b"body2"
    assert calls == 2


def test_quick_rendering_is_never_reused() -> None:
    clock = Clock()
    cache = cache_with(clock, share=20, quick_s=0.005)
    n = 0

    def render() -> bytes:
        nonlocal n
        n += 1
        clock.now += 0.001
        return b"%d" % n

    assert [cache.get("", render) for _ in range(3)] == [b"1", b"2", b"3"]


def test_keys_from_queries_are_bounded() -> None:
    clock = Clock()
    cache = cache_with(clock, entries=4)

    def render() -> bytes:
        clock.now += 0.05
        return b"x"

    for i in range(100):
        cache.get(("vhost", i), render)
    assert len(cache._cache) == 4
