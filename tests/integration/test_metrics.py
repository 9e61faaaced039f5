"""RaftMQ only: the Prometheus endpoint at http://127.0.0.1:<metrics_port>/metrics.

Metric names are part of the contract (dashboards and alerts use them):
gauges raftmq_connections, raftmq_channels, raftmq_consumers,
raftmq_queue_messages_ready / raftmq_queue_messages_unacked {vhost, queue},
raftmq_raft_term, raftmq_raft_commit_index; counters raftmq_published_total,
raftmq_delivered_total, raftmq_acked_total, raftmq_confirmed_total.
"""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import Collector, close_quietly, connect, pump, wait_until

pytestmark = [pytest.mark.raftmq_only, pytest.mark.timeout(30)]

REQUIRED = [
    "raftmq_connections", "raftmq_channels", "raftmq_consumers",
    "raftmq_queue_messages_ready", "raftmq_queue_messages_unacked",
    "raftmq_raft_term", "raftmq_raft_commit_index",
    "raftmq_published_total", "raftmq_delivered_total", "raftmq_acked_total",
    "raftmq_confirmed_total",
]


class Scrape:
    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples.setdefault(s.name, []).append((s.labels, s.value))

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample of ``name`` whose labels include ``labels`` (None if absent)."""
        hits = [v for lab, v in self.samples.get(name, [])
                if all(lab.get(k) == want for k, want in labels.items())]
        assert len(hits) <= 1, f"{name}{labels}: {len(hits)} samples"
        return hits[0] if hits else None

    def total(self, name: str) -> float:
        return sum(v for _, v in self.samples.get(name, []))


def scrape(node) -> Scrape:
    url = f"http://127.0.0.1:{node.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        ctype = resp.headers.get("Content-Type", "")
        assert ctype.startswith("text/plain") or "openmetrics" in ctype, ctype
        return Scrape(resp.read().decode())


def wait_metric(node, pred, what, timeout=5.0) -> Scrape:
    """Scrape until ``pred(scrape)`` holds (metrics may trail the AMQP reply a little)."""
    box: list[Scrape] = []

    def check():
        s = scrape(node)
        box[:] = [s]
        return pred(s)

    try:
        wait_until(check, timeout, interval=0.05, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- last scrape ---\n{box[0].text if box else ''}") from None
    return box[0]


def test_metrics_endpoint_exposes_required_names(broker, node, names):
    q = names.queue()
    c = connect(broker.url)
    try:
        c.channel().queue_declare(q)
        s = wait_metric(node, lambda s: s.value("raftmq_queue_messages_ready", queue=q) is not None,
                        "the new queue to show up")
        missing = [n for n in REQUIRED if n not in s.samples]
        assert not missing, f"missing metrics: {missing}"
        assert s.value("raftmq_queue_messages_ready", vhost="/", queue=q) == 0
        assert s.value("raftmq_queue_messages_unacked", vhost="/", queue=q) == 0
        for line in ("# TYPE raftmq_connections gauge", "# TYPE raftmq_published_total counter"):
            assert line in s.text or line.replace("_total counter", " counter") in s.text, line
    finally:
        close_quietly(c)


def test_raft_gauges(broker, node, names):
    s = scrape(node)
    term = s.total("raftmq_raft_term")
    commit = s.total("raftmq_raft_commit_index")
    assert term >= 1, "a single node that serves AMQP has been elected in some term >= 1"
    assert commit >= 1
    c = connect(broker.url)
    try:
        c.channel().queue_declare(names.queue(), durable=True)  # goes through the Raft log
    finally:
        close_quietly(c)
    wait_metric(node, lambda s: s.total("raftmq_raft_commit_index") > commit,
                "commit index to advance after a declare")
    assert scrape(node).total("raftmq_raft_term") >= term


def test_connection_and_channel_gauges(broker, node):
    before = scrape(node)
    c0, ch0 = before.total("raftmq_connections"), before.total("raftmq_channels")
    c = connect(broker.url)
    try:
        for _ in range(3):
            c.channel()
        wait_metric(node, lambda s: s.total("raftmq_connections") == c0 + 1
                    and s.total("raftmq_channels") == ch0 + 3, "connection/channel gauges to rise")
    finally:
        c.close()
    wait_metric(node, lambda s: s.total("raftmq_connections") == c0
                and s.total("raftmq_channels") == ch0, "gauges to drop after close")


def test_queue_ready_unacked_and_counters(broker, node, names):
    q = names.queue()
    base = scrape(node)
    pub0, conf0 = base.total("raftmq_published_total"), base.total("raftmq_confirmed_total")
    del0, ack0 = base.total("raftmq_delivered_total"), base.total("raftmq_acked_total")
    cons0 = base.total("raftmq_consumers")

    c = connect(broker.url)
    try:
        ch = c.channel()
        ch.confirm_delivery()
        ch.queue_declare(q)
        for i in range(7):
            ch.basic_publish("", q, b"%d" % i)
        wait_metric(node, lambda s: s.value("raftmq_queue_messages_ready", vhost="/", queue=q) == 7
                    and s.value("raftmq_queue_messages_unacked", vhost="/", queue=q) == 0,
                    "ready=7 unacked=0")
        s = scrape(node)
        assert s.total("raftmq_published_total") - pub0 == 7
        assert s.total("raftmq_confirmed_total") - conf0 == 7

        getter = c.channel()
        tags = [getter.basic_get(q)[0].delivery_tag for _ in range(3)]
        wait_metric(node, lambda s: s.value("raftmq_queue_messages_ready", vhost="/", queue=q) == 4
                    and s.value("raftmq_queue_messages_unacked", vhost="/", queue=q) == 3,
                    "ready=4 unacked=3 after 3 gets")
        for t in tags:
            getter.basic_ack(t)
        getter.queue_declare(q, passive=True)  # round trip: the acks have been processed
        wait_metric(node, lambda s: s.value("raftmq_queue_messages_unacked", vhost="/", queue=q) == 0
                    and s.total("raftmq_acked_total") - ack0 == 3
                    and s.total("raftmq_delivered_total") - del0 == 3,
                    "unacked=0, acked +3, delivered +3")

        cons_ch = c.channel()
        got = Collector()
        cons_ch.basic_consume(q, got)
        cons_ch.basic_consume(q, Collector())
        pump(c, lambda: len(got) >= 1, what="a delivery to the consumer")
        wait_metric(node, lambda s: s.total("raftmq_consumers") == cons0 + 2, "consumers +2")
        cons_ch.close()
        wait_metric(node, lambda s: s.total("raftmq_consumers") == cons0
                    and s.value("raftmq_queue_messages_ready", vhost="/", queue=q) == 4,
                    "consumers back and unacked messages requeued")
    finally:
        close_quietly(c)


RABBITMQ_NAMES = [  # as the rabbitmq_prometheus plugin names them (its Grafana dashboards)
    "rabbitmq_connections", "rabbitmq_channels", "rabbitmq_queues", "rabbitmq_consumers",
    "rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_messages", "rabbitmq_channel_messages_published_total",
    "rabbitmq_channel_messages_confirmed_total", "rabbitmq_channel_messages_delivered_total",
    "rabbitmq_channel_messages_acked_total", "rabbitmq_connections_opened_total",
    "rabbitmq_raft_term_total", "rabbitmq_raft_log_commit_index",
    "rabbitmq_raft_log_last_applied_index", "rabbitmq_process_resident_memory_bytes",
    "rabbitmq_resident_memory_limit_bytes", "rabbitmq_disk_space_available_bytes",
    "rabbitmq_alarms_memory_used_watermark", "rabbitmq_identity_info",
]


def test_rabbitmq_names_and_detailed_endpoint(broker, node, names):
    q = names.queue()
    c = connect(broker.url)
    try:
        ch = c.channel()
        ch.queue_declare(q)
        ch.basic_publish("", q, b"m")
        s = wait_metric(node, lambda s: (s.value("rabbitmq_queue_messages_ready") or 0) >= 1,
                        "the message in rabbitmq_queue_messages_ready")
        missing = [n for n in RABBITMQ_NAMES if n not in s.samples]
        assert not missing, f"missing metrics: {missing}"
        assert (s.value("rabbitmq_connections") or 0) >= 1
        url = (f"http://127.0.0.1:{node.metrics_port}/metrics/detailed"
               "?family=queue_coarse_metrics&family=queue_consumer_count&vhost=%2F")
        with urllib.request.urlopen(url, timeout=5) as resp:
            detailed = Scrape(resp.read().decode())
        assert detailed.value("rabbitmq_detailed_queue_messages_ready", vhost="/", queue=q) == 1
        assert detailed.value("rabbitmq_detailed_queue_consumers", vhost="/", queue=q) == 0
        assert "rabbitmq_queue_messages_ready" not in detailed.samples  # only what was asked
    finally:
        close_quietly(c)
