"""The node's small HTTP endpoint, on the event loop (no thread touches state).

* ``GET /metrics`` — Prometheus text.
* ``GET /healthz`` — 200 once the node is up, sees a leader and a quorum, and
  is not isolated (readiness); 503 otherwise.
* ``GET /livez`` — 200 while the process serves requests (liveness).
* ``GET /api/status`` — this node's view of the cluster, JSON.
* ``POST /api/members?address=HOST:PORT`` / ``DELETE …`` — add / remove a
  Raft member (``raftmq cluster add`` / ``remove``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from cluster import machine
from cluster.replica import MembershipResult

if TYPE_CHECKING:
    from node.broker import Broker

log = logging.getLogger(__name__)

Response = tuple[int, str, bytes]
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 431: "Request Header Fields Too Large",
            503: "Service Unavailable", 504: "Gateway Timeout"}
# A request's line and headers together; longer ones get 431 (asyncio's stream limit).
MAX_REQUEST_HEAD = 16 * 1024
MEMBERSHIP_TIMEOUT_S = 10.0


def status(broker: Broker) -> dict[str, Any]:
    st = broker.raft.status()
    return {
        "node": broker.node_id,
        "incarnation": broker.incarnation,
        "ready": broker.ready,
        "isolated": broker.isolated,
        "raft_address": broker.cfg.raft_address,
        "raft": asdict(st),
        "nodes": {name: asdict(info) for name, info in machine.nodes(broker.raft.state).items()},
        "connections": len(broker.connections),
    }


def healthy(broker: Broker) -> bool:
    return broker.ready and not broker.isolated and broker.raft.leader is not None \
        and broker.raft.has_quorum


async def _membership(broker: Broker, method: str, address: str) -> Response:
    if not address or ":" not in address:
        return 400, "text/plain", b"address=HOST:PORT is required\n"
    done: asyncio.Future[MembershipResult] = broker.loop.create_future()

    def callback(result: MembershipResult) -> None:
        # pysyncobj calls back from its tick, which runs on this loop.
        if not done.done():
            done.set_result(result)

    if method == "DELETE" and (not broker.raft.is_leader or address == broker.cfg.raft_address):
        # Removals are done by the leader, asked over its HTTP API: a removed
        # node never learns the commit of its own removal, so it could not
        # wait for the result. A leader cannot remove itself: it first hands
        # leadership to a caught-up follower.
        if broker.raft.is_leader and not await _step_down(broker):
            return 409, "application/json", json.dumps(
                {"ok": False, "error": "could not transfer leadership"}).encode()
        return await _forward_to_leader(broker, method, address)
    if method == "POST":
        broker.raft.add_member(address, callback)
    else:
        broker.raft.remove_member(address, callback)
    broker.wake()
    try:
        result = await asyncio.wait_for(done, MEMBERSHIP_TIMEOUT_S)
    except TimeoutError:
        return 504, "application/json", json.dumps({"ok": False, "error": "timeout"}).encode()
    ok = result is MembershipResult.OK
    body = {"ok": ok, "error": None if ok else str(result), "address": address}
    return (200 if ok else 409), "application/json", json.dumps(body).encode()


async def _step_down(broker: Broker) -> bool:
    loop = broker.loop
    deadline = loop.time() + MEMBERSHIP_TIMEOUT_S
    while loop.time() < deadline:
        if not broker.raft.is_leader:
            if broker.raft.leader is not None:
                return True
        else:
            broker.raft.transfer_leadership()
            broker.wake()
        await asyncio.sleep(0.2)
    return False


async def _forward_to_leader(broker: Broker, method: str, address: str) -> Response:
    leader = broker.raft.leader
    http = next((i.http_address for i in machine.nodes(broker.raft.state).values()
                 if i.raft_address == leader and i.http_address), None)
    if http is None:
        return 409, "application/json", json.dumps(
            {"ok": False, "error": f"no HTTP address known for the leader {leader}"}).encode()
    host, _, port = http.rpartition(":")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
        writer.write(f"{method} /api/members?address={address} HTTP/1.0\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), MEMBERSHIP_TIMEOUT_S + 5)
        writer.close()
    except (OSError, TimeoutError) as e:
        return 504, "application/json", json.dumps({"ok": False, "error": str(e)}).encode()
    head, _, body = raw.partition(b"\r\n\r\n")
    code = int(head.split()[1]) if len(head.split()) > 1 else 502
    return code, "application/json", body


async def route(broker: Broker, method: str, target: str) -> Response:
    url = urlsplit(target)
    path, query = url.path, parse_qs(url.query)
    if path == "/api/members":
        if method not in ("POST", "DELETE"):
            return 405, "text/plain", b"use POST or DELETE\n"
        return await _membership(broker, method, (query.get("address") or [""])[0])
    if method not in ("GET", "HEAD"):
        return 405, "text/plain", b"method not allowed\n"
    if path == "/metrics":
        return 200, "text/plain; version=0.0.4", broker.metrics.render()
    if path == "/healthz":
        ok = healthy(broker)
        return (200 if ok else 503), "text/plain", (b"ok\n" if ok else b"not ready\n")
    if path == "/livez":
        return 200, "text/plain", b"ok\n"
    if path == "/api/status":
        return 200, "application/json", json.dumps(status(broker), indent=1).encode()
    return 404, "text/plain", b"not found\n"


async def _discard_rest(reader: asyncio.StreamReader, most: int = 1 << 20) -> None:
    """Read what the client is still sending (bounded) before closing: closing with
    unread input resets the connection, and the client may lose our answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.0
    while most > 0 and loop.time() < deadline:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), deadline - loop.time())
        except (TimeoutError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            return
        if not chunk:
            return
        most -= len(chunk)


async def serve_http(broker: Broker, host: str, port: int) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            parts: list[str] = []
            try:
                request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            except asyncio.LimitOverrunError:
                code, ctype, body = 431, "text/plain", b"request line and headers too long\n"
            else:
                parts = request.split(b"\r\n", 1)[0].decode("latin-1").split()
                if len(parts) < 2:
                    code, ctype, body = 400, "text/plain", b"bad request\n"
                else:
                    code, ctype, body = await route(broker, parts[0], parts[1])
            head = (f"HTTP/1.0 {code} {_REASONS.get(code, '')}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode() + (b"" if parts and parts[0] == "HEAD" else body))
            await writer.drain()
            if code == 431:
                await _discard_rest(reader)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            log.exception("HTTP request failed")
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=MAX_REQUEST_HEAD)
