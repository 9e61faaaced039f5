"""A consumer that never reads its socket does not make the node buffer without bound.

200,000 persistent 1 KiB messages (about 200 MiB) are published with confirms to a queue
whose only consumer has stopped reading. The node writes deliveries while the socket takes
them, then holds the rest in the queue: its RSS stays within a bound far below the bytes
published, and what was not delivered is still in the queue, ready for another consumer.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from pamqp import commands

from bench import backlog
from bench.loadgen import LoadConfig
from tests.integration.conftest import Broker
from tests.integration.rawclient import RawClient

pytestmark = [pytest.mark.raftmq_only, pytest.mark.restart]

COUNT = 200_000
SIZE = 1024
MiB = 2**20
# Growth allowed while 200 MiB pass through: the Raft log until the next snapshot
# (--snapshot-mib 32), the record cache (16 MiB), the connection's output cap (8 MiB), the
# index and the heap's slack. Buffering the deliveries would take several times the bytes.
GROWTH_BOUND = 120 * MiB
# Deliveries that can have left the node: the no-ack window plus the socket buffers.
IN_FLIGHT_MAX = 10_000


class _Peak:
    """Samples the node's RSS every 50 ms in a thread until stopped."""

    def __init__(self, node: object) -> None:
        self.node = node
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.node.rss_bytes())  # type: ignore[attr-defined]

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def _stalled_consumer(broker: Broker, queue: str, no_ack: bool) -> RawClient:
    raw = RawClient(broker.host, broker.port, timeout=10)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    raw.handshake()
    raw.send_frame(1, commands.Channel.Open())
    assert isinstance(raw.recv_method()[1], commands.Channel.OpenOk)
    raw.send_frame(1, commands.Basic.Consume(queue=queue, consumer_tag="stalled",
                                             no_ack=no_ack))
    while not isinstance(raw.recv_method()[1], commands.Basic.ConsumeOk):
        pass  # deliveries of the first message may come right after
    return raw  # and from here on nobody reads it


@pytest.mark.parametrize("no_ack", [True, False], ids=["no-ack", "manual-ack-unlimited"])
def test_consumer_that_never_reads(fresh_broker: Broker, no_ack: bool) -> None:
    node = fresh_broker.node
    cfg = LoadConfig(host=fresh_broker.host, port=fresh_broker.port, size=SIZE, window=500,
                     queue="slow", setup_timeout=30.0)
    backlog.publish(cfg, 1, timeout=60)  # declares the durable queue
    raw = _stalled_consumer(fresh_broker, "slow", no_ack)
    try:
        time.sleep(1.0)
        before = node.rss_bytes()
        peak = _Peak(node)
        backlog.publish(cfg, COUNT, timeout=240)
        time.sleep(1.0)
        growth = peak.stop() - before
        print(f"RSS before {before / MiB:.0f} MiB, peak growth {growth / MiB:.0f} MiB "
              f"while {COUNT * SIZE / MiB:.0f} MiB were published")
        assert growth < GROWTH_BOUND
    finally:
        raw.close()  # unacked deliveries (manual ack) go back to the queue
    # The rest waited in the queue: another consumer gets every one of them.
    remaining = _queue_depth(cfg)
    assert COUNT + 1 - IN_FLIGHT_MAX <= remaining <= COUNT + 1
    backlog.drain(cfg, remaining, timeout=240)
    assert _queue_depth(cfg) == 0


def _queue_depth(cfg: LoadConfig) -> int:
    """Ready messages once the closed consumer's unacked ones are back (a few ms)."""
    deadline = time.monotonic() + 10
    last = -1
    while time.monotonic() < deadline:
        with RawClient(cfg.host, cfg.port) as c:
            c.handshake()
            c.send_frame(1, commands.Channel.Open())
            c.recv_method()
            c.send_frame(1, commands.Queue.Declare(queue=cfg.queue, passive=True))
            _, ok = c.recv_method()
            assert isinstance(ok, commands.Queue.DeclareOk)
        count = ok.message_count or 0
        if count == last:
            return last
        last = count
        time.sleep(0.3)
    return last
