"""x-max-length, x-max-length-bytes and x-overflow."""

from __future__ import annotations

from typing import Any

import pytest

from cluster import commands as C
from cluster.effects import Confirm, Deliver
from cluster.machine import queue_stats
from protocol.properties import decode_properties
from tests.cluster.helpers import (
    CH,
    Machine,
    bind,
    consume,
    enq,
    nack,
    of_type,
    pub,
    q_declare,
    stored,
    x_declare,
)


@pytest.fixture
def m(dlx: Machine) -> Machine:
    return dlx


def limited(m: Machine, name: str = "q", **args: Any) -> None:
    arguments = {k.replace("_", "-"): v for k, v in args.items()}
    m.run(q_declare(CH, name, arguments=arguments))


def ready(m: Machine, q: str = "q") -> list[bytes]:
    queue = m.state.vhosts["/"].queues[q]
    return [stored(m.state, x)[3] for _, x in sorted(queue.returned, key=lambda e: e[0])] + [
        stored(m.state, x)[3] for x in queue.ready]


def reasons(m: Machine) -> list[tuple[bytes, str]]:
    out = []
    for x in m.state.vhosts["/"].queues["dlq"].ready:
        _, _, properties, body = stored(m.state, x)
        out.append((body, decode_properties(properties)["headers"]["x-death"][0]["reason"]))
    return out


def publish(m: Machine, *bodies: bytes, q: str = "q") -> list:
    return m.run(*[enq(CH, q, b, confirm=i + 1) for i, b in enumerate(bodies)])


def test_drop_head_drops_oldest(m: Machine) -> None:
    limited(m, x_max_length=2)
    eff = publish(m, b"1", b"2", b"3", b"4")
    assert ready(m) == [b"3", b"4"]
    assert of_type(eff, Confirm) == [Confirm(CH, i, True) for i in range(1, 5)]


def test_drop_head_dead_letters_with_maxlen(m: Machine) -> None:
    limited(m, x_max_length=1, x_dead_letter_exchange="dlx")
    publish(m, b"1", b"2", b"3")
    assert ready(m) == [b"3"] and reasons(m) == [(b"1", "maxlen"), (b"2", "maxlen")]


def test_max_length_bytes(m: Machine) -> None:
    limited(m, x_max_length_bytes=10)
    publish(m, b"aaaa", b"bbbb", b"cccc")  # 12 bytes > 10: the oldest goes
    assert ready(m) == [b"bbbb", b"cccc"]
    assert m.state.vhosts["/"].queues["q"].ready_bytes == 8
    publish(m, b"x" * 11)  # alone over the limit: dropped as well
    assert ready(m) == []


def test_unacked_messages_do_not_count(m: Machine) -> None:
    limited(m, x_max_length=1)
    m.run(consume(CH, "q", "c"))
    publish(m, b"1", b"2", b"3")
    m.run(C.Cancel(CH, "c", True))
    publish(m, b"4", b"5")
    assert ready(m) == [b"5"]
    assert list(queue_stats(m.state)) == [("/", "dlq", 0, 0, 0), ("/", "q", 1, 3, 0)]


def test_zero_length_queue_still_delivers_to_a_consumer(m: Machine) -> None:
    limited(m, x_max_length=0)
    assert publish(m, b"1") == [Confirm(CH, 1, True)] and ready(m) == []
    m.run(consume(CH, "q", "c", no_ack=True))
    assert [m.body(d) for d in of_type(publish(m, b"2"), Deliver)] == [b"2"]


def test_requeue_over_the_limit_drops_the_head(m: Machine) -> None:
    limited(m, x_max_length=2, x_dead_letter_exchange="dlx")
    publish(m, b"1", b"2")
    m.run(C.Get(CH, "q", False))  # "1" unacked
    publish(m, b"3")
    m.run(nack(CH, 1, requeue=True))  # "1" back at the head: 3 ready, over the limit
    assert ready(m) == [b"2", b"3"] and reasons(m) == [(b"1", "maxlen")]


def test_reject_publish_nacks_and_keeps_queue(m: Machine) -> None:
    limited(m, x_max_length=1, x_overflow="reject-publish", x_dead_letter_exchange="dlx")
    eff = publish(m, b"1", b"2", b"3")
    assert eff == [Confirm(CH, 1, True), Confirm(CH, 2, False), Confirm(CH, 3, False)]
    assert ready(m) == [b"1"] and reasons(m) == []  # refused messages are not dead-lettered


def test_reject_publish_without_confirms_drops_silently(m: Machine) -> None:
    limited(m, x_max_length=0, x_overflow="reject-publish")
    assert m.run(pub(CH, "", "q", b"1", mandatory=True)) == []  # routed: no Return either
    assert ready(m) == []


def test_reject_publish_nacks_even_if_other_queues_took_it(m: Machine) -> None:
    limited(m, "small", x_max_length=0, x_overflow="reject-publish")
    m.run(q_declare(CH, "big"), x_declare(CH, "f", "fanout"), bind(CH, "small", "f"),
          bind(CH, "big", "f"))
    assert m.run(pub(CH, "f", "", b"1", confirm=1)) == [Confirm(CH, 1, False)]
    assert ready(m, "big") == [b"1"] and ready(m, "small") == []


def test_reject_publish_dlx_dead_letters_the_refused_message(m: Machine) -> None:
    limited(m, x_max_length_bytes=3, x_overflow="reject-publish-dlx",
            x_dead_letter_exchange="dlx")
    eff = publish(m, b"abc", b"d")
    assert eff == [Confirm(CH, 1, True), Confirm(CH, 2, False)]
    assert ready(m) == [b"abc"] and reasons(m) == [(b"d", "maxlen")]


def test_reject_publish_counts_ready_only(m: Machine) -> None:
    limited(m, x_max_length=1, x_overflow="reject-publish")
    publish(m, b"1")
    m.run(C.Get(CH, "q", False))
    assert publish(m, b"2") == [Confirm(CH, 1, True)]
    assert ready(m) == [b"2"]


def test_purge_resets_byte_count(m: Machine) -> None:
    limited(m, x_max_length_bytes=5, x_overflow="reject-publish")
    publish(m, b"12345")
    m.run(C.QueuePurge(CH, "q", True))
    assert publish(m, b"12345") == [Confirm(CH, 1, True)]
