"""The measuring tenant: ``python -m tests.hostile.measuring PORT USER PASSWORD VHOST`` in a
process of its own (so the attacker's work never delays its clock).

One connection, three channels: a confirm channel publishing persistent messages every
20 ms, alternately to ``a.direct`` (consumed) and to ``a.ttl`` (a 100 ms TTL and a
dead-letter exchange that routes to ``a.dead``, consumed); a transactional channel that
commits five messages to ``a.ttl`` every second; and one channel consuming both queues
with acks. Every publish→confirm (or commit) round trip is recorded.

It prints ``ready`` once declared, runs until stdin says ``stop`` (or closes), waits for
what it published, then prints one JSON line: published, confirmed, nacked, the confirmed
messages never delivered (``lost``), round trips (p50, p99, max) and errors.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq.exceptions

PUBLISH_EVERY_S = 0.02
TX_EVERY_S = 1.0
TX_BATCH = 5
TTL_MS = 100
IN_FLIGHT_MAX = 100
DRAIN_S = 30.0


@dataclass
class Tally:
    published: int = 0
    confirmed: set[int] = field(default_factory=set)
    nacked: int = 0
    received: set[int] = field(default_factory=set)
    rtts: list[float] = field(default_factory=list)
    worst: list[tuple[float, float]] = field(default_factory=list)  # (rtt, sent since ready)
    ready_at: float = 0.0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.rtts)

        def pct(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else 0.0

        lost = sorted(self.confirmed - self.received)
        worst = sorted(self.worst, reverse=True)[:5]
        return {"published": self.published, "confirmed": len(self.confirmed),
                "nacked": self.nacked, "received": len(self.received), "lost": len(lost),
                "lost_ids": lost[:10], "rtt_p50": pct(0.5), "rtt_p99": pct(0.99),
                "rtt_max": ordered[-1] if ordered else 0.0, "errors": self.errors[:10],
                "worst": [{"rtt": r, "at": round(a, 2)} for r, a in worst]}

    def record(self, sent: float) -> None:
        rtt = time.monotonic() - sent
        self.rtts.append(rtt)
        if len(self.worst) < 5 or rtt > self.worst[-1][0]:
            self.worst = sorted([*self.worst, (rtt, sent - self.ready_at)], reverse=True)[:5]


async def declare(ch: aio_pika.abc.AbstractChannel) -> None:
    dlx = await ch.declare_exchange("a.dlx", aio_pika.ExchangeType.DIRECT, durable=True)
    dead = await ch.declare_queue("a.dead", durable=True)
    await dead.bind(dlx, "a.dead")
    await ch.declare_queue("a.ttl", durable=True, arguments={
        "x-message-ttl": TTL_MS, "x-dead-letter-exchange": "a.dlx",
        "x-dead-letter-routing-key": "a.dead"})
    await ch.declare_queue("a.direct", durable=True)


def _message(n: int) -> aio_pika.Message:
    return aio_pika.Message(str(n).encode(), message_id=str(n),
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT)


async def consume(ch: aio_pika.abc.AbstractChannel, tally: Tally) -> None:
    await ch.set_qos(prefetch_count=100)

    async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        tally.received.add(int(msg.body))
        await msg.ack()

    for name in ("a.direct", "a.dead"):
        await (await ch.get_queue(name)).consume(on_message)


async def publish_one(ch: aio_pika.abc.AbstractChannel, n: int, tally: Tally) -> None:
    sent = time.monotonic()
    try:
        await ch.default_exchange.publish(_message(n), "a.ttl" if n % 2 else "a.direct",
                                          timeout=120)
    except aiormq.exceptions.DeliveryError:
        tally.nacked += 1
        return
    except Exception as exc:  # recorded: the suite fails on any
        tally.errors.append(f"publish {n}: {type(exc).__name__}: {exc}")
        return
    tally.record(sent)
    tally.confirmed.add(n)


async def publisher(ch: aio_pika.abc.AbstractChannel, stop: asyncio.Event,
                    tally: Tally) -> None:
    in_flight: set[asyncio.Task[None]] = set()
    n = 0
    while not stop.is_set():
        if len(in_flight) >= IN_FLIGHT_MAX:
            _, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        n += 2  # even ids: confirm channel; odd ones are the transactions'
        tally.published += 1
        task = asyncio.create_task(publish_one(ch, n, tally))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        await asyncio.sleep(PUBLISH_EVERY_S)
    if in_flight:
        await asyncio.wait(in_flight, timeout=150)


async def transactions(ch: aio_pika.abc.AbstractChannel, stop: asyncio.Event,
                       tally: Tally) -> None:
    n = -1
    tx = ch.transaction()
    await tx.select()
    while not stop.is_set():
        batch = []
        for _ in range(TX_BATCH):
            n += 2
            batch.append(n)
            await ch.default_exchange.publish(_message(n), "a.ttl")
        tally.published += TX_BATCH
        sent = time.monotonic()
        try:
            await asyncio.wait_for(tx.commit(), 120)
        except Exception as exc:
            tally.errors.append(f"tx.commit: {type(exc).__name__}: {exc}")
            return
        tally.record(sent)
        tally.confirmed.update(batch)
        await asyncio.sleep(TX_EVERY_S)


async def stdin_stop(stop: asyncio.Event) -> None:
    line = await asyncio.to_thread(sys.stdin.readline)
    del line  # "stop", or end of input: both end the run
    stop.set()


async def run(port: int, user: str, password: str, vhost: str) -> Tally:
    tally = Tally()
    conn = await aio_pika.connect(host="127.0.0.1", port=port, login=user, password=password,
                                  virtualhost=vhost, timeout=30)
    try:
        setup = await conn.channel()
        await declare(setup)
        await consume(await conn.channel(), tally)
        confirms = await conn.channel(publisher_confirms=True)
        tx = await conn.channel(publisher_confirms=False)
        print("ready", flush=True)
        tally.ready_at = time.monotonic()
        stop = asyncio.Event()
        waiter = asyncio.create_task(stdin_stop(stop))
        await asyncio.gather(publisher(confirms, stop, tally), transactions(tx, stop, tally))
        await waiter
        deadline = time.monotonic() + DRAIN_S
        while not tally.confirmed <= tally.received and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    except Exception as exc:
        tally.errors.append(f"measuring tenant: {type(exc).__name__}: {exc}")
    finally:
        try:
            await asyncio.wait_for(conn.close(), 10)
        except Exception as exc:
            tally.errors.append(f"close: {type(exc).__name__}: {exc}")
    return tally


def main(argv: list[str]) -> int:
    port, user, password, vhost = int(argv[0]), argv[1], argv[2], argv[3]
    tally = asyncio.run(run(port, user, password, vhost))
    print(json.dumps(tally.summary()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
