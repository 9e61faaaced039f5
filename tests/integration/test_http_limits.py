"""Both HTTP ports of a real node close half-open requests (issue 19 item 7: 0 of 180
were closed after 120 s) and refuse connections beyond the limit, with the limits set
through the node's configuration (--http-request-timeout, --http-max-connections)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.raftmq import RaftMQNode
from tests.harness.api import Api

pytestmark = [pytest.mark.raftmq_only, pytest.mark.timeout(90)]

TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftMQNode]:
    base = tmp_path_factory.mktemp("http-limits")
    n = RaftMQNode(base / "data", log_path=base / "node.log", extra_env={
        "RAFTMQ_HTTP_REQUEST_TIMEOUT": str(TIMEOUT_S), "RAFTMQ_HTTP_MAX_CONNECTIONS": "120"})
    n.start(wait=True, timeout=30)
    try:
        yield n
    finally:
        n.stop()


def _livez(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return s.recv(4096).startswith(b"HTTP/1.1 200")


def _closed_within(sock: socket.socket, deadline: float) -> bool:
    """Whether the server closed ``sock`` (EOF or reset) before ``deadline``."""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


@pytest.mark.parametrize("port_name", ["management_port", "metrics_port"])
def test_half_open_requests_are_closed_on_both_ports(node, port_name):
    port = getattr(node, port_name)
    socks = []
    try:
        for i in range(50):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /api/overview HTTP/1.1\r\nHost: x\r\n" if i % 2 else b"GET /api")
            socks.append(s)
        started = time.monotonic()
        # a normal request is served meanwhile, on each port
        assert Api(node.management_port)("GET", "/api/whoami")[0] == 200
        assert _livez(node.metrics_port)
        deadline = started + TIMEOUT_S + 2.0
        closed = sum(_closed_within(s, deadline) for s in socks)
        assert closed == 50, f"{closed} of 50 half-open requests closed"
    finally:
        for s in socks:
            s.close()
    assert "Traceback" not in Path(node.log_path).read_text(errors="replace")


def test_connections_beyond_the_limit_are_closed_at_once(node):
    held = []
    try:
        for _ in range(120):
            held.append(socket.create_connection(("127.0.0.1", node.management_port),
                                                 timeout=5))
        time.sleep(0.3)  # all accepted by the node
        extra = socket.create_connection(("127.0.0.1", node.management_port), timeout=5)
        assert _closed_within(extra, time.monotonic() + 0.5)
        extra.close()
        assert _livez(node.metrics_port)  # the other port has its own limit
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    assert Api(node.management_port)("GET", "/api/whoami")[0] == 200  # room again
