"""Prometheus metrics.

Counters are bumped on the hot path; gauges that describe replicated state
(queues, consumers, Raft indexes) are computed at scrape time from the local
replica, on the event loop (see node/http.py: no thread touches the state).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cluster.replica import RaftStatus
from node.services.alarms import RESOURCES, Alarms


class Source(Protocol):
    """Where the gauges come from (node/broker.py)."""

    def connection_count(self) -> int: ...

    def channel_count(self) -> int: ...

    def output_buffered(self) -> list[int]: ...

    @property
    def alarms(self) -> Alarms: ...

    def queue_stats(self) -> Iterable[tuple[str, str, int, int, int]]: ...

    def raft_status(self) -> RaftStatus: ...


class ProposerCounts(Protocol):
    batches: int
    resubmitted: int

log = logging.getLogger(__name__)


class _StateCollector(Collector):
    def __init__(self, source: Source) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        b = self.source
        conns = GaugeMetricFamily("raftmq_connections", "Open AMQP connections on this node")
        conns.add_metric([], b.connection_count())
        yield conns
        chans = GaugeMetricFamily("raftmq_channels", "Open AMQP channels on this node")
        chans.add_metric([], b.channel_count())
        yield chans
        buffered = b.output_buffered()
        for name, doc, value in (
            ("raftmq_connection_output_bytes",
             "Bytes written to client sockets and not yet sent, all connections",
             sum(buffered)),
            ("raftmq_connection_output_max_bytes",
             "The largest unsent output of one connection (bounded: node/amqp/flow.py)",
             max(buffered, default=0)),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g

        mon = b.alarms.monitor
        for name, doc, value in (
            ("raftmq_memory_used_bytes", "Resident memory of this node", mon.memory_used),
            ("raftmq_memory_limit_bytes", "Memory high watermark of this node",
             mon.memory_limit),
            ("raftmq_disk_free_bytes", "Free disk space where the data directory is",
             mon.disk_free),
            ("raftmq_disk_free_limit_bytes", "Disk free space limit of this node",
             mon.disk_free_limit),
            ("raftmq_alarms_in_cluster", "Memory and disk alarms in force on any node "
             "(publishers are blocked while there is one)", len(b.alarms.in_force())),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g
        alarm = GaugeMetricFamily("raftmq_alarm", "1 while this node's alarm is set",
                                  labels=["resource"])
        for resource in RESOURCES:
            alarm.add_metric([resource], 1 if mon.active[resource] else 0)
        yield alarm

        ready = GaugeMetricFamily("raftmq_queue_messages_ready", "Messages ready for delivery",
                                  labels=["vhost", "queue"])
        unacked = GaugeMetricFamily("raftmq_queue_messages_unacked",
                                    "Messages delivered and not yet acknowledged",
                                    labels=["vhost", "queue"])
        consumers = GaugeMetricFamily("raftmq_queue_consumers", "Consumers per queue",
                                      labels=["vhost", "queue"])
        total_consumers = 0
        for vhost, queue, n_ready, n_unacked, n_consumers in b.queue_stats():
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

        st = b.raft_status()
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


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc)
    c.add_metric([], value)
    return c


class _RabbitCollector(Collector):
    """The same quantities under the rabbitmq_prometheus plugin's names, so that existing
    dashboards and alerts read them: aggregated, as its /metrics is by default."""

    def __init__(self, source: Source, metrics: Metrics) -> None:
        self.source, self.metrics = source, metrics

    def collect(self) -> Iterator[Any]:
        b, m = self.source, self.metrics
        stats = list(b.queue_stats())
        yield _gauge("rabbitmq_connections", "Connections currently open", b.connection_count())
        yield _gauge("rabbitmq_channels", "Channels currently open", b.channel_count())
        yield _gauge("rabbitmq_queues", "Queues available", len(stats))
        yield _gauge("rabbitmq_consumers", "Consumers currently connected",
                     sum(s[4] for s in stats))
        ready, unacked = sum(s[2] for s in stats), sum(s[3] for s in stats)
        yield _gauge("rabbitmq_queue_messages_ready", "Messages ready to be delivered to "
                     "consumers", ready)
        yield _gauge("rabbitmq_queue_messages_unacked", "Messages delivered to consumers but "
                     "not yet acknowledged", unacked)
        yield _gauge("rabbitmq_queue_messages", "Sum of ready and unacknowledged messages",
                     ready + unacked)
        for name, doc, value in (
            ("rabbitmq_channel_messages_published_total", "Messages published into an "
             "exchange on a channel", m.published),
            ("rabbitmq_channel_messages_confirmed_total", "Messages published into an "
             "exchange and confirmed on the channel", m.confirmed),
            ("rabbitmq_channel_messages_delivered_total", "Messages delivered to consumers",
             m.delivered),
            ("rabbitmq_channel_messages_acked_total", "Messages acknowledged by consumers",
             m.acked),
            ("rabbitmq_connections_opened_total", "Total number of connections opened",
             m.connections_opened),
            ("rabbitmq_connections_closed_total", "Total number of connections closed or "
             "terminated", m.connections_closed),
            ("rabbitmq_channels_opened_total", "Total number of channels opened",
             m.channels_opened),
            ("rabbitmq_auth_attempts_failed_total", "Total number of failed authentication "
             "attempts", m.auth_failures),
        ):
            yield _counter(name, doc, value)
        st = b.raft_status()
        yield _counter("rabbitmq_raft_term_total", "Current Raft term number", st.term)
        yield _gauge("rabbitmq_raft_log_commit_index", "Raft log commit index",
                     st.commit_index)
        yield _gauge("rabbitmq_raft_log_last_applied_index", "Raft log last applied index",
                     st.last_applied)
        mon = b.alarms.monitor
        yield _gauge("rabbitmq_process_resident_memory_bytes", "Memory used in bytes",
                     mon.memory_used)
        yield _gauge("rabbitmq_resident_memory_limit_bytes", "Memory high watermark in bytes",
                     mon.memory_limit)
        yield _gauge("rabbitmq_disk_space_available_bytes", "Disk space available in bytes",
                     mon.disk_free)
        yield _gauge("rabbitmq_disk_space_available_limit_bytes", "Free disk space low "
                     "watermark in bytes", mon.disk_free_limit)
        yield _gauge("rabbitmq_alarms_memory_used_watermark", "is 1 if VM memory watermark "
                     "alarm is in effect", 1 if mon.active["memory"] else 0)
        yield _gauge("rabbitmq_alarms_free_disk_space_watermark", "is 1 if free disk space "
                     "watermark alarm is in effect", 1 if mon.active["disk"] else 0)
        ident = GaugeMetricFamily("rabbitmq_identity_info", "RabbitMQ node & cluster identity "
                                  "info", labels=["rabbitmq_node", "rabbitmq_cluster"])
        ident.add_metric([st.node, "raftmq"], 1)
        yield ident


def detailed(source: Source, families: set[str], vhosts: set[str]) -> bytes:
    """rabbitmq_prometheus's /metrics/detailed: per-queue series of the families asked
    for (queue_coarse_metrics, queue_consumer_count), optionally of some vhosts only."""
    stats = [s for s in source.queue_stats() if not vhosts or s[0] in vhosts]

    class One(Collector):
        def collect(self) -> Iterator[Any]:
            labels = ["vhost", "queue"]
            if "queue_coarse_metrics" in families:
                for name, doc, pick in (
                    ("rabbitmq_detailed_queue_messages_ready", "Messages ready to be "
                     "delivered to consumers", lambda s: s[2]),
                    ("rabbitmq_detailed_queue_messages_unacked", "Messages delivered to "
                     "consumers but not yet acknowledged", lambda s: s[3]),
                    ("rabbitmq_detailed_queue_messages", "Sum of ready and unacknowledged "
                     "messages", lambda s: s[2] + s[3]),
                ):
                    g = GaugeMetricFamily(name, doc, labels=labels)
                    for s in stats:
                        g.add_metric([s[0], s[1]], pick(s))
                    yield g
            if "queue_consumer_count" in families:
                g = GaugeMetricFamily("rabbitmq_detailed_queue_consumers", "Consumers on a "
                                      "queue", labels=labels)
                for s in stats:
                    g.add_metric([s[0], s[1]], s[4])
                yield g

    registry = CollectorRegistry()
    registry.register(One())
    return generate_latest(registry)


DETAILED_FAMILIES = ("queue_coarse_metrics", "queue_consumer_count")


class RenderCache:
    """Scrapes render on the event loop, linear in the queues, and the metrics port
    needs no login: a rendering that took long is reused for ``share`` times as long,
    so however often anyone scrapes, rendering takes at most ~1/share of the loop.
    Quick renderings (a node with few queues) are never reused: scrapes stay live."""

    def __init__(self, share: int = 20, quick_s: float = 0.005, entries: int = 8) -> None:
        self.share, self.quick_s, self.entries = share, quick_s, entries
        self._cache: dict[Hashable, tuple[float, bytes]] = {}  # key -> (fresh until, body)
        self._clock = time.monotonic

    def get(self, key: Hashable, render: Callable[[], bytes]) -> bytes:
        start = self._clock()
        hit = self._cache.get(key)
        if hit is not None and start < hit[0]:
            return hit[1]
        body = render()
        cost = self._clock() - start
        self._cache.pop(key, None)
        if cost > self.quick_s:
            while len(self._cache) >= self.entries:  # keys come from the query: bounded
                del self._cache[next(iter(self._cache))]
            self._cache[key] = (start + self.share * cost, body)
        return body


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
        ("write_pauses", "Times a client's socket stopped taking writes (deliveries to it "
                         "paused)"),
    )

    def __init__(self, source: Source) -> None:
        self.published = 0
        self.delivered = 0
        self.acked = 0
        self.confirmed = 0
        self.proposer: ProposerCounts | None = None  # batches and resubmissions
        self.connections_opened = 0
        self.connections_closed = 0
        self.channels_opened = 0
        self.faults = 0
        self.auth_failures = 0
        self.handshake_timeouts = 0
        self.frame_timeouts = 0
        self.write_pauses = 0
        self.registry = CollectorRegistry()
        self.registry.register(_StateCollector(source))
        self.registry.register(_CounterCollector(self))
        self.registry.register(_RabbitCollector(source, self))
        self.source = source
        self.renders = RenderCache()

    @property
    def batches(self) -> int:
        return self.proposer.batches if self.proposer is not None else 0

    @property
    def resubmitted(self) -> int:
        return self.proposer.resubmitted if self.proposer is not None else 0

    def render(self) -> bytes:
        return self.renders.get("", lambda: generate_latest(self.registry))

    def detailed(self, families: set[str], vhosts: set[str]) -> bytes:
        """:func:`detailed` for this node, through the same cache."""
        key = (frozenset(families), frozenset(vhosts))
        return self.renders.get(key, lambda: detailed(self.source, families, vhosts))
