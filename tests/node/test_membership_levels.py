"""node/services/membership.py: command levels during a rolling upgrade (cluster/commands.py LEVEL).
Three watches on one shared log (every proposal applied to every replica, as Raft would),
looked at every LEVELS_EVERY_S; the replicas' level tables differ as after a real upgrade,
where a member that ran the previous release skipped the others' announcements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cluster import commands as C
from cluster.machine import apply, new_state
from cluster.machine.state import State
from node.config import Config
from node.services.membership import LEVELS_EVERY_S, REANNOUNCE_EVERY_S, MembershipWatch


@dataclass
class _Raft:
    state: State
    address: str
    log: _Log
    leader: str | None = None
    has_quorum: bool = True

    @property
    def is_leader(self) -> bool:
        return self.leader == self.address

    def peers(self) -> list[str]:
        return [a for a in self.log.addresses if a != self.address]


@dataclass
class _Log:
    """Every proposal is committed and applied on every replica at once."""

    hosts: list[_Host] = field(default_factory=list)
    proposed: list[tuple[str, C.Command]] = field(default_factory=list)

    @property
    def addresses(self) -> list[str]:
        return [h.cfg.raft_address for h in self.hosts]

    def commit(self, cmd: C.Command, to: list[_Host] | None = None) -> None:
        for h in self.hosts if to is None else to:
            apply(h.raft.state, 1, cmd, [])


@dataclass
class _Host:
    node_id: str
    log: _Log
    cfg: Config = field(init=False)
    raft: Any = field(init=False)
    incarnation: int = 1
    ready: bool = True
    isolated: bool = False

    def __post_init__(self) -> None:
        address = f"127.0.0.1:{9000 + len(self.log.hosts)}"
        self.cfg = Config(raft_address=address)
        self.raft = _Raft(new_state(), address, self.log)
        self.log.hosts.append(self)

    def close_clients(self, reason: str) -> None:
        raise AssertionError(reason)

    def new_life(self) -> None:
        raise AssertionError("new life")

    def propose_once(self, cmd: C.Command) -> None:
        self.log.proposed.append((self.node_id, cmd))
        self.log.commit(cmd)

    def start(self, to: list[_Host] | None = None) -> None:
        """This node's NodeUp and Supports (node/broker.py), applied on ``to``."""
        self.incarnation += 1
        self.log.commit(C.NodeUp(self.node_id, self.incarnation, self.cfg.raft_address, ""), to)
        self.log.commit(C.Supports(self.node_id, self.cfg.raft_address, C.LEVEL), to)


def _three() -> tuple[_Log, list[_Host], list[MembershipWatch]]:
    log = _Log()
    hosts = [_Host(f"n{i}", log) for i in (1, 2, 3)]
    return log, hosts, [MembershipWatch(h) for h in hosts]


def _lead(hosts: list[_Host], leader: _Host) -> None:
    for h in hosts:
        h.raft.leader = leader.cfg.raft_address


def _look(watches: list[MembershipWatch], now: float) -> None:
    for w in watches:
        w._check_levels(now)


def _enabled_at(log: _Log, watches: list[MembershipWatch], start: float, until: float) -> float:
    now = start
    while now <= until:
        _look(watches, now)
        if any(isinstance(c, C.EnableLevel) for _, c in log.proposed):
            return now
        now += LEVELS_EVERY_S
    raise AssertionError(f"level never enabled by {until}s: {log.proposed}")


def test_a_leader_that_missed_the_others_announcements_learns_them_at_once() -> None:
    """n1 and n2 run this release and announced it; n3 ran the previous one, skipped their
    announcements, and restarts on this release as leader from its compacted log. n1 and n2
    see n3 begin a life and announce again: n3 enables the level at its next look or the
    one after, without waiting for the periodic announcement (rolling upgrade test)."""
    log, (n1, n2, n3), watches = _three()
    _lead([n1, n2, n3], n1)
    n1.start([n1, n2])
    n2.start([n1, n2])
    _look(watches[:2], LEVELS_EVERY_S)  # n3 (previous release) is not looking
    assert n1.raft.state.level == 1  # n3 has not announced
    n3.start()
    _lead([n1, n2, n3], n3)
    assert set(n3.raft.state.levels) == {n3.cfg.raft_address}  # lost the others'
    when = _enabled_at(log, watches, 2 * LEVELS_EVERY_S, 30.0) - 2 * LEVELS_EVERY_S
    assert when <= LEVELS_EVERY_S < REANNOUNCE_EVERY_S, when
    assert [h.raft.state.level for h in (n1, n2, n3)] == [C.LEVEL] * 3
    assert [c for _, c in log.proposed if isinstance(c, C.EnableLevel)] == [C.EnableLevel(C.LEVEL)]


def test_a_member_of_the_previous_release_holds_the_level_back() -> None:
    """n3 never announces (the previous release): no member enables the level, whoever
    leads; announcements stay bounded (one per member per news or per period)."""
    log, (n1, n2, n3), watches = _three()
    n1.start()
    n2.start()
    now = 0.0
    for leader in (n1, n2, n1):
        _lead([n1, n2, n3], leader)
        first = len(log.proposed)
        for _ in range(30):  # 60 s of looks
            now += LEVELS_EVERY_S
            _look(watches[:2], now)
        assert not any(isinstance(c, C.EnableLevel) for _, c in log.proposed)
        supports = sum(isinstance(c, C.Supports) for _, c in log.proposed[first:])
        assert supports <= 2 * (1 + 60 / REANNOUNCE_EVERY_S), log.proposed[first:]
    assert n1.raft.state.level == n2.raft.state.level == 1


def test_no_announcement_once_the_level_is_enabled() -> None:
    log, hosts, watches = _three()
    _lead(hosts, hosts[0])
    for h in hosts:
        h.start()
    _enabled_at(log, watches, 0.0, 10.0)
    before = len(log.proposed)
    _lead(hosts, hosts[1])  # news, but nothing to catch up on
    for k in range(1, 20):
        _look(watches, 100.0 + k * LEVELS_EVERY_S)
    assert log.proposed[before:] == []
