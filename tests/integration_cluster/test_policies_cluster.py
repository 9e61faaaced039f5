"""Policies on a 3-node cluster: set through one node (the ``raftmq`` CLI against a
follower's API), they act at once on a queue whose clients are on another node, every
node's API shows them, and a queue declared afterwards on a third node takes them too."""

from __future__ import annotations

import json
import subprocess
import sys

import pika
import pytest

from harness.cluster import RaftMQCluster
from tests.harness.api import Api, q
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.timeout(120)

V = q("/")


def _raftmq(node_url: str, *args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "node", *args, "--node", node_url],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"{args}: {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def _wait_policy(api: Api, queue: str, policy: str | None) -> None:
    wait_until(lambda: api.ok("GET", f"/api/queues/{V}/{queue}")["policy"] == policy)


def test_policy_set_on_one_node_applies_on_another(cluster: RaftMQCluster) -> None:
    leader = cluster.leader()
    a, b = (nd for nd in cluster.nodes if nd is not leader)
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", a.amqp_port))
    ch = conn.channel()
    ch.queue_declare("work")
    ch.queue_declare("work-dead")
    api_b = Api(b.management_port)
    # (the cluster enables command level 4, policies' level, once every member announced it)
    wait_until(lambda: all(cluster.status(nd).get("levels", {}).get("cluster") == 4
                           for nd in cluster.nodes), 20)
    # a queue's dead-letter exchange and a limit, by policy, set through b
    _raftmq(b.management_url, "set", "policy", "dl", "^work$",
            '{"dead-letter-exchange": "", "dead-letter-routing-key": "work-dead"}',
            "--apply-to", "queues")
    for i in range(5):
        ch.basic_publish("", "work", b"m%d" % i)
    _raftmq(b.management_url, "set", "policy", "dl", "^work$",
            '{"dead-letter-exchange": "", "dead-letter-routing-key": "work-dead", '
            '"max-length": 2}', "--apply-to", "queues", "--priority", "5")
    # the excess leaves at once, dead-lettered, seen from a's clients
    wait_until(lambda: ch.queue_declare("work", passive=True).method.message_count == 2)
    wait_until(lambda: ch.queue_declare("work-dead", passive=True).method.message_count == 3)
    assert ch.basic_get("work", auto_ack=True)[2] == b"m3"
    # every node's API has the policy and the queue's
    for nd in cluster.nodes:
        api = Api(nd.management_port)
        _wait_policy(api, "work", "dl")
        rows = api.ok("GET", "/api/policies")
        assert [(r["name"], r["priority"], r["apply-to"]) for r in rows] == \
            [("dl", 5, "queues")]
    # an operator policy set on the leader caps a queue declared later on the third node
    Api(leader.management_port).ok("PUT", f"/api/operator-policies/{V}/cap", {
        "pattern": "^capped", "definition": {"max-length": 1}, "apply-to": "queues"})
    conn_l = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", leader.amqp_port))
    ch_l = conn_l.channel()
    ch_l.queue_declare("capped", arguments={"x-max-length": 10})
    for i in range(3):
        ch_l.basic_publish("", "capped", b"c%d" % i)
    wait_until(lambda: ch_l.queue_declare("capped", passive=True).method.message_count == 1)
    entry = api_b.ok("GET", f"/api/queues/{V}/capped")
    assert (entry["operator_policy"], entry["effective_policy_definition"],
            entry["arguments"]) == ("cap", {"max-length": 1}, {"x-max-length": 10})
    listed = json.loads(_raftmq(a.management_url, "list", "operator-policies", "--format", "json"))
    assert [r["name"] for r in listed] == ["cap"]
    _raftmq(a.management_url, "clear", "policy", "dl")
    _wait_policy(api_b, "work", None)
    conn.close()
    conn_l.close()
