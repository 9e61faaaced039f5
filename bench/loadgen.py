"""A lean AMQP 0-9-1 load generator: one confirming producer, one acking consumer.

pika / aio-pika spend more CPU per message than a fast broker does, so this client uses pamqp
only for the handshake and declares, then writes basic.publish + content header + body frames and
basic.ack frames built with ``struct``, and parses only the frames it needs (basic.ack / nack
confirms, basic.deliver + header + body). Producer and consumer each run in their own process.

Timeline (all clocks are CLOCK_MONOTONIC, shared by processes on one Linux machine): both sides
connect and set up; the consumer is consuming before the producer publishes anything; then the
producer publishes for ``warmup + duration`` seconds and only the last ``duration`` seconds are
measured. Every phase has a deadline, so a stalled broker gives zeros, not a hang.

With ``LoadConfig.interval`` the measured window is also cut into intervals (``--interval 30``):
each side counts per interval and ``LoadResult.windows`` has one row each.
``LoadConfig.consumer=False`` (``--no-consumer``) runs the producer alone.

Several queues and exchanges (bench.workloads): ``LoadConfig.queues=N`` gives each side N
connections in its one process, connection i on queue ``<queue>-i`` (counts are summed);
``exchange`` and ``routing_keys`` make the producer publish to an exchange the caller set up,
cycling through the keys; ``consume`` makes the consumer consume several queues, one basic.consume
each on its one channel. The defaults keep one producer and one consumer on one queue.

Run alone: ``python -m bench.loadgen --port 5672 --size 100 --duration 10``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any, cast

from pamqp import commands as cmd
from pamqp import frame as pframe
from pamqp.header import ProtocolHeader

FRAME_END = 0xCE
_HEAD = struct.Struct(">BHI")  # frame type, channel, payload size
_CLASS_METHOD = struct.Struct(">HH")
_U64 = struct.Struct(">Q")
_ACK_OR_NACK = struct.Struct(">QB")  # delivery tag, bits (multiple = bit 0)
CHANNEL = 1
RESULT_GRACE = 15.0  # after the end of the run, how long the parent waits for results


@dataclass(frozen=True)
class LoadConfig:
    host: str = "127.0.0.1"
    port: int = 5672
    size: int = 100  # body bytes (>= 8: the body starts with the publish timestamp)
    duration: float = 20.0
    warmup: float = 3.0
    window: int = 100  # unconfirmed messages in flight
    prefetch: int = 100
    queue: str = "bench"
    queue_type: str = "classic"  # or "quorum" (x-queue-type), for RabbitMQ clusters
    queue_mode: str = ""  # "lazy": RabbitMQ's classic lazy queue (x-queue-mode)
    consumer_port: int | None = None  # consumer on another node of a cluster (default: port)
    user: str = "guest"
    password: str = "guest"
    vhost: str = "/"
    setup_timeout: float = 15.0  # connect + handshake + declares, per client
    rate: float = 0.0  # publish at most this many msg/s (0: as fast as the confirm window allows)
    record: bool = False  # return every (sent, confirmed) pair in the window, every (sent, delivered)
    interval: float = 0.0  # also count per interval of this many seconds of the window (0: none)
    consumer: bool = True  # False: the producer alone (a queue that only grows)
    queues: int = 1  # > 1: N connections per side, connection i on queue "<queue>-i"
    exchange: str = ""  # the producer publishes to this exchange (declared by the caller)
    routing_keys: tuple[str, ...] = ()  # ... cycling through these keys (default: the queue)
    consume: tuple[str, ...] = ()  # the consumer's queues, declared by the caller (default: queue)


@dataclass
class LoadResult:
    size: int
    duration: float
    published_per_s: float = 0.0  # confirmed by the broker within the measured window
    consumed_per_s: float = 0.0
    confirm_p50_ms: float | None = None
    confirm_p99_ms: float | None = None
    e2e_p50_ms: float | None = None
    e2e_p99_ms: float | None = None
    confirmed: int = 0
    nacked: int = 0
    consumed: int = 0
    redelivered: int = 0
    producer_cpu: float = 0.0  # CPU seconds per wall second (1.0 = one core busy)
    consumer_cpu: float = 0.0
    max_confirm_gap_ms: float | None = None  # longest time in the window without a confirm
    max_deliver_gap_ms: float | None = None  # ... without a delivery
    sent: int = 0  # messages written by the producer inside the measured window
    stalled: bool = False
    errors: list[str] = field(default_factory=list)
    # with LoadConfig.interval: one dict per interval of the window (see _merge_windows)
    windows: list[dict[str, Any]] = field(default_factory=list)
    # with LoadConfig.record: (publish ns, confirm ns) of every confirm inside the window and
    # (publish ns, deliver ns) of every delivery, also after it (CLOCK_MONOTONIC); left out of
    # as_dict()
    confirm_times: list[tuple[int, int]] | None = None
    deliver_times: list[tuple[int, int]] | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["confirm_times"], d["deliver_times"]
        return d


def percentile_ms(sorted_ns: list[int], q: float) -> float | None:
    if not sorted_ns:
        return None
    i = min(len(sorted_ns) - 1, max(0, round(q * (len(sorted_ns) - 1))))
    return sorted_ns[i] / 1e6


def _frame(ftype: int, payload: bytes) -> bytes:
    return _HEAD.pack(ftype, CHANNEL, len(payload)) + payload + bytes([FRAME_END])


def _shortstr(s: str) -> bytes:
    b = s.encode()
    return bytes([len(b)]) + b


def publish_template(
    queue: str, size: int, frame_max: int, exchange: str = ""
) -> tuple[bytes, bytes]:
    """(head, tail) such that ``head + pack('>Q', timestamp_ns) + tail`` is one complete persistent
    basic.publish to ``exchange`` (default: the default exchange) with routing key ``queue``:
    method frame, content header (delivery_mode=2) and body frame(s) of ``size`` bytes whose first
    8 bytes are the timestamp."""
    assert size >= 8
    method = _frame(
        1, _CLASS_METHOD.pack(60, 40) + b"\0\0" + _shortstr(exchange) + _shortstr(queue) + b"\0"
    )
    header = _frame(2, struct.pack(">HHQH", 60, 0, size, 0x1000) + b"\x02")  # delivery-mode flag
    chunk = (frame_max or 131072) - 8  # frame payload limit: frame_max minus header and end
    pad = bytes(range(256)) * (size // 256 + 1)
    rest = pad[: size - 8]
    first_len = min(size, chunk)
    head = method + header + _HEAD.pack(3, CHANNEL, first_len)
    tail = rest[: first_len - 8] + bytes([FRAME_END])
    for i in range(first_len - 8, len(rest), chunk):
        tail += _frame(3, rest[i : i + chunk])
    return head, tail


def ack_frame(delivery_tag: int) -> bytes:
    return _HEAD.pack(1, CHANNEL, 13) + struct.pack(">HHQB", 60, 80, delivery_tag, 0) + b"\xce"


class AmqpError(Exception):
    pass


class LeanClient(asyncio.Protocol):
    """Frame splitting for both phases: pamqp-decoded frames into a queue during setup, then
    ``on_fast_frame(type, buf, start, end)`` for every frame once ``fast`` is set."""

    def __init__(self, cfg: LoadConfig) -> None:
        self.cfg = cfg
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.frames: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self.fast = False
        self.switch_after: type | None = None  # first frame of this type turns on the fast path
        self.frame_max = 131072
        self.closed = asyncio.get_running_loop().create_future()
        self.error: str | None = None
        self.closing = False
        self.out: list[bytes] = []  # frames to write at the end of this data_received
        self.t_begin = self.t_end = 0  # the measured window (monotonic ns)
        self.last_progress = 0  # when the last counted confirm / delivery arrived
        self.max_gap = 0  # longest time in the window without one (ns)
        self._seen = 0
        # per-interval counting (LoadConfig.interval): slot i covers t_begin + i*slot_ns ..
        self.slot_ns = 1
        self.n_slots = 1
        self.slot = -1  # the slot of the frames being handled now (-1: outside the window)
        self.done_slots: list[int] = [0]  # confirms / deliveries per slot
        self.gap_slots: list[int] = [0]  # longest gap ending in each slot (ns)
        self.lat_slots: list[list[int]] = [[]]

    def set_window(self, t_begin: int, t_end: int) -> None:
        self.t_begin, self.t_end = t_begin, t_end
        span = max(t_end - t_begin, 1)
        self.slot_ns = int(self.cfg.interval * 1e9) if self.cfg.interval > 0 else span
        self.n_slots = max(1, -(-span // self.slot_ns))
        self.done_slots = [0] * self.n_slots
        self.gap_slots = [0] * self.n_slots
        self.lat_slots = [[] for _ in range(self.n_slots)]

    def slot_of(self, now: int) -> int:
        if now < self.t_begin or now >= self.t_end:
            return -1
        return min(self.n_slots - 1, (now - self.t_begin) // self.slot_ns)

    @property
    def latencies(self) -> list[int]:
        return [x for lat in self.lat_slots for x in lat]

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(pframe.marshal(ProtocolHeader(), 0))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.error is None and not self.closing:
            self.error = f"connection lost: {exc!r}"
        self.frames.put_nowait((-1, None))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, n = 0, len(buf)
        now = time.monotonic_ns()
        self.slot = self.slot_of(now)
        while n - pos >= 8:
            ftype, channel, size = _HEAD.unpack_from(buf, pos)
            end = pos + 7 + size
            if end >= n:
                break
            if buf[end] != FRAME_END:
                self.fail("bad frame end")
                return
            if self.fast:
                self.on_fast_frame(ftype, buf, pos + 7, end, now)
            else:
                _, _, value = pframe.unmarshal(bytes(buf[pos : end + 1]))
                self.frames.put_nowait((channel, value))
                if self.switch_after is not None and isinstance(value, self.switch_after):
                    self.fast = True
            pos = end + 1
        del buf[:pos]
        done = self.done_count()
        if done != self._seen:
            self._seen = done
            gap = now - max(self.last_progress, self.t_begin)
            self.max_gap = max(self.max_gap, gap)
            if self.slot >= 0:
                self.gap_slots[self.slot] = max(self.gap_slots[self.slot], gap)
            self.last_progress = now
        self.after_data(now)
        if self.out and self.transport is not None:
            self.transport.write(b"".join(self.out))
            self.out.clear()

    # -- hooks --------------------------------------------------------------------------------
    def on_fast_frame(self, ftype: int, buf: bytearray, start: int, end: int, now: int) -> None:
        if ftype == 1:
            cm = _CLASS_METHOD.unpack_from(buf, start)
            if cm in ((10, 50), (20, 40)):  # connection.close / channel.close from the broker
                code = struct.unpack_from(">H", buf, start + 4)[0]
                text = bytes(buf[start + 7 : start + 7 + buf[start + 6]]).decode(errors="replace")
                self.fail(
                    f"broker closed {'connection' if cm[0] == 10 else 'channel'}: {code} {text}"
                )
            elif cm == (10, 51) and self.transport is not None:  # connection.close-ok
                self.transport.close()

    def after_data(self, now: int) -> None:
        pass

    def done_count(self) -> int:
        """Confirms or deliveries counted so far (only those inside the window are counted)."""
        return 0

    def finish_window(self) -> None:
        end = min(time.monotonic_ns(), self.t_end)
        gap = end - max(self.last_progress, self.t_begin)
        self.max_gap = max(self.max_gap, gap)
        last = self.slot_of(end - 1)
        if last >= 0:
            self.gap_slots[last] = max(self.gap_slots[last], gap)

    def slot_results(self) -> dict[str, list[Any]]:
        """Per interval: count, p50/p99 latency (ms) and longest gap (ms)."""
        lats = [sorted(lat) for lat in self.lat_slots]
        return {
            "done": list(self.done_slots),
            "p50": [percentile_ms(lat, 0.50) for lat in lats],
            "p99": [percentile_ms(lat, 0.99) for lat in lats],
            "gap_ms": [g / 1e6 for g in self.gap_slots],
        }

    # -- helpers ------------------------------------------------------------------------------
    def fail(self, why: str) -> None:
        if self.error is None:
            self.error = why
        if self.transport is not None:
            self.transport.close()

    def send(self, value: Any, channel: int = CHANNEL) -> None:
        assert self.transport is not None
        self.transport.write(pframe.marshal(value, channel))

    async def expect(self, kind: type) -> Any:
        while True:
            channel, value = await self.frames.get()
            if value is None:
                raise AmqpError(self.error or "connection lost")
            if isinstance(value, (cmd.Connection.Close, cmd.Channel.Close)):
                raise AmqpError(f"{type(value).__name__}: {value.reply_code} {value.reply_text}")
            if isinstance(value, kind):
                return value

    async def setup(self) -> None:
        await self.handshake()
        self.send(cmd.Channel.Open())
        await self.expect(cmd.Channel.OpenOk)
        self.send(self.declare(self.cfg.queue))
        await self.expect(cmd.Queue.DeclareOk)

    def declare(self, queue: str) -> cmd.Queue.Declare:
        """queue.declare of a durable queue of ``cfg``'s type and mode."""
        c = self.cfg
        args: dict[str, Any] | None = None
        if c.queue_type != "classic":
            args = {"x-queue-type": c.queue_type}
        if c.queue_mode:
            args = {**(args or {}), "x-queue-mode": c.queue_mode}
        return cmd.Queue.Declare(queue=queue, durable=True, arguments=args)

    async def handshake(self) -> None:
        """Protocol header to connection.open-ok (no heartbeats); no channel yet."""
        c = self.cfg
        await self.expect(cmd.Connection.Start)
        props: dict[str, Any] = {
            "product": "raftmq-bench",
            "capabilities": {"publisher_confirms": True},
        }
        self.send(cmd.Connection.StartOk(props, "PLAIN", f"\0{c.user}\0{c.password}"), 0)
        tune = await self.expect(cmd.Connection.Tune)
        self.frame_max = tune.frame_max or 131072
        self.send(cmd.Connection.TuneOk(tune.channel_max or 2047, self.frame_max, 0), 0)
        self.send(cmd.Connection.Open(c.vhost), 0)
        await self.expect(cmd.Connection.OpenOk)

    async def close(self, timeout: float = 2.0) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.closing = True
        self.fast = True  # whatever comes now goes through on_fast_frame, which sees close-ok
        self.send(cmd.Connection.Close(200, "bench done", 0, 0), 0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        self.transport.close()


class Producer(LeanClient):
    def __init__(self, cfg: LoadConfig) -> None:
        super().__init__(cfg)
        self.head = self.tail = b""
        self.pending: dict[int, int] = {}  # delivery tag -> publish time (ns)
        self.next_tag = 1
        self.low = 1  # lowest tag that may still be unconfirmed
        self.publishing = False
        self.confirmed = self.nacked = 0
        self.sent = 0  # messages published (rate mode)
        self.sent_slots: list[int] = [0]  # messages written per interval of the window
        self.nack_slots: list[int] = [0]
        self.pub_start = 0  # when publishing began (rate mode)
        self.last_ts = 0  # rate mode: every message gets a distinct timestamp
        self.times: list[tuple[int, int]] = []  # (publish, confirm) when cfg.record
        self.templates: list[tuple[bytes, bytes]] = []  # (head, tail) per routing key

    def _message(self, tag: int, ts: bytes) -> bytes:
        """Message number ``tag``: its routing key is the next in the cycle."""
        head, tail = self.templates[tag % len(self.templates)]
        return head + ts + tail

    async def setup(self) -> None:
        await super().setup()
        self.send(cmd.Confirm.Select())
        self.switch_after = cmd.Confirm.SelectOk
        await self.expect(cmd.Confirm.SelectOk)
        c = self.cfg
        self.templates = [
            publish_template(key, c.size, self.frame_max, c.exchange)
            for key in (c.routing_keys or (c.queue,))
        ]
        self.head, self.tail = self.templates[0]

    def settle(self, tag: int, ok: bool, now: int) -> None:
        ts = self.pending.pop(tag, None)
        if ts is None:
            return
        slot = self.slot_of(now)
        if slot >= 0:
            if ok:
                self.confirmed += 1
                self.done_slots[slot] += 1
                self.lat_slots[slot].append(now - ts)
                if self.cfg.record:
                    self.times.append((ts, now))
            else:
                self.nacked += 1
                self.nack_slots[slot] += 1

    def on_fast_frame(self, ftype: int, buf: bytearray, start: int, end: int, now: int) -> None:
        if ftype != 1:
            return
        cm = _CLASS_METHOD.unpack_from(buf, start)
        if cm == (60, 80) or cm == (60, 120):  # basic.ack / basic.nack
            tag, bits = _ACK_OR_NACK.unpack_from(buf, start + 4)
            ok = cm[1] == 80
            if bits & 1:
                for t in range(self.low, tag + 1):
                    self.settle(t, ok, now)
                self.low = max(self.low, tag + 1)
            else:
                self.settle(tag, ok, now)
            while self.low < self.next_tag and self.low not in self.pending:
                self.low += 1
        else:
            super().on_fast_frame(ftype, buf, start, end, now)

    def after_data(self, now: int) -> None:
        self.fill(now)

    def done_count(self) -> int:
        return self.confirmed + self.nacked

    def fill(self, now: int) -> None:
        if not self.publishing or now >= self.t_end or self.error:
            return
        want = self.cfg.window - len(self.pending)
        if self.cfg.rate > 0:
            due = int((now - self.pub_start) * self.cfg.rate / 1e9) + 1 - self.sent
            want = min(want, due)
        if want <= 0:
            return
        if self.cfg.rate > 0:  # few at a time: one timestamp each, so a message can be told apart
            tag = self.next_tag
            for t in range(tag, tag + want):
                ts_ns = self.last_ts = max(now, self.last_ts + 1)
                self.pending[t] = ts_ns
                self.out.append(self._message(t, _U64.pack(ts_ns)))
            self.next_tag = tag + want
            self.sent += want
            self._count_sent(now, want)
            return
        ts = _U64.pack(now)
        tag = self.next_tag
        for t in range(tag, tag + want):
            self.pending[t] = now
        self.next_tag = tag + want
        if len(self.templates) > 1:
            self.out.extend(self._message(t, ts) for t in range(tag, tag + want))
        else:
            self.out.append((self.head + ts + self.tail) * want)
        self._count_sent(now, want)

    def _count_sent(self, now: int, n: int) -> None:
        slot = self.slot_of(now)
        if slot >= 0:
            self.sent_slots[slot] += n

    def set_window(self, t_begin: int, t_end: int) -> None:
        super().set_window(t_begin, t_end)
        self.sent_slots = [0] * self.n_slots
        self.nack_slots = [0] * self.n_slots

    def start_publishing(self, t_begin: int, t_end: int) -> None:
        self.set_window(t_begin, t_end)
        self.publishing = True
        self.pub_start = time.monotonic_ns()
        self._publish_now()
        if self.cfg.rate > 0:
            asyncio.get_running_loop().call_later(self._tick_s(), self._tick)

    def _publish_now(self) -> None:
        self.fill(time.monotonic_ns())
        if self.out and self.transport is not None:
            self.transport.write(b"".join(self.out))
            self.out.clear()

    def _tick_s(self) -> float:
        return max(0.001, 1.0 / self.cfg.rate)

    def _tick(self) -> None:
        """Rate mode: publish what is due (also while no confirm arrives), every ms or so."""
        if not self.publishing or self.error or time.monotonic_ns() >= self.t_end:
            return
        if self.transport is None or self.transport.is_closing():
            return
        self._publish_now()
        asyncio.get_running_loop().call_later(self._tick_s(), self._tick)


class Consumer(LeanClient):
    def __init__(self, cfg: LoadConfig) -> None:
        super().__init__(cfg)
        self.tag = 0
        self.remaining = -1  # body bytes still to come for the current delivery
        self.first_body = False
        self.sent_ts = 0
        self.consumed = self.redelivered = 0
        self.redelivered_flag = False
        self.times: list[tuple[int, int]] = []  # (publish, deliver) when cfg.record

    async def setup(self) -> None:
        await super().setup()
        self.send(cmd.Basic.Qos(prefetch_count=self.cfg.prefetch))
        await self.expect(cmd.Basic.QosOk)
        queues = self.cfg.consume or (self.cfg.queue,)
        for i, queue in enumerate(queues):
            if i == len(queues) - 1:  # nothing is published yet: no delivery comes before this
                self.switch_after = cmd.Basic.ConsumeOk
            tag = "bench" if len(queues) == 1 else f"bench-{i}"
            self.send(cmd.Basic.Consume(queue=queue, consumer_tag=tag))
            await self.expect(cmd.Basic.ConsumeOk)

    def on_fast_frame(self, ftype: int, buf: bytearray, start: int, end: int, now: int) -> None:
        if ftype == 3:  # body
            if self.first_body:
                self.sent_ts = _U64.unpack_from(buf, start)[0]
                self.first_body = False
            self.remaining -= end - start
            if self.remaining <= 0:
                self.delivered(now)
        elif ftype == 2:  # content header
            self.remaining = _U64.unpack_from(buf, start + 4)[0]
            self.first_body = True
            if self.remaining == 0:
                self.delivered(now)
        elif ftype == 1 and _CLASS_METHOD.unpack_from(buf, start) == (60, 60):  # basic.deliver
            o = start + 4
            o += 1 + buf[o]  # consumer tag
            self.tag = _U64.unpack_from(buf, o)[0]
            self.redelivered_flag = bool(buf[o + 8] & 1)
        else:
            super().on_fast_frame(ftype, buf, start, end, now)

    def done_count(self) -> int:
        return self.consumed

    def delivered(self, now: int) -> None:
        self.out.append(ack_frame(self.tag))
        self.remaining = -1
        slot = self.slot_of(now)
        if slot >= 0:
            self.consumed += 1
            self.done_slots[slot] += 1
            self.redelivered += self.redelivered_flag
            if self.sent_ts:
                self.lat_slots[slot].append(now - self.sent_ts)
        if self.sent_ts and self.cfg.record:
            # every delivery, the window's and the ones after it (acked, so no drain finds
            # them): a message confirmed just before the window's end and delivered just
            # after it was counted lost by the failover benchmark
            self.times.append((self.sent_ts, now))
        self.sent_ts = 0


# -- processes ----------------------------------------------------------------------------------


def _clients(role: str, cfg: LoadConfig) -> list[Producer | Consumer]:
    kind = Producer if role == "producer" else Consumer
    if cfg.queues <= 1:
        return [kind(cfg)]
    return [kind(replace(cfg, queue=f"{cfg.queue}-{i}", queues=1)) for i in range(cfg.queues)]


def _merged_slots(clients: list[Producer | Consumer]) -> dict[str, list[Any]]:
    """LeanClient.slot_results over every client of the process: counts summed, latency
    percentiles over all, the longest gap of any."""
    if len(clients) == 1:
        return clients[0].slot_results()
    n = clients[0].n_slots
    lats = [sorted(x for c in clients for x in c.lat_slots[i]) for i in range(n)]
    return {
        "done": [sum(c.done_slots[i] for c in clients) for i in range(n)],
        "p50": [percentile_ms(lat, 0.50) for lat in lats],
        "p99": [percentile_ms(lat, 0.99) for lat in lats],
        "gap_ms": [max(c.gap_slots[i] for c in clients) / 1e6 for i in range(n)],
    }


async def _child_main(role: str, cfg: LoadConfig, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    clients = _clients(role, cfg)
    port = cfg.consumer_port if role == "consumer" and cfg.consumer_port else cfg.port

    async def connect(client: Producer | Consumer) -> None:
        await loop.create_connection(lambda: client, cfg.host, port)
        await client.setup()

    try:
        await asyncio.wait_for(asyncio.gather(*map(connect, clients)), cfg.setup_timeout)
    except (TimeoutError, OSError, AmqpError) as exc:
        why = " ".join(c.error for c in clients if c.error)
        pipe.send(("error", f"{role} setup: {exc!r} {why}"))
        return
    pipe.send(("ready", None))
    if not pipe.poll(cfg.setup_timeout * 3):  # parent waits for the other side; nothing flows yet
        pipe.send(("error", f"{role}: no start signal"))
        return
    try:
        t_begin, t_end = pipe.recv()
    except EOFError:  # the parent gave up
        return
    for client in clients:
        client.set_window(t_begin, t_end)
    cpu0, wall0 = time.process_time(), time.monotonic()
    for client in clients:
        if isinstance(client, Producer):
            client.start_publishing(t_begin, t_end)
    remaining = (t_end - time.monotonic_ns()) / 1e9
    # run until the end of the window, or until every connection died
    await asyncio.wait([c.closed for c in clients], timeout=max(remaining, 0))
    for client in clients:
        if isinstance(client, Producer):
            client.publishing = False
        client.finish_window()
    cpu = (time.process_time() - cpu0) / max(time.monotonic() - wall0, 1e-3)
    for client in clients:
        try:
            await client.close()
        except Exception as exc:  # the numbers are in; a failed goodbye must not lose them
            client.error = client.error or f"close: {exc!r}"
    lat = sorted(x for c in clients for x in c.latencies)
    errors = [c.error for c in clients if c.error]
    out: dict[str, Any] = {
        "p50": percentile_ms(lat, 0.50),
        "p99": percentile_ms(lat, 0.99),
        "error": "; ".join(errors[:3]) if errors else None,
        "cpu": round(cpu, 3),
        "max_gap_ms": max(c.max_gap for c in clients) / 1e6,
    }
    if cfg.record:
        out["times"] = [t for c in clients for t in c.times]
    producers = [c for c in clients if isinstance(c, Producer)]
    consumers = [c for c in clients if isinstance(c, Consumer)]
    if cfg.interval > 0:
        out["slots"] = _merged_slots(clients)
        if producers:
            n = producers[0].n_slots
            out["slots"].update(
                sent=[sum(p.sent_slots[i] for p in producers) for i in range(n)],
                nacked=[sum(p.nack_slots[i] for p in producers) for i in range(n)],
            )
    if producers:
        out.update(
            confirmed=sum(p.confirmed for p in producers),
            nacked=sum(p.nacked for p in producers),
            sent=sum(sum(p.sent_slots) for p in producers),
        )
    else:
        out.update(
            consumed=sum(c.consumed for c in consumers),
            redelivered=sum(c.redelivered for c in consumers),
        )
    pipe.send(("result", out))


def _child(role: str, cfg: LoadConfig, pipe: Connection) -> None:
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(_child_main(role, cfg, pipe))
        else:
            uvloop.run(_child_main(role, cfg, pipe))
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        pipe.close()


def _recv(pipe: Connection, timeout: float, who: str) -> tuple[str, Any]:
    if not pipe.poll(max(timeout, 0.0)):
        return "error", f"{who}: no answer within {timeout:.0f}s"
    try:
        msg: tuple[str, Any] = pipe.recv()
        return msg
    except EOFError:
        return "error", f"{who}: process died"


def _merge_windows(cfg: LoadConfig, slots: dict[str, dict[str, list[Any]]]) -> list[dict[str, Any]]:
    """One dict per interval of the measured window: start_s, length_s (the last one may be
    shorter), sent_per_s (written by the producer), confirmed_per_s, consumed_per_s, nacked,
    confirm and e2e p50/p99 (ms), longest time without a confirm / a delivery (ms). A side
    whose results are missing gives None."""
    n = max(1, math.ceil(cfg.duration / cfg.interval - 1e-9))
    prod, cons = slots.get("producer", {}), slots.get("consumer", {})

    def at(d: dict[str, list[Any]], key: str, i: int) -> Any:
        vals = d.get(key)
        return vals[i] if vals is not None and i < len(vals) else None

    out = []
    for i in range(n):
        length = min(cfg.interval, cfg.duration - i * cfg.interval)

        def rate(d: dict[str, list[Any]], key: str, length: float = length, i: int = i) -> Any:
            v = at(d, key, i)
            return None if v is None else v / length

        out.append({
            "start_s": round(i * cfg.interval, 3), "length_s": round(length, 3),
            "sent_per_s": rate(prod, "sent"), "confirmed_per_s": rate(prod, "done"),
            "consumed_per_s": rate(cons, "done") if cfg.consumer else None,
            "nacked": at(prod, "nacked", i),
            "confirm_p50_ms": at(prod, "p50", i), "confirm_p99_ms": at(prod, "p99", i),
            "e2e_p50_ms": at(cons, "p50", i), "e2e_p99_ms": at(cons, "p99", i),
            "max_confirm_gap_ms": at(prod, "gap_ms", i),
            "max_deliver_gap_ms": at(cons, "gap_ms", i),
        })  # fmt: skip
    return out


def run_load(cfg: LoadConfig, on_start: Callable[[int, int], object] | None = None) -> LoadResult:
    """Run one producer and one consumer process against ``cfg.host:cfg.port``; always returns
    (with zeros and ``errors`` when the broker fails or stalls) and never leaves a process behind.

    ``on_start(t_begin, t_end)`` (monotonic ns of the measured window) is called once both sides
    were told to start, e.g. to disturb the broker at a known time from another thread."""
    ctx = mp.get_context("spawn")
    result = LoadResult(size=cfg.size, duration=cfg.duration)
    procs: list[Any] = []
    pipes: dict[str, Connection] = {}
    try:
        roles = ("consumer", "producer") if cfg.consumer else ("producer",)
        for role in roles:  # the consumer is consuming before anything is sent
            mine, theirs = ctx.Pipe()
            p = ctx.Process(
                target=_child, args=(role, cfg, theirs), name=f"bench-{role}", daemon=True
            )
            p.start()
            theirs.close()
            procs.append(p)
            pipes[role] = mine
            kind, info = _recv(mine, cfg.setup_timeout + 10, role)
            if kind != "ready":
                result.errors.append(str(info))
                result.stalled = True
                return result
        t_begin = time.monotonic_ns() + int(cfg.warmup * 1e9)
        t_end = t_begin + int(cfg.duration * 1e9)
        for pipe in pipes.values():
            pipe.send((t_begin, t_end))
        if on_start is not None:
            on_start(t_begin, t_end)
        deadline = t_end / 1e9 + RESULT_GRACE
        slots: dict[str, dict[str, list[Any]]] = {}
        for role, pipe in pipes.items():
            kind, info = _recv(pipe, deadline - time.monotonic(), role)
            if kind != "result":
                result.errors.append(str(info))
                continue
            if info["error"]:
                result.errors.append(f"{role}: {info['error']}")
            if "slots" in info:
                slots[role] = info["slots"]
            if role == "producer":
                result.confirmed, result.nacked = info["confirmed"], info["nacked"]
                result.sent = info["sent"]
                result.confirm_p50_ms, result.confirm_p99_ms = info["p50"], info["p99"]
                result.producer_cpu = info["cpu"]
                result.max_confirm_gap_ms = info["max_gap_ms"]
                result.confirm_times = info.get("times")
            else:
                result.consumed, result.redelivered = info["consumed"], info["redelivered"]
                result.e2e_p50_ms, result.e2e_p99_ms = info["p50"], info["p99"]
                result.consumer_cpu = info["cpu"]
                result.max_deliver_gap_ms = info["max_gap_ms"]
                result.deliver_times = info.get("times")
        result.published_per_s = result.confirmed / cfg.duration
        result.consumed_per_s = result.consumed / cfg.duration
        result.stalled = result.confirmed == 0 or (cfg.consumer and result.consumed == 0)
        if cfg.interval > 0:
            result.windows = _merge_windows(cfg, slots)
        return result
    finally:
        for pipe in pipes.values():
            pipe.close()
        for p in procs:
            p.join(timeout=3)
            if p.is_alive():
                p.kill()
                p.join(timeout=3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--prefetch", type=int, default=100)
    ap.add_argument("--queue", default="bench")
    ap.add_argument("--queue-type", default="classic", choices=["classic", "quorum"])
    ap.add_argument("--consumer-port", type=int, help="consume from another node (default --port)")
    ap.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="publish at most this many msg/s, still with confirms (0: no limit)",
    )
    ap.add_argument("--interval", type=float, default=0.0,
                    help="also report counts per interval of this many seconds (0: none)")
    ap.add_argument("--no-consumer", action="store_true", help="the producer alone")
    ap.add_argument("--queues", type=int, default=1,
                    help="N producer and consumer connections, on queues QUEUE-0..QUEUE-(N-1)")
    a = ap.parse_args(argv)
    if not a.host.startswith("127."):
        ap.error("benchmarks talk to 127.0.0.0/8 only")
    cfg = LoadConfig(
        a.host, a.port, max(a.size, 8), a.duration, a.warmup, a.window, a.prefetch, a.queue,
        queue_type=a.queue_type, consumer_port=a.consumer_port, rate=a.rate,
        interval=a.interval, consumer=not a.no_consumer, queues=a.queues,
    )  # fmt: skip
    res = run_load(cfg)
    json.dump(res.as_dict(), sys.stdout, indent=2)
    print()
    return 1 if res.stalled else 0


if __name__ == "__main__":
    sys.exit(main())
