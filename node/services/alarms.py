"""Memory and disk alarms, as RabbitMQ has them (its "memory-use", "alarms" and
"disk-alarms" guides).

* **Memory**: the node's resident memory against a high watermark, by default 0.4 of
  the memory it may use: the cgroup's limit when one is set (a container), else the
  machine's RAM. An absolute size may be given instead.
* **Disk**: the free space of the file system holding the data directory against a
  limit, by default 50 MB; ``mem_relative:1.5`` sets it to 1.5 × that memory total.

A node watches its own resources (:class:`Monitor`, about once a second) and puts
each change in the Raft log (``AlarmSet``), so every node knows every node's alarms.
While any node of the cluster is in alarm, every node blocks its publishing
connections (node/amqp/connection.py): it sends ``connection.blocked`` to clients that
announce that capability and stops reading from them; consumers go on consuming and
acknowledging. Reading resumes, with ``connection.unblocked``, once no alarm is left.
A node also blocks on its own alarms before the log has them (it may be cut off from
the majority, or the log may be what is out of space).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cluster.commands import AlarmSet

log = logging.getLogger(__name__)

MEMORY, DISK = "memory", "disk"
RESOURCES = (MEMORY, DISK)
# connection.blocked's reason, as RabbitMQ words it
REASONS = {MEMORY: "low on memory", DISK: "low on disk"}

DEFAULT_MEMORY_WATERMARK = "0.4"
DEFAULT_DISK_FREE_LIMIT = "50MB"

_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
    "k": 1024, "m": 1024**2, "g": 1024**3,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


@dataclass(frozen=True)
class Limit:
    """A size in bytes, or a fraction of the memory total (``relative``)."""

    value: float
    relative: bool

    def bytes(self, memory_total: int) -> int:
        return int(self.value * memory_total) if self.relative else int(self.value)

    def __str__(self) -> str:
        return f"{self.value:g}" if self.relative else str(int(self.value))


def parse_size(text: str) -> int:
    """``"50MB"`` (1000-based), ``"1GiB"`` (1024-based), ``"1048576"``: bytes.
    Raises ValueError naming the text."""
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (e.g. 512MB, 1GiB, or a number of bytes)")
    return int(float(m.group(1)) * _UNITS[unit])


def parse_memory_watermark(text: str) -> Limit:
    """A fraction of the memory total (``0.4``; above 0, at most 1) or an absolute size
    (``2GiB``, ``1073741824``), as RabbitMQ's vm_memory_high_watermark.relative /
    .absolute."""
    text = str(text).strip()
    try:
        value = float(text)
    except ValueError:
        return Limit(parse_size(text), relative=False)
    if 0 < value <= 1:
        return Limit(value, relative=True)
    if value > 1 and value.is_integer():
        return Limit(value, relative=False)
    raise ValueError(f"not a memory watermark: {text!r} (a fraction such as 0.4, or a size "
                     "such as 2GiB)")


def parse_disk_limit(text: str) -> Limit:
    """An absolute size (``50MB``) or ``mem_relative:F``: F × the memory total, as
    RabbitMQ's disk_free_limit.absolute / .relative."""
    text = str(text).strip()
    if text.startswith("mem_relative:"):
        try:
            value = float(text.partition(":")[2])
        except ValueError:
            value = -1.0
        if not 0 < value <= 100:
            raise ValueError(f"not a disk free limit: {text!r} (mem_relative:F, 0 < F <= 100)")
        return Limit(value, relative=True)
    return Limit(parse_size(text), relative=False)


# --- what the machine has ------------------------------------------------------------------


def physical_memory() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cgroup_limit(root: str = "/sys/fs/cgroup") -> int | None:
    """The memory limit of this process' cgroup (v2, else v1), None when there is none."""
    for path in (f"{root}/memory.max", f"{root}/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                raw = f.read().strip()
        except OSError:
            continue
        if raw.isdigit():
            limit = int(raw)
            # v1 reports "no limit" as a huge number
            return limit if limit < physical_memory() else None
        return None  # "max"
    return None


def memory_total() -> int:
    """What the node may use: the cgroup limit if there is one, else the machine's RAM."""
    limit = cgroup_limit()
    return limit if limit is not None else physical_memory()


def process_memory() -> int:
    """This process' resident set size."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def trim_heap() -> None:
    """Give the C heap's free memory back to the system (glibc keeps what Python freed,
    so a burst of large messages would stay in the node's resident size for good)."""
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim  # noqa: B018 (not glibc: no trimming)
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


_libc: Any = None

# glibc's mallopt parameter: allocations at least this big get their own mapping
_M_MMAP_THRESHOLD = -3


def fix_mmap_threshold(size: int = 128 << 10) -> None:
    """Give every allocation of ``size`` or more its own mapping, returned to the system
    when freed. glibc raises this threshold each time such a block is freed (up to
    32 MiB): Raft entries of a few hundred KiB then come from the heap, and a burst of
    them leaves it spread out for good, pinned by small long-lived objects (measured:
    +250 MiB resident after 1M messages). Setting it turns that adaptation off."""
    trim_heap()  # loads libc
    if _libc:
        _libc.mallopt(_M_MMAP_THRESHOLD, size)


def disk_free(path: str) -> int:
    """Free space for unprivileged writes where ``path`` is (or will be created)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


# --- the monitor ---------------------------------------------------------------------------


class Monitor:
    """This node's view of its own resources. The measuring functions are parameters so
    that the rules can be tested without filling a disk."""

    def __init__(self, memory_watermark: Limit, disk_limit: Limit, data_dir: str, *,
                 used: Callable[[], int] = process_memory,
                 total: Callable[[], int] = memory_total,
                 free: Callable[[str], int] = disk_free) -> None:
        self.memory_watermark = memory_watermark
        self.disk_limit = disk_limit
        self.data_dir = data_dir
        self._used, self._total, self._free = used, total, free
        self.memory_total = total()
        self.memory_used = 0
        self.disk_free = 0
        self.active: dict[str, bool] = {r: False for r in RESOURCES}

    @property
    def memory_limit(self) -> int:
        return self.memory_watermark.bytes(self.memory_total)

    @property
    def disk_free_limit(self) -> int:
        return self.disk_limit.bytes(self.memory_total)

    def check(self) -> dict[str, bool]:
        """Measure; returns the resources whose alarm state changed (resource -> now
        active)."""
        self.memory_used = self._used()
        try:
            self.disk_free = self._free(self.data_dir)
        except OSError:
            self.disk_free = 0  # a data directory that cannot be read is not writable
        now = {MEMORY: self.memory_used > self.memory_limit,
               DISK: self.disk_free < self.disk_free_limit}
        changed = {r: v for r, v in now.items() if v != self.active[r]}
        self.active.update(now)
        return changed

    def describe(self, resource: str) -> str:
        if resource == MEMORY:
            return (f"memory used {self.memory_used / 2**20:.0f} MiB, high watermark "
                    f"{self.memory_limit / 2**20:.0f} MiB ({self.memory_watermark} of "
                    f"{self.memory_total / 2**20:.0f} MiB)" if self.memory_watermark.relative
                    else f"memory used {self.memory_used / 2**20:.0f} MiB, high watermark "
                         f"{self.memory_limit / 2**20:.0f} MiB")
        return (f"disk free {self.disk_free / 2**20:.0f} MiB in {self.data_dir}, limit "
                f"{self.disk_free_limit / 2**20:.0f} MiB")


# --- the node's part -----------------------------------------------------------------------

# A node whose alarm the log does not show yet (a lost proposal) proposes it again after this.
REPROPOSE_S = 2.0


class Alarms:
    """Keeps the log told of this node's alarms, and the node's connections told whether
    publishers are blocked (``on_change(reason)``, None: not blocked)."""

    def __init__(self, monitor: Monitor, node_id: str,
                 propose: Callable[[AlarmSet], None],
                 replicated: Callable[[], Mapping[tuple[str, str], None]],
                 on_change: Callable[[str | None], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.monitor = monitor
        self.node_id = node_id
        self.incarnation = 0
        self._propose = propose
        self._replicated = replicated
        self._on_change = on_change
        self._clock = clock
        self._proposed: dict[str, tuple[bool, float]] = {}  # resource -> (active, when)
        self.reason: str | None = None  # why publishers are blocked now

    def check(self) -> None:
        """Measure this node's resources (about once a second) and tell the log."""
        mon = self.monitor
        for resource, active in mon.check().items():
            if active:
                log.warning("%s alarm set: %s; publishers are blocked cluster-wide",
                            resource, mon.describe(resource))
            else:
                log.warning("%s alarm cleared: %s", resource, mon.describe(resource))
        replicated = self._replicated()
        now = self._clock()
        for resource in RESOURCES:
            active = mon.active[resource]
            if active == ((self.node_id, resource) in replicated):
                continue
            last = self._proposed.get(resource)
            if last is None or last[0] != active or now - last[1] >= REPROPOSE_S:
                self._proposed[resource] = (active, now)
                self._propose(AlarmSet(self.node_id, self.incarnation, resource, active))
        self.update()

    def in_force(self) -> list[tuple[str, str]]:
        """(node, resource) of every alarm blocking publishers: the log's, and this node's
        own even before the log has them."""
        alarms = list(self._replicated())
        for resource in RESOURCES:
            key = (self.node_id, resource)
            if self.monitor.active[resource] and key not in alarms:
                alarms.append(key)
        return alarms

    def update(self) -> None:
        """Cheap; called every loop tick: tell connections when blocking starts or ends."""
        replicated = self._replicated()
        if not replicated and not any(self.monitor.active.values()):
            reason = None
        else:
            reason = REASONS[self.in_force()[0][1]]
        if reason != self.reason:
            if reason is None:
                log.warning("no alarm in the cluster any more: publishers unblocked")
            elif self.reason is None:
                log.warning("alarm in the cluster (%s): blocking publishers",
                            ", ".join(f"{r} on {n}" for n, r in self.in_force()))
            self.reason = reason
            self._on_change(reason)
