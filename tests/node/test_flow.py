"""node/amqp/flow.py without sockets: a fake transport, fake publishers, a fake clock."""

from __future__ import annotations

from pamqp import commands as spec

from node.amqp import flow
from node.amqp.flow import Backlog, FlowControl


class Transport:
    def __init__(self) -> None:
        self.reading = True
        self.closing = False
        self.buffered = 0
        self.limits: tuple[int | None, int | None] = (None, None)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = (high, low)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        assert self.reading
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading
        self.reading = True


class Flow:
    def __init__(self) -> None:
        self.t = Transport()
        self.writable: list[bool] = []
        self.resumed = 0
        self.f = FlowControl(self.t, self.writable.append, self._resumed)

    def _resumed(self) -> None:
        self.resumed += 1


def test_reading_resumes_when_the_last_reason_is_lifted() -> None:
    x = Flow()
    assert x.t.limits == (flow.WRITE_HIGH, flow.WRITE_LOW)
    x.f.pause_reading(flow.FLOW)
    x.f.pause_reading(flow.LOGIN)
    x.f.pause_reading(flow.FLOW)
    assert not x.t.reading and x.f.reading_paused
    x.f.resume_reading(flow.FLOW)
    assert not x.t.reading and x.resumed == 0
    x.f.resume_reading(flow.FLOW)  # not held for it any more: nothing
    x.f.resume_reading(flow.LOGIN)
    assert x.t.reading and not x.f.reading_paused and x.resumed == 1
    x.f.resume_reading(flow.LOGIN)
    assert x.resumed == 1


def test_a_closing_transport_is_neither_paused_nor_resumed() -> None:
    x = Flow()
    x.t.closing = True
    x.f.pause_reading(flow.TURN)
    assert x.t.reading and x.f.reading_paused
    x.f.resume_reading(flow.TURN)
    assert not x.f.reading_paused and x.resumed == 1


def test_a_client_that_does_not_read_stops_deliveries_then_its_input() -> None:
    x = Flow()
    x.f.pause_writing()
    x.f.pause_writing()
    assert x.writable == [False]
    x.t.buffered = flow.OUTPUT_MAX
    x.f.wrote()
    assert x.t.reading  # not over OUTPUT_MAX yet
    x.t.buffered = flow.OUTPUT_MAX + 1
    x.f.wrote()
    assert not x.t.reading and x.f.buffered == flow.OUTPUT_MAX + 1
    x.t.buffered = 0
    x.f.resume_writing()
    assert x.writable == [False, True] and x.t.reading and x.resumed == 1


def test_writes_under_no_pressure_never_pause_reading() -> None:
    x = Flow()
    x.t.buffered = flow.OUTPUT_MAX * 2
    x.f.wrote()  # the transport has not asked to pause writing
    assert x.t.reading
    x.f.resume_writing()
    assert x.writable == [] and x.resumed == 0


def test_an_alarm_blocks_a_publisher_only_and_tells_a_client_that_asked() -> None:
    x = Flow()
    assert x.f.alarm("low on memory", publisher=False) is None
    assert x.t.reading and not x.f.blocked  # not a publisher (yet)
    x.f.notify = True
    notice = x.f.alarm("low on memory", publisher=True)
    assert isinstance(notice, spec.Connection.Blocked) and notice.reason == "low on memory"
    assert x.f.blocked and not x.t.reading
    assert x.f.alarm("low on disk", publisher=True) is None  # blocked once
    assert isinstance(x.f.alarm(None, publisher=True), spec.Connection.Unblocked)
    assert not x.f.blocked and x.t.reading
    assert x.f.alarm(None, publisher=True) is None


def test_a_client_without_the_capability_is_blocked_silently() -> None:
    x = Flow()
    assert x.f.alarm("low on disk", publisher=True) is None
    assert x.f.blocked and not x.t.reading
    x.f.pause_reading(flow.LOGIN)
    assert x.f.alarm(None, publisher=True) is None
    assert not x.f.blocked and not x.t.reading  # still held for its other reason


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.scan_s = 0.0  # what one scan of the queues costs

    def __call__(self) -> float:
        return self.now


class Publisher:
    def __init__(self, last_publish: float) -> None:
        self.last_publish = last_publish
        self.paused: set[str] = set()

    def pause_reading(self, reason: str) -> None:
        self.paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        self.paused.discard(reason)


class Node:
    def __init__(self, high: int = 100) -> None:
        self.clock = Clock()
        self.backlog = Backlog(high, lambda: self.acked, self.queues, lambda: self.conns,
                               self.clock)
        self.ready = 0
        self.consumers = 1
        self.acked = 0
        self.scans = 0
        self.conns = [Publisher(99.5), Publisher(98.0), Publisher(0.0)]

    def queues(self) -> list[tuple[str, str, int, int, int]]:
        self.scans += 1
        self.clock.now += self.clock.scan_s
        return [("/", "q", self.ready, 0, self.consumers), ("/", "idle", 10**6, 0, 0)]

    def check(self, after: float = 0.01) -> None:
        self.clock.now += after
        self.acked += 1  # acks flow
        self.backlog.check()

    def paused(self) -> list[bool]:
        return [flow.FLOW in c.paused for c in self.conns]


def test_recent_publishers_pause_while_a_consumed_queue_backs_up() -> None:
    n = Node(high=100)
    n.ready = 100
    n.check()
    assert n.paused() == [False, False, False]
    n.ready = 101
    n.check()
    assert n.paused() == [True, False, False]  # only who published within a second
    n.conns[1].last_publish = n.clock.now  # it publishes after the pause began
    n.ready = 51
    n.check()
    assert n.paused() == [True, False, False]
    n.ready = 50  # half the high-water mark
    n.check()
    assert n.paused() == [False, False, False]


def test_queues_without_consumers_and_stalled_acks_pause_nobody() -> None:
    n = Node(high=100)
    n.consumers = 0
    n.ready = 10**6
    n.check()
    assert n.paused() == [False, False, False]
    n.consumers = 1
    n.check()
    assert n.paused() == [True, False, False]
    # consumers stopped acknowledging: pausing would not help, publishers go on
    n.clock.now += flow.ACKS_STALLED_S + 0.01
    n.backlog.check()
    assert n.paused() == [False, False, False]


def test_no_high_water_mark_no_scan() -> None:
    n = Node(high=0)
    n.ready = 10**6
    n.check()
    assert n.scans == 0 and n.paused() == [False, False, False]


def test_the_scan_takes_a_bounded_share_of_the_loop() -> None:
    """Flow control scans every queue; with a tenant's 100,000 queues a scan is slow, so
    it runs less often (at most 1/FLOW_SCAN_SHARE of the time), never every 5 ms."""
    n = Node()
    n.check()
    n.check(after=flow.FLOW_CHECK_S / 2)  # not due yet
    assert n.scans == 1
    n.clock.scan_s = 0.01  # what a scan of very many queues costs
    start = n.clock.now
    while n.clock.now - start < 0.5:
        n.check(after=0.001)
    # 10 ms scans every 5 ms would be 34 scans (67 % of the loop); at 1/20 of it, 3
    assert 3 <= n.scans - 1 <= 4, n.scans
    assert abs(n.backlog.every - flow.FLOW_SCAN_SHARE * 0.01) < 1e-9
    n.clock.scan_s = 0.0
    n.check(after=n.backlog.every)
    assert n.backlog.every == flow.FLOW_CHECK_S  # fast again: looks again every 5 ms
