"""Process helpers: every server runs in a process group of its own, which we end by its id."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from /proc/PID/status (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return 0


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces; everything after the last ')' is well formed
    return raw[raw.rindex(")") + 2 :].split()


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _live_stats() -> dict[int, list[str]]:
    """stat fields (after comm) of every live, non-zombie process: [0]=state [1]=ppid [2]=pgrp
    [19]=starttime."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and fields[0] != "Z":
                out[int(entry)] = fields
    return out


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    return [pid for pid, f in _live_stats().items() if int(f[2]) == pgid]


def tree_pids(pgid: int) -> dict[int, str]:
    """The process group ``pgid`` plus every descendant of its members (some children, like
    Erlang's erl_child_setup, call setsid and leave the group): {pid: starttime}."""
    stats = _live_stats()
    found = {pid for pid, f in stats.items() if int(f[2]) == pgid}
    frontier = set(found)
    for _ in range(64):  # bounded depth
        children = {pid for pid, f in stats.items() if int(f[1]) in frontier} - found
        if not children:
            break
        found |= children
        frontier = children
    return {pid: stats[pid][19] for pid in found}


def kill_survivors(snapshot: dict[int, str]) -> None:
    """SIGKILL processes from an earlier ``tree_pids`` snapshot that are still alive (same pid
    *and* same start time, so a recycled pid is never hit)."""
    for pid, start in snapshot.items():
        fields = _stat_fields(pid)
        if fields and fields[0] != "Z" and fields[19] == start:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def start_group(
    argv: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as the leader of a new session/process group, output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_group(
    proc: subprocess.Popen[bytes], timeout: float = 10.0, sig: int = signal.SIGTERM
) -> None:
    """Send ``sig`` to the group led by ``proc``, wait up to ``timeout`` s, then SIGKILL the group.

    Returns once the leader is reaped and no process of the group is left (bounded: 5 s after the
    SIGKILL)."""
    pgid = proc.pid
    snapshot = tree_pids(pgid)
    if proc.poll() is None or group_pids(pgid):
        _signal_group(pgid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (proc.poll() is None or group_pids(pgid)):
            time.sleep(0.05)
    snapshot.update(tree_pids(pgid))
    _signal_group(pgid, signal.SIGKILL)
    kill_survivors(snapshot)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    deadline = time.monotonic() + 5
    while (group_pids(pgid) or alive_of(snapshot)) and time.monotonic() < deadline:
        time.sleep(0.05)


def alive_of(snapshot: dict[int, str]) -> list[int]:
    """The processes of a ``tree_pids`` snapshot that are still alive."""
    alive = []
    for pid, start in snapshot.items():
        fields = _stat_fields(pid)
        if fields and fields[0] != "Z" and fields[19] == start:
            alive.append(pid)
    return alive


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    """Wait until none of ``pids`` is alive (zombies count as gone); returns the survivors."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while True:
        alive = [p for p in alive if (f := _stat_fields(p)) is not None and f[0] != "Z"]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time consumed so far by ``pid`` (0.0 if it is gone)."""
    fields = _stat_fields(pid)
    if not fields:
        return 0.0
    # stat fields 14 (utime) and 15 (stime), in clock ticks
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat: total - idle - iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
