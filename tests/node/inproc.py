"""A node in this process: a Broker on the in-memory log (tests/cluster/fake_raft.py)
with connections on fake transports, so node logic is tested without subprocesses
or sockets (uvicorn's protocol tests are the model). Several nodes share one log
in an :class:`InProcessCluster` (tests/node/test_two_nodes.py)."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from pamqp import commands as spec
from pamqp import frame as pframe

from node.amqp.connection import AMQPConnection
from node.broker import Broker
from node.config import Config
from protocol.methods import build, encode_method
from tests.cluster.fake_raft import FakeCluster

HEADER = b"AMQP\x00\x00\x09\x01"
# settle(): loop turns at most, after the first, for every replica to catch up
CATCH_UP_TURNS = 100


class FakeTransport(asyncio.Transport):
    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.reading = True
        self.peer = peer
        self.buffered = 0  # what a real transport would still hold

    def write(self, data: Any) -> None:
        self.out += data

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.out += line

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer}.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return self.buffered


class Client:
    """A connection to the in-process node, driven frame by frame."""

    def __init__(self, node: InProcessNode) -> None:
        self.node = node
        self.transport = FakeTransport()
        self.conn = AMQPConnection(node.broker)
        self.conn.connection_made(self.transport)
        self._seen = 0

    def send(self, data: bytes) -> None:
        self.conn.data_received(data)

    def method(self, channel: int, m: Any) -> None:
        payload = encode_method(m)
        self.send(struct.pack(">BHI", 1, channel, len(payload)) + payload + b"\xce")

    def publish(self, channel: int, body: bytes, routing_key: str, exchange: str = "") -> None:
        self.method(channel, build(spec.Basic.Publish, 0, exchange, routing_key, False, False))
        self.send(pframe.marshal(_header(len(body)), channel))
        if body:
            self.send(struct.pack(">BHI", 3, channel, len(body)) + body + b"\xce")

    def frames(self) -> list[tuple[int, Any]]:
        """Frames the node wrote since the last call."""
        data = bytes(self.transport.out[self._seen:])
        self._seen = len(self.transport.out)
        out = []
        while data:
            n, ch, obj = pframe.unmarshal(data)
            out.append((ch, obj))
            data = data[n:]
        return out

    async def open(self, channels: tuple[int, ...] = (1,)) -> None:
        self.send(HEADER)
        self.method(0, build(spec.Connection.StartOk, {"capabilities": {
            "consumer_cancel_notify": True}}, "PLAIN", "\0guest\0guest", "en_US"))
        self.method(0, build(spec.Connection.TuneOk, 2047, 131072, 0))
        self.method(0, build(spec.Connection.Open, "/"))
        for ch in channels:
            self.method(ch, build(spec.Channel.Open))
        await self.node.settle()
        names = [f.name for _, f in self.frames()]
        assert names[:4] == ["Connection.Start", "Connection.Tune", "Connection.OpenOk",
                             "Channel.OpenOk"], names


def _header(size: int) -> Any:
    from pamqp import header

    return header.ContentHeader(0, size, spec.Basic.Properties())


class InProcessNode:
    """A node on ``cluster`` (default: a fake log of its own, where it leads)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, cluster: FakeCluster | None = None,
                 node_id: str = "n1", **cfg: Any) -> None:
        self.cluster = cluster if cluster is not None else FakeCluster()
        self.raft = self.cluster.nodes.get(node_id) or self.cluster.node(node_id)
        self.broker = Broker(Config(node_id=node_id, metrics_port=0, **cfg), loop, raft=self.raft)
        self.stopped = False

    async def start(self) -> InProcessNode:
        await self.broker.start(timeout=5)
        return self

    async def settle(self, turns: int = 5) -> None:
        """Let the loop run the node's flushes and ticks: ``turns`` turns, then (bounded)
        until every running node on the log has applied what it committed."""
        for _ in range(turns):
            await asyncio.sleep(0)
        for _ in range(CATCH_UP_TURNS):
            if all(r.applied >= self.cluster.commit for r in self.cluster.nodes.values()
                   if r.wake is not None and not r.down):
                return
            await asyncio.sleep(0)

    def client(self) -> Client:
        return Client(self)

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.broker.stop()


class InProcessCluster:
    """``size`` nodes n1, n2, ... in this process on one fake Raft log; n1 leads.

    Each node's Raft address is its id (what its NodeUp records and its peers name),
    so the leader's membership watch sees the others as members, connected while
    they run."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int = 2, **cfg: Any) -> None:
        self.fake = FakeCluster()
        self.nodes = {
            f"n{i}": InProcessNode(loop, cluster=self.fake, node_id=f"n{i}",
                                   raft_address=f"n{i}", **cfg)
            for i in range(1, size + 1)}

    def __getitem__(self, node_id: str) -> InProcessNode:
        return self.nodes[node_id]

    async def start(self) -> InProcessCluster:
        for node in self.nodes.values():
            await node.start()
        await self.settle()
        return self

    async def settle(self, turns: int = 10) -> None:
        await self.nodes["n1"].settle(turns)

    async def crash(self, node_id: str) -> None:
        """The node's process dies: from now on nothing it does reaches the log, it
        applies nothing, and the others find it unreachable; its clients lose their
        connections."""
        node = self.nodes[node_id]
        node.raft.down = True
        await node.stop()  # (its ConnectionClose proposals are lost with it)

    async def stop(self) -> None:
        for node in reversed(self.nodes.values()):
            await node.stop()
