"""Prometheus metrics.

Counters are bumped on the hot path; gauges that describe replicated state
(queues, consumers, Raft indexes) are computed at scrape time from the local
replica, on the event loop (see node/http.py: no thread touches the state).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
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


class Metrics:
    def __init__(self, broker: Broker) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.published = Counter("raftmq_published", "Messages published by clients of this node",
                                 registry=r)
        self.delivered = Counter("raftmq_delivered", "Messages delivered to clients of this node",
                                 registry=r)
        self.acked = Counter("raftmq_acked", "Acknowledgements received from clients of this node",
                             registry=r)
        self.confirmed = Counter("raftmq_confirmed", "Publisher confirms sent by this node",
                                 registry=r)
        self.batches = Counter("raftmq_raft_batches", "Raft entries proposed by this node",
                               registry=r)
        self.resubmitted = Counter("raftmq_raft_resubmitted",
                                   "Batches proposed again after no apply in time", registry=r)
        self.connections_opened = Counter("raftmq_connections_opened",
                                          "AMQP connections accepted", registry=r)
        self.connections_closed = Counter("raftmq_connections_closed",
                                          "AMQP connections closed", registry=r)
        self.channels_opened = Counter("raftmq_channels_opened", "AMQP channels opened", registry=r)
        r.register(_StateCollector(broker))

    def count_effects(self, effects: list[Any], node: str) -> None:
        """Hook for per-effect accounting (kept cheap: counters are bumped where sent)."""

    def render(self) -> bytes:
        return generate_latest(self.registry)
