"""What one AMQP connection can make the node hold is bounded (issue 19), on a node
with its default limits: consumers per channel, uncommitted transactions, and one big
message's peak memory.
"""

from __future__ import annotations

import contextlib

import pytest
from pamqp import body, commands, header
from pamqp import frame as pframe

from node import session
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
