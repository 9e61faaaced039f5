"""Sustained-load windows shared by bench.run_bench and bench.run_bench_cluster.

One trial = one broker process (or cluster) under load for ``duration`` seconds, cut into windows
of ``window`` seconds (bench.loadgen counts per window: ``LoadConfig.interval``). Beside the
clients' counts, :class:`CpuWindows` reads at every window boundary the CPU seconds of

* the broker process(es) under test,
* every process this benchmark started (itself and its descendants: the load generator's
  producer and consumer, the brokers), and
* the whole machine (/proc/stat, busy = not idle, not iowait),

so each window gets ``broker_cpu`` and ``clients_cpu`` (cores) and ``other_cpu_s``: CPU seconds
used by processes we did not start. A process of ours that exits inside a window takes its CPU
with it (it then counts as "other"); the clients and brokers live for the whole trial.

:func:`window_stats` turns the windows of one trial into the figures the reports print: the
median, the slowest/fastest window ratio and the change from the first window to the last, which
is flagged as a DROP past ``max_drop`` (default 20 %).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from harness.procs import cpu_seconds, system_busy_seconds

MAX_DROP = 0.20  # first -> last window: more than this is a slowdown to fix, not noise
RATE_KEYS = ("sent_per_s", "confirmed_per_s", "consumed_per_s")


def _stats() -> dict[int, tuple[int, str]]:
    """{pid: (ppid, starttime)} of every live, non-zombie process."""
    out: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        f = raw[raw.rindex(")") + 2 :].split()
        if f[0] != "Z":
            out[int(entry)] = (int(f[1]), f[19])
    return out


def own_processes(root: int | None = None) -> dict[int, str]:
    """``root`` (default: this process) and all its descendants: {pid: starttime}."""
    root = os.getpid() if root is None else root
    stats = _stats()
    found = {root} if root in stats else set()
    frontier = set(found)
    for _ in range(64):  # bounded depth
        children = {pid for pid, (ppid, _) in stats.items() if ppid in frontier} - found
        if not children:
            break
        found |= children
        frontier = children
    return {pid: stats[pid][1] for pid in found}


def _cpu_of(procs: dict[int, str]) -> dict[tuple[int, str], float]:
    return {(pid, start): cpu_seconds(pid) for pid, start in procs.items()}


def _delta(before: dict[tuple[int, str], float], after: dict[tuple[int, str], float]) -> float:
    return sum(cpu - before.get(key, 0.0) for key, cpu in after.items())


class CpuWindows:
    """CPU seconds per window, read on a thread at each window boundary.

    ``broker_pids()`` is called at each boundary (a cluster's nodes may change). Use as
    ``run_load(cfg, on_start=cpu.start)`` and then ``cpu.finish()``."""

    def __init__(self, broker_pids: Callable[[], Iterable[int | None]], window: float) -> None:
        self.broker_pids = broker_pids
        self.window = window
        self.windows: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bounds: list[int] = []

    def _sample(self) -> tuple[float, dict[tuple[int, str], float], dict[tuple[int, str], float]]:
        own = own_processes()
        brokers = {p: own.get(p, "?") for p in self.broker_pids() if p}
        return system_busy_seconds(), _cpu_of(own | brokers), _cpu_of(brokers)

    def start(self, t_begin: int, t_end: int) -> None:
        n = max(1, int(-(-(t_end - t_begin) // int(self.window * 1e9))))
        self._bounds = [min(t_begin + int(i * self.window * 1e9), t_end) for i in range(n)]
        self._bounds.append(t_end)
        self._thread = threading.Thread(target=self._run, daemon=True, name="cpu-windows")
        self._thread.start()

    def _run(self) -> None:
        prev = None
        for bound in self._bounds:
            wait = (bound - time.monotonic_ns()) / 1e9
            if wait > 0 and self._stop.wait(wait):
                return
            busy, own, brokers = self._sample()
            now = time.monotonic_ns()
            if prev is not None:
                p_busy, p_own, p_brokers, p_now = prev
                wall = max((now - p_now) / 1e9, 1e-3)
                broker = _delta(p_brokers, brokers)
                ours = _delta(p_own, own)
                self.windows.append({
                    "broker_cpu": round(broker / wall, 3),
                    "clients_cpu": round(max(ours - broker, 0.0) / wall, 3),
                    "other_cpu_s": round(max(busy - p_busy - ours, 0.0), 2),
                })  # fmt: skip
            prev = (busy, own, brokers, now)

    def finish(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait for the last boundary (normally passed: the load has ended) and return the
        windows; a load that ended early (an error) stops the sampling at once."""
        if self._thread is not None:
            if time.monotonic_ns() < self._bounds[-1]:
                self._stop.set()
            self._thread.join(timeout)
            self._stop.set()
            self._thread.join(2)
        return self.windows


def merge(load_windows: list[dict[str, Any]], cpu_windows: list[dict[str, Any]]) -> list[dict]:
    """The clients' windows with the CPU figures of the same window added."""
    out = []
    for i, w in enumerate(load_windows):
        cpu = cpu_windows[i] if i < len(cpu_windows) else {}
        out.append({"window": i + 1, **w, **cpu})
    return out


def _nums(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if v is not None]


def window_stats(
    windows: list[dict[str, Any]], key: str = "consumed_per_s", max_drop: float = MAX_DROP
) -> dict[str, Any]:
    """Median of each rate over the windows; for ``key``: slowest/fastest window ratio, first ->
    last change (negative = slower) and whether it dropped by more than ``max_drop``; CPU."""
    out: dict[str, Any] = {"windows": len(windows), "key": key}
    for k in (*RATE_KEYS, "e2e_p50_ms", "e2e_p99_ms", "confirm_p50_ms", "confirm_p99_ms"):
        vals = _nums(w.get(k) for w in windows)
        out[k] = statistics.median(vals) if vals else None
    for k in ("e2e_p99_ms", "confirm_p99_ms", "max_confirm_gap_ms", "max_deliver_gap_ms"):
        vals = _nums(w.get(k) for w in windows)
        out[f"worst_{k}"] = max(vals) if vals else None
    rates = [float(w.get(key) or 0.0) for w in windows]
    fastest = max(rates, default=0.0)
    out["slowest_per_s"] = min(rates, default=None)
    out["fastest_per_s"] = fastest if rates else None
    out["slowest_vs_fastest"] = min(rates) / fastest if rates and fastest else None
    first, last = (rates[0], rates[-1]) if rates else (0.0, 0.0)
    out["first_to_last"] = (last - first) / first if first else None
    out["drop"] = bool(rates) and (first == 0 or (last - first) / first < -max_drop)
    for k in ("broker_cpu", "clients_cpu"):
        vals = _nums(w.get(k) for w in windows)
        out[k] = statistics.median(vals) if vals else None
    other = _nums(w.get("other_cpu_s") for w in windows)
    out["other_cpu_s"] = round(sum(other), 2) if other else None
    length = sum(float(w.get("length_s") or 0.0) for w in windows)
    out["other_cpu_cores"] = round(sum(other) / length, 3) if other and length else None
    return out


def pooled_stats(
    trials: list[dict[str, Any]], key: str, max_drop: float = MAX_DROP
) -> dict[str, Any]:
    """window_stats over the windows of several trials of one broker (medians over all their
    windows); ``drop`` and ``first_to_last`` are per trial: any drop, the worst change."""
    windows = [w for t in trials for w in t.get("windows", [])]
    out = window_stats(windows, key, max_drop)
    per = [window_stats(t["windows"], key, max_drop) for t in trials if t.get("windows")]
    changes = _nums(s["first_to_last"] for s in per)
    out["first_to_last"] = min(changes) if changes else None
    out["drop"] = any(s["drop"] for s in per)
    out["trials"] = len(trials)
    return out


# --------------------------------------------------------------------------- printing


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:+.0f} %"


HEAD = (
    f"{'':<22} {'window':>9}  {'sent/s':>9} {'confirm/s':>9} {'consume/s':>9}  "
    f"{'e2e p50/p99 ms':>15}  {'pause ms':>8}  {'broker':>6} {'client':>6}  {'other CPU':>9}"
)
UNITS = f"{'':<22} {'':>9}  {'':>9} {'':>9} {'':>9}  {'':>15}  {'':>8}  {'cores':>6} {'cores':>6}  {'s':>9}"


def window_row(label: str, w: dict[str, Any]) -> str:
    start, length = float(w.get("start_s") or 0.0), float(w.get("length_s") or 0.0)
    span = f"{start:.0f}-{start + length:.0f}s"
    pause = max(_nums((w.get("max_confirm_gap_ms"), w.get("max_deliver_gap_ms"))), default=None)
    return (
        f"{label:<22} {span:>9}  {_fmt(w.get('sent_per_s'), ',.0f'):>9} "
        f"{_fmt(w.get('confirmed_per_s'), ',.0f'):>9} {_fmt(w.get('consumed_per_s'), ',.0f'):>9}  "
        f"{_fmt(w.get('e2e_p50_ms'), '.1f'):>6} / {_fmt(w.get('e2e_p99_ms'), '.1f'):<6}  "
        f"{_fmt(pause, '.0f'):>8}  {_fmt(w.get('broker_cpu'), '.2f'):>6} "
        f"{_fmt(w.get('clients_cpu'), '.2f'):>6}  {_fmt(w.get('other_cpu_s'), '.1f'):>9}"
    )


def summary_row(label: str, s: dict[str, Any]) -> str:
    pause = max(
        _nums((s.get("worst_max_confirm_gap_ms"), s.get("worst_max_deliver_gap_ms"))),
        default=None,
    )
    return (
        f"{label:<22} {'median':>9}  {_fmt(s.get('sent_per_s'), ',.0f'):>9} "
        f"{_fmt(s.get('confirmed_per_s'), ',.0f'):>9} {_fmt(s.get('consumed_per_s'), ',.0f'):>9}  "
        f"{_fmt(s.get('e2e_p50_ms'), '.1f'):>6} / {_fmt(s.get('e2e_p99_ms'), '.1f'):<6}  "
        f"{_fmt(pause, '.0f'):>8}  {_fmt(s.get('broker_cpu'), '.2f'):>6} "
        f"{_fmt(s.get('clients_cpu'), '.2f'):>6}  {_fmt(s.get('other_cpu_s'), '.1f'):>9}"
    )


def verdict_line(label: str, s: dict[str, Any], max_drop: float = MAX_DROP) -> str:
    what = s["key"].replace("_per_s", "")
    flag = f"  DROP > {max_drop * 100:.0f} %" if s.get("drop") else ""
    return (
        f"{label:<22} {s['windows']} windows, {what}: median {_fmt(s.get(s['key']), ',.0f')}/s, "
        f"slowest/fastest {_fmt(s.get('slowest_vs_fastest'), '.2f')}, first->last "
        f"{_pct(s.get('first_to_last'))}; other processes {_fmt(s.get('other_cpu_s'), '.1f')} "
        f"CPU s ({_fmt(s.get('other_cpu_cores'), '.2f')} cores){flag}"
    )


def print_windows(
    groups: list[tuple[str, list[dict[str, Any]], dict[str, Any]]],
    out: Any,
    max_drop: float = MAX_DROP,
) -> None:
    """``groups``: (label, windows, stats); one row per window of each, then a median row and
    a verdict line per group. A window's label carries its run when there are several."""
    print(HEAD, file=out)
    print(UNITS, file=out)
    print("-" * len(HEAD), file=out)
    for label, windows, _ in groups:
        for w in windows:
            print(window_row(f"{label}{w.get('tag', '')}", w), file=out)
    print("-" * len(HEAD), file=out)
    for label, _, s in groups:
        print(summary_row(label, s), file=out)
    for label, _, s in groups:
        print(verdict_line(label, s, max_drop), file=out)
    print(
        "(broker: cores used by the broker process(es) under test, all nodes together; client: "
        "the load generator and this script; other CPU: seconds used by every other process on "
        "the machine in that window; pause: longest time without a confirm or a delivery)",
        file=out,
    )
