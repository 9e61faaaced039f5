"""The management API on the in-process node (tests/node/inproc.py), through aiohttp's
test client: real HTTP on 127.0.0.1 to the app node/mgmt/app.py assembles, no
subprocesses. ``api(method, path, body, user=...)`` answers (status, JSON or text)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from harness.ports import free_port
from node.broker import Broker
from node.config import Config
from node.mgmt.app import app
from node.services.web import MAX_BODY
from tests.cluster.fake_raft import FakeCluster
from tests.node.inproc import InProcessNode

GUEST = ("guest", "guest")


class Api:
    """The management API of one in-process node, as ``user`` unless told otherwise."""

    def __init__(self, node: InProcessNode, client: TestClient) -> None:
        self.node = node
        self.client = client

    async def __call__(self, method: str, path: str, body: Any = None,
                       user: tuple[str, str] | None = GUEST,
                       headers: dict[str, str] | None = None,
                       data: bytes | None = None) -> tuple[int, Any]:
        sent = dict(headers or {})
        if user is not None:
            sent.setdefault("Authorization", "Basic " + base64.b64encode(
                ":".join(user).encode()).decode())
        async with self.client.request(method, path, json=body if data is None else None,
                                       data=data, headers=sent) as r:
            self.last_headers = r.headers
            text = await r.text()
        try:
            return r.status, json.loads(text) if text else None
        except ValueError:
            return r.status, text

    async def ok(self, method: str, path: str, body: Any = None,
                 user: tuple[str, str] | None = GUEST) -> Any:
        status, answer = await self(method, path, body, user)
        assert status in (200, 201, 204), (method, path, status, answer)
        return answer

    async def user(self, name: str, tags: str = "", vhost: str | None = None) -> tuple[str, str]:
        """A user (password: its name) with ``tags``, all permissions on ``vhost``."""
        await self.ok("PUT", f"/api/users/{name}", {"password": name, "tags": tags})
        if vhost is not None:
            await self.ok("PUT", f"/api/permissions/{_quote(vhost)}/{name}",
                          {"configure": ".*", "write": ".*", "read": ".*"})
        return name, name


async def until(done: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (bounded) until ``done()``: another node's replica applies at its next tick."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not done():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _quote(name: str) -> str:
    return "%2F" if name == "/" else name


async def serve(node: InProcessNode, port: int) -> TestClient:
    client = TestClient(TestServer(app(node.broker, client_max_size=MAX_BODY),
                                   host="127.0.0.1", port=port))
    await client.start_server()
    return client


async def start_node(cluster: FakeCluster | None, node_id: str) -> tuple[InProcessNode, Api]:
    """A node on ``cluster`` (a new one: None) whose API listens where its NodeUp says."""
    port = free_port()
    loop = asyncio.get_running_loop()
    node = InProcessNode(loop, management_port=port, raft_address=node_id)
    if cluster is not None:  # (InProcessNode makes its own: join the given one instead)
        node.cluster = cluster
        node.raft = cluster.nodes.get(node_id) or cluster.node(node_id)
        node.broker = Broker(Config(node_id=node_id, metrics_port=0, management_port=port,
                                    raft_address=node_id), loop, raft=node.raft)
    await node.start()
    return node, Api(node, await serve(node, port))


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    node, api = await start_node(None, "n1")
    try:
        yield api
    finally:
        await api.client.close()
        await node.stop()
