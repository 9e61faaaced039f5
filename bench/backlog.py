"""Count-based clients for backlog measurements (bench/memory.py): publish N persistent
messages with confirms into a durable queue nobody consumes, or drain N with acks.

They reuse bench.loadgen's lean clients (pamqp for the handshake, struct-built frames),
without its timed window: every confirm and every delivery counts, and each run has a
deadline so a stalled broker ends the measurement instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace

from bench.loadgen import Consumer, LoadConfig, Producer

FOREVER = 1 << 62


class _CountingProducer(Producer):
    def __init__(self, cfg: LoadConfig, count: int) -> None:
        super().__init__(cfg)
        self.count = count
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def fill(self, now: int) -> None:
        if not self.publishing or self.error:
            return
        want = min(self.cfg.window - len(self.pending), self.count - (self.next_tag - 1))
        if want <= 0:
            return
        msg = self.head + b"\0" * 8 + self.tail
        tag = self.next_tag
        for t in range(tag, tag + want):
            self.pending[t] = now
        self.next_tag = tag + want
        self.out.append(msg * want)

    def after_data(self, now: int) -> None:
        super().after_data(now)
        if self.confirmed + self.nacked >= self.count and not self.finished.done():
            self.finished.set_result(None)


class _CountingConsumer(Consumer):
    def __init__(self, cfg: LoadConfig, count: int) -> None:
        super().__init__(cfg)
        self.count = count
        self.first_at = 0.0
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def delivered(self, now: int) -> None:
        if not self.first_at:
            self.first_at = time.monotonic()
        self.sent_ts = 0  # the body carries no timestamp here
        super().delivered(now)
        if self.consumed >= self.count and not self.finished.done():
            self.finished.set_result(None)


async def _run(client: _CountingProducer | _CountingConsumer, cfg: LoadConfig,
               timeout: float) -> None:
    loop = asyncio.get_running_loop()
    client.t_begin, client.t_end = 0, FOREVER  # deliveries may follow consume-ok at once
    await asyncio.wait_for(loop.create_connection(lambda: client, cfg.host, cfg.port),
                           cfg.setup_timeout)
    await asyncio.wait_for(client.setup(), cfg.setup_timeout)
    try:
        if isinstance(client, _CountingProducer):
            client.start_publishing(0, FOREVER)
        await asyncio.wait_for(asyncio.shield(client.finished), timeout)
    finally:
        with contextlib.suppress(Exception):
            await client.close()
    if client.error:
        raise RuntimeError(client.error)


def publish(cfg: LoadConfig, count: int, timeout: float = 900.0) -> float:
    """Publish ``count`` messages; returns the seconds until the last confirm."""

    async def main() -> float:
        client = _CountingProducer(cfg, count)
        start = time.monotonic()
        await _run(client, cfg, timeout)
        if client.nacked:
            raise RuntimeError(f"{client.nacked} publishes nacked")
        return time.monotonic() - start

    return asyncio.run(main())


def drain(cfg: LoadConfig, count: int, timeout: float = 900.0) -> tuple[float, float]:
    """Consume ``count`` messages with acks; returns (seconds from connecting to the first
    delivery, seconds to the last)."""

    async def main() -> tuple[float, float]:
        client = _CountingConsumer(replace(cfg, prefetch=max(cfg.prefetch, 1000)), count)
        start = time.monotonic()
        await _run(client, cfg, timeout)
        return client.first_at - start, time.monotonic() - start

    return asyncio.run(main())
