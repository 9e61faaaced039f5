"""What one AMQP connection can make the node hold is bounded (issue 19), on a node
with its default limits: consumers per channel, uncommitted transactions, and one big
message's peak memory.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pamqp import body, commands, header
from pamqp import frame as pframe

from node.amqp import session
from tests.harness.api import Api
from tests.integration.rawclient import RawClient

pytestmark = [pytest.mark.timeout(90), pytest.mark.raftmq_only]

DEFAULT_MAX_CONSUMERS = 1000  # node/config.py's default --max-consumers-per-channel


def _open(c: RawClient, number: int = 1) -> None:
    c.send_frame(number, commands.Channel.Open())
    assert isinstance(c.recv_method()[1], commands.Channel.OpenOk)


def _exclusive_queue(c: RawClient, number: int = 1) -> str:
    c.send_frame(number, commands.Queue.Declare(queue="", exclusive=True))
    _, ok = c.recv_method()
    assert isinstance(ok, commands.Queue.DeclareOk), ok
    return str(ok.queue)


def _close_ok(c: RawClient) -> None:
    with contextlib.suppress(OSError):
        c.send_frame(0, commands.Connection.CloseOk())


def test_default_consumer_limit_per_channel(broker):
    """RabbitMQ's consumer_max_per_channel is unlimited by default; RaftMQ's default is
    1,000 (Amazon MQ's). The 1,000th consumer is accepted, the next one closes the
    connection with 530 and RabbitMQ's text; another channel has its own 1,000."""
    with RawClient(broker.host, broker.port, timeout=30) as c:
        c.handshake()
        _open(c, 1)
        q = _exclusive_queue(c)
        c.send(b"".join(pframe.marshal(commands.Basic.Consume(queue=q, consumer_tag=f"c{i}",
                                                              nowait=True), 1)
                        for i in range(DEFAULT_MAX_CONSUMERS - 1)))
        c.send_frame(1, commands.Basic.Consume(queue=q, consumer_tag="last"))
        _, ok = c.recv_method(timeout=30)
        assert isinstance(ok, commands.Basic.ConsumeOk) and ok.consumer_tag == "last", ok
        _open(c, 2)
        c.send_frame(2, commands.Basic.Consume(queue=q, consumer_tag="other-channel"))
        assert isinstance(c.recv_method()[1], commands.Basic.ConsumeOk)
        c.send_frame(1, commands.Basic.Consume(queue=q, consumer_tag="one-too-many"))
        ch, close = c.recv_method(timeout=30)
        assert isinstance(close, commands.Connection.Close), close
        assert (ch, close.reply_code, close.class_id, close.method_id) == (0, 530, 60, 20)
        assert f"reached maximum ({DEFAULT_MAX_CONSUMERS}) of consumers per channel" \
            in close.reply_text
        _close_ok(c)


def _publish(number: int, payload: bytes) -> bytes:
    return (pframe.marshal(commands.Basic.Publish(exchange="", routing_key="nowhere"), number)
            + pframe.marshal(header.ContentHeader(0, len(payload), commands.Basic.Properties()),
                             number)
            + pframe.marshal(body.ContentBody(payload), number))


def test_uncommitted_transaction_is_bounded(broker):
    """tx.select, then publishes that are never committed: the node buffers them until
    the commit. Past TX_MAX_COMMANDS the channel is closed (406) and the buffer dropped;
    the connection and its other channels go on."""
    with RawClient(broker.host, broker.port, timeout=30) as c:
        c.handshake()
        _open(c, 1)
        c.send_frame(1, commands.Tx.Select())
        assert isinstance(c.recv_method()[1], commands.Tx.SelectOk)
        one = _publish(1, b"x")
        batch = one * 4096
        for _ in range(session.TX_MAX_COMMANDS // 4096):
            c.send(batch)
        c.send(one)  # one past the limit
        ch, close = c.recv_method(timeout=30)
        assert isinstance(close, commands.Channel.Close), close
        assert (ch, close.reply_code, close.class_id, close.method_id) == (1, 406, 60, 40)
        assert "uncommitted" in close.reply_text
        c.send_frame(1, commands.Channel.CloseOk())
        _open(c, 2)  # the connection is fine
        q = _exclusive_queue(c, 2)
        assert q


def test_oversized_arguments_table_closes_only_its_channel(broker):
    """A queue.declare whose arguments hold more than 1,024 keys and array elements is
    refused before anything is replicated: 406 for that channel, the connection goes on."""
    with RawClient(broker.host, broker.port) as c:
        c.handshake()
        _open(c, 1)
        c.send_frame(1, commands.Queue.Declare(
            queue="", exclusive=True, arguments={f"x-k{i}": i for i in range(1025)}))
        ch, close = c.recv_method()
        assert isinstance(close, commands.Channel.Close), close
        assert (ch, close.reply_code, close.class_id, close.method_id) == (1, 406, 50, 10)
        c.send_frame(1, commands.Channel.CloseOk())
        _open(c, 2)
        assert _exclusive_queue(c, 2)


# --- connections -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from harness.raftmq import RaftMQNode

    base = tmp_path_factory.mktemp("limited")
    node = RaftMQNode(base / "data", log_path=base / "node.log",
                      extra_env={"RAFTMQ_MAX_CONNECTIONS": "4"})
    with node:
        yield node


def test_vhost_connection_limit_answers_530(limited_node: Any) -> None:
    """A vhost's max-connections: the next connection.open is refused with 530 (as
    RabbitMQ's is_over_vhost_connection_limit), the open ones go on."""
    api = Api(limited_node.management_port)
    api.ok("PUT", "/api/vhosts/few", {})
    api.ok("PUT", "/api/permissions/few/guest", {"configure": ".*", "write": ".*", "read": ".*"})
    api.ok("PUT", "/api/vhost-limits/few/max-connections", {"value": 1})
    try:
        with RawClient(limited_node.host, limited_node.amqp_port) as first:
            first.handshake(vhost="few")
            _wait_counted(api, "few", 1)
            with RawClient(limited_node.host, limited_node.amqp_port) as second:
                close = _refused_open(second, "few")
                assert (close.reply_code, close.class_id, close.method_id) == (530, 10, 40)
                assert "connection limit (1) is reached" in close.reply_text
            _open(first, 1)  # the first one is untouched
    finally:
        api.ok("DELETE", "/api/vhost-limits/few/max-connections")


def _refused_open(c: RawClient, vhost: str) -> Any:
    """The handshake up to connection.open; returns the connection.close answering it."""
    c.send(b"AMQP\x00\x00\x09\x01")
    assert isinstance(c.recv_method()[1], commands.Connection.Start)
    c.send_frame(0, commands.Connection.StartOk(
        client_properties={}, mechanism="PLAIN", response="\0guest\0guest", locale="en_US"))
    _, tune = c.recv_method()
    c.send_frame(0, commands.Connection.TuneOk(tune.channel_max, tune.frame_max, 0))
    c.send_frame(0, commands.Connection.Open(virtual_host=vhost))
    _, close = c.recv_method()
    assert isinstance(close, commands.Connection.Close), close
    _close_ok(c)
    return close


def _wait_counted(api: Api, vhost: str, n: int) -> None:
    """The limit counts connections in the replicated state: wait until they are."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        conns = api.ok("GET", f"/api/vhosts/{vhost}/connections") or []
        if len(conns) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{n} connections to {vhost} not counted in 10 s")


def test_node_connection_limit_closes_the_next_socket(limited_node: Any) -> None:
    """--max-connections 4: a fifth socket is closed before any AMQP (RabbitMQ 3.10's
    connection_max stops accepting); the four open connections keep working."""
    clients = [RawClient(limited_node.host, limited_node.amqp_port) for _ in range(4)]
    try:
        for c in clients:
            c.handshake()
        with RawClient(limited_node.host, limited_node.amqp_port) as extra:
            extra.send(b"AMQP\x00\x00\x09\x01")
            assert extra.wait_closed(5) == b""
        for c in clients:
            _open(c, 1)
    finally:
        for c in clients:
            c.close()
