"""node/services/alarms.py: limits as RabbitMQ writes them, the monitor's rules, and what the node
tells the log and its connections."""

from __future__ import annotations

from typing import Any

import pytest

from cluster import commands as C
from cluster.machine import apply
from cluster.machine.state import NodeInfo
from node import config
from node.services.alarms import (
    DISK,
    MEMORY,
    Alarms,
    Limit,
    Monitor,
    parse_disk_limit,
    parse_memory_watermark,
    parse_size,
)
from tests.cluster.helpers import guest_state

GiB = 1 << 30


@pytest.mark.parametrize(("text", "size"), [
    ("50MB", 50_000_000), ("50mb", 50_000_000), ("1GiB", GiB), ("1.5GB", 1_500_000_000),
    ("512KiB", 512 * 1024), ("123", 123), ("2G", 2 * GiB), ("10 kB", 10_000),
])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "-5MB", "5 parsecs", "1e9"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_memory_watermark_forms() -> None:
    assert parse_memory_watermark("0.4") == Limit(0.4, relative=True)
    assert parse_memory_watermark("1") == Limit(1.0, relative=True)
    assert parse_memory_watermark("2GiB") == Limit(2 * GiB, relative=False)
    assert parse_memory_watermark("1073741824") == Limit(GiB, relative=False)
    for bad in ("0", "-0.1", "1.5", "lots"):
        with pytest.raises(ValueError):
            parse_memory_watermark(bad)


def test_disk_limit_forms() -> None:
    assert parse_disk_limit("50MB") == Limit(50_000_000, relative=False)
    assert parse_disk_limit("mem_relative:1.5") == Limit(1.5, relative=True)
    assert Limit(1.5, relative=True).bytes(GiB) == int(1.5 * GiB)
    for bad in ("mem_relative:", "mem_relative:0", "mem_relative:x", "fifty"):
        with pytest.raises(ValueError):
            parse_disk_limit(bad)


def test_bad_config_value_names_the_option() -> None:
    with pytest.raises(config.ConfigError, match="RAFTMQ_VM_MEMORY_HIGH_WATERMARK: not a"):
        config.load(environ={"RAFTMQ_VM_MEMORY_HIGH_WATERMARK": "1.5"})
    with pytest.raises(config.ConfigError, match="RAFTMQ_DISK_FREE_LIMIT"):
        config.load(environ={"RAFTMQ_DISK_FREE_LIMIT": "a lot"})


class Gauges:
    def __init__(self) -> None:
        self.used = 100 << 20
        self.free = 10 * GiB

    def monitor(self, watermark: str = "0.5", disk: str = "1GB") -> Monitor:
        return Monitor(parse_memory_watermark(watermark), parse_disk_limit(disk), "/data",
                       used=lambda: self.used, total=lambda: GiB, free=lambda path: self.free)


def test_monitor_reports_changes_only() -> None:
    g = Gauges()
    mon = g.monitor()
    assert mon.memory_limit == GiB // 2 and mon.disk_free_limit == 1_000_000_000
    assert mon.check() == {}
    g.used = 600 << 20
    assert mon.check() == {MEMORY: True}
    assert mon.check() == {}
    g.free = 500_000_000
    g.used = 10 << 20
    assert mon.check() == {MEMORY: False, DISK: True}
    assert "disk free 477 MiB in /data, limit 954 MiB" in mon.describe(DISK)


def test_unreadable_data_dir_counts_as_no_space() -> None:
    def free(path: str) -> int:
        raise OSError("gone")

    mon = Monitor(Limit(0.5, True), Limit(1, False), "/x", used=lambda: 1, total=lambda: GiB,
                  free=free)
    assert mon.check() == {DISK: True}


class Node:
    """Alarms wired to a real machine state (as the broker wires them)."""

    def __init__(self, gauges: Gauges, node_id: str = "n1") -> None:
        self.state = guest_state()
        self.state.nodes[node_id] = NodeInfo(7)
        self.proposed: list[Any] = []
        self.changes: list[str | None] = []
        self.now = 0.0
        self.alarms = Alarms(gauges.monitor(), node_id, self.proposed.append,
                             lambda: self.state.alarms, self.changes.append,
                             clock=lambda: self.now)
        self.alarms.incarnation = 7

    def commit(self) -> None:
        for cmd in self.proposed:
            apply(self.state, 0, cmd, [])
        self.proposed.clear()


def test_an_alarm_blocks_at_once_goes_to_the_log_and_clears() -> None:
    g = Gauges()
    n = Node(g)
    n.alarms.check()
    assert n.proposed == [] and n.changes == []
    g.used = 900 << 20
    n.alarms.check()
    # blocked at once on its own alarm, before the log has it
    assert n.changes == ["low on memory"]
    assert n.proposed == [C.AlarmSet("n1", 7, MEMORY, True)]
    n.commit()
    assert n.state.alarms == {("n1", MEMORY): None}
    n.alarms.check()
    assert n.proposed == [] and n.changes == ["low on memory"]
    g.used = 1
    n.alarms.check()
    assert n.proposed == [C.AlarmSet("n1", 7, MEMORY, False)]
    assert n.changes == ["low on memory"]  # still in the log: still blocked
    n.commit()
    n.alarms.update()
    assert n.changes == ["low on memory", None] and n.state.alarms == {}


def test_another_nodes_alarm_blocks_this_nodes_publishers() -> None:
    n = Node(Gauges())
    n.state.nodes["n2"] = NodeInfo(3)
    apply(n.state, 0, C.AlarmSet("n2", 3, DISK, True), [])
    n.alarms.update()
    assert n.changes == ["low on disk"] and n.alarms.in_force() == [("n2", DISK)]
    apply(n.state, 0, C.NodeDown("n2", 3), [])  # a node that is down blocks nobody
    n.alarms.update()
    assert n.changes == ["low on disk", None]


def test_a_lost_proposal_is_made_again_not_every_second() -> None:
    g = Gauges()
    n = Node(g)
    g.free = 1
    n.alarms.check()
    n.proposed.clear()  # lost
    n.now += 1.0
    n.alarms.check()
    assert n.proposed == []
    n.now += 1.5
    n.alarms.check()
    assert n.proposed == [C.AlarmSet("n1", 7, DISK, True)]


def test_alarms_of_an_old_life_are_ignored() -> None:
    n = Node(Gauges())
    apply(n.state, 0, C.AlarmSet("n1", 6, MEMORY, True), [])
    apply(n.state, 0, C.AlarmSet("ghost", 1, MEMORY, True), [])
    assert n.state.alarms == {}
    apply(n.state, 0, C.AlarmSet("n1", 7, MEMORY, True), [])
    apply(n.state, 0, C.NodeUp("n1", 8, "", ""), [])  # a new life starts without alarms
    assert n.state.alarms == {}
