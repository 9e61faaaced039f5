"""One client's bad input never touches another client (regressions from a hostile probe).

* a content header announcing properties it does not carry: a frame error for that
  connection, while another client's publishes in the same moment are confirmed;
* names RabbitMQ accepts (any UTF-8 up to 255 bytes) work end to end;
* connections that never finish the handshake, or stall inside a frame, are closed;
* failed logins are logged, counted and slowed down;
* an oversized HTTP request gets an answer, not a traceback.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from pamqp import commands

from tests.integration.conftest import BROKER_KIND
from tests.integration.helpers import close_quietly, connect, consume_n, roundtrip_ok
from tests.integration.rawclient import PROTOCOL_HEADER, ConnectionClosedError, RawClient
from tests.integration.test_metrics import scrape

pytestmark = pytest.mark.timeout(60)


def _header(ch: int, body_size: int, props: bytes) -> bytes:
    payload = struct.pack(">HHQ", 60, 0, body_size) + props
    return bytes([2]) + struct.pack(">HI", ch, len(payload)) + payload + b"\xce"


def _raw_publish(c: RawClient, props: bytes, body: bytes = b"poison") -> None:
    from pamqp import body as pbody
    from pamqp import frame as pframe

    c.send(pframe.marshal(commands.Basic.Publish(exchange="", routing_key="nowhere"), 1)
           + _header(1, len(body), props) + pframe.marshal(pbody.ContentBody(body), 1))


def _tracebacks(node: Any) -> int:
    return Path(node.log_path).read_text(errors="replace").count("Traceback")


@pytest.mark.parametrize("props", [b"\x01\x00", b"\x00\x10", b"\x20\x00\x00\x00\x00\x03\x01kZ"],
                         ids=["expiration", "user-id", "headers"])
def test_poisoned_content_header_leaves_other_publishers_alone(broker, names, props):
    """The probe's case: property flags announcing values that are not there. The bad
    connection gets a frame error; a confirming publisher publishing at the same time
    gets every confirm and its messages are consumable."""
    q = names.queue()
    good = connect(broker.url)
    try:
        ch = good.channel()
        ch.queue_declare(q)
        ch.confirm_delivery()
        errors: list[BaseException] = []

        def hostile() -> None:
            try:
                for _ in range(5):
                    with RawClient(broker.host, broker.port) as c:
                        c.handshake()
                        c.send_frame(1, commands.Channel.Open())
                        c.recv_method()
                        _raw_publish(c, props)
                        _, close = c.recv_method()
                        assert isinstance(close, commands.Connection.Close), close
                        # RabbitMQ answers a malformed header as a frame error too
                        assert close.reply_code in (501, 502, 505), close
            except BaseException as e:  # reported in the main thread
                errors.append(e)

        t = threading.Thread(target=hostile)
        t.start()
        for i in range(200):
            ch.basic_publish("", q, str(i).encode(), mandatory=True)  # raises if nacked
        t.join(30)
        assert not errors, errors
        got = consume_n(good, ch, q, 200, timeout=10)
        assert [d.body for d in got] == [str(i).encode() for i in range(200)]
    finally:
        close_quietly(good)
    if broker.node is not None:
        assert _tracebacks(broker.node) == 0


@pytest.mark.parametrize("name", ["café", "名前.キュー", "emoji-🐇", "é" * 127, "sp ace/slash#hash"])
def test_utf8_names_work_end_to_end(broker, name):
    """Queue, exchange, routing key and consumer tag: any UTF-8 up to 255 bytes."""
    conn = connect(broker.url)
    try:
        ch = conn.channel()
        ch.queue_delete(name)
        ch.exchange_delete(name)
        assert ch.queue_declare(name).method.queue == name
        ch.exchange_declare(name, "direct")
        ch.queue_bind(name, name, routing_key=name)
        ch.basic_publish(name, name, b"hello")
        got: list[Any] = []
        tag = ch.basic_consume(name, lambda c, m, p, b: got.append((m, b)), auto_ack=True,
                               consumer_tag=name)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        [(method, body)] = got
        assert (body, method.consumer_tag, method.exchange, method.routing_key) == (
            b"hello", name, name, name)
        ch.basic_cancel(tag)
        assert ch.queue_delete(name).method.message_count == 0
        ch.exchange_delete(name)
    finally:
        close_quietly(conn)
    roundtrip_ok(broker.url)


# --- timeouts (a node of their own with a short handshake timeout) ---------------------


@pytest.fixture(scope="module")
def quick_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if BROKER_KIND != "raftmq":
        pytest.skip("RaftMQ's handshake timeout is set per node; RabbitMQ's is 10 s")
    from harness.raftmq import RaftMQNode

    base = tmp_path_factory.mktemp("quick")
    node = RaftMQNode(base / "data", extra_env={"RAFTMQ_HANDSHAKE_TIMEOUT": "1"},
                      log_path=base / "node.log")
    with node:
        yield node


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the peer closes ``sock`` (reading and discarding); fails after ``seconds``."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {seconds}s") from None
    return time.monotonic() - start


@pytest.mark.parametrize("first", [b"", PROTOCOL_HEADER, b"AMQ"], ids=["idle", "header", "partial"])
def test_unfinished_handshakes_are_closed(quick_node, first):
    with socket.create_connection(("127.0.0.1", quick_node.amqp_port)) as s:
        if first:
            s.sendall(first)
        took = _closed_within(s, 5)
    assert 0.5 < took < 3.5


def test_byte_a_second_is_closed(quick_node):
    """A client that trickles its handshake in forever: closed by the handshake timeout."""
    with socket.create_connection(("127.0.0.1", quick_node.amqp_port)) as s:
        s.settimeout(0.3)
        start = time.monotonic()
        data = PROTOCOL_HEADER * 100
        for b in data:
            try:
                s.sendall(bytes([b]))
                if s.recv(4096) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        else:
            raise AssertionError("never closed")
        assert time.monotonic() - start < 3.5


def test_stalled_frame_without_heartbeats_is_closed(quick_node):
    with RawClient("127.0.0.1", quick_node.amqp_port) as c:
        c.handshake()  # heartbeat 0
        c.send(b"\x01\x00\x01\x00\x00\x00\x20\x00\x3c")  # 9 bytes of a 40-byte frame
        start = time.monotonic()
        with pytest.raises((ConnectionClosedError, ConnectionResetError)):
            while time.monotonic() - start < 5:
                c.recv_method(timeout=5)
        assert 0.5 < time.monotonic() - start < 3.5


def test_open_idle_connection_without_heartbeats_stays(quick_node):
    """Nothing pending, heartbeats off: a quiet client is a legitimate client."""
    with RawClient("127.0.0.1", quick_node.amqp_port) as c:
        c.handshake()
        time.sleep(2.5)
        c.send_frame(1, commands.Channel.Open())
        assert isinstance(c.recv_method()[1], commands.Channel.OpenOk)


def test_failed_logins_are_logged_counted_and_slowed(quick_node):
    url = f"amqp://guest:wrong@127.0.0.1:{quick_node.amqp_port}/"
    before = scrape(quick_node).total("raftmq_auth_failures_total")
    took = []
    for _ in range(4):
        start = time.monotonic()
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            connect(url)
        took.append(time.monotonic() - start)
    # each refusal is held back longer than the one before (0.1, 0.2, 0.4, 0.8 s)
    assert took[3] > 0.75 and took[3] > took[0] + 0.4, took
    assert scrape(quick_node).total("raftmq_auth_failures_total") == before + 4
    log = Path(quick_node.log_path).read_text()
    assert "login refused: user 'guest' from 127.0.0.1, mechanism PLAIN" in log
    # another user from the same address is not held up; the right password still works
    other = f"amqp://nobody:x@127.0.0.1:{quick_node.amqp_port}/"
    start = time.monotonic()
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(other)
    assert time.monotonic() - start < 0.75
    roundtrip_ok(quick_node.url)


@pytest.mark.raftmq_only
def test_parallel_guesses_are_answered_one_at_a_time(broker):
    """Opening many connections at once does not multiply the guessing rate. (On the
    default node: the quick node's 1 s handshake timeout would cut the queue short.)"""
    url = broker.url_for("guest", "bad")
    for _ in range(3):  # a few failures first: 0.1 + 0.2 + 0.4 s
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            connect(url)
    done: list[float] = []
    start = time.monotonic()

    def guess() -> None:
        try:
            connect(url, socket_timeout=10, stack_timeout=15)
        except pika.exceptions.AMQPConnectionError:
            done.append(time.monotonic() - start)

    threads = [threading.Thread(target=guess) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    # six answers one slot apart (0.8 s, doubling from there up to the 2 s cap): > 6 s in all
    assert len(done) == 6 and max(done) > 6.0, sorted(done)
    roundtrip_ok(broker.url)


def test_long_http_request_line_gets_an_answer(quick_node):
    url = f"http://127.0.0.1:{quick_node.metrics_port}/" + "a" * 100_000
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url, timeout=5)
    assert info.value.code in (400, 414, 431)  # aiohttp: 400 "Status line is too long"
    with urllib.request.urlopen(f"http://127.0.0.1:{quick_node.metrics_port}/livez", timeout=5) as r:
        assert r.status == 200
    assert _tracebacks(quick_node) == 0
