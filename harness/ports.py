"""Loopback port helpers: pick a free port, wait for a listener or an AMQP server."""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Callable

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


# Ports this process handed out lately: the kernel may give the same free port to two
# calls in a row (nothing listens on it yet), and a node got one port for both its metrics
# and its Raft listener (CI: "address already in use", 2026-12-08).
_GIVEN: dict[int, None] = {}
_GIVEN_MAX = 4096


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port that was free on ``host`` a moment ago (bind port 0, read it, close),
    and that this process has not handed out lately."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN:
            break
    _GIVEN[port] = None
    if len(_GIVEN) > _GIVEN_MAX:
        del _GIVEN[next(iter(_GIVEN))]
    return port


def _check_alive(alive: Callable[[], bool] | None, what: str) -> None:
    if alive is not None and not alive():
        raise RuntimeError(f"{what}: the process exited while we were waiting for it")


def wait_port(
    host: str, port: int, timeout: float, alive: Callable[[], bool] | None = None
) -> None:
    """Wait until a TCP connect to ``host:port`` succeeds; TimeoutError after ``timeout`` s.

    ``alive``, when given, is polled between attempts; if it returns False we give up early.
    """
    deadline = time.monotonic() + timeout
    while True:
        _check_alive(alive, f"{host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from exc
        time.sleep(0.05)


def _amqp_answers(host: str, port: int, io_timeout: float) -> bool:
    """One attempt: send the protocol header, expect a connection.start method frame."""
    with socket.create_connection((host, port), timeout=io_timeout) as s:
        s.settimeout(io_timeout)
        s.sendall(AMQP_HEADER)
        head = b""
        while len(head) < 11:  # 7-byte frame header + class id + method id
            chunk = s.recv(11 - len(head))
            if not chunk:
                return False
            head += chunk
        ftype, channel, _size, class_id, method_id = struct.unpack(">BHIHH", head)
        return ftype == 1 and channel == 0 and (class_id, method_id) == (10, 10)


def wait_amqp(
    host: str, port: int, timeout: float, alive: Callable[[], bool] | None = None
) -> None:
    """Wait until ``host:port`` answers the AMQP 0-9-1 header with connection.start."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        _check_alive(alive, f"AMQP {host}:{port}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"no AMQP connection.start from {host}:{port} after {timeout}s: {last!r}"
            )
        try:
            if _amqp_answers(host, port, min(2.0, max(remaining, 0.1))):
                return
            last = None
        except OSError as exc:
            last = exc
        time.sleep(0.1)


# deploy/local-cluster.sh (make cluster) puts node i of 3 on base + offset + i for each of
# AMQP, management, metrics and Raft.
LOCAL_CLUSTER_OFFSETS = (0, 10000, 10020, 20000)


def free_local_cluster_base(tries: int = 200) -> int | None:
    """A ``CLUSTER_BASE_PORT`` whose twelve ports are all free a moment ago, below the
    ephemeral range (Raft = base + 20000); None if ``tries`` random bases were all taken."""
    rng = random.Random()
    for _ in range(tries):
        base = rng.randrange(10000, 12000)
        if all(_bindable(base + off + i) for off in LOCAL_CLUSTER_OFFSETS for i in range(3)):
            return base
    return None


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True

