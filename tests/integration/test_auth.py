"""Login and vhost access: PLAIN with guest/guest from loopback; refusals and their codes."""

from __future__ import annotations

import asyncio

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions
import pika.exceptions
import pytest
from pamqp import commands
from pamqp.common import FieldTable

from tests.integration.helpers import connect, roundtrip_ok
from tests.integration.rawclient import PROTOCOL_HEADER, ConnectionClosedError, RawClient

pytestmark = pytest.mark.timeout(30)


def test_guest_login_from_loopback(broker):
    c = connect(broker.url_for("guest", "guest", "/"))
    try:
        assert c.is_open
        ch = c.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        assert q.startswith("amq.gen-")
    finally:
        c.close()


@pytest.mark.parametrize("user,password", [("guest", "wrong"), ("nobody", "guest"), ("guest", "")])
def test_bad_credentials_refused_403(broker, user, password):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as info:
        connect(broker.url_for(user, password))
    # pika advertises authentication_failure_close, so the broker says why before hanging up
    assert "(403)" in str(info.value)
    assert "ACCESS_REFUSED" in str(info.value)
    roundtrip_ok(broker.url)


def test_unknown_vhost_refused_530(broker):
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
        connect(broker.url_for("guest", "guest", "no-such-vhost"))
    assert "(530)" in str(info.value)
    assert "NOT_ALLOWED" in str(info.value)
    roundtrip_ok(broker.url)


def _start_ok(c: RawClient, response: str, mechanism: str = "PLAIN", caps: bool = True) -> None:
    c.send(PROTOCOL_HEADER)
    _, start = c.recv_method()
    assert isinstance(start, commands.Connection.Start)
    props: FieldTable = {"product": "raw", "capabilities": {"authentication_failure_close": True}} if caps else {
        "product": "raw"}
    c.send_frame(0, commands.Connection.StartOk(client_properties=props, mechanism=mechanism,
                                                response=response, locale="en_US"))


def test_raw_bad_password_gets_connection_close_403(broker):
    with RawClient(broker.host, broker.port) as c:
        _start_ok(c, "\0guest\0nope")
        ch, m = c.recv_method()
        assert (ch, type(m)) == (0, commands.Connection.Close)
        assert m.reply_code == 403
        assert m.reply_text.startswith("ACCESS_REFUSED")


def test_raw_bad_password_without_capability_just_closes(broker):
    with RawClient(broker.host, broker.port) as c:
        _start_ok(c, "\0guest\0nope", caps=False)
        # no connection.tune, no open: the socket is closed (possibly after a connection.close)
        closed = False
        for _ in range(3):
            try:
                _, m = c.recv_method()
            except ConnectionClosedError:
                closed = True
                break
            assert isinstance(m, commands.Connection.Close), m
        assert closed


def test_raw_unknown_vhost_gets_connection_close_530(broker):
    with RawClient(broker.host, broker.port) as c:
        _start_ok(c, "\0guest\0guest")
        _, tune = c.recv_method()
        assert isinstance(tune, commands.Connection.Tune)
        c.send_frame(0, commands.Connection.TuneOk(channel_max=tune.channel_max,
                                                   frame_max=tune.frame_max, heartbeat=0))
        c.send_frame(0, commands.Connection.Open(virtual_host="nope"))
        ch, m = c.recv_method()
        assert (ch, type(m)) == (0, commands.Connection.Close)
        assert m.reply_code == 530


async def test_aio_pika_bad_password(broker):
    with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
        await asyncio.wait_for(aio_pika.connect(broker.url_for("guest", "wrong")), 10)
    c = await asyncio.wait_for(aio_pika.connect(broker.url), 10)
    await c.close()


async def test_aio_pika_unknown_vhost(broker):
    # aiormq reports the broker's connection.close(530) in place of open-ok as a frame error
    with pytest.raises(aiormq.exceptions.AMQPError) as info:
        await asyncio.wait_for(aio_pika.connect(broker.url_for("guest", "guest", "nope")), 10)
    assert "Connection.Close" in repr(info.value) or "530" in repr(info.value)
