"""A continuous producer and consumer (aio-pika) that survive the loss of their node by moving
to the next one, and record what happened for the assertions:

* the producer publishes persistent messages with unique ids, one at a time with publisher
  confirms; ``published`` holds every id handed to the broker (confirmed or not), ``confirmed``
  the ids whose basic.ack arrived, with the monotonic time it arrived;
* the consumer acks every delivery; ``consumed`` holds (id, redelivered) in arrival order.

Every broker interaction is bounded by a timeout; connection loss (or a timeout) moves the
client to the next URL of its list.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika import DeliveryMode, Message

OP_TIMEOUT = 10.0


@dataclass
class StreamLog:
    published: list[str] = field(default_factory=list)
    sent: dict[str, float] = field(default_factory=dict)  # id -> time handed to the client
    confirmed: dict[str, float] = field(default_factory=dict)  # id -> time confirm arrived
    consumed: list[tuple[str, bool]] = field(default_factory=list)
    producer_errors: list[tuple[float, str, str]] = field(default_factory=list)  # (t, url, error)
    consumer_errors: list[tuple[float, str, str]] = field(default_factory=list)

    @property
    def consumed_ids(self) -> set[str]:
        return {mid for mid, _ in self.consumed}

    def missing(self) -> set[str]:
        """Confirmed but never consumed."""
        return set(self.confirmed) - self.consumed_ids

    def phantoms(self) -> set[str]:
        """Consumed but never published."""
        return self.consumed_ids - set(self.published)

    def duplicates(self) -> list[str]:
        seen: set[str] = set()
        dup = []
        for mid, _ in self.consumed:
            if mid in seen:
                dup.append(mid)
            seen.add(mid)
        return dup

    def confirm_times(self) -> list[float]:
        return sorted(self.confirmed.values())

    def first_confirm_after(self, t: float) -> float | None:
        return next((x for x in self.confirm_times() if x > t), None)

    def longest_pause(self, start: float, end: float) -> tuple[float, float] | None:
        """The longest pause between consecutive confirms (or ``start`` and the first confirm
        after it) within [start, end]: (from, to)."""
        times = [start] + [x for x in self.confirm_times() if start < x <= end]
        if len(times) < 2:
            return None
        return max(zip(times, times[1:], strict=False), key=lambda p: p[1] - p[0])


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:200]


async def _close(conn: Any) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 3)


async def produce(urls: Callable[[], Sequence[str]] | Sequence[str], queue: str, log: StreamLog,
                  stop: asyncio.Event, prefix: str = "m", interval: float = 0.002,
                  max_messages: int | None = None) -> None:
    """Publish ``prefix-0``, ``prefix-1``… to ``queue`` until ``stop`` is set."""
    i = 0
    k = 0
    while not stop.is_set() and (max_messages is None or i < max_messages):
        choices = list(urls() if callable(urls) else urls)
        url = choices[k % len(choices)]
        conn = None
        try:
            conn = await aio_pika.connect(url, timeout=3)
            ch = await asyncio.wait_for(conn.channel(publisher_confirms=True), OP_TIMEOUT)
            while not stop.is_set() and (max_messages is None or i < max_messages):
                mid = f"{prefix}-{i}"
                i += 1
                log.published.append(mid)
                log.sent[mid] = time.monotonic()
                await ch.default_exchange.publish(
                    Message(mid.encode(), delivery_mode=DeliveryMode.PERSISTENT, message_id=mid),
                    routing_key=queue, timeout=OP_TIMEOUT)
                log.confirmed[mid] = time.monotonic()
                if interval:
                    await asyncio.sleep(interval)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # connection lost, nack, timeout: next node
            log.producer_errors.append((time.monotonic(), url, _err(e)))
            k += 1
            await asyncio.sleep(0.1)
        finally:
            await _close(conn)


async def consume(urls: Callable[[], Sequence[str]] | Sequence[str], queue: str, log: StreamLog,
                  stop: asyncio.Event, prefetch: int = 100) -> None:
    """Consume ``queue`` (acking each delivery) until ``stop`` is set."""
    k = 0
    while not stop.is_set():
        choices = list(urls() if callable(urls) else urls)
        url = choices[k % len(choices)]
        conn = None
        try:
            conn = await aio_pika.connect(url, timeout=3)
            ch = await asyncio.wait_for(conn.channel(), OP_TIMEOUT)
            await asyncio.wait_for(ch.set_qos(prefetch_count=prefetch), OP_TIMEOUT)
            q = await asyncio.wait_for(ch.declare_queue(queue, passive=True), OP_TIMEOUT)

            async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
                log.consumed.append((msg.body.decode(), bool(msg.redelivered)))
                await msg.ack()

            await asyncio.wait_for(q.consume(on_message), OP_TIMEOUT)
            while not stop.is_set():
                if conn.is_closed or ch.is_closed:
                    raise ConnectionError("connection or channel closed")
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.consumer_errors.append((time.monotonic(), url, _err(e)))
            k += 1
            await asyncio.sleep(0.1)
        finally:
            await _close(conn)


async def wait_for(pred: Callable[[], Any], timeout: float, what: str,
                   interval: float = 0.05) -> Any:
    """Poll ``pred`` on the event loop until truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = pred()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class Stream:
    """A producer and a consumer task on one queue; ``async with`` starts and stops them."""

    def __init__(self, producer_urls: Callable[[], Sequence[str]] | Sequence[str],
                 consumer_urls: Callable[[], Sequence[str]] | Sequence[str], queue: str,
                 interval: float = 0.002, prefetch: int = 100) -> None:
        self.log = StreamLog()
        self.queue = queue
        self._stop_producer = asyncio.Event()
        self._stop_consumer = asyncio.Event()
        self._producer = asyncio.create_task(
            produce(producer_urls, queue, self.log, self._stop_producer, interval=interval))
        self._consumer = asyncio.create_task(
            consume(consumer_urls, queue, self.log, self._stop_consumer, prefetch=prefetch))

    async def wait_confirmed(self, n: int, timeout: float = 20.0) -> None:
        start = len(self.log.confirmed)
        await wait_for(lambda: len(self.log.confirmed) >= start + n, timeout,
                       f"{n} more confirms (producer errors: {self.log.producer_errors[-3:]})")

    async def stop_producer(self, timeout: float = OP_TIMEOUT + 5) -> None:
        self._stop_producer.set()
        await asyncio.wait_for(self._producer, timeout)

    async def drain(self, timeout: float = 20.0) -> None:
        """Stop the producer, wait until the consumer has every confirmed message, stop it."""
        await self.stop_producer()
        try:
            await wait_for(lambda: not self.log.missing(), timeout,
                           "every confirmed message to be consumed")
        finally:
            await self.stop()

    async def stop(self) -> None:
        self._stop_producer.set()
        self._stop_consumer.set()
        for task in (self._producer, self._consumer):
            try:
                await asyncio.wait_for(task, OP_TIMEOUT + 5)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()

    def summary(self) -> str:
        log = self.log
        return (f"published={len(log.published)} confirmed={len(log.confirmed)} "
                f"consumed={len(log.consumed)} unique={len(log.consumed_ids)} "
                f"redelivered={sum(1 for _, r in log.consumed if r)} "
                f"missing={len(log.missing())} phantoms={len(log.phantoms())} "
                f"producer_errors={log.producer_errors} consumer_errors={log.consumer_errors}")
