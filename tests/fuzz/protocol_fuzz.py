"""Layer 1: the sans-I/O protocol object under mutated conversations.

Each input is a valid client conversation (tests/fuzz/corpus.py), mutated and
split at random points, fed to a fresh :class:`protocol.ServerConnection`
with a responder that plays the node's part of the handshake and closes. For
every input:

* ``next_event`` raises nothing but the protocol's own errors, and each
  carries a reply code of the right kind (a hard error's code is a connection
  code, a soft one's a channel code; never 541);
* what it yields is what the node may trust: published properties are
  well-formed, short strings fit 255 bytes of UTF-8;
* buffers stay bounded whatever the length fields say: unparsed input never
  exceeds one frame plus one read, unfinished contents never exceed the
  message size limit.

Inputs run in worker processes (one per core by default); a crash writes the
input to ``--crash-dir`` with its traceback and seed.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pamqp import commands

from protocol import (
    NEED_DATA,
    AMQPConnectionError,
    BadProtocolHeader,
    ChannelError,
    MessagePublished,
    MethodReceived,
    ProtocolHeaderReceived,
    ServerConnection,
)
from protocol.constants import SOFT_ERRORS
from protocol.fields import check_properties
from tests.fuzz import corpus

HARD_CODES = {320, 402, 501, 502, 503, 504, 505, 506, 530, 540}
FRAME_MAX = 4096
MAX_MESSAGE = 64 * 1024  # small, so the bound is exercised
READ_MAX = 65536  # the largest chunk a read hands over here


class Violation(AssertionError):
    pass


@dataclass
class Stats:
    inputs: int = 0
    events: int = 0
    codes: collections.Counter[int] = field(default_factory=collections.Counter)
    bad_headers: int = 0
    crashes: list[str] = field(default_factory=list)
    max_buffered: int = 0
    max_content: int = 0

    def merge(self, other: Stats) -> None:
        self.inputs += other.inputs
        self.events += other.events
        self.codes.update(other.codes)
        self.bad_headers += other.bad_headers
        self.crashes.extend(other.crashes)
        self.max_buffered = max(self.max_buffered, other.max_buffered)
        self.max_content = max(self.max_content, other.max_content)


def _respond(conn: ServerConnection, ev: Any) -> None:
    """The node's side of the conversation, enough for the state to advance."""
    if isinstance(ev, ProtocolHeaderReceived):
        conn.start({"product": "fuzz"})
    elif isinstance(ev, MethodReceived):
        m = ev.method
        if isinstance(m, commands.Connection.StartOk):
            conn.tune()
        elif isinstance(m, commands.Connection.Open):
            conn.open_ok()
        elif isinstance(m, commands.Channel.Close):
            conn.channel_close_ok(ev.channel)
        elif isinstance(m, commands.Connection.Close):
            conn.close_ok()


def _check_event(ev: Any) -> None:
    if isinstance(ev, MessagePublished):
        check_properties(ev.properties)  # raises FieldError: a violation
        for s in (ev.exchange, ev.routing_key):
            if not isinstance(s, str) or len(s.encode()) > 255:
                raise Violation(f"bad short string {s!r}")
        # (a body of several frames is the bytearray they were copied into: protocol/content.py)
        if not isinstance(ev.body, bytes | bytearray) or len(ev.body) > MAX_MESSAGE:
            raise Violation("body")
    elif isinstance(ev, MethodReceived):
        m = ev.method
        for name in m.__slots__:
            if m.amqp_type(name) == "shortstr":
                v = getattr(m, name)
                if not isinstance(v, str) or len(v.encode()) > 255:
                    raise Violation(f"{m.name}.{name} = {v!r}")


def run_one(data: bytes, chunks: list[bytes], stats: Stats) -> None:
    conn = ServerConnection(frame_max=FRAME_MAX, channel_max=16, heartbeat=0,
                            max_message_size=MAX_MESSAGE)
    raised = 0
    for chunk in chunks:
        conn.receive_data(chunk)
        while True:
            try:
                ev = conn.next_event()
            except BadProtocolHeader:
                stats.bad_headers += 1
                return
            except ChannelError as e:
                if e.reply_code not in SOFT_ERRORS:
                    raise Violation(f"soft error with hard code {e}") from None
                stats.codes[e.reply_code] += 1
                conn.close_channel(e.channel, e.reply_code, e.reply_text)
                continue
            except AMQPConnectionError as e:
                if e.reply_code not in HARD_CODES:
                    raise Violation(f"hard error with code {e}") from None
                stats.codes[e.reply_code] += 1
                raised += 1
                # after a hard error only a loss of framing may still be reported (the
                # close-ok can no longer be found), and then nothing more
                if raised > 1 and not (raised == 2 and e.framing_lost):
                    raise Violation(f"next_event raised again after a hard error: {e}") from None
                if not conn.close_sent:
                    conn.close_connection(e.reply_code, e.reply_text, e.class_id, e.method_id)
                continue
            if ev is NEED_DATA:
                break
            stats.events += 1
            _check_event(ev)
            _respond(conn, ev)
        buffered = len(conn._buf) - conn._pos
        stats.max_buffered = max(stats.max_buffered, buffered)
        if buffered > FRAME_MAX + 8 + READ_MAX:
            raise Violation(f"{buffered} bytes buffered")
        pending = conn._pending_content()
        stats.max_content = max(stats.max_content, pending)
        if pending > MAX_MESSAGE:
            raise Violation(f"{pending} bytes of unfinished content")


def worker(args: tuple[int, int, str | None]) -> Stats:
    seed, count, crash_dir = args
    r = random.Random(seed)
    stats = Stats()
    pool = [corpus.conversation(r) for _ in range(64)]
    for i in range(count):
        if i % 256 == 0:  # refresh part of the corpus now and then
            pool[r.randrange(len(pool))] = corpus.conversation(r)
        base = r.choice(pool)
        data = corpus.mutate(r, base, r.choice(pool)) if r.random() < 0.97 else b"".join(base)
        chunks = corpus.split(r, data)
        stats.inputs += 1
        try:
            run_one(data, chunks, stats)
        except Exception as exc:  # Violation or an unexpected exception: a crash
            text = f"seed {seed} input {i}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            stats.crashes.append(text)
            if crash_dir:
                d = Path(crash_dir)
                d.mkdir(parents=True, exist_ok=True)
                (d / f"crash-{seed}-{i}.bin").write_bytes(data)
                (d / f"crash-{seed}-{i}.txt").write_text(text)
            if len(stats.crashes) >= 20:
                break
    return stats


def fuzz(inputs: int, seed: int, jobs: int, crash_dir: str | None = None) -> Stats:
    per = [inputs // jobs + (1 if i < inputs % jobs else 0) for i in range(jobs)]
    tasks = [(seed * 1000 + i, n, crash_dir) for i, n in enumerate(per) if n]
    total = Stats()
    if jobs == 1:
        for t in tasks:
            total.merge(worker(t))
        return total
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        for s in pool.imap_unordered(worker, tasks):
            total.merge(s)
    return total


def report(stats: Stats, elapsed: float) -> str:
    codes = ", ".join(f"{c}×{n}" for c, n in sorted(stats.codes.items()))
    return (f"protocol: {stats.inputs:,} inputs in {elapsed:.0f} s "
            f"({stats.inputs / max(elapsed, 1e-9):,.0f}/s), {stats.events:,} events; "
            f"reply codes: {codes}; bad protocol headers: {stats.bad_headers:,}; "
            f"max buffered {stats.max_buffered:,} B, max unfinished content "
            f"{stats.max_content:,} B; crashes: {len(stats.crashes)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz protocol")
    p.add_argument("--inputs", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--crash-dir", default="/tmp/raftmq-fuzz/protocol")
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    print(f"protocol fuzz: seed {seed}, {a.inputs:,} inputs, {a.jobs} jobs", flush=True)
    start = time.monotonic()
    stats = fuzz(a.inputs, seed, a.jobs, a.crash_dir)
    print(report(stats, time.monotonic() - start))
    for c in stats.crashes[:5]:
        print(c, file=sys.stderr)
    return 1 if stats.crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
