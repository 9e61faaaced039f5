"""node/amqp/heartbeat.py on a fake clock: heartbeats sent and missed, the handshake's
deadline, a stalled frame, and the node's own pauses not counted against the client."""

from __future__ import annotations

from node.amqp.heartbeat import MISSED, SEND, Expired, Liveness


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def liveness(handshake_timeout: float = 10.0) -> tuple[Liveness, Clock]:
    clock = Clock()
    return Liveness(handshake_timeout, clock), clock


def test_no_heartbeats_unless_negotiated_and_started_once() -> None:
    live, _ = liveness()
    assert live.start(0) is None and live.interval == 0
    assert live.start(60) == 30.0
    assert live.start(10) is None and live.interval == 60  # a second tune-ok changes nothing


def test_a_heartbeat_is_sent_after_half_an_interval_without_output() -> None:
    live, clock = liveness()
    live.start(10)
    clock.now += 4.9
    assert live.beat(paused=False) is None
    live.sent()  # a frame went out: it counts as a heartbeat
    clock.now += 4.9
    live.received()
    assert live.beat(paused=False) is None
    clock.now += 0.1
    assert live.beat(paused=False) == SEND


def test_two_silent_intervals_are_missed_heartbeats() -> None:
    live, clock = liveness()
    live.start(10)
    clock.now += 20.0
    live.sent()
    assert live.beat(paused=False) is None  # 20 s: not more than two intervals
    clock.now += 0.1
    assert live.beat(paused=False) == MISSED
    assert live.beat(paused=True) is None  # while we do not read, its silence is ours
    live.resumed(incomplete=False)
    assert live.beat(paused=False) is None  # reading again: its time starts anew


def test_the_handshake_must_be_done_in_time() -> None:
    live, clock = liveness(handshake_timeout=10.0)
    clock.now += 10.0
    assert live.expired(clock.now, opened=False, paused=False) is None
    clock.now += 0.5
    assert live.expired(clock.now, opened=False, paused=True) == Expired(True, 10.0, 10.5)
    assert live.expired(clock.now, opened=True, paused=False) is None
    assert live.created == 1000.0


def test_a_stalled_frame_is_timed_from_its_last_progress() -> None:
    live, clock = liveness(handshake_timeout=10.0)
    live.received()
    live.progress(incomplete=True, frames_parsed=5, paused=False)  # half a frame in
    assert live.stall_since == 1000.0
    clock.now += 6.0
    live.received()  # one more byte, still no whole frame: no progress
    live.progress(incomplete=True, frames_parsed=5, paused=False)
    assert live.stall_since == 1000.0
    clock.now += 4.5
    assert live.expired(clock.now, opened=True, paused=False) == Expired(False, 10.0, 10.5)
    assert live.expired(clock.now, opened=True, paused=True) is None
    live.progress(incomplete=True, frames_parsed=6, paused=False)  # a frame done, next begun
    assert live.stall_since == 1006.0  # when its last bytes came
    live.progress(incomplete=False, frames_parsed=7, paused=False)
    assert live.stall_since is None
    assert live.expired(clock.now + 100, opened=True, paused=False) is None


def test_with_heartbeats_a_frame_may_take_two_intervals() -> None:
    live, clock = liveness(handshake_timeout=10.0)
    live.start(30)
    live.progress(incomplete=True, frames_parsed=1, paused=False)
    clock.now += 59.0
    assert live.expired(clock.now, opened=True, paused=False) is None
    clock.now += 2.0
    assert live.expired(clock.now, opened=True, paused=False) == Expired(False, 60.0, 61.0)


def test_our_pause_restarts_a_stalled_frames_clock() -> None:
    live, clock = liveness()
    live.progress(incomplete=True, frames_parsed=1, paused=True)
    assert live.stall_since is None  # paused: not the client's stall
    clock.now += 50.0
    live.resumed(incomplete=True)
    assert live.stall_since == clock.now and live.last_recv == clock.now
    clock.now += 9.0
    assert live.expired(clock.now, opened=True, paused=False) is None
