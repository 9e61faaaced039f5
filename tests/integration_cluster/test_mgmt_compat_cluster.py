"""In a 3-node cluster, what only the node holding a client knows of it (client properties,
bytes, a channel's message_stats) is in the listings of every node, as in a RabbitMQ
cluster's: a client library finds its connection by its connection_name through any
node's GET /api/connections/ and closes it there (issue 23, item 8)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

from harness.cluster import RaftMQCluster
from tests.harness.api import Api, q

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftMQCluster]:
    c = RaftMQCluster(tmp_path_factory.mktemp("mgmt-compat-cluster"), n=3)
    try:
        c.start(timeout=45)
        yield c
    finally:
        c.stop()


def _wait(cond: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = cond()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_another_nodes_client_is_listed_whole_and_closed(cluster: RaftMQCluster) -> None:
    holder, asked = cluster.nodes[0], cluster.nodes[1]
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", holder.amqp_port, client_properties={"connection_name": "far-away"}))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("far-q", auto_delete=True)
        for _ in range(2):
            ch.basic_publish("", "far-q", b"x")
        api = Api(asked.management_port)

        def listed() -> list[dict[str, Any]]:
            return [c for c in api.ok("GET", "/api/connections/")
                    if c.get("client_properties", {}).get("connection_name") == "far-away"]

        [found] = _wait(listed)
        assert found["node"] == holder.node_id and found["user_provided_name"] == "far-away"
        assert found["recv_oct"] > 0 and found["peer_host"] == "127.0.0.1"
        one = api.ok("GET", f"/api/connections/{q(found['name'])}")
        assert one["client_properties"]["connection_name"] == "far-away"
        [chan] = [c for c in api.ok("GET", "/api/channels")
                  if c["connection_details"]["name"] == found["name"]]
        assert chan["message_stats"]["publish"] == 2 and chan["confirm"] is True
        assert api.ok("GET", f"/api/channels/{q(chan['name'])}")["message_stats"][
            "confirm"] == 2
        status, _ = api("DELETE", f"/api/connections/{q(found['name'])}/")
        assert status == 204
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                conn.process_data_events(0.05)
        assert info.value.reply_code == 320
    finally:
        if conn.is_open:
            conn.close()


def test_the_own_rows_flag_lists_a_nodes_own_clients_only(cluster: RaftMQCluster) -> None:
    """The own-rows flag lists a node's own clients only (what the others ask for)."""
    holder, asked = cluster.nodes[2], cluster.nodes[1]
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", holder.amqp_port))
    try:
        api = Api(asked.management_port)
        _wait(lambda: any(c["node"] == holder.node_id
                          for c in api.ok("GET", "/api/connections")))
        assert not any(c["node"] == holder.node_id
                       for c in api.ok("GET", "/api/connections?raftmq_own=true"))
        own = Api(holder.management_port).ok("GET", "/api/connections?raftmq_own=true")
        assert [c["node"] for c in own] == [holder.node_id]
    finally:
        conn.close()
