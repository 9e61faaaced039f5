"""Expiry through the deadline heap (cluster/machine/expiry.py, level 3): a tenant's many
idle x-expires queues cost nothing to another tenant's expiring messages."""

from __future__ import annotations

import pytest

from cluster import commands as C
from cluster.machine import expiry
from cluster.machine.expiry import DEADLINE_HEAP_LEVEL, next_deadline
from tests.cluster.helpers import CH, Machine, enq, q_declare

IDLE = 5_000  # another tenant's queues, each expiring in an hour


def test_expiry_visits_only_what_is_due(m: Machine, level_under_test: int,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(IDLE):
        m.at(0, q_declare(CH, f"idle{i}", arguments={"x-expires": 3_600_000}))
    m.at(0, q_declare(CH, "ttl", arguments={"x-message-ttl": 10}))
    visits = 0
    real = expiry._expire_queue

    def counting(*args: object) -> int | None:
        nonlocal visits
        visits += 1
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(expiry, "_expire_queue", counting)
    for t in range(1, 101):  # a message every 20 ms, each expiring 10 ms later
        m.at(t * 20, enq(CH, "ttl", b"m%d" % t))
        m.at(t * 20 + 10)
    q = m.state.vhosts["/"].queues["ttl"]
    assert q.ready_count() == 0  # every message expired on time
    if level_under_test >= DEADLINE_HEAP_LEVEL:
        assert visits <= 2 * 100 + 1  # the ttl queue, once or twice per message
    else:
        assert visits >= 100 * IDLE  # release 0.2.0: every timed queue every time
    # the idle queues still expire, all at once, when their hour comes
    m.at(3_600_000)
    assert next_deadline(m.state) is None
    assert list(m.state.vhosts["/"].queues) == ["ttl"]


def test_deleted_and_redeclared_queues_leave_no_index_behind(m: Machine,
                                                             level_under_test: int) -> None:
    """A tenant declaring and deleting x-expires queues in a loop: the deadline index
    stays as small as the queues that exist."""
    for i in range(2_000):
        m.at(i, q_declare(CH, f"q{i}", arguments={"x-expires": 3_600_000}))
        m.at(i, enq(CH, f"q{i}"))
        m.at(i, C.QueueDelete(CH, f"q{i}", False, False, False))
    s = m.state
    assert s.timed == {}
    assert len(s.pushed) == 0
    assert len(s.deadlines) <= 2 * len(s.pushed) + 64 + 1
