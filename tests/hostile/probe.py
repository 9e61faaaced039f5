"""The loop-stall probe: ``python -m tests.hostile.probe PORT`` in a process of its own.

Every 10 ms it sends ``tx.rollback`` on a transactional channel with nothing pending and
waits for ``tx.rollback-ok``. The node answers that from its event loop alone (no Raft
entry: node/amqp/session.py ``reply_in_order`` with nothing unsettled), so a round trip is the
time the loop took to notice the request: its longest one is the longest stall of the
node's loop seen from outside (plus this process's own scheduling, so an upper bound).

It prints ``ready`` once connected, runs until its stdin closes or says ``stop``, then prints one JSON line: the number of
round trips, p50/p99/max in seconds, the five longest with when they started (seconds
since the probe's start), and how many times it had to reconnect.
"""

from __future__ import annotations

import json
import select
import sys
import time
from dataclasses import dataclass, field

from pamqp import commands

from tests.integration.rawclient import RawClient

INTERVAL_S = 0.01
# a round trip waits this long before the probe gives up on it (a stall of the issue's
# 33 s is still measured whole)
PATIENCE_S = 90.0


@dataclass
class Stalls:
    start: float = field(default_factory=time.monotonic)
    rtts: list[float] = field(default_factory=list)
    worst: list[tuple[float, float]] = field(default_factory=list)  # (rtt, at)
    reconnects: int = 0

    def add(self, at: float, rtt: float) -> None:
        self.rtts.append(rtt)
        self.worst = sorted([*self.worst, (rtt, at - self.start)], reverse=True)[:5]

    def summary(self) -> dict[str, object]:
        ordered = sorted(self.rtts)

        def pct(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else 0.0

        return {"count": len(ordered), "p50": pct(0.5), "p99": pct(0.99),
                "max": ordered[-1] if ordered else 0.0,
                "worst": [{"rtt": r, "at": round(a, 2)} for r, a in self.worst],
                "reconnects": self.reconnects}


def _connect(port: int) -> RawClient:
    c = RawClient("127.0.0.1", port, timeout=PATIENCE_S)
    c.handshake()
    c.send_frame(1, commands.Channel.Open())
    c.recv_method()
    c.send_frame(1, commands.Tx.Select())
    c.recv_method()
    return c


def _stop_asked() -> bool:
    ready, _, _ = select.select([sys.stdin], [], [], 0)
    return bool(ready) and sys.stdin.readline().strip() in ("stop", "")


def run(port: int) -> Stalls:
    client = _connect(port)
    print("ready", flush=True)
    stalls = Stalls()
    next_at = time.monotonic()
    while not _stop_asked():
        sent = time.monotonic()
        try:
            client.send_frame(1, commands.Tx.Rollback())
            _, answer = client.recv_method()
            if not isinstance(answer, commands.Tx.RollbackOk):
                raise ConnectionError(f"unexpected {answer.name}")
            stalls.add(sent, time.monotonic() - sent)
        except (OSError, ConnectionError, TimeoutError):  # counted, then measured again
            stalls.add(sent, time.monotonic() - sent)
            stalls.reconnects += 1
            client.close()
            client = _connect(port)
        next_at = max(next_at + INTERVAL_S, time.monotonic())
        time.sleep(max(0.0, next_at - time.monotonic()))
    client.close()
    return stalls


def main(argv: list[str]) -> int:
    stalls = run(int(argv[0]))
    print(json.dumps(stalls.summary()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
