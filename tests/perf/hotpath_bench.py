"""In-process hot-path micro-benchmark: one publish -> deliver -> ack, socket bytes to
socket bytes, without sockets or subprocesses (issue 22, item 2).

    .venv/bin/python -m tests.perf.hotpath_bench [--rounds 200] [--batch 100] [--size 100]

A Broker on the in-memory log (tests/node/inproc.py): a publisher with confirms sends
``--batch`` publishes (100 B, persistent) in one read, the node runs its turns (parse,
Session -> commands, encode_batch, decode_batch + apply_batch, store, effects -> frames),
a consumer (manual acks, prefetch 0) gets the deliveries and acks each in one read. The
fake log does not pickle: each entry is also put through pysyncobj's pickling as
RaftNode.apply_batch's replicated call is (cluster/raft/patches.dumps/loads), so that
stage is in the figure. Prints CPU µs (process_time) per message (publish + deliver + ack) per repetition;
``--reps`` repetitions, their median. For A/B runs interleave two trees' runs and compare
medians; under py-spy: ``.venv/bin/py-spy record -r 500 -f raw -o prof.txt -- <this>``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from pamqp import commands as spec  # noqa: E402
from pamqp import frame as pframe  # noqa: E402
from pamqp import header  # noqa: E402

from cluster.raft import patches  # noqa: E402
from protocol.methods import build, encode_method  # noqa: E402
from tests.cluster import fake_raft  # noqa: E402
from tests.node.inproc import InProcessNode  # noqa: E402

DELIVER = b"\x00\x3c\x00\x3c"  # basic.deliver's class and method ids
ACK = struct.Struct(">BHIHHQBc")  # a basic.ack method frame (tag, multiple=0, frame end)


def method_frame(channel: int, m: Any) -> bytes:
    payload = encode_method(m)
    return struct.pack(">BHI", 1, channel, len(payload)) + payload + b"\xce"


def publish_frames(n: int, body: bytes) -> bytes:
    props = spec.Basic.Properties(delivery_mode=2)
    one = (method_frame(1, build(spec.Basic.Publish, 0, "", "q", False, False))
           + pframe.marshal(header.ContentHeader(0, len(body), props), 1)
           + struct.pack(">BHI", 3, 1, len(body)) + body + b"\xce")
    return one * n


def pickle_entries() -> None:
    """Every entry the fake log appends goes through pysyncobj's pickling of the
    replicated call (args: the entry) and back, as on a real node."""
    patches.install_pickle_protocol()  # (a real node's RaftNode installs it)
    append = fake_raft.FakeCluster.append

    def pickled(self: fake_raft.FakeCluster, data: bytes, by: object = None) -> None:
        _func, (entry,), _kw = patches.loads(patches.dumps((0, (data,), {})))
        append(self, entry, by)  # type: ignore[arg-type]

    fake_raft.FakeCluster.append = pickled  # type: ignore[method-assign]


async def run(rounds: int, batch: int, size: int, reps: int) -> list[float]:
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as tmp:
        node = await InProcessNode(loop, data_dir=tmp).start()
        pub, con = node.client(), node.client()
        await pub.open()
        await con.open()
        pub.method(1, build(spec.Queue.Declare, 0, "q", False, True))
        pub.method(1, build(spec.Confirm.Select, False))
        con.method(1, build(spec.Basic.Consume, 0, "q", "t", False, False))
        await node.settle()
        pub.frames()
        con.frames()
        data = publish_frames(batch, b"x" * size)
        tag = 0
        out: list[float] = []
        for _ in range(reps):
            start = time.process_time()
            for _ in range(rounds):
                pub.send(data)
                await node.settle()
                got = con.transport.out.count(DELIVER)
                assert got == batch, got
                del con.transport.out[:]
                del pub.transport.out[:]
                acks = b"".join([ACK.pack(1, 1, 13, 60, 80, t, 0, b"\xce")
                                 for t in range(tag + 1, tag + got + 1)])
                tag += got
                con.send(acks)
                await node.settle()
            out.append((time.process_time() - start) / (rounds * batch) * 1e6)
        con._seen = pub._seen = 0
        await node.stop()
    return out


def stages(batch: int, size: int) -> dict[str, float]:
    """µs per message of the hot path's pure stages, each the best of 7 timeit repeats:
    parse (publish + ack frames -> events), commands (Publish + Ack built), encode
    (encode_batch of both batches), pickle (pysyncobj's dumps + loads of both entries),
    decode (decode_batch of both),
    store (FileStore put, flush, read, release)."""
    import timeit

    from bench.codec_bench import open_connection
    from cluster import commands as c
    from cluster.store import FileStore
    from cluster.store import run as run_writes
    from protocol import NEED_DATA

    conn = open_connection()
    pubs = publish_frames(batch, b"x" * size)
    acks = b"".join([ACK.pack(1, 1, 13, 60, 80, t, 0, b"\xce") for t in range(1, batch + 1)])
    key, props, body = ("n1", 1, 1), b"\x10\x00\x02", b"x" * size

    def parse() -> None:
        conn.receive_data(pubs + acks)
        while conn.next_event() is not NEED_DATA:
            pass

    def build_commands() -> tuple[tuple[c.Command, ...], tuple[c.Command, ...]]:
        return (tuple([c.Publish(key, "", "q", False, props, body, i) for i in range(batch)]),
                tuple([c.Ack(key, i, False) for i in range(batch)]))

    p_cmds, a_cmds = build_commands()
    entries = [c.encode_batch(c.Batch("n1", 1, s, 0, cmds)) for s, cmds in ((1, p_cmds),
                                                                          (2, a_cmds))]
    tmp = tempfile.TemporaryDirectory()
    store = FileStore()
    store.attach(Path(tmp.name), restored=False)
    next_id = iter(range(1, 1 << 62))

    def store_path() -> None:  # put, flush (a tick), read for the delivery, release (ack)
        ids = [next(next_id) for _ in range(batch)]
        run_writes(store, [(i, "", "q", props, body, 1) for i in ids])
        store.flush()
        for i in ids:
            store.read(i)
        run_writes(store, ids)  # type: ignore[arg-type]

    runs: dict[str, Any] = {
        "parse": parse,
        "commands": build_commands,
        "encode": lambda: [c.encode_batch(c.Batch("n1", 1, s, 0, cmds))
                           for s, cmds in ((1, p_cmds), (2, a_cmds))],
        "pickle": lambda: [patches.loads(patches.dumps((0, (e,), {}))) for e in entries],
        "decode": lambda: [c.decode_batch(e) for e in entries],
        "store": store_path,
    }
    try:
        return {name: min(timeit.repeat(f, number=20, repeat=7)) / (20 * batch) * 1e6
                for name, f in runs.items()}
    finally:
        store.close()
        tmp.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--stages", action="store_true", help="time the pure stages only")
    a = p.parse_args()
    pickle_entries()
    if a.stages:
        print(" ".join(f"{k} {v:.3f}" for k, v in stages(a.batch, a.size).items()),
              "us/msg")
        return
    per = asyncio.run(run(a.rounds, a.batch, a.size, a.reps))
    print(" ".join(f"{x:.2f}" for x in per), f"median {statistics.median(per):.2f} us/msg")


if __name__ == "__main__":
    main()
