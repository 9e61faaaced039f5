"""The management API of a 3-node cluster through a follower: RabbitMQ's own
``rabbitmqadmin`` (Debian's, unmodified) and ``raftmq``'s CLI run every command operators
use; the answers are cluster-wide (a client connected to the leader is listed, and closed,
through the follower)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest

from harness.cluster import RaftMQCluster
from harness.raftmq import RaftMQNode

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftMQCluster]:
    c = RaftMQCluster(tmp_path_factory.mktemp("mgmt-cluster"), n=3)
    try:
        c.start(timeout=45)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def follower(cluster: RaftMQCluster) -> RaftMQNode:
    leader = cluster.leader()
    return next(nd for nd in cluster.nodes if nd is not leader)


def _runner(argv: list[str]) -> Callable[..., str]:
    def run(*args: str, ok: bool = True) -> str:
        res = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60)
        if ok:
            assert res.returncode == 0 and "***" not in res.stdout, \
                f"{args}: {res.returncode}\n{res.stdout}\n{res.stderr}"
        return res.stdout + res.stderr

    return run


@pytest.fixture(scope="module")
def rabbitmqadmin(follower: RaftMQNode) -> Callable[..., str]:
    from harness.rabbitmq import ensure_installed

    ensure_installed()  # Debian's rabbitmq-server package ships rabbitmqadmin
    exe = shutil.which("rabbitmqadmin")
    if exe is None:
        pytest.skip("rabbitmqadmin is not installed")
    return _runner([sys.executable if exe.endswith(".py") else exe, "-H", "127.0.0.1",
                    "-P", str(follower.management_port), "-u", "guest", "-p", "guest"])


@pytest.fixture(scope="module")
def raftmq(follower: RaftMQNode) -> Callable[..., str]:
    return _runner([sys.executable, "-m", "node"])


def _client(node: RaftMQNode) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", node.amqp_port))


def _json_rows(out: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(out[out.index("["):])
    return rows


def test_rabbitmqadmin_on_a_follower(cluster: RaftMQCluster, follower: RaftMQNode,
                                     rabbitmqadmin: Callable[..., str],
                                     tmp_path: Path) -> None:
    adm = rabbitmqadmin
    adm("declare", "vhost", "name=ops")
    adm("declare", "user", "name=ops-user", "password=pw", "tags=management")
    adm("declare", "permission", "vhost=ops", "user=ops-user", "configure=.*", "write=.*",
        "read=.*")
    adm("declare", "permission", "vhost=ops", "user=guest", "configure=.*", "write=.*",
        "read=.*")
    adm("declare", "queue", "--vhost=ops", "name=work", "durable=true")
    adm("declare", "exchange", "--vhost=ops", "name=jobs", "type=topic")
    adm("declare", "binding", "--vhost=ops", "source=jobs", "destination=work",
        "routing_key=job.*")
    assert "work" in adm("list", "queues", "--vhost=ops")
    assert "jobs" in adm("list", "exchanges", "--vhost=ops")
    assert "job.*" in adm("list", "bindings", "--vhost=ops")
    assert "ops-user" in adm("list", "users")
    assert "ops" in adm("list", "vhosts")
    nodes = adm("-f", "raw_json", "list", "nodes")
    assert {n["name"] for n in json.loads(nodes)} == {nd.node_id for nd in cluster.nodes}
    adm("publish", "--vhost=ops", "exchange=jobs", "routing_key=job.1", "payload=hello")
    got = json.loads(adm("-f", "raw_json", "get", "--vhost=ops", "queue=work",
                         "ackmode=ack_requeue_true"))
    assert got[0]["payload"] == "hello" and got[0]["routing_key"] == "job.1"
    adm("purge", "queue", "--vhost=ops", "name=work")
    assert json.loads(adm("-f", "raw_json", "list", "queues", "--vhost=ops"))[0][
        "messages"] == 0

    defs = tmp_path / "defs.json"
    adm("export", str(defs))
    exported = json.loads(defs.read_text())
    assert any(q["name"] == "work" and q["vhost"] == "ops" for q in exported["queues"])
    adm("delete", "binding", "--vhost=ops", "source=jobs", "destination=work",
        "destination_type=queue", "properties_key=job.%2A")
    adm("delete", "exchange", "--vhost=ops", "name=jobs")
    adm("delete", "queue", "--vhost=ops", "name=work")
    assert "work" not in adm("list", "queues", "--vhost=ops")
    adm("import", str(defs))
    assert "work" in adm("list", "queues", "--vhost=ops")
    assert "job.*" in adm("list", "bindings", "--vhost=ops")

    # a client of the leader, seen and closed through the follower
    leader = cluster.leader()
    conn = _client(leader)
    try:
        conns = json.loads(adm("-f", "raw_json", "list", "connections"))
        assert [c["node"] for c in conns] == [leader.node_id]
        adm("close", "connection", f"name={conns[0]['name']}")
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            for _ in range(100):
                conn.process_data_events(0.05)
        assert closed.value.reply_code == 320
    finally:
        if conn.is_open:
            conn.close()

    adm("delete", "permission", "vhost=ops", "user=ops-user")
    adm("delete", "user", "name=ops-user")
    adm("delete", "vhost", "name=ops")
    assert "ops" not in adm("list", "vhosts")


def test_raftmq_cli_on_a_follower(cluster: RaftMQCluster, follower: RaftMQNode,
                                  raftmq: Callable[..., str], tmp_path: Path) -> None:
    node = ["--node", f"127.0.0.1:{follower.management_port}"]
    conn = _client(cluster.leader())
    try:
        ch = conn.channel()
        ch.queue_declare("cli-q", durable=True)
        ch.basic_consume("cli-q", lambda *a: None, consumer_tag="cli-tag")
        ch.basic_publish("", "cli-q-other", b"x")
        for what in ("queues", "exchanges", "bindings", "connections", "channels", "consumers",
                     "nodes", "users", "vhosts", "permissions"):
            rows = _json_rows(raftmq("list", what, *node, "--format", "json"))
            assert rows, what
        assert "cli-tag" in raftmq("list", "consumers", *node)
        assert "cli-q" in raftmq("list", "queues", *node, "--vhost", "/")
        defs = tmp_path / "cli.json"
        raftmq("export", "definitions", str(defs), *node)
        assert any(q["name"] == "cli-q" for q in json.loads(defs.read_text())["queues"])
        raftmq("purge", "queue", "cli-q", *node)
        name = _json_rows(raftmq("list", "connections", *node, "--format", "json"))[0]["name"]
        raftmq("close", "connection", str(name), "--reason", "maintenance", *node)
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            for _ in range(100):
                conn.process_data_events(0.05)
        assert closed.value.reply_code == 320 and "maintenance" in closed.value.reply_text
        raftmq("delete", "queue", "cli-q", *node)
        assert "cli-q" not in raftmq("list", "queues", *node)
        raftmq("import", "definitions", str(defs), *node)
        assert "cli-q" in raftmq("list", "queues", *node)
        out = raftmq("delete", "queue", "no-such-queue", *node, ok=False)
        assert "404" in out
    finally:
        if conn.is_open:
            conn.close()


def test_quorum_critical_and_alarm_checks(make_cluster: Callable[..., RaftMQCluster]) -> None:
    """3 nodes up: none is critical. One stopped: each of the two left is (stopping it
    would leave one of three)."""
    from tests.harness.api import Api

    c = make_cluster(3)
    apis = [Api(nd.management_port) for nd in c.nodes]
    deadline = time.monotonic() + 20
    for api in apis:
        # A follower's link to the other follower may come up after the cluster is ready:
        # until it does, that follower does count as critical.
        while (got := api("GET", "/api/health/checks/node-is-quorum-critical")) != (
                200, {"status": "ok"}):
            assert time.monotonic() < deadline, got
            time.sleep(0.2)
        assert api("GET", "/api/health/checks/alarms") == (200, {"status": "ok"})
    c.nodes[2].stop()
    deadline = time.monotonic() + 20
    for api in apis[:2]:
        while True:
            status, answer = api("GET", "/api/health/checks/node-is-quorum-critical")
            if status == 503:
                break
            assert time.monotonic() < deadline, answer
            time.sleep(0.2)
        assert answer["status"] == "failed" and "quorum" in answer["reason"]
