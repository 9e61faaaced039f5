"""Prometheus metrics.

Counters are bumped on the hot path; gauges that describe replicated state
(queues, consumers, Raft indexes) are computed at scrape time from the local
replica, on the event loop (see node/http.py: no thread touches the state).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cluster import machine

if TYPE_CHECKING:
    from node.broker import Broker

log = logging.getLogger(__name__)


class _StateCollector(Collector):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self) -> Iterator[Any]:
        b = self.broker
        conns = GaugeMetricFamily("raftmq_connections", "Open AMQP connections on this node")
        conns.add_metric([], len(b.connections))
        yield conns
        chans = GaugeMetricFamily("raftmq_channels", "Open AMQP channels on this node")
        chans.add_metric([], sum(len(c.channels) for c in b.connections.values()))
        yield chans

        ready = GaugeMetricFamily("raftmq_queue_messages_ready", "Messages ready for delivery",
                                  labels=["vhost", "queue"])
        unacked = GaugeMetricFamily("raftmq_queue_messages_unacked",
                                    "Messages delivered and not yet acknowledged",
                                    labels=["vhost", "queue"])
        consumers = GaugeMetricFamily("raftmq_queue_consumers", "Consumers per queue",
                                      labels=["vhost", "queue"])
        total_consumers = 0
        for vhost, queue, n_ready, n_unacked, n_consumers in machine.queue_stats(b.raft.state):
            ready.add_metric([vhost, queue], n_ready)
            unacked.add_metric([vhost, queue], n_unacked)
            consumers.add_metric([vhost, queue], n_consumers)
            total_consumers += n_consumers
        yield ready
        yield unacked
        yield consumers
        total = GaugeMetricFamily("raftmq_consumers", "Consumers in the cluster")
        total.add_metric([], total_consumers)
        yield total

        st = b.raft.status()
        for name, doc, value in (
            ("raftmq_raft_term", "Current Raft term", st.term),
            ("raftmq_raft_commit_index", "Raft commit index", st.commit_index),
            ("raftmq_raft_last_applied", "Last Raft index applied to the state machine",
             st.last_applied),
            ("raftmq_raft_log_entries", "Entries in the Raft log (since the last snapshot)",
             st.log_len),
            ("raftmq_raft_is_leader", "1 if this node is the Raft leader",
             1 if st.state == "leader" else 0),
            ("raftmq_raft_has_quorum", "1 if this node sees a quorum", 1 if st.has_quorum else 0),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g


class _CounterCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        for name, doc in Metrics.COUNTERS:
            family = CounterMetricFamily(f"raftmq_{name}", doc)
            family.add_metric([], getattr(self.metrics, name))
            yield family


class Metrics:
    """Counters are plain ints bumped on the hot path (a prometheus_client
    Counter takes a lock per increment: ~3% of the broker's CPU, measured)
    and exported as counter families at scrape time."""

    COUNTERS: tuple[tuple[str, str], ...] = (
        ("published", "Messages published by clients of this node"),
        ("delivered", "Messages delivered to clients of this node"),
        ("acked", "Acknowledgements received from clients of this node"),
        ("confirmed", "Publisher confirms sent by this node"),
        ("batches", "Raft entries proposed by this node"),
        ("resubmitted", "Batches proposed again after no apply in time"),
        ("connections_opened", "AMQP connections accepted"),
        ("connections_closed", "AMQP connections closed"),
        ("channels_opened", "AMQP channels opened"),
        ("faults", "Internal faults contained to one command or connection (see the log)"),
        ("auth_failures", "Failed AMQP logins"),
        ("handshake_timeouts", "Connections closed for not completing the handshake in time"),
        ("frame_timeouts", "Connections closed for stalling inside a frame"),
    )

    def __init__(self, broker: Broker) -> None:
        self.published = 0
        self.delivered = 0
        self.acked = 0
        self.confirmed = 0
        self.batches = 0
        self.resubmitted = 0
        self.connections_opened = 0
        self.connections_closed = 0
        self.channels_opened = 0
        self.faults = 0
        self.auth_failures = 0
        self.handshake_timeouts = 0
        self.frame_timeouts = 0
        self.registry = CollectorRegistry()
        self.registry.register(_StateCollector(broker))
        self.registry.register(_CounterCollector(self))

    def render(self) -> bytes:
        return generate_latest(self.registry)
