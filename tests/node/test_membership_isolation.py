"""node/services/membership.py: when a node counts itself cut off from the majority (issue 19,
item 9: a node busy with a 20 MiB entry is not cut off, it has not read yet)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from node.config import Config
from node.services.membership import CHECK_EVERY_S, MembershipWatch


@dataclass
class _Raft:
    leader: str | None = None
    has_quorum: bool = False


@dataclass
class _Host:
    cfg: Config = field(default_factory=lambda: Config(isolation_timeout=3.0))
    raft: Any = field(default_factory=_Raft)
    node_id: str = "n1"
    incarnation: int = 1
    ready: bool = True
    isolated: bool = False
    closed: list[str] = field(default_factory=list)

    def close_clients(self, reason: str) -> None:
        self.closed.append(reason)


def _run(watch: MembershipWatch, times: list[float]) -> None:
    for now in times:
        watch._check_isolation(now)


def _steady(start: float, end: float) -> list[float]:
    n = round((end - start) / CHECK_EVERY_S)
    return [start + i * CHECK_EVERY_S for i in range(n + 1)]


def test_cut_off_for_the_isolation_timeout_closes_the_clients() -> None:
    host = _Host()
    _run(MembershipWatch(host), _steady(0.0, 3.2))  # type: ignore[arg-type]
    assert host.isolated and len(host.closed) == 1


def test_a_stalled_loop_does_not_count_as_time_cut_off() -> None:
    host = _Host()
    watch = MembershipWatch(host)  # type: ignore[arg-type]
    # unhealthy at 0.0-0.2, the loop busy until 2.5 (nothing checked), then checked again
    _run(watch, [*_steady(0.0, 0.2), *_steady(2.5, 3.5)])
    assert not host.isolated  # 1.2 s of looking, not 3.5
    _run(watch, _steady(3.6, 5.5))
    assert host.isolated  # 3 s of looking unhealthy


def test_a_leader_and_a_quorum_again_clear_it() -> None:
    host = _Host()
    watch = MembershipWatch(host)  # type: ignore[arg-type]
    _run(watch, _steady(0.0, 3.2))
    host.raft.leader, host.raft.has_quorum = "n2", True
    _run(watch, [3.3])
    assert not host.isolated
