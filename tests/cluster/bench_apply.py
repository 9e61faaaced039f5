"""Micro-benchmark of the machine's hot path (not collected by pytest).

    .venv/bin/python -m tests.cluster.bench_apply

One consumer with prefetch 100; each round applies one batch of 100 confirmed
Publishes (each delivered at once) and one batch of 100 Acks; after each batch what it
decided about message records is carried out on a MemoryStore, as the replica does.
"""

from __future__ import annotations

import time

from cluster import commands as C
from cluster.machine import apply_batch, take_writes
from cluster.store import MemoryStore, run
from tests.cluster.helpers import guest_state

CH = ("n1", 1, 1)


def main(rounds: int = 2000, size: int = 100, body: bytes = b"x" * 100) -> None:
    s = guest_state()
    store = MemoryStore()
    seq = 0

    def batch(*cmds: C.Command) -> list:
        nonlocal seq
        seq += 1
        out = apply_batch(s, C.Batch("n1", 1, seq, 0, cmds))
        run(store, take_writes(s))
        store.collect()
        return out

    batch(C.ConnectionOpen(CH[:2], "/", "guest"), C.ChannelOpen(CH),
          C.QueueDeclare(CH, "q", False, True, False, False, False, {}),
          C.Qos(CH, size, False), C.Consume(CH, "q", "c", False, False, False, {}))
    props = b"\x10\x00\x02"  # delivery-mode 2
    tag = 0
    confirm = 0
    t0 = time.perf_counter()
    effects = 0
    for _ in range(rounds):
        pubs = []
        for _ in range(size):
            confirm += 1
            pubs.append(C.Publish(CH, "", "q", False, props, body, confirm))
        effects += len(batch(*pubs))
        acks = []
        for _ in range(size):
            tag += 1
            acks.append(C.Ack(CH, tag, False))
        effects += len(batch(*acks))
    dt = time.perf_counter() - t0
    n = rounds * size
    assert effects == 2 * n, effects  # a Deliver and a Confirm per message
    print(f"{n} messages (publish+deliver+confirm+ack) in {dt:.3f}s: {n / dt:,.0f} msg/s, "
          f"{dt / n * 1e6:.2f} us/msg")


if __name__ == "__main__":
    main()
