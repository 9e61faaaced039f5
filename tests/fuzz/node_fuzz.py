"""Layer 3: a running node under hundreds of hostile connections at once.

A seeded fuzzer opens whole connections (tests/fuzz/corpus.py conversations,
mutated, written in random pieces with random pauses; some stall, some close
abruptly, some close cleanly), many at a time, while a well-behaved client
publishes with confirms on a connection of its own and consumes on another.
The checker then asks:

* did the well-behaved publisher get a confirm (an ack) for every message, and
  was every confirmed message consumed?
* does any exclusive queue outlive its connection? (every queue the node
  reports is passively declared from a fresh connection: 405 RESOURCE_LOCKED
  would mean it is still exclusive to a connection that is gone);
* is the node alive, with no traceback in its log? What was its peak RSS?

``python -m tests.fuzz node --conversations 20000 --concurrency 200`` (a node of
its own on free ports, or ``--port`` for a running one).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import random
import struct
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiormq.exceptions
from pamqp import commands as C
from prometheus_client.parser import text_string_to_metric_families

from protocol.methods import build
from tests.fuzz import corpus

WELL_BEHAVED_QUEUE = "fuzz-well-behaved"


@dataclass
class Report:
    conversations: int = 0
    bytes_sent: int = 0
    codes: collections.Counter[int] = field(default_factory=collections.Counter)
    endings: collections.Counter[str] = field(default_factory=collections.Counter)
    published: int = 0
    confirmed: int = 0
    nacked: int = 0
    consumed: int = 0
    max_confirm_s: float = 0.0
    exclusive_declared: int = 0
    leaked_exclusive: list[str] = field(default_factory=list)
    queues_checked: int = 0
    tracebacks: int = 0
    peak_rss_mib: float = 0.0
    alive: bool = True
    problems: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return not self.problems

    def text(self, elapsed: float) -> str:
        codes = ", ".join(f"{c}×{n}" for c, n in sorted(self.codes.items()))
        ends = ", ".join(f"{k} {n}" for k, n in sorted(self.endings.items()))
        return (
            f"node: {self.conversations:,} hostile connections in {elapsed:.0f} s "
            f"({self.bytes_sent / 1e6:.1f} MB sent; {ends}); connection.close codes: "
            f"{codes or 'none'}\n"
            f"node: well-behaved client: {self.published:,} published, {self.confirmed:,} "
            f"confirmed, {self.nacked} nacked, {self.consumed:,} consumed; slowest confirm "
            f"{self.max_confirm_s * 1000:.0f} ms\n"
            f"node: exclusive queues declared by hostile connections: "
            f"{self.exclusive_declared}; outliving their connection: "
            f"{len(self.leaked_exclusive)} (of {self.queues_checked} queues checked); "
            f"tracebacks in the node log: {self.tracebacks}; peak RSS {self.peak_rss_mib:.0f} MiB; "
            f"node alive: {self.alive}\n"
            + ("node: PROBLEMS:\n  " + "\n  ".join(self.problems) if self.problems else
               "node: OK")
        )


def _methods(data: bytes) -> list[tuple[int, int, bytes]]:
    """(channel, class << 16 | method, arguments) of each method frame in ``data``."""
    out = []
    pos = 0
    while pos + 8 <= len(data):
        if data[pos:pos + 4] == b"AMQP":
            pos += 8
            continue
        kind, ch, size = struct.unpack_from(">BHI", data, pos)
        if kind not in (1, 2, 3, 8) or pos + 8 + size > len(data):
            break
        if kind == 1 and size >= 4:
            out.append((ch, struct.unpack_from(">I", data, pos + 7)[0],
                        data[pos + 11:pos + 7 + size]))
        pos += 8 + size
    return out


_CONNECTION_CLOSE, _CHANNEL_CLOSE, _DECLARE_OK = 0x000A0032, 0x00140028, 0x0032000B


def _close_codes(data: bytes) -> list[int]:
    """Reply codes of the connection.close frames in what the node sent."""
    return [struct.unpack_from(">H", args)[0] for ch, idx, args in _methods(data)
            if ch == 0 and idx == _CONNECTION_CLOSE and len(args) >= 2]


def _declared_exclusive(data: bytes) -> int:
    """How many of our marker exclusive queues the node confirmed creating."""
    return sum(1 for _, idx, args in _methods(data)
               if idx == _DECLARE_OK and args[1:9] == b"fz-excl-")


def hostile_stream(r: random.Random, n: int) -> bytes:
    frames = corpus.conversation(r)
    if r.random() < 0.3:  # an exclusive queue that must go with the connection
        frames.insert(5, corpus.method(1, build(C.Queue.Declare, 0, f"fz-excl-{n}", False,
                                                False, True, False, False, {})))
    if r.random() < 0.25:
        return b"".join(frames)  # valid, to go further into the broker
    return corpus.mutate(r, frames, corpus.conversation(r))


async def one_connection(port: int, r: random.Random, n: int, report: Report) -> None:
    data = hostile_stream(r, n)
    ending = r.choice(["abort", "abort", "abort", "close", "stall", "half-close"])
    received = bytearray()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (OSError, TimeoutError):
        report.endings["connect failed"] += 1
        return

    async def read() -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while len(received) < 1 << 20:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                received.extend(chunk)

    reading = asyncio.create_task(read())
    try:
        for piece in corpus.split(r, data):
            writer.write(piece)
            report.bytes_sent += len(piece)
            await writer.drain()
            if r.random() < 0.2:
                await asyncio.sleep(r.random() * 0.05)
        if ending == "close":
            writer.write(corpus.method(0, build(C.Connection.Close, 200, "bye", 0, 0)))
            await asyncio.wait_for(asyncio.shield(reading), 2)
        elif ending == "stall":  # say nothing more: the node's timeouts must end it
            await asyncio.wait_for(asyncio.shield(reading), 12)
        elif ending == "half-close":
            writer.write_eof()
            await asyncio.wait_for(asyncio.shield(reading), 2)
        else:
            await asyncio.sleep(r.random() * 0.2)
    except (OSError, TimeoutError):
        pass
    finally:
        reading.cancel()
        with contextlib.suppress(Exception):
            writer.transport.abort()
        report.endings[ending] += 1
        report.codes.update(_close_codes(bytes(received)))
        report.exclusive_declared += _declared_exclusive(bytes(received))
        report.conversations += 1


async def well_behaved(url: str, stop: asyncio.Event, report: Report) -> None:
    """Publish with confirms (a window of 10) and consume, until ``stop``."""
    pub = await aio_pika.connect(url, timeout=10)
    sub = await aio_pika.connect(url, timeout=10)
    try:
        pch = await pub.channel(publisher_confirms=True)
        q = await pch.declare_queue(WELL_BEHAVED_QUEUE, durable=True)
        await q.purge()
        got: set[int] = set()
        sch = await sub.channel()
        await sch.set_qos(prefetch_count=50)
        sq = await sch.get_queue(WELL_BEHAVED_QUEUE)

        async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            got.add(int(msg.body))
            await msg.ack()

        await sq.consume(on_message)
        confirmed: list[int] = []
        i = 0

        async def publish(n: int) -> None:
            start = time.monotonic()
            try:
                await pch.default_exchange.publish(
                    aio_pika.Message(str(n).encode(), delivery_mode=2), WELL_BEHAVED_QUEUE,
                    timeout=30)
            except aiormq.exceptions.DeliveryError:
                report.nacked += 1
                return
            report.max_confirm_s = max(report.max_confirm_s, time.monotonic() - start)
            confirmed.append(n)

        while not stop.is_set():
            batch = [publish(i + k) for k in range(10)]
            i += 10
            report.published += 10
            await asyncio.gather(*batch)
            await asyncio.sleep(0.02)
        report.confirmed = len(confirmed)
        deadline = time.monotonic() + 20
        while not set(confirmed) <= got and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        report.consumed = len(got)
        missing = set(confirmed) - got
        if missing:
            report.problems.append(f"{len(missing)} confirmed messages never consumed")
    finally:
        await pub.close()
        await sub.close()


def _metrics(port: int) -> list[Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return list(text_string_to_metric_families(r.read().decode()))


def _locked_queues(port: int, names: list[str]) -> list[str]:
    """The queues a fresh connection cannot passively declare for 405 RESOURCE_LOCKED
    (exclusive to another connection). Raw frames: client libraries refuse names
    pamqp's pattern does not allow, and the fuzz makes such names."""
    from tests.integration.rawclient import RawClient

    locked = []
    with RawClient("127.0.0.1", port, timeout=10) as c:
        c.handshake()
        number = 0
        for name in names:
            number += 1
            c.send(corpus.method(number, build(C.Channel.Open)))
            c.send(corpus.method(number, build(C.Queue.Declare, 0, name, True)))
            while True:  # channel.open-ok, then declare-ok or channel.close
                ch, idx, args = _read_method(c)
                if ch != number:
                    continue
                if idx == _DECLARE_OK:
                    c.send(corpus.method(number, build(C.Channel.Close, 200, "", 0, 0)))
                    break
                if idx == _CHANNEL_CLOSE:
                    if struct.unpack_from(">H", args)[0] == 405:
                        locked.append(name)
                    c.send(corpus.method(number, build(C.Channel.CloseOk)))
                    break
    return locked


def _read_method(c: Any) -> tuple[int, int, bytes]:
    header = c.recv_exact(7)
    kind, ch, size = struct.unpack(">BHI", header)
    payload = c.recv_exact(size + 1)[:-1]
    if kind != 1:
        return ch, -1, b""
    return ch, struct.unpack_from(">I", payload)[0], payload[4:]


async def check_exclusive(port: int, metrics_port: int, report: Report) -> None:
    names: set[str] = set()
    for fam in await asyncio.to_thread(_metrics, metrics_port):
        if fam.name == "raftmq_queue_messages_ready":
            names.update(s.labels["queue"] for s in fam.samples if s.labels.get("vhost") == "/")
    report.queues_checked = len(names)
    report.leaked_exclusive = await asyncio.to_thread(_locked_queues, port, sorted(names))
    if report.leaked_exclusive:
        report.problems.append(f"exclusive queues left behind: {report.leaked_exclusive[:10]}")


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run(conversations: int, concurrency: int, seed: int, port: int, metrics_port: int,
              pid: int | None, log_path: Path | None) -> Report:
    report = Report()
    url = f"amqp://guest:guest@127.0.0.1:{port}/"
    stop = asyncio.Event()
    good = asyncio.create_task(well_behaved(url, stop, report))
    await asyncio.sleep(0.5)
    sem = asyncio.Semaphore(concurrency)
    master = random.Random(seed)

    async def limited(n: int, r: random.Random) -> None:
        async with sem:
            await one_connection(port, r, n, report)

    tasks = [asyncio.create_task(limited(n, random.Random(master.getrandbits(64))))
             for n in range(conversations)]
    await asyncio.gather(*tasks)
    stop.set()
    try:
        await asyncio.wait_for(good, 60)
    except Exception as exc:
        report.problems.append(f"the well-behaved client failed: {type(exc).__name__}: {exc}")
    if report.confirmed < report.published:
        report.problems.append(f"{report.published - report.confirmed} publishes not confirmed")
    await asyncio.sleep(1.0)  # let the closes of the last hostile connections be applied
    try:
        await check_exclusive(port, metrics_port, report)
    except Exception as exc:
        report.problems.append(f"exclusive-queue check failed: {type(exc).__name__}: {exc}")
    if pid is not None:
        report.alive = Path(f"/proc/{pid}").exists()
        if report.alive:
            report.peak_rss_mib = _peak_rss_mib(pid)
        else:
            report.problems.append("the node died")
    if log_path is not None:
        report.tracebacks = log_path.read_text(errors="replace").count("Traceback")
        if report.tracebacks:
            report.problems.append(f"{report.tracebacks} tracebacks in {log_path}")
    return report


def fuzz(conversations: int, concurrency: int, seed: int, port: int | None = None,
         metrics_port: int | None = None, keep: Path | None = None) -> Report:
    """Against a running node (``port``), or a node of its own started here."""
    if port is not None:
        return asyncio.run(run(conversations, concurrency, seed, port, metrics_port or 15692,
                               None, None))
    from harness.raftmq import RaftMQNode

    base = keep or Path(tempfile.mkdtemp(prefix="raftmq-node-fuzz-"))
    node = RaftMQNode(base / "data", log_path=base / "node.log",
                      extra_env={"RAFTMQ_HANDSHAKE_TIMEOUT": "3"})
    node.start(wait=True, timeout=30)
    try:
        assert node.pid is not None
        return asyncio.run(run(conversations, concurrency, seed, node.amqp_port,
                               node.metrics_port, node.pid, node.log_path))
    finally:
        node.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz node")
    p.add_argument("--conversations", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--port", type=int, default=None, help="a running node's AMQP port")
    p.add_argument("--metrics-port", type=int, default=None)
    p.add_argument("--keep", type=Path, default=None, help="directory for the node's data and log")
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    print(f"node fuzz: seed {seed}, {a.conversations:,} connections, {a.concurrency} at once",
          flush=True)
    start = time.monotonic()
    report = fuzz(a.conversations, a.concurrency, seed, a.port, a.metrics_port, a.keep)
    print(report.text(time.monotonic() - start))
    return 0 if report.ok() else 1


if __name__ == "__main__":
    raise SystemExit(main())
