"""The workload: producers with publisher confirms and consumers with manual acks (aio-pika), as
a real application would write them, recording everything the checker needs.

* Each message has a unique id ``p<producer>-<seq>`` (per-producer sequence numbers) carried in
  the body together with the run id, the queue and the *attempt*: a producer whose connection
  breaks (or whose publish times out or is nacked) connects to the next node and publishes every
  unconfirmed message again, same id, next attempt.
* Each consumer session (one connection) records every delivery: id, attempt, queue,
  ``redelivered`` flag; it acks after recording. A broken connection moves it to the next node.
* At the end the producers stop taking new sequence numbers but keep retrying unconfirmed ones
  (bounded), consumers drain, and a final ``basic.get`` sweep empties every queue.

Everything runs on one asyncio loop in the harness process; every broker call is bounded by a
timeout.
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
from aio_pika.abc import AbstractIncomingMessage

OP_TIMEOUT_S = 5.0  # any single broker operation
CONNECT_TIMEOUT_S = 3.0
HEARTBEAT_S = 2  # clients notice a paused node within ~2 heartbeats
RECONNECT_PAUSE_S = 0.2
PADDING = b"." * 64

Urls = Callable[[], Sequence[str]]


def message_id(producer: int, seq: int) -> str:
    return f"p{producer}-{seq}"


def encode_body(run: str, producer: int, seq: int, attempt: int, queue: str) -> bytes:
    return f"{run}|{producer}|{seq}|{attempt}|{queue}|".encode() + PADDING


def decode_body(body: bytes) -> tuple[str, int, int, int, str] | None:
    """(run, producer, seq, attempt, queue) or None for a body this harness did not write."""
    try:
        run, producer, seq, attempt, queue, _ = body.decode().split("|", 5)
        return run, int(producer), int(seq), int(attempt), queue
    except (UnicodeDecodeError, ValueError):
        return None


@dataclass
class Publish:
    """One message id: every attempt to publish it and whether one was confirmed."""

    producer: int
    seq: int
    queue: str
    attempts: int = 0
    first_sent: float = 0.0
    confirmed_at: float | None = None
    confirmed_attempt: int | None = None
    nacks: int = 0


@dataclass(frozen=True)
class Delivery:
    session: str  # consumer connection ("c1.3") or "drain"
    body: bytes
    redelivered: bool
    queue: str  # the queue it was consumed from
    at: float


@dataclass
class History:
    run: str
    publishes: dict[str, Publish] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    confirm_times: list[float] = field(default_factory=list)
    errors: list[tuple[float, str, str]] = field(default_factory=list)  # (t, who, error)

    def confirmed_ids(self) -> set[str]:
        return {mid for mid, p in self.publishes.items() if p.confirmed_at is not None}

    def consumed_ids(self) -> set[str]:
        out = set()
        for d in self.deliveries:
            parsed = decode_body(d.body)
            if parsed is not None:
                out.add(message_id(parsed[1], parsed[2]))
        return out

    def unconsumed_confirmed(self) -> int:
        return len(self.confirmed_ids() - self.consumed_ids())


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:160]


def with_heartbeat(url: str) -> str:
    return url + ("&" if "?" in url else "?") + f"heartbeat={HEARTBEAT_S}"


async def _close(conn: Any) -> None:
    if conn is not None:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(conn.close(), 2)


class Producer:
    """Publishes ``p<pid>-0, -1, …`` round-robin over ``queues`` at ``rate`` msg/s with up to
    ``window`` unconfirmed, moving to the next node (and republishing what is unconfirmed) when
    its connection fails."""

    def __init__(self, pid: int, urls: Urls, queues: Sequence[str], history: History,
                 rate: float, window: int, first_node: int) -> None:
        self.pid = pid
        self.urls = urls
        self.queues = list(queues)
        self.h = history
        self.rate = rate
        self.window = window
        self.node = first_node
        self.next_seq = 0
        self.unconfirmed: dict[int, Publish] = {}  # seq -> record, not confirmed yet
        self.stopping = False  # no new sequence numbers
        self.retry: list[int] = []  # sequence numbers to publish again on this session
        self.stop_deadline: float | None = None  # once stopping: give up retrying then
        self.connections = 0

    def _new(self) -> Publish:
        seq = self.next_seq
        self.next_seq += 1
        rec = Publish(self.pid, seq, self.queues[seq % len(self.queues)], first_sent=time.monotonic())
        self.h.publishes[message_id(self.pid, seq)] = rec
        self.unconfirmed[seq] = rec
        return rec

    async def run(self, deadline_after_stop: float) -> None:
        """Until stopped and everything is confirmed (or ``deadline_after_stop`` s after the
        stop)."""
        while True:
            if self.stopping and self.stop_deadline is None:
                self.stop_deadline = time.monotonic() + deadline_after_stop
            if self.stopping and (not self.unconfirmed
                                  or time.monotonic() > (self.stop_deadline or 0)):
                return
            urls = list(self.urls())
            url = urls[self.node % len(urls)]
            conn = None
            try:
                conn = await aio_pika.connect(with_heartbeat(url), timeout=CONNECT_TIMEOUT_S)
                self.connections += 1
                ch = await asyncio.wait_for(conn.channel(publisher_confirms=True), OP_TIMEOUT_S)
                await self._session(ch)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure: next node
                self.h.errors.append((time.monotonic(), f"producer {self.pid} @{url}", _err(e)))
                self.node += 1
                await asyncio.sleep(RECONNECT_PAUSE_S)
            finally:
                await _close(conn)

    async def _session(self, ch: Any) -> None:
        """Publish on one channel until it fails (raises) or the producer is done."""
        failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        in_flight: set[asyncio.Task[None]] = set()
        # Unconfirmed messages from an earlier connection go first, in sequence order.
        self.retry = sorted(self.unconfirmed)
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        next_at = time.monotonic()
        try:
            while not failed.done():
                if self.stopping:
                    dl = self.stop_deadline
                    if not self.unconfirmed or (dl is not None and time.monotonic() > dl):
                        return
                if len(in_flight) >= self.window:
                    await asyncio.wait(in_flight | {failed}, return_when=asyncio.FIRST_COMPLETED)
                    continue
                rec: Publish | None = None
                if self.retry:
                    rec = self.unconfirmed.get(self.retry.pop(0))
                    if rec is None:
                        continue
                elif not self.stopping:
                    now = time.monotonic()
                    if now < next_at:
                        await asyncio.wait([failed], timeout=next_at - now)
                        continue
                    next_at = max(next_at + interval, now - 1.0)
                    rec = self._new()
                else:  # stopping: wait for the remaining confirms (nacks come back as retries)
                    await asyncio.wait(in_flight | {failed}, timeout=0.1,
                                       return_when=asyncio.FIRST_COMPLETED)
                    continue
                task = asyncio.create_task(self._publish(ch, rec, failed))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            raise failed.result()
        finally:
            for t in in_flight:
                t.cancel()

    async def _publish(self, ch: Any, rec: Publish, failed: asyncio.Future[BaseException]) -> None:
        rec.attempts += 1
        attempt = rec.attempts
        body = encode_body(self.h.run, self.pid, rec.seq, attempt, rec.queue)
        msg = Message(body, delivery_mode=DeliveryMode.PERSISTENT,
                      message_id=message_id(self.pid, rec.seq))
        try:
            await ch.default_exchange.publish(msg, routing_key=rec.queue, mandatory=False,
                                              timeout=OP_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except aio_pika.exceptions.DeliveryError:  # nack: publish it again
            rec.nacks += 1
            if rec.confirmed_at is None:
                self.retry.append(rec.seq)
            return
        except Exception as e:  # noqa: BLE001 - timeout or broken channel: the session ends
            if not failed.done():
                failed.set_result(ConnectionError(f"publish {message_id(self.pid, rec.seq)}: "
                                                  f"{_err(e)}"))
            return
        if rec.confirmed_at is None:
            now = time.monotonic()
            rec.confirmed_at, rec.confirmed_attempt = now, attempt
            self.h.confirm_times.append(now)
        self.unconfirmed.pop(rec.seq, None)


class Consumer:
    """Consumes every queue with manual acks (prefetch ``prefetch``), recording each delivery
    before acking it; moves to the next node when its connection fails."""

    def __init__(self, cid: int, urls: Urls, queues: Sequence[str], history: History,
                 prefetch: int, first_node: int) -> None:
        self.cid = cid
        self.urls = urls
        self.queues = list(queues)
        self.h = history
        self.prefetch = prefetch
        self.node = first_node
        self.sessions = 0
        self.stop = asyncio.Event()
        self.last_delivery = 0.0

    async def run(self) -> None:
        while not self.stop.is_set():
            urls = list(self.urls())
            url = urls[self.node % len(urls)]
            conn = None
            self.sessions += 1
            session = f"c{self.cid}.{self.sessions}"
            try:
                conn = await aio_pika.connect(with_heartbeat(url), timeout=CONNECT_TIMEOUT_S)
                ch = await asyncio.wait_for(conn.channel(), OP_TIMEOUT_S)
                await asyncio.wait_for(ch.set_qos(prefetch_count=self.prefetch), OP_TIMEOUT_S)
                for name in self.queues:
                    q = await asyncio.wait_for(ch.declare_queue(name, durable=True), OP_TIMEOUT_S)
                    await asyncio.wait_for(q.consume(self._handler(session, name)), OP_TIMEOUT_S)
                while not self.stop.is_set():
                    if conn.is_closed or ch.is_closed:
                        raise ConnectionError("connection or channel closed")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), 0.1)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure: next node
                self.h.errors.append((time.monotonic(), f"consumer {session} @{url}", _err(e)))
                self.node += 1
                await asyncio.sleep(RECONNECT_PAUSE_S)
            finally:
                await _close(conn)

    def _handler(self, session: str, queue: str) -> Callable[[AbstractIncomingMessage], Any]:
        async def on_message(msg: AbstractIncomingMessage) -> None:
            now = time.monotonic()
            self.last_delivery = now
            self.h.deliveries.append(Delivery(session, bytes(msg.body), bool(msg.redelivered),
                                              queue, now))
            with contextlib.suppress(Exception):
                await msg.ack()

        return on_message


async def declare_queues(urls: Sequence[str], queues: Sequence[str], timeout: float = 30.0) -> None:
    """Declare the durable queues through any node that answers."""
    deadline = time.monotonic() + timeout
    k = 0
    while True:
        conn = None
        try:
            conn = await aio_pika.connect(urls[k % len(urls)], timeout=CONNECT_TIMEOUT_S)
            ch = await asyncio.wait_for(conn.channel(), OP_TIMEOUT_S)
            for name in queues:
                await asyncio.wait_for(ch.declare_queue(name, durable=True), OP_TIMEOUT_S)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            k += 1
            await asyncio.sleep(0.3)
        finally:
            await _close(conn)


async def sweep(urls: Sequence[str], queues: Sequence[str], history: History,
                timeout: float = 60.0) -> dict[str, int]:
    """Empty every queue with ``basic.get`` (acked), recording what it gets as session
    ``drain``; then check through every node that each queue reports 0 messages. Returns the
    message counts each node last reported (``"<queue>@<url>"`` -> count)."""
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    k = 0
    while True:
        conn = None
        try:
            conn = await aio_pika.connect(urls[k % len(urls)], timeout=CONNECT_TIMEOUT_S)
            ch = await asyncio.wait_for(conn.channel(), OP_TIMEOUT_S)
            for name in queues:
                q = await asyncio.wait_for(ch.declare_queue(name, durable=True), OP_TIMEOUT_S)
                while True:
                    msg = await asyncio.wait_for(q.get(fail=False, no_ack=False), OP_TIMEOUT_S)
                    if msg is None:
                        break
                    history.deliveries.append(Delivery("drain", bytes(msg.body),
                                                       bool(msg.redelivered), name,
                                                       time.monotonic()))
                    await asyncio.wait_for(msg.ack(), OP_TIMEOUT_S)
            break
        except Exception as e:  # noqa: BLE001 - try another node
            history.errors.append((time.monotonic(), "sweep", _err(e)))
            if time.monotonic() > deadline:
                raise
            k += 1
            await asyncio.sleep(0.5)
        finally:
            await _close(conn)
    # Every node's view of the queues, once its replica has applied the drain.
    for url in urls:
        conn = None
        try:
            conn = await aio_pika.connect(url, timeout=CONNECT_TIMEOUT_S)
            ch = await asyncio.wait_for(conn.channel(), OP_TIMEOUT_S)
            for name in queues:
                for _ in range(20):
                    q = await asyncio.wait_for(ch.declare_queue(name, durable=True, passive=True),
                                               OP_TIMEOUT_S)
                    counts[f"{name}@{url}"] = q.declaration_result.message_count or 0
                    if not counts[f"{name}@{url}"]:
                        break
                    await asyncio.sleep(0.2)
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            history.errors.append((time.monotonic(), f"count @{url}", _err(e)))
            counts[f"?@{url}"] = -1
        finally:
            await _close(conn)
    return counts


async def publish_backlog(urls: Sequence[str], queue: str, count: int, size: int = 1024,
                          timeout: float = 120.0) -> None:
    """``count`` persistent messages of ``size`` bytes into ``queue`` (declared durable), with
    confirms, through the first node that answers; the state (and so every snapshot) grows."""
    conn = await aio_pika.connect(urls[0], timeout=CONNECT_TIMEOUT_S)
    try:
        ch = await asyncio.wait_for(conn.channel(publisher_confirms=True), OP_TIMEOUT_S)
        await asyncio.wait_for(ch.declare_queue(queue, durable=True), OP_TIMEOUT_S)
        body = b"b" * size
        deadline = time.monotonic() + timeout
        for start in range(0, count, 100):
            await asyncio.gather(*(ch.default_exchange.publish(
                Message(body, delivery_mode=DeliveryMode.PERSISTENT), routing_key=queue,
                timeout=OP_TIMEOUT_S) for _ in range(min(100, count - start))))
            if time.monotonic() > deadline:
                raise TimeoutError(f"backlog: {start} of {count} after {timeout}s")
    finally:
        await _close(conn)
