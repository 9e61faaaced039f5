"""node/amqp/auth.py: SASL responses and the login throttle, with an explicit clock."""

from __future__ import annotations

import logging

import pytest

from node.amqp.auth import LoginThrottle, RateLimitedLog, credentials


@pytest.mark.parametrize("mechanism,response,expected", [
    ("PLAIN", "\0guest\0secret", ("guest", "secret")),
    ("PLAIN", b"\0caf\xc3\xa9\0pw", ("café", "pw")),
    ("PLAIN", "guest\0secret", (None, "")),
    ("PLAIN", None, (None, "")),
    ("AMQPLAIN", b"\x05LOGINS\x00\x00\x00\x02ab\x08PASSWORDS\x00\x00\x00\x02cd", ("ab", "cd")),
    ("AMQPLAIN", b"\x05LOGINS\x00\x00\xff\xff", (None, "")),  # overruns
    ("AMQPLAIN", b"\x05LOGINI\x00\x00\x00\x01", (None, "")),  # login not a string
    ("EXTERNAL", "", (None, "")),
])
def test_credentials(mechanism: str, response: object, expected: tuple[str | None, str]) -> None:
    assert credentials(mechanism, response) == expected


def test_no_failures_no_wait() -> None:
    t = LoginThrottle()
    assert t.wait("a", 0.0) == 0.0
    assert len(t) == 0


def test_delay_doubles_per_consecutive_failure_up_to_the_cap() -> None:
    t = LoginThrottle(base=0.1, cap=1.0)
    delays = [t.failed("a", 0.0) for _ in range(6)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert t.failures("a") == 6


def test_attempts_are_answered_one_slot_at_a_time() -> None:
    """Parallel connections from one key gain nothing: each waits for its slot."""
    t = LoginThrottle(base=1.0, cap=1.0, max_wait=3.5)
    now = 100.0
    t.failed("a", now)  # refusal held until 101
    waits = [t.wait("a", now) for _ in range(5)]
    assert waits == [1.0, 2.0, 3.0, None, None]  # beyond max_wait: refused unchecked
    assert t.wait("b", now) == 0.0  # another key is not held up


def test_success_clears_and_old_records_are_forgotten() -> None:
    t = LoginThrottle(base=1.0, forget_after=60.0)
    t.failed("a", 0.0)
    t.succeeded("a")
    assert t.wait("a", 0.5) == 0.0
    t.failed("b", 0.0)
    assert t.wait("b", 61.0) == 0.0 and t.failures("b") == 0


def test_the_table_is_bounded() -> None:
    t = LoginThrottle(max_peers=100)
    for i in range(1000):
        t.failed(f"peer{i}", float(i))
    assert len(t) == 100
    assert t.failures("peer999") == 1 and t.failures("peer0") == 0


def test_rate_limited_log(caplog: pytest.LogCaptureFixture) -> None:
    log = RateLimitedLog(logging.getLogger("test.auth"), per_second=3)
    with caplog.at_level(logging.WARNING, "test.auth"):
        for i in range(50):
            log.warning("refused %d", i)
    assert len(caplog.records) == 3
