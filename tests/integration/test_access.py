"""Access control with real clients: users and vhosts managed over the authenticated API,
RabbitMQ's permission rules (each allowed once and refused once), topic permissions,
password changes and permission changes without a restart, limits, TLS with and
without client certificates, EXTERNAL."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pika
import pika.exceptions
import pytest

from harness.ports import free_port
from harness.raftmq import RaftMQNode
from tests.harness.api import Api, q
from tests.harness.tls import TestCA
from tests.integration.helpers import close_quietly, connect, consume_n, roundtrip_ok

pytestmark = [pytest.mark.raftmq_only, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def secure_node(tmp_path_factory: pytest.TempPathFactory, ca: TestCA) -> Iterator[RaftMQNode]:
    base = tmp_path_factory.mktemp("access")
    server = ca.issue("localhost", server=True)
    node = RaftMQNode(base / "data", log_path=base / "node.log", extra_env={
        "RAFTMQ_TLS_CERT": str(server.cert), "RAFTMQ_TLS_KEY": str(server.key),
        "RAFTMQ_TLS_CA": str(ca.ca_path), "RAFTMQ_TLS_VERIFY": "optional",
        "RAFTMQ_TLS_PORT": str(free_port()), "RAFTMQ_MAX_CONSUMERS_PER_CHANNEL": "3"})
    with node:
        yield node


@pytest.fixture(scope="module")
def api(secure_node: RaftMQNode) -> Api:
    return Api(secure_node.management_port)


def url(node: RaftMQNode, user: str, password: str, vhost: str = "/") -> str:
    return f"amqp://{q(user)}:{q(password)}@127.0.0.1:{node.amqp_port}/{q(vhost)}"


def make_user(api: Api, name: str, password: str, vhost: str, perms: tuple[str, str, str],
              tags: str = "") -> None:
    api.ok("PUT", f"/api/users/{q(name)}", {"password": password, "tags": tags})
    if vhost:
        api.ok("PUT", f"/api/vhosts/{q(vhost)}", {})
        api.ok("PUT", f"/api/permissions/{q(vhost)}/{q(name)}",
               dict(zip(("configure", "write", "read"), perms, strict=True)))


# --- tenants ------------------------------------------------------------------------------


def test_two_users_in_two_vhosts_cannot_touch_each_other(secure_node: RaftMQNode,
                                                         api: Api) -> None:
    make_user(api, "alice", "pw-a", "team-a", (".*", ".*", ".*"))
    make_user(api, "bob", "pw-b", "team-b", (".*", ".*", ".*"))
    a = connect(url(secure_node, "alice", "pw-a", "team-a"))
    b = connect(url(secure_node, "bob", "pw-b", "team-b"))
    try:
        ca_, cb = a.channel(), b.channel()
        ca_.queue_declare("orders")
        cb.queue_declare("orders")  # the same name, another vhost: another queue
        ca_.basic_publish("", "orders", b"for alice")
        assert cb.queue_declare("orders", passive=True).method.message_count == 0
        assert ca_.queue_declare("orders", passive=True).method.message_count == 1
    finally:
        close_quietly(a)
        close_quietly(b)
    # neither may open the other's vhost: 530, as RabbitMQ
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
        connect(url(secure_node, "alice", "pw-a", "team-b"))
    assert "530" in str(info.value) and "refused for user 'alice'" in str(info.value)
    status, vhosts = api.as_("alice", "pw-a")("GET", "/api/vhosts")
    assert status == 401  # alice has no management tag


# --- RabbitMQ's permission table, each rule allowed once and refused once ----------------

Op = Callable[[Any, str], Any]


def _declare_x(ch: Any, n: str) -> Any:
    return ch.exchange_declare(n, "direct")


RULES: list[tuple[str, Callable[[Any, str, str], Any]]] = [
    # (name, op(channel, allowed-or-denied prefix, suffix)); setup below grants permissions on
    # names starting "ok" and on nothing starting "no"
    ("exchange.declare needs configure",
     lambda ch, p, s: ch.exchange_declare(f"{p}-x{s}", "direct")),
    ("exchange.declare with an AE needs write on the AE",
     lambda ch, p, s: ch.exchange_declare(f"ok-xae{s}", "direct",
                                          arguments={"alternate-exchange": f"{p}-ae"})),
    ("exchange.delete needs configure",
     lambda ch, p, s: ch.exchange_delete(f"{p}-xdel{s}")),
    ("queue.declare needs configure", lambda ch, p, s: ch.queue_declare(f"{p}-q{s}")),
    ("queue.declare with a DLX needs write on the DLX",
     lambda ch, p, s: ch.queue_declare(f"ok-qdlx{s}",
                                       arguments={"x-dead-letter-exchange": f"{p}-dlx"})),
    ("queue.delete needs configure", lambda ch, p, s: ch.queue_delete(f"{p}-qdel{s}")),
    ("queue.bind needs write on the queue",
     lambda ch, p, s: ch.queue_bind(f"{p}-target", "ok-source", "k")),
    ("queue.bind needs read on the exchange",
     lambda ch, p, s: ch.queue_bind("ok-target", f"{p}-source", "k")),
    ("queue.unbind needs write on the queue",
     lambda ch, p, s: ch.queue_unbind(f"{p}-target", "ok-source", "k")),
    ("exchange.bind needs write on the destination",
     lambda ch, p, s: ch.exchange_bind(f"{p}-source", "ok-source", "k")),
    ("exchange.bind needs read on the source",
     lambda ch, p, s: ch.exchange_bind("ok-source", f"{p}-source", "k")),
    ("basic.publish needs write on the exchange",
     lambda ch, p, s: ch.basic_publish(f"{p}-source", "k", b"m", mandatory=False)),
    ("basic.get needs read on the queue", lambda ch, p, s: ch.basic_get(f"{p}-target")),
    ("basic.consume needs read on the queue",
     lambda ch, p, s: ch.basic_consume(f"{p}-target", lambda *a: None)),
    ("queue.purge needs read on the queue", lambda ch, p, s: ch.queue_purge(f"{p}-target")),
]


@pytest.fixture(scope="module")
def carol(secure_node: RaftMQNode, api: Api) -> str:
    """carol may do everything on names starting with "ok", nothing on others; the
    resources the rules act on exist (created by the administrator)."""
    make_user(api, "carol", "pw-c", "perm", ("^ok", "^ok", "^ok"))
    api.ok("PUT", "/api/permissions/perm/guest", {"configure": ".*", "write": ".*", "read": ".*"})
    admin = connect(url(secure_node, "guest", "guest", "perm"))
    try:
        ch = admin.channel()
        for prefix in ("ok", "no"):
            ch.exchange_declare(f"{prefix}-source", "direct")
            ch.exchange_declare(f"{prefix}-ae", "fanout")
            ch.exchange_declare(f"{prefix}-dlx", "fanout")
            ch.queue_declare(f"{prefix}-target")
            ch.queue_bind(f"{prefix}-target", "ok-source", "k")
            ch.exchange_declare(f"{prefix}-xdel-1", "direct")
            ch.queue_declare(f"{prefix}-qdel-1")
    finally:
        close_quietly(admin)
    return url(secure_node, "carol", "pw-c", "perm")


@pytest.mark.parametrize(("rule", "op"), RULES, ids=[r[0] for r in RULES])
def test_permission_rule_allowed_once_refused_once(carol: str, rule: str,
                                                   op: Callable[[Any, str, str], Any]) -> None:
    conn = connect(carol)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        op(ch, "ok", "-1")  # allowed
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            op(ch, "no", "-2")
        assert info.value.reply_code == 403, rule
        assert "ACCESS_REFUSED - access to " in info.value.reply_text
        assert "refused for user 'carol'" in info.value.reply_text
    finally:
        close_quietly(conn)


def test_default_exchange_is_amq_default(secure_node: RaftMQNode, api: Api) -> None:
    make_user(api, "dave", "pw-d", "dflt", (".*", "^amq\\.default$", ".*"))
    conn = connect(url(secure_node, "dave", "pw-d", "dflt"))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("dq")
        ch.basic_publish("", "dq", b"m")  # write on amq.default
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.exchange_declare("other", "direct")
            ch.basic_publish("other", "k", b"m")
        assert info.value.reply_code == 403 and "exchange 'other'" in info.value.reply_text
    finally:
        close_quietly(conn)


def test_topic_permissions_on_routing_keys(secure_node: RaftMQNode, api: Api) -> None:
    make_user(api, "erin", "pw-e", "topics", (".*", ".*", ".*"))
    api.ok("PUT", "/api/topic-permissions/topics/erin",
           {"exchange": "amq.topic", "write": "^sensor\\.{username}\\.", "read": "^sensor\\."})
    conn = connect(url(secure_node, "erin", "pw-e", "topics"))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("readings")
        ch.queue_bind("readings", "amq.topic", "sensor.#")
        ch.basic_publish("amq.topic", "sensor.erin.t1", b"21C")
        assert consume_n(conn, ch, "readings", 1)[0].body == b"21C"
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.basic_publish("amq.topic", "sensor.mallory.t1", b"forged")
        assert info.value.reply_code == 403
        assert "write access to topic 'sensor.mallory.t1'" in info.value.reply_text
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_bind("readings", "amq.topic", "alarm.#")
        assert info.value.reply_code == 403 and "read access to topic" in info.value.reply_text
        ch = conn.channel()
        ch.exchange_declare("plain", "direct")  # topic permissions apply to topic exchanges
        ch.basic_publish("plain", "anything", b"m")
    finally:
        close_quietly(conn)


# --- changes without a restart ------------------------------------------------------------


def test_password_change_takes_effect_at_once(secure_node: RaftMQNode, api: Api) -> None:
    make_user(api, "frank", "old", "/", (".*", ".*", ".*"))
    connect(url(secure_node, "frank", "old")).close()
    api.ok("PUT", "/api/users/frank", {"password": "new"})
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(url(secure_node, "frank", "old"))
    connect(url(secure_node, "frank", "new")).close()
    # stored as RabbitMQ does: a salted SHA-256, never the password
    user = api.ok("GET", "/api/users/frank")
    assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert len(base64.b64decode(user["password_hash"])) == 4 + 32
    assert "new" not in json.dumps(user)


def test_permission_change_applies_to_open_channels(secure_node: RaftMQNode, api: Api) -> None:
    make_user(api, "grace", "pw-g", "live", (".*", ".*", ".*"))
    conn = connect(url(secure_node, "grace", "pw-g", "live"))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("lq")
        ch.basic_publish("", "lq", b"before")
        api.ok("PUT", "/api/permissions/live/grace", {"configure": ".*", "write": "^$",
                                                      "read": ".*"})
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.basic_publish("", "lq", b"after")
        assert info.value.reply_code == 403
        assert conn.channel().basic_get("lq", auto_ack=True)[2] == b"before"  # reading still ok
    finally:
        close_quietly(conn)


def test_deleting_a_vhost_closes_its_connections_with_320(secure_node: RaftMQNode,
                                                          api: Api) -> None:
    make_user(api, "heidi", "pw-h", "doomed", (".*", ".*", ".*"))
    conn = connect(url(secure_node, "heidi", "pw-h", "doomed"))
    conn.channel().queue_declare("gone", durable=True)
    api.ok("DELETE", "/api/vhosts/doomed")
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        for _ in range(50):
            conn.process_data_events(time_limit=0.1)
    assert info.value.reply_code == 320
    assert api("GET", "/api/vhosts/doomed")[0] == 404
    api.ok("PUT", "/api/vhosts/doomed", {})  # a new vhost of that name starts empty
    api.ok("PUT", "/api/permissions/doomed/heidi", {"configure": ".*", "write": ".*",
                                                    "read": ".*"})
    c2 = connect(url(secure_node, "heidi", "pw-h", "doomed"))
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as qinfo:
            c2.channel().queue_declare("gone", passive=True)
        assert qinfo.value.reply_code == 404
    finally:
        close_quietly(c2)


def test_deleting_a_user_closes_its_connections_with_320(secure_node: RaftMQNode,
                                                         api: Api) -> None:
    make_user(api, "judy", "pw-j", "jv", (".*", ".*", ".*"))
    conn = connect(url(secure_node, "judy", "pw-j", "jv"))
    conn.channel()
    api.ok("DELETE", "/api/users/judy")
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        for _ in range(50):
            conn.process_data_events(time_limit=0.1)
    assert info.value.reply_code == 320
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(url(secure_node, "judy", "pw-j", "jv"))


# --- limits --------------------------------------------------------------------------------


def test_vhost_and_user_limits(secure_node: RaftMQNode, api: Api) -> None:
    make_user(api, "ivan", "pw-i", "limited", (".*", ".*", ".*"))
    api.ok("PUT", "/api/vhost-limits/limited/max-queues", {"value": 1})
    api.ok("PUT", "/api/user-limits/ivan/max-connections", {"value": 1})
    api.ok("PUT", "/api/user-limits/ivan/max-channels", {"value": 2})
    first = connect(url(secure_node, "ivan", "pw-i", "limited"))
    try:
        ch = first.channel()
        ch.queue_declare("one")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.queue_declare("two")
        assert info.value.reply_code == 406 and "queue limit in vhost 'limited' (1)" in \
            info.value.reply_text
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as cinfo:
            connect(url(secure_node, "ivan", "pw-i", "limited"))
        assert "user connection limit (1)" in str(cinfo.value)
        first.channel()  # (the queue limit closed the first channel)
        first.channel()
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as chinfo:
            first.channel()  # a third open channel for ivan
        assert chinfo.value.reply_code == 530
    finally:
        close_quietly(first)
    api.ok("DELETE", "/api/user-limits/ivan/max-connections")
    api.ok("DELETE", "/api/user-limits/ivan/max-channels")
    connect(url(secure_node, "ivan", "pw-i", "limited")).close()


def test_consumers_per_channel_limit(secure_node: RaftMQNode) -> None:
    conn = connect(secure_node.url)
    try:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        for _ in range(3):
            ch.basic_consume(queue, lambda *a: None)
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            ch.basic_consume(queue, lambda *a: None)
        assert info.value.reply_code == 530 and "consumers per channel" in info.value.reply_text
    finally:
        close_quietly(conn)


# --- TLS -----------------------------------------------------------------------------------


def tls_params(node: RaftMQNode, ctx: ssl.SSLContext, credentials: Any) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        "127.0.0.1", _tls_port(node), credentials=credentials,
        ssl_options=pika.SSLOptions(ctx, "localhost"), connection_attempts=1, socket_timeout=5)


def _tls_port(node: RaftMQNode) -> int:
    return int(node.extra_env["RAFTMQ_TLS_PORT"])


def test_tls_without_a_client_certificate(secure_node: RaftMQNode, ca: TestCA) -> None:
    conn = pika.BlockingConnection(tls_params(secure_node, ca.client_context(),
                                              pika.PlainCredentials("guest", "guest")))
    try:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", queue, b"over tls")
        assert consume_n(conn, ch, queue, 1)[0].body == b"over tls"
    finally:
        close_quietly(conn)
    # EXTERNAL needs a certificate
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(tls_params(secure_node, ca.client_context(),
                                           pika.credentials.ExternalCredentials()))


def test_tls_with_a_client_certificate_and_external_login(secure_node: RaftMQNode, ca: TestCA,
                                                          api: Api) -> None:
    make_user(api, "sensor-7", "unused-password", "/", (".*", ".*", ".*"))
    cert = ca.issue("sensor-7")
    conn = pika.BlockingConnection(tls_params(secure_node, ca.client_context(cert),
                                              pika.credentials.ExternalCredentials()))
    try:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", queue, b"mtls")
        assert consume_n(conn, ch, queue, 1)[0].body == b"mtls"
    finally:
        close_quietly(conn)
    # a certificate whose CN is no user: refused
    stranger = ca.issue("nobody-here")
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(tls_params(secure_node, ca.client_context(stranger),
                                           pika.credentials.ExternalCredentials()))
    # a certificate from another CA fails the TLS handshake
    other = TestCA(Path(str(ca.dir) + "-other"))
    rogue = other.issue("sensor-7")
    ctx = ca.client_context()
    ctx.load_cert_chain(str(rogue.cert), str(rogue.key))
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(tls_params(secure_node, ctx,
                                           pika.credentials.ExternalCredentials()))
    roundtrip_ok(secure_node.url)


async def test_aio_pika_over_tls(secure_node: RaftMQNode, ca: TestCA) -> None:
    conn = await aio_pika.connect(host="127.0.0.1", port=_tls_port(secure_node), login="guest",
                                  password="guest", ssl=True, ssl_context=ca.client_context(),
                                  timeout=10)
    try:
        ch = await conn.channel()
        q_ = await ch.declare_queue(exclusive=True)
        await ch.default_exchange.publish(aio_pika.Message(b"aio tls"), q_.name)
        msg = await q_.get(timeout=5)
        assert msg is not None and msg.body == b"aio tls"
    finally:
        await conn.close()
