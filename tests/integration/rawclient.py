"""A tiny raw-socket AMQP 0-9-1 client for protocol-level tests (no client library involved).

Frames are built and parsed with pamqp; everything has a socket timeout, nothing blocks forever.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from typing import Any

from pamqp import commands, constants, frame

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_END = bytes([constants.FRAME_END])  # 0xCE


class ConnectionClosedError(Exception):
    """The peer closed the TCP connection."""


class RawClient:
    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.timeout = timeout
        self.buf = b""

    # -- context manager
    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- sending
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, channel: int, value: Any) -> None:
        self.send(frame.marshal(value, channel))

    # -- receiving
    def _fill(self, n: int, deadline: float) -> None:
        while len(self.buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"waited {self.timeout}s for {n} bytes, have {len(self.buf)}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise ConnectionClosedError(f"peer closed; {len(self.buf)} unparsed bytes")
            self.buf += chunk

    def recv_exact(self, n: int, timeout: float | None = None) -> bytes:
        self._fill(n, time.monotonic() + (timeout or self.timeout))
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self, timeout: float | None = None) -> tuple[int, Any]:
        """Read one complete frame; returns (channel, pamqp frame object)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        self._fill(7, deadline)
        if self.buf.startswith(b"AMQP"):
            self._fill(8, deadline)
            raw, self.buf = self.buf[:8], self.buf[8:]
            _, ch, value = frame.unmarshal(raw)
            return ch, value
        _ftype, _ch, size = struct.unpack(">BHI", self.buf[:7])
        self._fill(7 + size + 1, deadline)
        raw, self.buf = self.buf[: 7 + size + 1], self.buf[7 + size + 1 :]
        _, ch, value = frame.unmarshal(raw)
        return ch, value

    def recv_method(self, timeout: float | None = None, skip_heartbeats: bool = True) -> tuple[int, Any]:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no method frame in time (only heartbeats)")
            ch, value = self.recv_frame(remaining)
            if skip_heartbeats and value.name == "Heartbeat":
                continue
            return ch, value

    def wait_closed(self, timeout: float | None = None) -> bytes:
        """Read until the peer closes the socket; returns whatever arrived meanwhile.

        TimeoutError if the socket is still open after ``timeout`` s.
        """
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("socket still open")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                out, self.buf = self.buf, b""
                return out
            self.buf += chunk

    # -- protocol
    def handshake(self, user: str = "guest", password: str = "guest", vhost: str = "/") -> None:
        """Protocol header → start/start-ok → tune/tune-ok → open/open-ok (heartbeats off)."""
        self.send(PROTOCOL_HEADER)
        _, start = self.recv_method()
        assert isinstance(start, commands.Connection.Start), start
        assert (start.version_major, start.version_minor) == (0, 9)
        assert "PLAIN" in start.mechanisms.split()
        self.send_frame(0, commands.Connection.StartOk(
            client_properties={"product": "raftmq-rawclient"},
            mechanism="PLAIN", response=f"\0{user}\0{password}", locale="en_US"))
        _, tune = self.recv_method()
        assert isinstance(tune, commands.Connection.Tune), tune
        frame_max = tune.frame_max or 131072
        self.send_frame(0, commands.Connection.TuneOk(channel_max=tune.channel_max or 2047,
                                                      frame_max=frame_max, heartbeat=0))
        self.send_frame(0, commands.Connection.Open(virtual_host=vhost))
        _, open_ok = self.recv_method()
        assert isinstance(open_ok, commands.Connection.OpenOk), open_ok
