"""Shared helpers for the integration suite: unique names, bounded waits, pika shortcuts.

Everything here is broker-agnostic: the same calls run against RaftMQ and RabbitMQ 3.10.
Every wait is bounded by an explicit timeout; nothing loops forever.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

DEFAULT_WAIT = 5.0  # seconds: generous for loopback, bounded


def unique(prefix: str) -> str:
    """A name no other test (or earlier run against a shared broker) uses."""
    return f"it-{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass
class Names:
    """Per-test name factory that remembers what it handed out so teardown can delete it."""

    test: str
    queues: list[str] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)

    def queue(self, tag: str = "q") -> str:
        name = unique(f"{self.test}-{tag}")
        self.queues.append(name)
        return name

    def exchange(self, tag: str = "x") -> str:
        name = unique(f"{self.test}-{tag}")
        self.exchanges.append(name)
        return name


def connection_params(url: str, **overrides: Any) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.stack_timeout = 10
    params.blocked_connection_timeout = 10
    for key, value in overrides.items():
        setattr(params, key, value)
    return params


def connect(url: str, **overrides: Any) -> pika.BlockingConnection:
    return pika.BlockingConnection(connection_params(url, **overrides))


def close_quietly(conn: pika.BlockingConnection | None) -> None:
    if conn is None:
        return
    with contextlib.suppress(Exception):
        if conn.is_open:
            conn.close()


def wait_until(pred: Callable[[], Any], timeout: float = DEFAULT_WAIT, interval: float = 0.05,
               what: str = "condition") -> Any:
    """Poll ``pred`` until it returns a truthy value; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last={last!r})")
        time.sleep(interval)


def pump(conn: pika.BlockingConnection, until: Callable[[], bool], timeout: float = DEFAULT_WAIT,
         what: str = "event") -> None:
    """Run pika's I/O loop until ``until()`` is true; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not until():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        conn.process_data_events(time_limit=min(0.1, remaining))


def settle(conn: pika.BlockingConnection, duration: float = 0.3) -> None:
    """Give the broker a short window to send anything it (wrongly) would send.

    Used only to assert that something does *not* happen (e.g. no more deliveries beyond the
    prefetch window); the positive cases always wait on the event itself.
    """
    deadline = time.monotonic() + duration
    while (remaining := deadline - time.monotonic()) > 0:
        conn.process_data_events(time_limit=remaining)


@dataclass
class Delivery:
    method: Any
    properties: pika.BasicProperties
    body: bytes


class Collector:
    """basic_consume callback that records deliveries (optionally auto-acking them)."""

    def __init__(self, ack: bool = False) -> None:
        self.ack = ack
        self.items: list[Delivery] = []

    def __call__(self, ch: BlockingChannel, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        self.items.append(Delivery(method, props, body))
        if self.ack:
            ch.basic_ack(method.delivery_tag)

    @property
    def bodies(self) -> list[bytes]:
        return [d.body for d in self.items]

    def __len__(self) -> int:
        return len(self.items)


def consume_n(conn: pika.BlockingConnection, ch: BlockingChannel, queue: str, n: int,
              timeout: float = DEFAULT_WAIT, ack: bool = True) -> list[Delivery]:
    """Consume exactly ``n`` messages from ``queue`` (acking them unless ack=False), then cancel."""
    got = Collector(ack=ack)
    tag = ch.basic_consume(queue, got)
    try:
        pump(conn, lambda: len(got) >= n, timeout, what=f"{n} messages from {queue}")
    finally:
        if ch.is_open:
            ch.basic_cancel(tag)
    return got.items


def get_all(ch: BlockingChannel, queue: str, limit: int = 10_000, ack: bool = True) -> list[Delivery]:
    """Drain ``queue`` with basic.get until get-empty (bounded by ``limit``)."""
    out = []
    for _ in range(limit):
        method, props, body = ch.basic_get(queue, auto_ack=False)
        if method is None:
            break
        out.append(Delivery(method, props, body))
        if ack:
            ch.basic_ack(method.delivery_tag)
    return out


def queue_depth(ch: BlockingChannel, queue: str) -> int:
    return ch.queue_declare(queue, passive=True).method.message_count


def publish_many(ch: BlockingChannel, exchange: str, routing_key: str,
                 bodies: Iterable[bytes], persistent: bool = False) -> None:
    props = pika.BasicProperties(delivery_mode=2 if persistent else 1)
    for body in bodies:
        ch.basic_publish(exchange, routing_key, body, props)


def wait_depth(ch: BlockingChannel, queue: str, n: int, timeout: float = DEFAULT_WAIT) -> None:
    """Poll a queue (passive declare) until it holds ``n`` ready messages."""
    wait_until(lambda: queue_depth(ch, queue) == n, timeout, what=f"{queue} to hold {n} messages")


def expect_channel_error(code: int, fn: Callable[[], Any]) -> pika.exceptions.ChannelClosedByBroker:
    """Run ``fn`` and assert the broker closed the channel with ``code``."""
    try:
        fn()
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == code, f"expected channel close {code}, got {exc!r}"
        return exc
    raise AssertionError(f"expected channel close {code}, call succeeded")


def expect_connection_error(code: int, fn: Callable[[], Any]) -> pika.exceptions.ConnectionClosedByBroker:
    try:
        fn()
    except pika.exceptions.ConnectionClosedByBroker as exc:
        assert exc.reply_code == code, f"expected connection close {code}, got {exc!r}"
        return exc
    raise AssertionError(f"expected connection close {code}, call succeeded")


def roundtrip_ok(url: str, timeout: float = DEFAULT_WAIT) -> None:
    """Prove the broker still serves: a new connection declares, publishes and consumes."""
    conn = connect(url)
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        body = uuid.uuid4().bytes
        ch.basic_publish("", q, body)
        got = consume_n(conn, ch, q, 1, timeout)
        assert got[0].body == body
    finally:
        close_quietly(conn)
