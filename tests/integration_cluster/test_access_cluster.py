"""Access control on a 3-node cluster: users, vhosts and permissions made through one node's
API hold on every node; a client on a follower logs in, is refused what it may not do, sees a
password change at once; TLS and EXTERNAL on a follower."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pika
import pika.exceptions
import pytest

from harness.cluster import RaftMQCluster
from harness.ports import free_port
from tests.harness.api import Api, q
from tests.harness.tls import TestCA
from tests.integration.helpers import close_quietly, connect, consume_n
from tests.integration.test_access import tls_params

pytestmark = pytest.mark.timeout(120)


def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_access_control_on_a_follower(make_cluster: Callable[..., RaftMQCluster],
                                      tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    server = ca.issue("localhost", server=True)
    tls_ports = {}

    def options(node_id: str) -> dict[str, object]:
        tls_ports[node_id] = free_port()
        return {"extra_env": {
            "RAFTMQ_TLS_CERT": str(server.cert), "RAFTMQ_TLS_KEY": str(server.key),
            "RAFTMQ_TLS_CA": str(ca.ca_path), "RAFTMQ_TLS_VERIFY": "optional",
            "RAFTMQ_TLS_PORT": str(tls_ports[node_id])}}

    c = RaftMQCluster(tmp_path / "cluster", n=3, node_options=options)
    try:
        c.start(timeout=45)
        leader = c.leader()
        follower = next(nd for nd in c.nodes if nd is not leader)
        # made through the leader's API...
        api = Api(leader.management_port)
        api.ok("PUT", "/api/vhosts/shop", {})
        api.ok("PUT", "/api/users/app", {"password": "s3cret", "tags": ""})
        api.ok("PUT", "/api/permissions/shop/app", {"configure": "^app\\.", "write": "^app\\.",
                                                   "read": "^app\\."})
        # ...visible through the follower's, once it has applied them
        follower_api = Api(follower.management_port)
        wait_for(lambda: follower_api("GET", "/api/users/app")[0] == 200)
        url = f"amqp://app:s3cret@127.0.0.1:{follower.amqp_port}/shop"
        conn = connect(url)
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.queue_declare("app.orders")
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
                ch.basic_publish("", "app.orders", b"o1")  # write on amq.default: refused...
            assert refused.value.reply_code == 403 and "amq.default" in refused.value.reply_text
        finally:
            close_quietly(conn)
        api.ok("PUT", "/api/permissions/shop/app", {"configure": "^app\\.",
                                                   "write": "^(app\\.|amq\\.default)",
                                                   "read": "^app\\."})
        wait_for(lambda: "amq" in follower_api.ok("GET", "/api/permissions/shop/app")["write"])
        conn = connect(url)
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.basic_publish("", "app.orders", b"o2")
            assert consume_n(conn, ch, "app.orders", 1)[0].body == b"o2"
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                ch.queue_declare("admin.secrets")
            assert info.value.reply_code == 403
        finally:
            close_quietly(conn)
        # a password change through the follower's API holds on the leader too
        follower_api.ok("PUT", "/api/users/app", {"password": "rotated"})
        wait_for(lambda: _login_works(leader.amqp_port, "rotated"))
        assert not _login_works(follower.amqp_port, "s3cret")
        # TLS and EXTERNAL on the follower
        api.ok("PUT", "/api/users/device-1", {"password": "x", "tags": ""})
        api.ok("PUT", "/api/permissions/shop/device-1", {"configure": ".*", "write": ".*",
                                                        "read": ".*"})
        wait_for(lambda: follower_api("GET", "/api/users/device-1")[0] == 200)
        params = tls_params(follower, ca.client_context(ca.issue("device-1")),
                            pika.credentials.ExternalCredentials())
        params.port = tls_ports[follower.node_id]
        params.virtual_host = "shop"
        tls = pika.BlockingConnection(params)
        try:
            ch = tls.channel()
            name = ch.queue_declare("", exclusive=True).method.queue
            ch.basic_publish("", name, b"tls on a follower")
            assert consume_n(tls, ch, name, 1)[0].body == b"tls on a follower"
        finally:
            close_quietly(tls)
    finally:
        c.stop()


def _login_works(port: int, password: str) -> bool:
    try:
        connect(f"amqp://app:{q(password)}@127.0.0.1:{port}/shop").close()
        return True
    except pika.exceptions.AMQPConnectionError:
        return False
