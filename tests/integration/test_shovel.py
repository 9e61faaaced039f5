"""Dynamic shovels (node/shovel/, node/mgmt/shovels.py) from a queue on Debian's RabbitMQ
3.10 into RaftMQ: every message arrives, once or flagged as a possible duplicate; the
status and parameters on the API as rabbitmq_shovel_management shows them; RabbitMQ's
validation refusals as 400s. RabbitMQ runs no shovel plugin: RaftMQ runs the shovel."""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from harness.ports import free_port
from tests.harness.api import Api, q
from tests.integration.helpers import close_quietly, connect, queue_depth, wait_until

pytestmark = pytest.mark.raftmq_only

N = 400


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from harness.rabbitmq import RabbitMQ

    # (with its management API: test_migration exports its definitions)
    server = RabbitMQ(Path(tmp_path_factory.mktemp("rabbitmq-src")), management_port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _fill(url: str, queue: str, n: int, first: int = 0) -> None:
    conn = connect(url)
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True)
        ch.tx_select()  # (one commit for all: every message is in the queue once it returns)
        for i in range(first, first + n):
            ch.basic_publish("", queue, f"m{i}".encode(),
                             pika.BasicProperties(delivery_mode=2, message_id=f"id{i}",
                                                  headers={"i": i}))
        ch.tx_commit()
    finally:
        close_quietly(conn)


def drain(url: str, queue: str, limit: int = 100_000) -> list[tuple[bytes, bool, dict[str, Any]]]:
    """Every message of ``queue``: (body, redelivered or flagged by the shovel, headers)."""
    conn = connect(url)
    out: list[tuple[bytes, bool, dict[str, Any]]] = []
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=500)
        for method, props, body in ch.consume(queue, inactivity_timeout=0.5):
            if method is None or len(out) >= limit:
                break  # (nothing for 0.5 s: drained)
            ch.basic_ack(method.delivery_tag)
            headers = props.headers or {}
            out.append((body, bool(method.redelivered or headers.get("x-shovel-redelivered")),
                        headers))
    finally:
        close_quietly(conn)
    return out


def once_or_flagged(got: list[tuple[bytes, bool, dict[str, Any]]], n: int) -> None:
    seen: dict[bytes, int] = {}
    for body, flagged, _ in got:
        seen[body] = seen.get(body, 0) + 1
        assert seen[body] == 1 or flagged, f"{body!r} arrived twice, unflagged"
    assert set(seen) == {f"m{i}".encode() for i in range(n)}


def depth(url: str, queue: str) -> int:
    """The queue's ready messages, -1 while it does not exist."""
    conn = connect(url)
    try:
        return queue_depth(conn.channel(), queue)
    except pika.exceptions.ChannelClosedByBroker:
        return -1
    finally:
        close_quietly(conn)


def status(api: Api, name: str) -> dict[str, Any]:
    return api.ok("GET", f"/api/shovels/vhost/%2F/{q(name)}")


def test_shovel_from_rabbitmq(broker: Any, api: Api, rabbit: Any) -> None:
    _fill(rabbit.url, "shovel-src", N)
    value = {"src-uri": rabbit.url, "src-queue": "shovel-src", "dest-uri": "amqp://",
             "dest-queue": "shovel-dst", "src-prefetch-count": 50}
    assert api("PUT", "/api/parameters/shovel/%2F/mig", {"value": value})[0] == 201
    assert api("PUT", "/api/parameters/shovel/%2F/mig", {"value": value})[0] == 204
    wait_until(lambda: depth(broker.url, "shovel-dst") == N, timeout=30)
    wait_until(lambda: status(api, "mig")["messages_moved"] == N, timeout=10)
    st = status(api, "mig")
    assert st["state"] == "running" and st["type"] == "dynamic" and st["node"] == "n1"
    assert st["src_uri"] == rabbit.url.replace("guest:guest", "guest:***")
    assert (st["src_queue"], st["dest_queue"]) == ("shovel-src", "shovel-dst")
    assert [s["name"] for s in api.ok("GET", "/api/shovels")] == ["mig"]
    assert [s["name"] for s in api.ok("GET", "/api/shovels/%2F")] == ["mig"]
    assert api.ok("GET", "/api/parameters/shovel/%2F/mig") == \
        {"value": value, "vhost": "/", "component": "shovel", "name": "mig"}
    # nothing left in RabbitMQ, everything in RaftMQ once, the properties carried over
    src = connect(rabbit.url)
    try:
        assert queue_depth(src.channel(), "shovel-src") == 0
    finally:
        close_quietly(src)
    got = drain(broker.url, "shovel-dst")
    once_or_flagged(got, N)
    assert got[0][2]["i"] == 0
    # it keeps running: what is published to RabbitMQ now moves too
    _fill(rabbit.url, "shovel-src", 10, first=N)
    wait_until(lambda: status(api, "mig")["messages_moved"] == N + 10, timeout=10)
    assert sorted(b for b, _, _ in drain(broker.url, "shovel-dst")) == \
        sorted(f"m{i}".encode() for i in range(N, N + 10))
    # restart, then delete: the shovel stops consuming from RabbitMQ
    assert api("DELETE", "/api/shovels/vhost/%2F/mig/restart")[0] == 204
    wait_until(lambda: status(api, "mig")["state"] == "running", timeout=10)
    assert api("DELETE", "/api/parameters/shovel/%2F/mig")[0] == 204
    assert api("GET", "/api/shovels/vhost/%2F/mig")[0] == 404
    assert api.ok("GET", "/api/shovels") == []

    def consumers() -> int:
        c = connect(rabbit.url)
        try:
            return int(c.channel().queue_declare("shovel-src", passive=True)
                       .method.consumer_count)
        finally:
            close_quietly(c)

    wait_until(lambda: consumers() == 0, timeout=10)


def test_terminated_with_reason_then_running(broker: Any, api: Api, rabbit: Any) -> None:
    """A source that cannot be reached: terminated with the reason, tried again every
    reconnect-delay; once it can be, the shovel runs."""
    bad = f"amqp://guest:wrong@127.0.0.1:{rabbit.amqp_port}/"
    value = {"src-uri": bad, "src-queue": "shovel-src2", "dest-uri": "amqp://",
             "dest-exchange": "amq.fanout", "reconnect-delay": 0.2}
    api.ok("PUT", "/api/parameters/shovel/%2F/bad", {"value": value})
    try:
        wait_until(lambda: status(api, "bad")["state"] == "terminated", timeout=15)
        st = status(api, "bad")
        assert st["reason"] and "wrong" not in st["reason"] and "wrong" not in st["src_uri"]
        value["src-uri"] = rabbit.url
        api.ok("PUT", "/api/parameters/shovel/%2F/bad", {"value": value})
        wait_until(lambda: status(api, "bad")["state"] == "running", timeout=15)
    finally:
        with contextlib.suppress(Exception):
            api("DELETE", "/api/parameters/shovel/%2F/bad")


def test_source_connection_lost_mid_transfer(broker: Any, api: Api, rabbit: Any) -> None:
    """RabbitMQ closes the shovel's connection while messages are in flight: the shovel
    reconnects after reconnect-delay and every message arrives, once or flagged."""
    n = 5000
    _fill(rabbit.url, "drop-src", n)
    api.ok("PUT", "/api/parameters/shovel/%2F/drop", {"value": {
        "src-uri": rabbit.url, "src-queue": "drop-src", "dest-uri": "amqp://",
        "dest-queue": "drop-dst", "src-prefetch-count": 50, "reconnect-delay": 0.1}})
    try:
        wait_until(lambda: depth(broker.url, "drop-dst") >= 100, timeout=20)
        rabbit.ctl("close_all_connections", "test: the shovel's source goes away")
        assert depth(broker.url, "drop-dst") < n, "moved everything before the close"
        wait_until(lambda: depth(broker.url, "drop-dst") >= n and
                   depth(rabbit.url, "drop-src") == 0, timeout=30)
        wait_until(lambda: status(api, "drop")["state"] == "running", timeout=10)
    finally:
        api("DELETE", "/api/parameters/shovel/%2F/drop")
    got = drain(broker.url, "drop-dst")
    once_or_flagged(got, n)


def test_destination_connection_closed_mid_transfer(broker: Any, api: Api,
                                                     rabbit: Any) -> None:
    """RaftMQ closes the shovel's own connection (DELETE /api/connections/...) with
    publishes unconfirmed: not acked upstream, so RabbitMQ gives them again; every message
    arrives, once or flagged."""
    n = 5000
    _fill(rabbit.url, "dclose-src", n)
    api.ok("PUT", "/api/parameters/shovel/%2F/dclose", {"value": {
        "src-uri": rabbit.url, "src-queue": "dclose-src", "dest-uri": "amqp://",
        "dest-queue": "dclose-dst", "src-prefetch-count": 50, "reconnect-delay": 0.1}})
    try:
        wait_until(lambda: depth(broker.url, "dclose-dst") >= 100, timeout=20)
        mine = [c["name"] for c in api.ok("GET", "/api/connections")
                if "aiormq" in str((c.get("client_properties") or {}).get("product", ""))]
        assert len(mine) == 1, mine
        assert api("DELETE", f"/api/connections/{q(mine[0])}")[0] == 204
        assert depth(broker.url, "dclose-dst") < n, "moved everything before the close"
        wait_until(lambda: depth(broker.url, "dclose-dst") >= n and
                   depth(rabbit.url, "dclose-src") == 0, timeout=30)
    finally:
        api("DELETE", "/api/parameters/shovel/%2F/dclose")
    once_or_flagged(drain(broker.url, "dclose-dst"), n)


@pytest.mark.parametrize(("value", "reason"), [
    ({"src-queue": "q", "dest-uri": "amqp://", "dest-queue": "d"}, 'Key "src-uri" not found'),
    ({"src-uri": "amqp://", "dest-uri": "amqp://", "dest-queue": "d"}, "src-queue"),
    ({"src-uri": "amqp://", "src-queue": "q", "dest-uri": "amqp://", "ack-mode": "x"},
     "ack-mode"),
    ({"src-uri": "amqp://", "src-queue": "q", "dest-uri": "amqp://", "nope": 1},
     "Unrecognised"),
])
def test_refusals(api: Api, value: dict[str, Any], reason: str) -> None:
    status_code, answer = api("PUT", "/api/parameters/shovel/%2F/r", {"value": value})
    assert status_code == 400 and reason in answer["reason"], answer
    assert api("PUT", "/api/parameters/shovel/no-such-vhost/r", {"value": value})[0] == 404
    assert api("PUT", "/api/parameters/shovel/%2F/r", {"valeur": value})[0] == 400
    assert api("GET", "/api/parameters/shovel/%2F/r")[0] == 404


def test_definitions_export_and_import(api: Api) -> None:
    """Shovel parameters in the definitions, both ways (RabbitMQ's "parameters" items with
    component "shovel"); a bad one refuses the import, naming it."""
    value = {"src-uri": "amqp://guest:guest@127.0.0.1:1/", "src-queue": "defs-src",
             "dest-uri": "amqp://", "dest-queue": "defs-dst", "reconnect-delay": 30}
    api.ok("PUT", "/api/parameters/shovel/%2F/defs", {"value": value})
    try:
        exported = api.ok("GET", "/api/definitions")
        mine = [p for p in exported["parameters"] if p["component"] == "shovel"]
        assert mine == [{"value": value, "vhost": "/", "component": "shovel", "name": "defs"}]
        api.ok("DELETE", "/api/parameters/shovel/%2F/defs")
        doc = {"parameters": mine, "queues": [
            {"name": "defs-dst", "vhost": "/", "durable": True, "auto_delete": False,
             "arguments": {"x-max-length": 10}}]}
        api.ok("POST", "/api/definitions", doc)
        assert api.ok("GET", "/api/parameters/shovel/%2F/defs")["value"] == value
        bad = {"parameters": [{**mine[0], "name": "bad", "value": {"src-uri": "amqp://"}}]}
        status_code, answer = api("POST", "/api/definitions", bad)
        assert status_code == 400 and 'Key "dest-uri" not found' in answer["reason"], answer
        assert api("GET", "/api/parameters/shovel/%2F/bad")[0] == 404
    finally:
        api("DELETE", "/api/parameters/shovel/%2F/defs")
        api("DELETE", "/api/queues/%2F/defs-dst")


def test_cli(broker: Any, api: Api, rabbit: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """raftmq shovel declare / list / restart / delete."""
    from node import cli

    node = ["--node", f"127.0.0.1:{broker.node.management_port}"]
    _fill(rabbit.url, "cli-src", 5)
    assert cli.main(["shovel", "declare", "c", *node, "--src-uri", rabbit.url,
                     "--src-queue", "cli-src", "--dest-queue", "cli-dst",
                     "--prefetch-count", "2", "--delete-after", "queue-length"]) == 0
    assert api.ok("GET", "/api/parameters/shovel/%2F/c")["value"] == {
        "src-uri": rabbit.url, "src-queue": "cli-src", "dest-uri": "amqp://",
        "dest-queue": "cli-dst", "src-prefetch-count": 2, "src-delete-after": "queue-length"}
    capsys.readouterr()
    assert cli.main(["shovel", "list", *node, "--format", "json"]) in (0,)
    assert "cli-src" in capsys.readouterr().out
    # src-delete-after queue-length: the 5 messages moved, then the shovel deletes itself
    wait_until(lambda: api("GET", "/api/parameters/shovel/%2F/c")[0] == 404, timeout=15)
    assert sorted(b for b, _, _ in drain(broker.url, "cli-dst")) == \
        [f"m{i}".encode() for i in range(5)]
    assert cli.main(["shovel", "declare", "c2", *node, "--src-uri", rabbit.url,
                     "--src-queue", "cli-src", "--dest-exchange", "amq.fanout"]) == 0
    assert cli.main(["shovel", "restart", "c2", *node]) == 0
    assert cli.main(["shovel", "delete", "c2", *node]) == 0
    assert api("GET", "/api/parameters/shovel/%2F/c2")[0] == 404


# --- the migration (README.md "Migrating from RabbitMQ") ---------------------------------
# Moving a live workload from RabbitMQ 3.10 (Debian's) to RaftMQ without downtime, as
# README.md's "Migrating from RabbitMQ" says: a queue holding messages and a producer
# running on RabbitMQ; RabbitMQ's definitions exported and imported into RaftMQ; a shovel
# from RabbitMQ's queue into RaftMQ's; the consumer moved to RaftMQ, then the producer.
# Every message published (to either broker) is consumed from RaftMQ, exactly once or
# flagged as a possible duplicate (redelivered, or ``x-shovel-redelivered``).

PREFILLED = 300
AFTER_SWITCH = 200


class Producer(threading.Thread):
    """Publishes p0, p1, ... with confirms to ``exchange``, to RabbitMQ until ``switch``
    is set, then to RaftMQ; ``published`` holds every confirmed one."""

    def __init__(self, first: int, rabbit_url: str, raftmq_url: str, exchange: str) -> None:
        super().__init__(daemon=True)
        self.next, self.urls, self.exchange = first, [rabbit_url, raftmq_url], exchange
        self.switch, self.stop, self.switched = threading.Event(), threading.Event(), 0
        self.published: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for target, url in enumerate(self.urls):
                conn = connect(url)
                try:
                    ch = conn.channel()
                    ch.confirm_delivery()
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        if (target == 0 and self.switch.is_set()) or self.stop.is_set():
                            break
                        body = f"p{self.next}"
                        ch.basic_publish(self.exchange, "order.new", body.encode(),
                                         pika.BasicProperties(delivery_mode=2))
                        self.published.append(body)
                        self.next += 1
                        if target == 1:
                            self.switched += 1
                        conn.sleep(0.002)
                finally:
                    close_quietly(conn)
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            self.error = e


class Consumer(threading.Thread):
    def __init__(self, url: str, queue: str) -> None:
        super().__init__(daemon=True)
        self.url, self.queue = url, queue
        self.stop = threading.Event()
        self.got: list[tuple[str, bool]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = connect(self.url)
            try:
                ch = conn.channel()
                ch.basic_qos(prefetch_count=100)
                deadline = time.monotonic() + 90
                for method, props, body in ch.consume(self.queue, inactivity_timeout=0.1):
                    if self.stop.is_set() or time.monotonic() > deadline:
                        break
                    if method is None:
                        continue
                    flagged = method.redelivered or \
                        bool((props.headers or {}).get("x-shovel-redelivered"))
                    self.got.append((body.decode(), flagged))
                    ch.basic_ack(method.delivery_tag)
                ch.cancel()
            finally:
                close_quietly(conn)
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            self.error = e


def test_migrate_a_live_workload(broker: Any, api: Api, rabbit: Any) -> None:
    producer = consumer = None
    try:
        rapi = Api(rabbit.management_port)
        # the workload on RabbitMQ: a topic exchange, a queue bound to it, messages waiting
        conn = connect(rabbit.url)
        try:
            ch = conn.channel()
            ch.exchange_declare("shop", "topic", durable=True)
            ch.queue_declare("orders", durable=True, arguments={"x-max-length": 100_000})
            ch.queue_bind("orders", "shop", "order.*")
        finally:
            close_quietly(conn)
        producer = Producer(0, rabbit.url, broker.url, "shop")
        producer.start()
        wait_until(lambda: len(producer.published) >= PREFILLED, timeout=30)
        # 1. RabbitMQ's definitions into RaftMQ
        defs = rapi.ok("GET", "/api/definitions")
        assert "orders" in [q["name"] for q in defs["queues"]]
        api.ok("POST", "/api/definitions", defs)
        assert api.ok("GET", "/api/queues/%2F/orders")["arguments"] == {"x-max-length": 100_000}
        # 2. a shovel from RabbitMQ's queue into RaftMQ's
        api.ok("PUT", "/api/parameters/shovel/%2F/orders-from-rabbitmq", {"value": {
            "src-uri": rabbit.url, "src-queue": "orders", "dest-uri": "amqp://",
            "dest-queue": "orders", "src-prefetch-count": 100}})
        # 3. the consumer moves to RaftMQ
        consumer = Consumer(broker.url, "orders")
        consumer.start()
        wait_until(lambda: len(consumer.got) >= 100, timeout=30)
        # 4. then the producer
        producer.switch.set()
        wait_until(lambda: producer.switched >= AFTER_SWITCH or producer.error, timeout=30)
        producer.stop.set()
        producer.join(10)
        assert producer.error is None, producer.error
        published = set(producer.published)
        assert len(published) == len(producer.published) > PREFILLED + AFTER_SWITCH
        wait_until(lambda: {b for b, _ in consumer.got} >= published or consumer.error,
                   timeout=60)
        consumer.stop.set()
        consumer.join(10)
        assert consumer.error is None, consumer.error
        seen: dict[str, int] = {}
        for body, flagged in consumer.got:
            seen[body] = seen.get(body, 0) + 1
            assert seen[body] == 1 or flagged, f"{body} consumed twice, unflagged"
        assert set(seen) == published
        # RabbitMQ is left empty: it can be retired once the shovel is deleted
        conn = connect(rabbit.url)
        try:
            assert conn.channel().queue_declare("orders", passive=True).method.message_count == 0
        finally:
            close_quietly(conn)
        wait_until(lambda: status(api, "orders-from-rabbitmq")["state"] == "running", timeout=5)
        api.ok("DELETE", "/api/parameters/shovel/%2F/orders-from-rabbitmq")
    finally:
        for t in (producer, consumer):
            if t is not None:
                t.stop.set()
                t.join(10)
        api("DELETE", "/api/parameters/shovel/%2F/orders-from-rabbitmq")
        api("DELETE", "/api/queues/%2F/orders")
        api("DELETE", "/api/exchanges/%2F/shop")


def test_who_may_change_shovels(api: Api) -> None:
    """RabbitMQ's rights on runtime parameters: a policymaker in the vhosts it may use, an
    administrator anywhere; management users see the shovels of their vhosts only."""
    value = {"src-uri": "amqp://u:p@127.0.0.1:1/", "src-queue": "q", "dest-uri": "amqp://",
             "dest-queue": "d", "reconnect-delay": 30}
    for user, tags in (("shovel-pm", "policymaker"), ("shovel-mg", "management")):
        api.ok("PUT", f"/api/users/{user}", {"password": "pw", "tags": tags})
    try:
        pm, mg = api.as_("shovel-pm", "pw"), api.as_("shovel-mg", "pw")
        assert pm("PUT", "/api/parameters/shovel/%2F/p", {"value": value})[0] == 401
        assert mg("PUT", "/api/parameters/shovel/%2F/p", {"value": value})[0] == 401
        api.ok("PUT", "/api/permissions/%2F/shovel-pm",
               {"configure": ".*", "write": ".*", "read": ".*"})
        assert pm("PUT", "/api/parameters/shovel/%2F/p", {"value": value})[0] == 201
        assert mg("GET", "/api/shovels") == (200, [])  # no access to "/"
        assert [s["name"] for s in pm.ok("GET", "/api/shovels")] == ["p"]
        assert mg("DELETE", "/api/parameters/shovel/%2F/p")[0] == 401
        assert mg("GET", "/api/parameters/shovel/%2F/p")[0] == 401  # policymaker's
        assert [p["name"] for p in pm.ok("GET", "/api/parameters")] == ["p"]
        # RabbitMQ's rabbitmqadmin (Debian's, unmodified): list, declare, delete parameters
        admin = shutil.which("rabbitmqadmin")
        if admin is not None:
            port = ["-P", api.base.rpartition(":")[2], "-u", "shovel-pm", "-p", "pw"]
            run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=30)
            listed = run([admin, *port, "-f", "raw_json", "list", "parameters"])
            assert json.loads(listed.stdout)[0]["name"] == "p", listed
            declared = run([admin, *port, "declare", "parameter", "component=shovel",
                            "name=p2", "value=" + json.dumps(value)])
            assert declared.returncode == 0, declared
            assert pm.ok("GET", "/api/parameters/shovel/%2F/p2")["value"] == value
            assert run([admin, *port, "delete", "parameter", "component=shovel",
                        "name=p2"]).returncode == 0
            assert pm("GET", "/api/parameters/shovel/%2F/p2")[0] == 404
        assert pm("DELETE", "/api/parameters/shovel/%2F/p")[0] == 204
    finally:
        api("DELETE", "/api/parameters/shovel/%2F/p")
        for user in ("shovel-pm", "shovel-mg"):
            api("DELETE", f"/api/users/{user}")
