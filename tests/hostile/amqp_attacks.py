"""Tenant B over AMQP (issue 19, items 1, 3, 8 and 9): dead-letter arguments longer than a
routing key may be and dead-letter cycles, many consumers dropped at once, raw frames
(channel numbers above channel_max, 255-byte names, huge argument tables, garbage), and a
20 MiB message. Each returns an :class:`Outcome`."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from typing import Any

import pika
import pika.exceptions
from pamqp import commands as C

from protocol.methods import build
from tests.fuzz.corpus import method
from tests.hostile.api_attacks import evil_name
from tests.hostile.target import (
    PASSWORDS,
    Outcome,
    Target,
    amqp,
    queue_depth,
    request,
    wait_closed,
)
from tests.integration.rawclient import PROTOCOL_HEADER, ConnectionClosedError, RawClient

CLEAR_BOUND_S = 1.0  # consumers of a dropped connection gone, from the drop (O(1) each)
CLOSE_BOUND_S = 12.0  # a garbage connection closed (the handshake timeout is 10 s)
BIG_MESSAGE = 20 << 20
# RabbitMQ's consumer_max_per_channel, RaftMQ's default: the attack spreads its consumers
# so that every one is allowed
CONSUMERS_PER_CHANNEL = 1000


def _declare(ch: Any, name: str, args: dict[str, Any]) -> int:
    """0 if declared, else the reply code of the channel's closing."""
    try:
        ch.queue_declare(name, durable=True, arguments=args)
        return 0
    except pika.exceptions.ChannelClosedByBroker as exc:
        return int(exc.reply_code)


def make_evil_names(t: Target, count: int = 300) -> None:
    """B's 300 queues and 300 exchanges of 20 characters for the regex attack."""
    with amqp_b(t) as conn:
        ch = conn.channel()
        for i in range(count):
            ch.queue_declare(evil_name(i), auto_delete=False)
            ch.exchange_declare(evil_name(i), "direct")


class DeadLetterPump:
    """B dead-letters all the time, from before A starts to the end of the suite: a queue
    with x-dead-letter-routing-key of 300 bytes (a fanout routes its dead letters to
    ``b.pumped``, so they are stored) and a 200 ms TTL, one persistent message every 5 ms.
    It is never empty, so its expiries come first in every command that expires A's.
    The node refuses the queue (406) or delivers every dead letter; A must lose nothing."""

    PERIOD_S = 0.005
    TTL_MS = 200

    def __init__(self, t: Target) -> None:
        self.t = t
        self.stop = threading.Event()
        self.out = Outcome("dead-letter pump", f"a queue with a 300-byte dead-letter routing "
                                               f"key, one message every "
                                               f"{self.PERIOD_S * 1000:g} ms for the whole "
                                               "suite, its dead letters routed to a queue")
        self.code = -1
        self.pumped = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while self.code == -1 and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _run(self) -> None:
        with amqp_b(self.t) as conn:
            ch = conn.channel()
            ch.exchange_declare("b.pump.sink", "fanout")
            ch.queue_declare("b.pumped", durable=True)
            ch.queue_bind("b.pumped", "b.pump.sink")
            self.code = _declare(ch, "b.pump", {
                "x-dead-letter-exchange": "b.pump.sink", "x-dead-letter-routing-key": "k" * 300,
                "x-message-ttl": self.TTL_MS})
            if self.code != 0:
                return
            props = pika.BasicProperties(delivery_mode=2)
            while not self.stop.is_set():
                ch.basic_publish("", "b.pump", b"p%d" % self.pumped, props)
                self.pumped += 1
                conn.process_data_events(0)
                time.sleep(self.PERIOD_S)

    def finish(self) -> Outcome:
        self.stop.set()
        self.thread.join(60)
        out = self.out
        out.expect(self.code in (0, 406), f"b.pump: reply {self.code} (406 or declared)")
        if self.code == 0:
            arrived = _wait_depth(self.t, "b.pumped", self.pumped, timeout=10)
            out.expect(arrived == self.pumped, f"{arrived} of {self.pumped} dead letters with "
                                               "the 300-byte routing key delivered")
            out.seen.append(f"declared; {arrived}/{self.pumped} dead-lettered")
            request(self.t.management_port, "DELETE", "/api/queues/B/b.pump", "b")
        else:
            out.seen.append(f"refused {self.code}")
        request(self.t.management_port, "DELETE", "/api/queues/B/b.pumped", "b")
        return out


def amqp_b(t: Target) -> Any:
    return amqp(t, "b", "B")


def dead_letters(t: Target) -> Outcome:
    """Item 1: a 300-byte dead-letter routing key whose dead letters a fanout routes to a
    queue (so they are stored), and a 300-byte dead-letter exchange: refused 406, or
    every dead letter delivered (A's are checked by A); their TTL'd messages are spread
    over seconds so that their expiries share ticks with A's. Then a 300-byte key in CC,
    a 255-byte dead-letter key (must work), dead-letter cycles and a fanout that would
    double every dead letter in a cycle (no amplification)."""
    n = 600 * t.scale  # one every 5 ms: the expiry of each of A's shares a tick with one
    out = Outcome("dead-letter arguments", f"x-dead-letter-routing-key/-exchange of 300 "
                                           f"bytes + {n} TTL'd messages each over ~3 s, CC "
                                           "of 300 bytes, 255 bytes, two cycles (one "
                                           "through a fanout)")
    long_rk = {"x-dead-letter-exchange": "b.sink", "x-dead-letter-routing-key": "k" * 300,
               "x-message-ttl": 1}
    long_x = {"x-dead-letter-exchange": "x" * 300, "x-message-ttl": 1}
    props = pika.BasicProperties(delivery_mode=2)
    with amqp_b(t) as conn:
        ch = conn.channel()
        ch.exchange_declare("b.sink", "fanout")
        ch.queue_declare("b.sink", durable=True)
        ch.queue_purge("b.sink")
        ch.queue_bind("b.sink", "b.sink")
        for name, args in (("b.dlrk300", long_rk), ("b.dlx300", long_x)):
            ch = conn.channel()
            code = _declare(ch, name, args)
            out.expect(code in (0, 406), f"{name}: reply {code} (406 or declared)")
            out.seen.append(f"{name} {code or 'declared'}")
            if code == 0:
                for i in range(n):
                    ch.basic_publish("", name, b"x%d" % i, props)
                    time.sleep(3.0 / n)
                    if i % 50 == 0:
                        conn.process_data_events(0)
        if "b.dlrk300 declared" in out.seen:
            sunk = _wait_depth(t, "b.sink", n)
            out.expect(sunk == n, f"{sunk} of {n} dead letters with the 300-byte routing key "
                                  "delivered (declared, so all must be)")
            out.seen.append(f"sink {sunk}/{n}")
        ch = conn.channel()
        ch.queue_declare("k" * 255, durable=True)
        ch.queue_purge("k" * 255)
        code = _declare(ch, "b.dl255", {"x-dead-letter-exchange": "",
                                        "x-dead-letter-routing-key": "k" * 255,
                                        "x-message-ttl": 1})
        out.expect(code == 0, f"255-byte dead-letter routing key refused: {code}")
        if code == 0:
            for i in range(20):
                ch.basic_publish("", "b.dl255", b"y%d" % i, props)
        out.seen.append(_cc_routing_keys(conn, n, t))
        out.problems += [p for p in out.seen[-1:] if p.startswith("CC:")]
        _cycles(ch)
        ch.basic_publish("", "b.cyc1", b"c", props)
        for i in range(10):
            ch.basic_publish("", "b.cyc1", b"c%d" % i, props)
        ch.basic_publish("", "b.f1", b"f", props)
        time.sleep(3.0)
        arrived, _ = queue_depth(t, "B", "k" * 255)
        out.expect(code != 0 or arrived == 20, f"{arrived} of 20 dead-lettered to the "
                                               "255-byte routing key")
        cyc = sum(queue_depth(t, "B", q)[0] for q in ("b.cyc1", "b.cyc2"))
        fan = sum(queue_depth(t, "B", q)[0] for q in ("b.f1", "b.f2"))
        out.expect(cyc <= 11, f"{cyc} messages in the cycle (11 published)")
        out.expect(fan <= 2, f"{fan} messages in the fanout cycle (1 published)")
        out.seen.append(f"255-byte: {arrived}/20; in cycles after 3 s: {cyc}/11, fanout {fan}/1")
        for q in ("b.cyc1", "b.cyc2", "b.f1", "b.f2", "b.dl255", "k" * 255, "b.dlrk300",
                  "b.dlx300", "b.sink"):
            with contextlib.suppress(pika.exceptions.AMQPError):
                conn.channel().queue_delete(q)
    got = request(t.management_port, "PUT", "/api/queues/B/b.dlapi", "b",
                  {"durable": True, "arguments": long_rk})
    there, _ = queue_depth(t, "B", "b.dlapi")
    out.expect(400 <= got.status < 500 or (got.status in (201, 204) and there >= 0),
               f"the same through the API: {got.status}, queue {'there' if there >= 0 else 'absent'}")
    out.seen.append(f"API {got.status}")
    return out


def _cc_routing_keys(conn: Any, n: int, t: Target) -> str:
    """A 300-byte routing key in the CC header, which dead-lettering keeps: refused at the
    edge (406), or every message dead-lettered whole. Returns a line for the table, which
    starts with "CC:" when that did not hold."""
    ch = conn.channel()
    ch.confirm_delivery()
    ch.exchange_declare("b.topic", "topic")
    ch.exchange_declare("b.topic2", "topic")
    ch.queue_declare("b.cc", durable=True, arguments={"x-message-ttl": 1,
                                                       "x-dead-letter-exchange": "b.topic2"})
    ch.queue_bind("b.cc", "b.topic", "#")
    ch.queue_declare("b.cc.dead", durable=True)
    ch.queue_bind("b.cc.dead", "b.topic2", "#")
    props = pika.BasicProperties(delivery_mode=2, headers={"CC": ["k" * 300]})
    try:
        for i in range(n):
            ch.basic_publish("b.topic", "r", b"cc%d" % i, props)
    except pika.exceptions.ChannelClosedByBroker as exc:
        return (f"CC of 300 bytes refused {exc.reply_code}" if exc.reply_code == 406
                else f"CC: publish closed the channel with {exc.reply_code}")
    arrived = _wait_depth(t, "b.cc.dead", n)
    for q in ("b.cc", "b.cc.dead"):
        ch.queue_delete(q)
    if arrived != n:
        return f"CC: {arrived} of {n} messages with a 300-byte CC key dead-lettered"
    return f"CC of 300 bytes: {arrived}/{n} dead-lettered"


def _wait_depth(t: Target, queue: str, n: int, timeout: float = 5.0) -> int:
    """B's ``queue``'s depth once it reaches ``n``, or after ``timeout``."""
    deadline, depth = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        depth, _ = queue_depth(t, "B", queue)
        if depth >= n:
            break
        time.sleep(0.2)
    return depth


def _cycles(ch: Any) -> None:
    ttl = 5
    for q, to in (("b.cyc1", "b.cyc2"), ("b.cyc2", "b.cyc1")):
        ch.queue_declare(q, durable=True, arguments={
            "x-message-ttl": ttl, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": to})
    ch.exchange_declare("b.fan", "fanout")
    for q in ("b.f1", "b.f2"):
        ch.queue_declare(q, durable=True, arguments={"x-message-ttl": ttl,
                                                     "x-dead-letter-exchange": "b.fan"})
        ch.queue_bind(q, "b.fan")


def _raw_b(t: Target, channel_max: int | None = None) -> RawClient:
    c = RawClient("127.0.0.1", t.amqp_port, timeout=30)
    c.send(PROTOCOL_HEADER)
    c.recv_method()
    c.send_frame(0, C.Connection.StartOk(client_properties={"product": "hostile"},
                                         mechanism="PLAIN",
                                         response=f"\0b\0{PASSWORDS['b']}", locale="en_US"))
    _, tune = c.recv_method()
    c.send_frame(0, C.Connection.TuneOk(channel_max=channel_max or tune.channel_max,
                                        frame_max=tune.frame_max, heartbeat=0))
    c.send_frame(0, C.Connection.Open(virtual_host="B"))
    c.recv_method()
    return c


def _answer(c: RawClient, timeout: float = 15) -> str:
    """The node's next method, as "Name" or "Name code"; "closed"/"silence"."""
    try:
        _, m = c.recv_method(timeout=timeout)
    except ConnectionClosedError:
        return "closed"
    except TimeoutError:
        return "silence"
    except Exception as exc:  # a frame pamqp cannot read is an answer too
        return f"unreadable {type(exc).__name__}"
    code = getattr(m, "reply_code", None)
    if isinstance(m, C.Connection.Close | C.Channel.Close):
        with contextlib.suppress(OSError):  # the node may close first: it said why already
            c.send_frame(0 if isinstance(m, C.Connection.Close) else 1,
                         C.Connection.CloseOk() if isinstance(m, C.Connection.Close)
                         else C.Channel.CloseOk())
    return f"{m.name} {code}" if code is not None else m.name


def _fine(answer: str, *good: str) -> bool:
    return any(answer.startswith(g) for g in good) and " 541" not in answer


def raw_frames(t: Target) -> Outcome:
    """Item 8: channel.open above the negotiated channel_max (refused with a connection
    error), 255-byte names and routing keys, argument tables near and above frame_max,
    garbage on fresh connections (each closed in time)."""
    out = Outcome("raw AMQP", "channel.open 2048 and 11 (channel_max 2047 and 10), 255-byte "
                              "names, 120 KiB and 200 KiB argument tables, "
                              f"{20 * t.scale} garbage connections")
    for negotiated in (None, 10):
        c = _raw_b(t, negotiated)
        number = (negotiated or 2047) + 1
        c.send(method(number, build(C.Channel.Open)))
        got = _answer(c)
        out.expect(got.split(" ")[-1] in ("503", "504", "530"),
                   f"channel.open {number} above channel_max {number - 1}: {got}")
        out.seen.append(f"open {number}: {got}")
        c.close()
    c = _raw_b(t)
    c.send(method(1, build(C.Channel.Open)))
    c.recv_method()
    long_x, long_q = "x" * 255, "q" * 255
    steps = [
        (build(C.Exchange.Declare, 0, long_x, "direct", False, False, True), "Exchange.DeclareOk"),
        (build(C.Queue.Declare, 0, long_q, False, False, False, True, False,
               {"x-dead-letter-exchange": long_x, "x-dead-letter-routing-key": "k" * 255,
                "x-message-ttl": 1}), "Queue.DeclareOk"),
        (build(C.Queue.Bind, 0, long_q, long_x, "r" * 255), "Queue.BindOk"),
        (build(C.Queue.Declare, 0, "b.args", False, False, False, True, False,
               {f"k{i:04d}": "v" * 100 for i in range(1100)}), "Queue.DeclareOk"),
    ]
    for m, want in steps:
        c.send(method(1, m))
        got = _answer(c)
        out.expect(_fine(got, want, "Channel.Close 406"), f"{m.name}: {got}")
        out.seen.append(f"{m.name} {got}")
        if got.startswith("Channel.Close"):
            c.send(method(1, build(C.Channel.Open)))
            c.recv_method()
    c.send(method(1, build(C.Basic.Publish, 0, long_x, "r" * 255)))
    body = b"long"
    c.send(struct.pack(">BHI", 2, 1, 14) + struct.pack(">HHQH", 60, 0, len(body), 0) + b"\xce")
    c.send(struct.pack(">BHI", 3, 1, len(body)) + body + b"\xce")
    c.send(method(1, build(C.Queue.Declare, 0, "b.args2", False, False, False, True, False,
                           {f"k{i:04d}": "v" * 100 for i in range(2000)})))
    got = _answer(c)
    out.expect(_fine(got, "Connection.Close 501", "Connection.Close 502", "closed"),
               f"an argument table above frame_max: {got}")
    out.seen.append(f"200 KiB table: {got}")
    c.close()
    out.problems += _garbage(t, 20 * t.scale)
    return out


def _garbage(t: Target, count: int) -> list[str]:
    r = random.Random(count)
    socks = []
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", t.amqp_port), timeout=5)
        junk = r.randbytes(4096)
        if i % 3 == 1:
            junk = PROTOCOL_HEADER + junk
        elif i % 3 == 2:  # a frame that claims 2 GiB
            junk = PROTOCOL_HEADER + struct.pack(">BHI", 1, 0, 1 << 31) + junk[:100]
        s.sendall(junk)
        s.setblocking(False)
        socks.append(s)
    socks = wait_closed(socks, CLOSE_BOUND_S)
    for s in socks:
        s.close()
    return [f"{len(socks)} of {count} garbage connections open after {CLOSE_BOUND_S:g} s"] \
        if socks else []


def many_consumers(t: Target) -> Outcome:
    """Item 3: one connection, 10k consumers (x scale) on one queue across 10 channels,
    then a TCP reset: every consumer gone within CLEAR_BOUND_S (the stall is the probe's)."""
    total = 10_000 * t.scale
    channels = max(10, -(-total // CONSUMERS_PER_CHANNEL))
    per = total // channels
    out = Outcome("many consumers", f"{total} consumers on one queue over {channels} "
                                    "channels, then RST")
    request(t.management_port, "PUT", "/api/queues/B/b.many", "b", {"durable": True})
    c = _raw_b(t)
    frames = []
    for number in range(1, channels + 1):
        frames.append(method(number, build(C.Channel.Open)))
        frames += [method(number, build(C.Basic.Consume, 0, "b.many", f"t{number}-{i}", False,
                                        True, False, True)) for i in range(per)]
    c.sock.settimeout(120)
    c.send(b"".join(frames))
    deadline, last, stable = time.monotonic() + 60 * t.scale, -1, 0
    while time.monotonic() < deadline:
        _, consumers = queue_depth(t, "B", "b.many")
        if consumers >= total:
            break
        stable = stable + 1 if consumers == last else 0
        if stable >= 10:  # a limit refused the rest: what stays is what we drop
            break
        last = consumers
        time.sleep(0.5)
    _, registered = queue_depth(t, "B", "b.many")
    out.seen.append(f"{registered} registered")
    # the queue's own page lists every consumer: linear in what b made, but on the loop?
    got = request(t.management_port, "GET", "/api/queues/B/b.many", "b", timeout=60)
    out.expect(got.status == 200, f"GET /api/queues/B/b.many: {got.status}")
    out.seen.append(f"its page {len(got.body) >> 10} KiB in {got.seconds:.2f} s")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    dropped = time.monotonic()
    c.close()
    left = registered
    while time.monotonic() - dropped < 60:
        _, left = queue_depth(t, "B", "b.many")
        if left == 0:
            break
        time.sleep(0.05)
    cleared = time.monotonic() - dropped
    out.expect(left == 0 and cleared <= CLEAR_BOUND_S,
               f"{left} consumers left, {cleared:.1f} s after the drop (bound "
               f"{CLEAR_BOUND_S:g} s)")
    out.seen.append(f"gone in {cleared:.2f} s")
    request(t.management_port, "DELETE", "/api/queues/B/b.many", "b")
    return out


def big_message(t: Target) -> Outcome:
    """Item 9 on one node: a 20 MiB persistent message (x scale) confirmed and read back
    whole, while A measures."""
    out = Outcome("20 MiB message", f"{t.scale} persistent message(s) of 20 MiB, confirmed, "
                                    "then got back")
    body = random.Random(7).randbytes(BIG_MESSAGE)
    with amqp_b(t) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("b.big", durable=True)
        for _ in range(t.scale):
            start = time.monotonic()
            try:
                ch.basic_publish("", "b.big", body, pika.BasicProperties(delivery_mode=2),
                                 mandatory=True)
            except pika.exceptions.AMQPError as exc:
                out.problems.append(f"publish: {type(exc).__name__}: {exc}")
                break
            out.seen.append(f"confirmed in {time.monotonic() - start:.2f} s")
            _, _, got = ch.basic_get("b.big", auto_ack=True)
            out.expect(got == body, f"got back {len(got or b'')} bytes, not the same 20 MiB")
        ch.queue_delete("b.big")
    return out
