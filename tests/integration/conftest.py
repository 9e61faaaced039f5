"""Fixtures for the integration suite.

The suite runs unchanged against either broker:

* ``BROKER=raftmq`` (default): a RaftMQ node started by ``harness.raftmq.RaftMQNode``,
  one per test module (``broker``) or one per test (``fresh_broker``, for kill/restart tests).
* ``BROKER=rabbitmq``: one RabbitMQ 3.10 for the whole session (``harness.rabbitmq``),
  the reference the RaftMQ behaviour is checked against.
* ``BROKER_URL=amqp://...`` additionally points the suite at an already running broker of kind
  ``BROKER`` (nothing is started; tests needing ``fresh_broker`` or the node are skipped).

Tests marked ``@pytest.mark.raftmq_only`` are skipped on RabbitMQ. Tests marked
``@pytest.mark.restart`` (kill -9 / restart, using ``fresh_broker``) are skipped on RabbitMQ
unless ``BROKER_RESTARTS=1``: then each gets a RabbitMQ of its own (slow, ~20 s a test), which
is how their expectations were checked against the reference broker.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pytest

from tests.integration.helpers import Names, close_quietly, connect, wait_until

BROKER_KIND = os.environ.get("BROKER", "raftmq").strip().lower()
EXTERNAL_URL = os.environ.get("BROKER_URL", "").strip()
RESTARTS_ON_RABBITMQ = os.environ.get("BROKER_RESTARTS", "") == "1"
if BROKER_KIND not in ("raftmq", "rabbitmq"):
    raise pytest.UsageError(f"BROKER must be 'raftmq' or 'rabbitmq', not {BROKER_KIND!r}")


@dataclass
class Broker:
    kind: str
    url: str
    host: str
    port: int
    node: Any = None  # RaftMQNode on raftmq (None on rabbitmq / external)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_raftmq(self) -> bool:
        return self.kind == "raftmq"

    def url_for(self, user: str = "guest", password: str = "guest", vhost: str = "/") -> str:
        q = urllib.parse.quote
        return f"amqp://{q(user, safe='')}:{q(password, safe='')}@{self.host}:{self.port}/{q(vhost, safe='')}"


def _from_url(kind: str, url: str, node: Any = None) -> Broker:
    parsed = urllib.parse.urlparse(url)
    return Broker(kind=kind, url=url, host=parsed.hostname or "127.0.0.1",
                  port=parsed.port or 5672, node=node)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "raftmq_only: needs a RaftMQ node (e.g. metrics); skipped on RabbitMQ")
    config.addinivalue_line(
        "markers", "restart: kills/restarts its own broker; on RabbitMQ only with BROKER_RESTARTS=1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if BROKER_KIND == "raftmq":
        return
    skip = pytest.mark.skip(reason="RaftMQ-only test (BROKER=rabbitmq)")
    skip_restart = pytest.mark.skip(reason="restart test: set BROKER_RESTARTS=1 to run on RabbitMQ")
    for item in items:
        if "raftmq_only" in item.keywords:
            item.add_marker(skip)
        elif "restart" in item.keywords and not RESTARTS_ON_RABBITMQ:
            item.add_marker(skip_restart)


def pytest_report_header(config: pytest.Config) -> str:
    return f"integration broker: {BROKER_KIND}" + (f" (external {EXTERNAL_URL})" if EXTERNAL_URL else "")


# --------------------------------------------------------------------------- brokers


def _start_raftmq(base: Path) -> Any:
    from harness.raftmq import RaftMQNode  # imported lazily: RabbitMQ runs don't need it

    data_dir = base / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    node = RaftMQNode(data_dir, node_id="n1", log_path=base / "node.log")
    node.start(wait=True, timeout=30)
    return node


@pytest.fixture(scope="session")
def _rabbitmq_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    if EXTERNAL_URL:
        yield _from_url("rabbitmq", EXTERNAL_URL)
        return
    from harness.rabbitmq import RabbitMQ
    server = RabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    server.start()
    try:
        yield _from_url("rabbitmq", server.url)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The broker under test, shared by one test module (RabbitMQ: by the whole session)."""
    if BROKER_KIND == "rabbitmq":
        yield request.getfixturevalue("_rabbitmq_session")
        return
    if EXTERNAL_URL:
        yield _from_url("raftmq", EXTERNAL_URL)
        return
    node = _start_raftmq(tmp_path_factory.mktemp("raftmq"))
    try:
        yield _from_url("raftmq", node.url, node)
    finally:
        node.stop()


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of this test's own, free to be killed (``.node.kill()``) and started again on
    the same data directory and ports (``.node.start()``)."""
    if EXTERNAL_URL:
        pytest.skip("fresh_broker needs a broker the suite starts itself (BROKER_URL is set)")
    if BROKER_KIND == "rabbitmq":
        if not RESTARTS_ON_RABBITMQ:
            pytest.skip("fresh_broker on RabbitMQ needs BROKER_RESTARTS=1")
        from harness.rabbitmq import RabbitMQ

        server = RabbitMQ(tmp_path / "rabbitmq")
        server.start()
        try:
            yield _from_url("rabbitmq", server.url, server)
        finally:
            server.stop()
        return
    node = _start_raftmq(tmp_path)
    try:
        yield _from_url("raftmq", node.url, node)
    finally:
        with contextlib.suppress(Exception):
            node.stop()


@pytest.fixture(scope="module")
def api(broker: Broker) -> Any:
    """The management API of the broker under test, as its administrator."""
    from tests.harness.api import Api

    if broker.node is None and BROKER_KIND == "raftmq":
        pytest.skip("needs the node's management port")
    return Api(broker.node.management_port if broker.node is not None else 15672)


@pytest.fixture(scope="module")
def level_4(broker: Broker) -> None:
    """Until a RaftMQ node under test has enabled command level 4 (issue 23's features;
    the node waits for it itself, 5 s at most, before it serves clients: a guard)."""
    if broker.node is None:
        return
    from harness.cluster import http_json

    wait_until(lambda: (http_json(broker.node.management_url + "/api/status").get("levels")
                        or {}).get("cluster") == 4, 10, what="command level 4")


@pytest.fixture
def node(broker: Broker) -> Any:
    if broker.node is None:
        pytest.skip("needs a RaftMQ node started by the suite")
    return broker.node


# --------------------------------------------------------------------------- per-test helpers


@pytest.fixture
def names(request: pytest.FixtureRequest, broker: Broker) -> Iterator[Names]:
    """Unique queue/exchange names for this test; whatever it handed out is deleted afterwards."""
    short = request.node.name.split("[")[0].removeprefix("test_")[:24]
    n = Names(short)
    yield n
    if not (n.queues or n.exchanges):
        return
    conn = None
    try:
        conn = connect(broker.url)
        for q in n.queues:
            with contextlib.suppress(Exception):
                conn.channel().queue_delete(q)
        for x in n.exchanges:
            with contextlib.suppress(Exception):
                conn.channel().exchange_delete(x)
    except Exception:
        pass  # best effort: the broker may have been killed by the test
    finally:
        close_quietly(conn)


@pytest.fixture
def conn(broker: Broker) -> Iterator[pika.BlockingConnection]:
    c = connect(broker.url)
    yield c
    close_quietly(c)


@pytest.fixture
def ch(conn: pika.BlockingConnection) -> Any:
    return conn.channel()


@pytest.fixture
async def aconn(broker: Broker) -> AsyncIterator[Any]:
    import aio_pika

    c = await aio_pika.connect(broker.url, timeout=10)
    try:
        yield c
    finally:
        with contextlib.suppress(Exception):
            await c.close()
