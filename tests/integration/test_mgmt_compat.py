"""Where clients depend on RabbitMQ's management API and login behaviour, side by side with
RabbitMQ 3.10 and its management plugin: paths with a trailing slash (and unknown paths,
and methods a path does not allow) answer alike; an empty password or user name is refused
alike, on the wire and by the API; the fields of /api/overview, /api/connections and
/api/channels that RabbitMQ has are there (issue 23, item 8).
"""

from __future__ import annotations

import base64
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.exceptions
import pytest
from pamqp import commands

from harness.ports import free_port
from harness.raftmq import RaftMQNode
from tests.harness.api import Api, q
from tests.integration.rawclient import PROTOCOL_HEADER, ConnectionClosedError, RawClient

pytestmark = [pytest.mark.raftmq_only, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    from harness.rabbitmq import RabbitMQ

    base = tmp_path_factory.mktemp("mgmt-compat")
    rabbit = RabbitMQ(base / "rabbitmq", management_port=free_port())
    node = RaftMQNode(base / "raftmq" / "data", log_path=base / "raftmq" / "node.log")
    with rabbit, node:
        _wait(lambda: Api(rabbit.management_port or 0)("GET", "/api/overview")[0] == 200, 60)
        yield node, rabbit


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def raw(port: int, method: str, path: str, auth: tuple[str, str] | None = ("guest", "guest"),
        ) -> tuple[int, bytes, str]:
    """(status, body, Allow header) of one request, nothing interpreted."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    if auth is not None:
        token = base64.b64encode(":".join(auth).encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.read(), r.headers.get("Allow", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Allow", "")


PATHS = ["/api/overview", "/api/connections", "/api/channels", "/api/queues",
         f"/api/queues/{q('/')}", "/api/exchanges", f"/api/exchanges/{q('/')}/amq.direct",
         "/api/vhosts", f"/api/vhosts/{q('/')}", "/api/users", "/api/whoami",
         "/api/consumers", "/api/bindings", "/api/permissions", "/api/definitions",
         "/api/nosuch", "/nosuch", "/api/queues/%2F/no-such-queue"]


@pytest.mark.parametrize("slash", ["", "/"])
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "OPTIONS"])
def test_paths_with_and_without_a_trailing_slash(brokers: tuple[Any, Any], method: str,
                                                 slash: str) -> None:
    """cowboy ignores one trailing slash; an unknown path is a JSON 404 to GET and a 405 to
    anything else; a method a path does not allow is a 405 without a body; OPTIONS is a 200;
    both say alike what a path allows."""
    node, rabbit = brokers
    if method == "DELETE":  # (the default vhost and guest's permissions must stay)
        paths = [p for p in PATHS if "vhosts/" not in p and "permissions" not in p]
    elif method == "PUT":  # (PUT on an object declares it: compared in test_mgmt_compare)
        paths = [p for p in PATHS if p.count("/") < 4 and "vhosts/" not in p]
    elif method == "POST":  # (a POST to /api/definitions imports them)
        paths = [p for p in PATHS if "definitions" not in p]
    else:
        paths = PATHS
    differ = []
    for path in paths:
        ours = raw(node.management_port, method, path + slash)
        theirs = raw(rabbit.management_port, method, path + slash)
        if ours[0] != theirs[0] or (ours[0] in (404, 405) and ours[1] != theirs[1].replace(
                b'":"', b'": "').replace(b'","', b'", "')):
            differ.append((path + slash, ours[:2], theirs[:2]))
        if ours[0] == 405 or method == "OPTIONS":
            assert ours[2] == theirs[2], f"{method} {path}{slash}: Allow differs"
    assert not differ, f"{method}: RaftMQ and RabbitMQ answer differently: {differ}"


def test_a_double_slash_is_not_a_trailing_slash(brokers: tuple[Any, Any]) -> None:
    node, rabbit = brokers
    for path in ("/api/connections//", "/api//connections"):
        assert raw(node.management_port, "GET", path)[0] == \
            raw(rabbit.management_port, "GET", path)[0] == 404


@pytest.mark.parametrize("which", ["raftmq", "rabbitmq"])
def test_a_client_finds_and_closes_its_connection_through_the_api(brokers: tuple[Any, Any],
                                                                  which: str) -> None:
    """A client library's connection-recovery tests: GET /api/connections/, find the
    connection by its connection_name, DELETE it; the client sees 320."""
    broker = brokers[0] if which == "raftmq" else brokers[1]
    api = Api(broker.management_port)
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", broker.amqp_port, client_properties={"connection_name": f"rec-{which}"}))
    try:
        found: list[dict[str, Any]] = []

        def listed() -> bool:
            status, answer = api("GET", "/api/connections/")
            assert status == 200, answer
            found[:] = [c for c in answer
                        if c.get("client_properties", {}).get("connection_name") ==
                        f"rec-{which}"]
            return bool(found)

        _wait(listed, 15)  # (RabbitMQ lists a connection once its stats are emitted)
        assert found[0]["user_provided_name"] == f"rec-{which}"
        status, _ = api("DELETE", f"/api/connections/{q(found[0]['name'])}/")
        assert status == 204
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                conn.process_data_events(0.1)
        assert info.value.reply_code == 320
    finally:
        if conn.is_open:
            conn.close()


def test_an_empty_password_or_user_name_is_refused_alike(brokers: tuple[Any, Any]) -> None:
    """A user whose password is "" cannot log in with it, on AMQP (403 ACCESS_REFUSED: pika
    announces authentication_failure_close) nor through the API (401 Login failed); an
    empty user name neither."""
    answers = []
    for broker in brokers:
        api = Api(broker.management_port)
        api.ok("PUT", "/api/users/blank", {"password": "", "tags": "administrator"})
        api.ok("PUT", f"/api/permissions/{q('/')}/blank",
               {"configure": ".*", "write": ".*", "read": ".*"})
        seen: list[Any] = []
        for user, password in (("blank", ""), ("", ""), ("", "guest")):
            with pytest.raises(pika.exceptions.ProbableAuthenticationError) as info:
                pika.BlockingConnection(pika.ConnectionParameters(
                    "127.0.0.1", broker.amqp_port, connection_attempts=1,
                    credentials=pika.PlainCredentials(user, password)))
            seen.append(str(info.value).split("'")[1] if "'" in str(info.value) else "")
            status, answer = api.as_(user, password)("GET", "/api/whoami")
            seen.append((status, answer))
        api.ok("DELETE", "/api/users/blank")
        answers.append(seen)
    assert answers[0] == answers[1]
    assert answers[0][0].startswith("ACCESS_REFUSED - Login was refused using authentication "
                                    "mechanism PLAIN")
    assert answers[0][1] == (401, {"error": "not_authorized", "reason": "Login failed"})


def _refusal(port: int, capability: bool) -> str:
    """What a raw client sees after a start-ok with an empty password: the connection.close
    it gets, or "closed" (the socket closed, nothing sent)."""
    props: dict[str, Any] = {"product": "raw"}
    if capability:
        props["capabilities"] = {"authentication_failure_close": True}
    with RawClient("127.0.0.1", port, timeout=8) as c:
        c.send(PROTOCOL_HEADER)
        _, start = c.recv_method()
        assert isinstance(start, commands.Connection.Start)
        c.send_frame(0, commands.Connection.StartOk(client_properties=props, mechanism="PLAIN",
                                                    response="\0guest\0", locale="en_US"))
        try:
            _, m = c.recv_method()
        except ConnectionClosedError:
            return "closed"
        assert isinstance(m, commands.Connection.Close)
        return f"{m.reply_code} {m.reply_text}"


@pytest.mark.parametrize("capability", [True, False])
def test_the_refusal_is_said_only_to_a_client_announcing_the_capability(
        brokers: tuple[Any, Any], capability: bool) -> None:
    """RabbitMQ sends connection.close 403 to a client that announced
    authentication_failure_close, and closes any other's socket saying nothing."""
    ours, theirs = (_refusal(b.amqp_port, capability) for b in brokers)
    assert ours == theirs
    assert ours.startswith("403 ACCESS_REFUSED - Login was refused") if capability else \
        ours == "closed"



def _flat(d: Any, pre: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(d, dict):
        for k, v in d.items():
            out.add(pre + k)
            if isinstance(v, dict) and k not in ("client_properties", "capabilities"):
                out |= _flat(v, pre + k + ".")
    return out


# Fields of RabbitMQ's that are its runtime's own (Erlang processes and statistics
# settings), not a client's business.
ERLANG = ("garbage_collection", "reductions", "pending_raft_commands", "disable_stats",
          "enable_queue_totals", "erlang_full_version", "statistics_db_event_queue",
          "sample_retention_policies", "release_series_support_status", "exchange_types",
          "peer_cert_", "ssl_hash", "ssl_key_exchange", "message_stats.disk_",
          "consumer_details", "deliveries", "publishes",
          # not filled in (yet): a channel's idle_since
          "idle_since")


def test_overview_connection_and_channel_fields(brokers: tuple[Any, Any]) -> None:
    """The same traffic on both (a confirm channel publishing 3 messages, a get and its
    ack); RabbitMQ's keys of the overview's churn_rates, a connection's octets and a
    channel's message_stats and messages_unconfirmed are all in RaftMQ's, and the counts
    agree."""
    ours, theirs = (_traffic(broker) for broker in brokers)
    for what in ("overview", "connection", "channel"):
        lacking = {k for k in _flat(theirs[what]) - _flat(ours[what])
                   if not any(k.startswith(e) for e in ERLANG)}
        if what == "overview":  # (the overall message_stats are not this item's)
            lacking = {k for k in lacking if not k.startswith("message_stats.")}
        assert not lacking, f"{what}: RabbitMQ has, RaftMQ lacks: {sorted(lacking)}"
    assert set(theirs["overview"]["churn_rates"]) <= set(ours["overview"]["churn_rates"])
    for k in ("publish", "confirm", "get", "ack", "deliver_get", "redeliver"):
        assert ours["channel"]["message_stats"][k] == theirs["channel"]["message_stats"][k], k
    assert ours["channel"]["messages_unconfirmed"] == theirs["channel"][
        "messages_unconfirmed"] == 0
    assert ours["channel"]["confirm"] is theirs["channel"]["confirm"] is True
    for k in ("recv_oct", "send_oct", "recv_cnt", "send_cnt"):
        assert ours["connection"][k] > 0 and isinstance(ours["connection"][k], int), k
    assert "rate" in ours["connection"]["recv_oct_details"]
    churn = ours["overview"]["churn_rates"]
    assert churn["connection_created"] >= 1 and churn["channel_created"] >= 1
    assert churn["queue_declared"] >= 1 and churn["queue_created"] >= 1


def _traffic(broker: Any) -> dict[str, Any]:
    """The overview, the connection and the channel as the API shows them after a confirm
    channel published 3 messages and got and acked one (once the broker counted them)."""
    api = Api(broker.management_port)
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", broker.amqp_port, client_properties={"connection_name": "fields"}))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("fields-q", auto_delete=True)
        for _ in range(3):
            ch.basic_publish("", "fields-q", b"x" * 100)
        method, _, _ = ch.basic_get("fields-q")
        assert method is not None
        ch.basic_ack(method.delivery_tag)
        answers: dict[str, Any] = {}

        def counted() -> bool:  # (RabbitMQ's statistics follow every 500 ms)
            conn.process_data_events(0)
            conns = [c for c in api("GET", "/api/connections")[1]
                     if c.get("user_provided_name") == "fields"]
            if not conns or not conns[0].get("recv_oct"):
                return False
            chans = [c for c in api("GET", "/api/channels/")[1]
                     if c["connection_details"]["name"] == conns[0]["name"]]
            if not chans or chans[0].get("message_stats", {}).get("ack") != 1:
                return False
            answers.update(channel=chans[0], connection=conns[0],
                           overview=api("GET", "/api/overview")[1])
            return True

        _wait(counted, 20)
        return answers
    finally:
        conn.close()
