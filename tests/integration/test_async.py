"""A representative set of the behaviours, driven by aio-pika (asyncio) instead of pika.

Every await that depends on the broker is bounded with asyncio.wait_for.
"""

from __future__ import annotations

import asyncio

import aio_pika
import aio_pika.exceptions
import aiormq.exceptions
import pytest
from aio_pika import DeliveryMode, ExchangeType, Message
from pamqp.commands import Basic

pytestmark = pytest.mark.timeout(60)

T = 5.0  # seconds for any single broker interaction


async def w(aw, timeout: float = T):
    return await asyncio.wait_for(aw, timeout)


async def drain(queue, limit: int = 10_000) -> list[aio_pika.abc.AbstractIncomingMessage]:
    out = []
    for _ in range(limit):
        msg = await w(queue.get(no_ack=True, fail=False))
        if msg is None:
            break
        out.append(msg)
    return out


async def test_topic_and_fanout_routing(aconn, names):
    ch = await w(aconn.channel())
    topic = await w(ch.declare_exchange(names.exchange("t"), ExchangeType.TOPIC, auto_delete=False))
    fan = await w(ch.declare_exchange(names.exchange("f"), ExchangeType.FANOUT, auto_delete=False))
    q_star = await w(ch.declare_queue(names.queue("star")))
    q_hash = await w(ch.declare_queue(names.queue("hash")))
    q_fan1 = await w(ch.declare_queue(names.queue("f1")))
    q_fan2 = await w(ch.declare_queue(names.queue("f2")))
    await w(q_star.bind(topic, "a.*"))
    await w(q_hash.bind(topic, "a.#.b"))
    await w(q_fan1.bind(fan))
    await w(q_fan2.bind(fan))
    await w(fan.bind(topic, "#"))  # exchange-to-exchange: everything from topic also fans out
    for key in ("a.x", "a.b", "a.x.y.b", "z"):
        await w(topic.publish(Message(key.encode()), key))
    assert [m.body for m in await drain(q_star)] == [b"a.x", b"a.b"]
    assert [m.body for m in await drain(q_hash)] == [b"a.b", b"a.x.y.b"]
    for q in (q_fan1, q_fan2):
        assert [m.body for m in await drain(q)] == [b"a.x", b"a.b", b"a.x.y.b", b"z"]


async def test_headers_exchange(aconn, names):
    ch = await w(aconn.channel())
    x = await w(ch.declare_exchange(names.exchange(), ExchangeType.HEADERS, auto_delete=False))
    q_all = await w(ch.declare_queue(names.queue("all")))
    q_any = await w(ch.declare_queue(names.queue("any")))
    await w(q_all.bind(x, arguments={"x-match": "all", "a": "1", "b": "2"}))
    await w(q_any.bind(x, arguments={"x-match": "any", "a": "1", "b": "2"}))
    await w(x.publish(Message(b"ab", headers={"a": "1", "b": "2"}), ""))
    await w(x.publish(Message(b"a", headers={"a": "1"}), ""))
    await w(x.publish(Message(b"none", headers={"c": "3"}), ""))
    assert [m.body for m in await drain(q_all)] == [b"ab"]
    assert [m.body for m in await drain(q_any)] == [b"ab", b"a"]


async def test_publisher_confirms_1000_concurrent(aconn, names):
    ch = await w(aconn.channel(publisher_confirms=True))
    q = await w(ch.declare_queue(names.queue()))
    results = await w(asyncio.gather(*(
        ch.default_exchange.publish(Message(b"%d" % i), q.name) for i in range(1000)
    )), 30)
    assert len(results) == 1000
    assert all(isinstance(r, Basic.Ack) for r in results)
    declared = await w(ch.declare_queue(q.name, passive=True))
    assert declared.declaration_result.message_count == 1000
    bodies = [m.body for m in await drain(q)]
    assert bodies == [b"%d" % i for i in range(1000)]


async def test_mandatory_return_raises_when_asked(aconn, names):
    ch = await w(aconn.channel(publisher_confirms=True, on_return_raises=True))
    x = await w(ch.declare_exchange(names.exchange(), ExchangeType.DIRECT, auto_delete=False))
    with pytest.raises(aio_pika.exceptions.DeliveryError) as info:
        await w(x.publish(Message(b"bounce"), "nowhere", mandatory=True))
    assert info.value.message is not None
    assert info.value.message.body == b"bounce"
    # not mandatory: silently dropped, still acked
    assert isinstance(await w(x.publish(Message(b"drop"), "nowhere", mandatory=False)), Basic.Ack)


async def test_return_callback(aconn, names):
    # (aiormq matches returns to publishes by message_id, in confirm mode only)
    ch = await w(aconn.channel(publisher_confirms=True, on_return_raises=False))
    returned: asyncio.Queue = asyncio.Queue()
    ch.return_callbacks.add(lambda _ch, msg: returned.put_nowait(msg))
    result = await w(ch.default_exchange.publish(Message(b"r", message_id="mid"),
                                                 names.queue("missing"), mandatory=True))
    assert not isinstance(result, Basic.Ack)  # the publish resolves to the returned message
    msg = await w(returned.get())
    assert msg.body == b"r" and msg.message_id == "mid"


async def test_prefetch_and_ack(aconn, names):
    ch = await w(aconn.channel())
    await w(ch.set_qos(prefetch_count=5))
    q = await w(ch.declare_queue(names.queue()))
    pub = await w(aconn.channel())
    for i in range(12):
        await w(pub.default_exchange.publish(Message(b"%d" % i), q.name))
    inbox: asyncio.Queue = asyncio.Queue()
    await w(q.consume(inbox.put))
    held = [await w(inbox.get()) for _ in range(5)]
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(inbox.get(), 0.3)  # nothing beyond the window
    await w(held[0].ack())
    sixth = await w(inbox.get())
    assert sixth.body == b"5"
    assert [m.body for m in held] == [b"%d" % i for i in range(5)]


async def test_nack_requeue_and_reject(aconn, names):
    ch = await w(aconn.channel())
    q = await w(ch.declare_queue(names.queue()))
    for body in (b"a", b"b"):
        await w(ch.default_exchange.publish(Message(body), q.name))
    m = await w(q.get())
    assert (m.body, m.redelivered) == (b"a", False)
    await w(m.nack(requeue=True))
    m = await w(q.get())
    assert (m.body, m.redelivered) == (b"a", True)
    await w(m.reject(requeue=False))
    m = await w(q.get())
    assert m.body == b"b"
    await w(m.ack())
    assert await w(q.get(fail=False)) is None


async def test_iterator_consume_and_persistent_properties(aconn, names):
    ch = await w(aconn.channel())
    q = await w(ch.declare_queue(names.queue(), durable=True))
    for i in range(3):
        await w(ch.default_exchange.publish(
            Message(b"%d" % i, delivery_mode=DeliveryMode.PERSISTENT, headers={"i": i},
                    correlation_id=f"c{i}"), q.name))
    seen = []
    async with q.iterator() as it:
        async for msg in it:
            async with msg.process():
                seen.append((msg.body, msg.delivery_mode, msg.headers["i"], msg.correlation_id))
            if len(seen) == 3:
                break
    assert seen == [(b"%d" % i, DeliveryMode.PERSISTENT, i, f"c{i}") for i in range(3)]


async def test_channel_error_keeps_connection(aconn, names):
    ch = await w(aconn.channel())
    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        await w(ch.declare_queue(names.queue("missing"), passive=True))
    assert not aconn.is_closed
    ch2 = await w(aconn.channel())
    q = await w(ch2.declare_queue(exclusive=True))
    assert q.name.startswith("amq.gen-")


async def test_inequivalent_redeclare_and_reserved_names(aconn, names):
    ch = await w(aconn.channel())
    xname = names.exchange()
    await w(ch.declare_exchange(xname, ExchangeType.DIRECT, auto_delete=False))
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
        await w(ch.declare_exchange(xname, ExchangeType.FANOUT, auto_delete=False))
    ch = await w(aconn.channel())
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        await w(ch.declare_exchange("amq.custom", ExchangeType.DIRECT))


async def test_exclusive_queue_locked_for_other_connection(broker, aconn):
    ch = await w(aconn.channel())
    q = await w(ch.declare_queue(exclusive=True))
    other = await w(aio_pika.connect(broker.url))
    try:
        och = await w(other.channel())
        with pytest.raises(aiormq.exceptions.ChannelLockedResource):
            await w(och.declare_queue(q.name, passive=True))
    finally:
        await w(other.close())


async def test_consumer_cancelled_when_queue_deleted(aconn, names):
    ch = await w(aconn.channel())
    q = await w(ch.declare_queue(names.queue()))
    underlay = await w(ch.get_underlay_channel())
    cancelled: asyncio.Queue = asyncio.Queue()
    underlay.on_consumer_cancel_callbacks.add(lambda frame: cancelled.put_nowait(frame))
    async def ignore(message):
        pass

    tag = await w(q.consume(ignore))
    other = await w(aconn.channel())
    await w(other.queue_delete(q.name))
    frame = await w(cancelled.get())
    assert frame.consumer_tag == tag
    assert not ch.is_closed


async def test_unknown_exchange_type_closes_connection(broker, names):
    conn = await w(aio_pika.connect(broker.url))
    try:
        ch = await w(conn.channel())
        with pytest.raises(aiormq.exceptions.AMQPError) as info:
            await w(ch.declare_exchange(names.exchange(), "bogus-type"))
        assert "503" in repr(info.value) or "COMMAND_INVALID" in repr(info.value)
    finally:
        await asyncio.wait_for(conn.close(), T)


async def test_transaction_like_batch_with_get_counts(aconn, names):
    """basic.get message_count and declare-ok counts through aio-pika."""
    ch = await w(aconn.channel())
    q = await w(ch.declare_queue(names.queue()))
    for i in range(4):
        await w(ch.default_exchange.publish(Message(b"%d" % i), q.name))
    again = await w(ch.declare_queue(q.name, passive=True))
    assert again.declaration_result.message_count == 4
    assert again.declaration_result.consumer_count == 0
    msg = await w(q.get(no_ack=True))
    assert msg.message_count == 3
    purged = await w(q.purge())
    assert purged.message_count == 3
