"""Message rates for the management API, from the replicated counters (State.n_*,
Queue.n_*): sampled once a second, a rate is the change over the last RATE_WINDOW_S.
The counters are part of the state, so every node shows the same cluster-wide figures.
The overall samples of the last HISTORY_S are kept for the dashboard's charts, and per
vhost the sums of its queues' counters, so that a user who is not a monitor sees the
rates of its own vhosts only (RabbitMQ's overview for such a user: rabbit_mgmt_db
overview/3 over its visible vhosts). Vhosts are made by administrators only: one history
(about 120 KB) each."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from node.amqp.stats import CHANNEL, OCTETS

SAMPLE_S = 1.0
# A sample walks every queue: with a tenant's 100,000 queues it takes ~0.3 s, so samples
# are then taken less often, the walk taking at most 1/SAMPLE_SHARE of the loop's time.
SAMPLE_SHARE = 20
RATE_WINDOW_S = 5.0
HISTORY_S = 600
PER_QUEUE = int(RATE_WINDOW_S / SAMPLE_S) + 2

# Overall counters: name in message_stats -> how it is read from the state.
OVERALL = ("publish", "confirm", "return_unroutable", "deliver_get", "redeliver", "ack")
QUEUE = ("publish", "deliver_get", "redeliver", "ack")


def overall_counts(state: Any) -> tuple[int, ...]:
    delivered = redelivered = acked = 0
    for q in state.queues.values():
        delivered += q.n_delivered
        redelivered += q.n_redelivered
        acked += q.n_acked
    return (state.n_published, state.n_confirmed, state.n_unroutable, delivered,
            redelivered, acked)


def queue_counts(q: Any) -> tuple[int, ...]:
    return q.n_published, q.n_delivered, q.n_redelivered, q.n_acked


Sample = tuple[float, tuple[int, ...]]


def _rate(samples: deque[Sample], now: Sample) -> list[float]:
    """Per counter, the change per second from the sample nearest RATE_WINDOW_S ago."""
    then = next((s for s in samples if now[0] - s[0] <= RATE_WINDOW_S + SAMPLE_S / 2),
                samples[-1] if samples else now)
    dt = now[0] - then[0]
    if dt <= 0:
        return [0.0] * len(now[1])
    return [round(max(0, b - a) / dt, 1) for a, b in zip(then[1], now[1], strict=True)]


def stats(names: tuple[str, ...], counts: tuple[int, ...], rates: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, count, rate in zip(names, counts, rates, strict=True):
        out[name] = count
        out[f"{name}_details"] = {"rate": rate}
    return out


def vhost_counts(state: Any, vhosts: Collection[str] | None = None) -> dict[str, list[int]]:
    """Per vhost (of ``vhosts``, or all), the sums of its queues' QUEUE counters."""
    out: dict[str, list[int]] = {}
    for q in state.queues.values():
        if vhosts is not None and q.vhost not in vhosts:
            continue
        sums = out.setdefault(q.vhost, [0] * len(QUEUE))
        for i, n in enumerate(queue_counts(q)):
            sums[i] += n
    return out


# RabbitMQ's overview churn_rates. What this node counts: the connections and channels
# of its own clients, and the queue.declare-oks it sent (every declaration, a queue that
# existed already too); the queues created and deleted are the cluster's, from the
# replicated state (the queue ids given out, less the queues there are).
CHURN = ("connection_created", "connection_closed", "channel_created", "channel_closed",
         "queue_declared", "queue_created", "queue_deleted")


@dataclass(frozen=True, slots=True)
class Local:
    """What only this node counts (node/amqp/stats.py), as the sampler reads it."""

    churn: tuple[int, ...]  # CHURN
    channels: dict[Any, tuple[int, ...]]  # channel key -> its ChannelStats counts
    connections: dict[Any, tuple[int, ...]]  # connection key -> its Octets counts


def _churn_counts(state: Any, local: tuple[int, ...]) -> tuple[int, ...]:
    """The node's counts (the first five of CHURN) and the cluster's queues created and
    deleted."""
    created = state.next_qid - 1
    live = sum(1 for q in state.queues.values() if not q.deleted)
    return (*local[:5], created, max(0, created - live))


class Rates:
    def __init__(self, state_of: Any, clock: Any = time.monotonic,
                 local_of: Callable[[], Local] | None = None) -> None:
        self.state_of = state_of  # () -> the current State
        self.clock = clock
        self.local_of = local_of  # () -> this node's own counts (None: none)
        self.churn: deque[Sample] = deque(maxlen=PER_QUEUE)
        self.channels: dict[Any, deque[Sample]] = {}
        self.connections: dict[Any, deque[Sample]] = {}
        self.history: deque[Sample] = deque(maxlen=int(HISTORY_S / SAMPLE_S))
        self.queues: dict[int, deque[Sample]] = {}
        # vhost -> its samples: always a suffix of ``history``'s times (taken together)
        self.vhosts: dict[str, deque[Sample]] = {}

    def sample(self) -> float:
        """Take a sample; returns how long to wait before the next one."""
        started = time.perf_counter()
        self._sample()
        return max(SAMPLE_S, SAMPLE_SHARE * (time.perf_counter() - started))

    def _sample(self) -> None:
        state, now = self.state_of(), self.clock()
        self.history.append((now, overall_counts(state)))
        seen = state.queues
        for qid in [qid for qid in self.queues if qid not in seen]:
            del self.queues[qid]
        for qid, q in seen.items():
            self.queues.setdefault(qid, deque(maxlen=PER_QUEUE)).append(
                (now, queue_counts(q)))
        for name in [v for v in self.vhosts if v not in state.vhosts]:
            del self.vhosts[name]
        per_vhost = vhost_counts(state)
        zero = (0,) * len(QUEUE)
        for name in state.vhosts:
            self.vhosts.setdefault(name, deque(maxlen=self.history.maxlen)).append(
                (now, tuple(per_vhost.get(name, zero))))
        if self.local_of is not None:
            local = self.local_of()
            self.churn.append((now, _churn_counts(state, local.churn)))
            for samples, counts in ((self.channels, local.channels),
                                    (self.connections, local.connections)):
                for key in [k for k in samples if k not in counts]:
                    del samples[key]
                for key, c in counts.items():
                    samples.setdefault(key, deque(maxlen=PER_QUEUE)).append((now, c))

    def churn_rates(self, local: tuple[int, ...]) -> dict[str, Any]:
        """The overview's churn_rates (CHURN), ``local`` this node's counts now."""
        now = (self.clock(), _churn_counts(self.state_of(), local))
        return stats(CHURN, now[1], _rate(self.churn, now))

    def channel(self, key: Any, counts: tuple[int, ...]) -> dict[str, Any]:
        """A channel's message_stats (node/amqp/stats.py CHANNEL, and deliver_get)."""
        return self._local(self.channels, key, CHANNEL, counts)

    def connection(self, key: Any, counts: tuple[int, ...]) -> dict[str, Any]:
        """A connection's recv_oct, recv_cnt, send_oct, send_cnt (the octets with their
        _details, as RabbitMQ gives them)."""
        out = self._local(self.connections, key, OCTETS, counts)
        del out["recv_cnt_details"], out["send_cnt_details"]
        return out

    def _local(self, samples: dict[Any, deque[Sample]], key: Any, names: tuple[str, ...],
               counts: tuple[int, ...]) -> dict[str, Any]:
        if names is CHANNEL:
            d = dict(zip(names, counts, strict=True))
            names = (*names, "deliver_get")
            counts = (*counts, d["deliver"] + d["deliver_no_ack"] + d["get"] + d["get_no_ack"])
            past = deque((t, (*c, c[4] + c[5] + c[6] + c[7])) for t, c in
                         samples.get(key, ()))
        else:
            past = samples.get(key, deque())
        return stats(names, counts, _rate(past, (self.clock(), counts)))

    def overview(self, age: float = 0.0, incr: float = SAMPLE_S,
                 vhosts: Collection[str] | None = None) -> dict[str, Any]:
        """message_stats; with ``age`` (RabbitMQ's msg_rates_age, s), each counter's
        ``_details`` also has ``samples`` (count and timestamp in ms, newest first) every
        ``incr`` s over that age, as RabbitMQ's API gives them for its charts. With
        ``vhosts``: the counters of those vhosts' queues only (publish, deliver_get,
        redeliver, ack: confirms and unroutable returns are counted cluster-wide only)."""
        names: tuple[str, ...]
        if vhosts is None:
            names, history = OVERALL, self.history
            now = (self.clock(), overall_counts(self.state_of()))
        else:
            names, history = QUEUE, self._summed(vhosts)
            live = vhost_counts(self.state_of(), vhosts).values()
            now = (self.clock(), tuple(sum(c[i] for c in live) for i in range(len(QUEUE))))
        out = stats(names, now[1], _rate(history, now))
        if age > 0:
            wall = time.time() - now[0]  # monotonic -> wall clock
            picked: list[Sample] = []
            for s in reversed(history):
                if now[0] - s[0] > age:
                    break
                if not picked or picked[-1][0] - s[0] >= incr - SAMPLE_S / 2:
                    picked.append(s)
            for i, name in enumerate(names):
                out[f"{name}_details"]["samples"] = [
                    {"sample": s[1][i], "timestamp": int((wall + s[0]) * 1000)} for s in picked]
        return out

    def _summed(self, vhosts: Collection[str]) -> deque[Sample]:
        """The samples of ``vhosts`` added up, time by time (newest aligned: a vhost's
        samples are a suffix of the history's; one made later counted 0 before)."""
        mine = [self.vhosts[v] for v in vhosts if v in self.vhosts]
        out: deque[Sample] = deque()
        for k in range(1, len(self.history) + 1):
            t = self.history[-k][0]
            sums = [0] * len(QUEUE)
            for d in mine:
                if len(d) >= k:
                    for i, n in enumerate(d[-k][1]):
                        sums[i] += n
            out.appendleft((t, tuple(sums)))
        return out

    def queue(self, q: Any) -> dict[str, Any]:
        now = (self.clock(), queue_counts(q))
        return stats(QUEUE, now[1], _rate(self.queues.get(q.qid, deque()), now))

    def chart(self, seconds: float = HISTORY_S) -> list[dict[str, Any]]:
        """Rates per second over the history, one point per sample: for the dashboard."""
        points = list(self.history)
        cutoff = points[-1][0] - seconds if points else 0
        out = []
        for prev, cur in zip(points, points[1:], strict=False):
            if cur[0] < cutoff:
                continue
            dt = cur[0] - prev[0]
            if dt <= 0:
                continue
            out.append({"t": time.time() - (self.clock() - cur[0]), **{
                name: round(max(0, b - a) / dt, 1)
                for name, a, b in zip(OVERALL, prev[1], cur[1], strict=True)}})
        return out
