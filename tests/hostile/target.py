"""What every attack needs: the node's addresses and the tenants' logins (:class:`Target`),
one row of the suite's table (:class:`Outcome`), and small blocking HTTP and AMQP clients
with a deadline on everything."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPException
from typing import Any

import pika

NODE = "n1"
PASSWORDS = {"a": "a-secret", "b": "b-secret", "c": "c-secret"}


@dataclass(frozen=True)
class Target:
    amqp_port: int
    management_port: int
    metrics_port: int
    scale: int = 1  # the long suite multiplies the attacks' sizes by this
    node: str = NODE


@dataclass
class Outcome:
    """One attack: what was tried, what the node did, and whether that is what the issue
    demands. ``problems`` lists every check that failed (empty: ok)."""

    name: str
    tried: str = ""
    seen: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    window: tuple[float, float] = (0.0, 0.0)  # monotonic start and end

    @property
    def ok(self) -> bool:
        return not self.problems

    def expect(self, cond: bool, what: str) -> None:
        if not cond:
            self.problems.append(what)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    seconds: float

    def json(self) -> Any:
        """Strict JSON: NaN or Infinity in an answer raises (browsers refuse them)."""
        def refuse(token: str) -> Any:
            raise ValueError(f"{token} is not JSON")

        return json.loads(self.body, parse_constant=refuse)


def request(port: int, method: str, path: str, user: str | None = None,
         body: Any = None, raw: bytes | None = None, timeout: float = 60.0) -> Answer:
    """One request on a fresh connection; status 0 when the connection failed or timed
    out (the body then says how)."""
    headers = {"Content-Type": "application/json"}
    if user is not None:
        password = "guest" if user == "guest" else PASSWORDS[user]
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    start = time.monotonic()
    conn = HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        out = resp.read()
        return Answer(resp.status, out, time.monotonic() - start)
    except (OSError, HTTPException) as exc:
        return Answer(0, f"{type(exc).__name__}: {exc}".encode(), time.monotonic() - start)
    finally:
        conn.close()


@contextlib.contextmanager
def amqp(t: Target, user: str = "b", vhost: str = "B") -> Iterator[pika.BlockingConnection]:
    params = pika.ConnectionParameters(
        "127.0.0.1", t.amqp_port, vhost, pika.PlainCredentials(user, PASSWORDS[user]),
        heartbeat=0, blocked_connection_timeout=60, socket_timeout=30,
        stack_timeout=60, connection_attempts=3, retry_delay=0.5)
    conn = pika.BlockingConnection(params)
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def queue_depth(t: Target, vhost: str, name: str) -> tuple[int, int]:
    """(messages, consumers) of a queue, as the admin reads them; (-1, -1) if absent.
    Read from the listing (two columns), not from GET /api/queues/VHOST/NAME, whose
    consumer_details of 10k consumers would cost the node more than the attack."""
    from urllib.parse import quote

    got = request(t.management_port, "GET", f"/api/queues/{quote(vhost, safe='')}?name="
                  f"{quote(name, safe='')}&columns=name,messages,consumers", "guest",
                  timeout=30)
    if got.status != 200:
        return -1, -1
    rows = json.loads(got.body)  # lenient: the attacks judge strict JSON themselves
    info = next((r for r in rows if isinstance(r, dict) and r.get("name") == name), None)
    if info is None:
        return -1, -1
    return int(info.get("messages", 0)), int(info.get("consumers", 0))


def brief(answer: Answer) -> str:
    text = answer.body[:80].decode(errors="replace").replace("\n", " ")
    return f"{answer.status} {text!r}" if answer.status in (0, 500) else str(answer.status)


def wait_closed(socks: list[socket.socket], within_s: float,
                poll_s: float = 0.1) -> list[socket.socket]:
    """Wait until the node closed each of ``socks`` (non-blocking) or ``within_s`` is
    over; those it closed are closed here too. Returns the ones still open."""
    deadline = time.monotonic() + within_s
    while socks and time.monotonic() < deadline:
        still = []
        for s in socks:
            try:
                if s.recv(65536) == b"":
                    s.close()
                    continue
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                continue
            still.append(s)
        socks = still
        time.sleep(poll_s)
    return socks
