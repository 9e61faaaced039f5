"""The management API over HTTPS (RabbitMQ's management.ssl.*): --management-tls-port with
--management-tls-cert / -key, beside the plain port; client certificates asked for and
verified against --management-tls-ca as --management-tls-verify says (issue 23, item 8)."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.ports import free_port
from harness.raftmq import RaftMQNode
from node import config
from tests.harness.api import Api
from tests.harness.tls import TestCA

pytestmark = [pytest.mark.raftmq_only, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("mgmt-ca"))


@pytest.fixture(scope="module")
def https_node(tmp_path_factory: pytest.TempPathFactory, ca: TestCA) -> Iterator[RaftMQNode]:
    base = tmp_path_factory.mktemp("mgmt-https")
    server = ca.issue("localhost", server=True)
    node = RaftMQNode(base / "data", log_path=base / "node.log", extra_env={
        "RAFTMQ_MANAGEMENT_TLS_CERT": str(server.cert),
        "RAFTMQ_MANAGEMENT_TLS_KEY": str(server.key),
        "RAFTMQ_MANAGEMENT_TLS_CA": str(ca.ca_path),
        "RAFTMQ_MANAGEMENT_TLS_VERIFY": "optional",
        "RAFTMQ_MANAGEMENT_TLS_PORT": str(free_port())})
    with node:
        yield node


def https(node: RaftMQNode, path: str, ctx: ssl.SSLContext,
          auth: tuple[str, str] | None = ("guest", "guest")) -> tuple[int, Any]:
    port = node.extra_env["RAFTMQ_MANAGEMENT_TLS_PORT"]
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}")
    if auth is not None:
        req.add_header("Authorization",
                       "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_the_api_answers_over_https_as_over_http(https_node: RaftMQNode, ca: TestCA) -> None:
    ctx = ca.client_context()
    assert https(https_node, "/api/whoami", ctx) == (200, {"name": "guest",
                                                           "tags": ["administrator"]})
    assert https(https_node, "/api/whoami", ctx) == \
        (200, Api(https_node.management_port).ok("GET", "/api/whoami"))
    status, listed = https(https_node, "/api/connections/", ctx)  # (and its paths' rules)
    assert (status, listed) == (200, [])
    assert https(https_node, "/api/whoami", ctx, ("guest", "wrong"))[0] == 401
    assert https(https_node, "/api/whoami", ctx, None)[0] == 401  # (basic auth still)


def test_the_overview_lists_both_management_ports(https_node: RaftMQNode, ca: TestCA) -> None:
    port = int(https_node.extra_env["RAFTMQ_MANAGEMENT_TLS_PORT"])
    _, overview = https(https_node, "/api/overview", ca.client_context())
    assert {(x["protocol"], x["port"]) for x in overview["listeners"]} == {
        ("amqp", https_node.amqp_port), ("http", https_node.management_port),
        ("https", port)}
    assert [(c["port"], c.get("ssl")) for c in overview["contexts"]] == [
        (str(https_node.management_port), None), (str(port), "true")]


def test_a_client_certificate_is_verified_when_presented(https_node: RaftMQNode,
                                                         ca: TestCA) -> None:
    trusted = ca.issue("api-client")
    assert https(https_node, "/api/whoami", ca.client_context(trusted))[0] == 200
    stranger = TestCA(ca.dir / "other").issue("stranger")
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        https(https_node, "/api/whoami", ca.client_context(stranger))


def test_a_client_that_does_not_trust_the_certificate_fails(https_node: RaftMQNode,
                                                            tmp_path: Path) -> None:
    other = TestCA(tmp_path / "ca")
    with pytest.raises(urllib.error.URLError) as info:
        https(https_node, "/api/whoami", other.client_context())
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)


def test_plain_http_on_the_https_port_gets_no_answer(https_node: RaftMQNode) -> None:
    port = https_node.extra_env["RAFTMQ_MANAGEMENT_TLS_PORT"]
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/overview", timeout=5).read()


@pytest.mark.parametrize(("env", "says"), [
    ({"RAFTMQ_MANAGEMENT_TLS_CERT": "CERT"}, "--management-tls-cert and --management-tls-key"),
    ({"RAFTMQ_MANAGEMENT_TLS_CERT": "CERT", "RAFTMQ_MANAGEMENT_TLS_KEY": "KEY",
      "RAFTMQ_MANAGEMENT_TLS_VERIFY": "required"}, "needs --management-tls-ca"),
    ({"RAFTMQ_MANAGEMENT_TLS_CERT": "KEY", "RAFTMQ_MANAGEMENT_TLS_KEY": "KEY"},
     "--management-tls-cert"),  # (a key is no certificate: it does not load)
    ({"RAFTMQ_MANAGEMENT_TLS_VERIFY": "sometimes"}, "must be none, optional or required"),
])
def test_bad_options_stop_start_up_naming_them(ca: TestCA, env: dict[str, str],
                                               says: str) -> None:
    pair = ca.issue("localhost-conf", server=True)
    environ = {k: v.replace("CERT", str(pair.cert)).replace("KEY", str(pair.key))
               for k, v in env.items()}
    with pytest.raises(config.ConfigError, match=says):
        config.load(None, environ)


def test_rabbitmqadmin_over_https(https_node: RaftMQNode, ca: TestCA) -> None:
    """RabbitMQ's own rabbitmqadmin (Debian's, unmodified) with --ssl and the CA."""
    exe = shutil.which("rabbitmqadmin")
    if exe is None:
        pytest.skip("rabbitmqadmin is not installed")
    port = https_node.extra_env["RAFTMQ_MANAGEMENT_TLS_PORT"]

    def adm(*args: str) -> str:
        res = subprocess.run([exe, "-H", "localhost", "-P", port, "-s",
                              f"--ssl-ca-cert-file={ca.ca_path}", "-u", "guest", "-p", "guest",
                              *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    assert "queue declared" in adm("declare", "queue", "name=over-https")
    assert "over-https" in adm("list", "queues", "name")
    adm("delete", "queue", "name=over-https")
