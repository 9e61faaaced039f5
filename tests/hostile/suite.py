"""The suite: a fresh node, tenants A (measuring, tests/hostile/measuring.py) and B
(hostile: the attacks, one after another, half-open HTTP requests beside them), the loop
probe (tests/hostile/probe.py); then the node's log is read. :func:`run` returns the
:class:`Report` whose ``problems`` are every demand of the issue that did not hold."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.raftmq import REPO_ROOT, RaftMQNode
from tests.hostile import amqp_attacks, api_attacks
from tests.hostile.target import NODE, PASSWORDS, Outcome, Target, request

P99_BOUND_S = 0.2
# the short suite's wait for half-open requests to be closed: the node's default
# http_request_timeout (30 s) and a margin; the long one waits 120 s (the figure)
HALF_OPEN_WAIT_S = 40.0


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    measuring: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)
    tracebacks: int = 0
    machine_failures: int = 0
    alive: bool = True
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    epochs: dict[str, float] = field(default_factory=dict)  # when each child said ready

    @property
    def ok(self) -> bool:
        return not self.problems

    def during(self, at: float, epoch: str) -> str:
        """The attack that was running ``at`` seconds after the child ``epoch`` started."""
        when = self.epochs.get(epoch, 0.0) + at
        return next((o.name for o in self.outcomes if o.window[0] <= when <= o.window[1]),
                    "-")

    def worst(self, figures: dict[str, Any], epoch: str) -> str:
        return ", ".join(f"{w['rtt'] * 1000:.0f} ms at {w['at']:.0f} s "
                         f"({self.during(w['at'], epoch)})" for w in figures.get("worst", []))

    def text(self) -> str:
        rows = [f"{'attack':<24} {'s':>6}  {'ok':<4} outcome"]
        for o in self.outcomes:
            rows.append(f"{o.name:<24} {o.seconds:6.1f}  {'ok' if o.ok else 'FAIL':<4} "
                        f"{'; '.join(o.seen)}")
            rows += [f"{'':<36}! {p}" for p in o.problems]
            rows.append(f"{'':<36}tried: {o.tried}")
        a, p = self.measuring, self.probe
        rows.append(
            f"tenant A: {a.get('published', 0)} published, {a.get('confirmed', 0)} confirmed, "
            f"{a.get('nacked', 0)} nacked, lost {a.get('lost', '?')}; publish→confirm p50 "
            f"{a.get('rtt_p50', 0) * 1000:.0f} ms, p99 {a.get('rtt_p99', 0) * 1000:.0f} ms, "
            f"max {a.get('rtt_max', 0) * 1000:.0f} ms; slowest: {self.worst(a, 'measuring')}")
        rows.append(
            f"event-loop probe: {p.get('count', 0)} round trips, p99 "
            f"{p.get('p99', 0) * 1000:.0f} ms, largest stall {p.get('max', 0) * 1000:.0f} ms; "
            f"worst: {self.worst(p, 'probe')}")
        rows.append(f"node log: {self.tracebacks} tracebacks, {self.machine_failures} "
                    f"'failed in the state machine'; node alive: {self.alive}; "
                    f"{self.seconds:.0f} s in all")
        rows.append("PROBLEMS:\n  " + "\n  ".join(self.problems) if self.problems else "OK")
        return "\n".join(rows)


class Child:
    """A helper process (probe, measuring tenant) that says ``ready``, runs until told
    ``stop`` on stdin, then prints one JSON line."""

    def __init__(self, module: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], cwd=REPO_ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.ready_at = 0.0

    def wait_ready(self, timeout: float = 60) -> None:
        assert self.proc.stdout is not None
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        if not box or box[0].strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"{self.proc.args!r}: not ready ({box})")
        self.ready_at = time.monotonic()

    def finish(self, timeout: float = 240) -> dict[str, Any]:
        try:
            out, _ = self.proc.communicate("stop\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return {"errors": ["did not finish in time"]}
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        return dict(json.loads(lines[-1])) if lines else {"errors": [f"no result: {out!r}"]}


def setup_tenants(port: int) -> None:
    """Vhosts A and B; users a and b with permissions on their own vhost only, c with
    none; all three management users."""
    for vhost in ("A", "B"):
        request(port, "PUT", f"/api/vhosts/{vhost}", "guest", {})
    for user in ("a", "b", "c"):
        request(port, "PUT", f"/api/users/{user}", "guest",
                {"password": PASSWORDS[user], "tags": "management"})
    for user, vhost in (("a", "A"), ("b", "B")):
        answer = request(port, "PUT", f"/api/permissions/{vhost}/{user}", "guest",
                         {"configure": ".*", "write": ".*", "read": ".*"})
        if answer.status not in (201, 204):
            raise RuntimeError(f"setting up the tenants: permissions of {user}: {answer}")


def a_connection(port: int) -> str | None:
    got = request(port, "GET", "/api/connections", "guest")
    names = [c["name"] for c in got.json() if c.get("user") == "a"] if got.status == 200 else []
    return names[0] if names else None


def timed(name: str, attack: Callable[[], Outcome]) -> Outcome:
    start = time.monotonic()
    try:
        out = attack()
    except Exception as exc:  # an attack that could not finish is a result, not a crash
        out = Outcome(name)
        out.problems.append(f"the attack itself failed: {type(exc).__name__}: {exc}")
    out.window = (start, time.monotonic())
    out.seconds = out.window[1] - start
    return out


def one_round(t: Target, a_conn: str | None) -> list[Outcome]:
    return [timed("dead-letter arguments", lambda: amqp_attacks.dead_letters(t)),
            timed("regex listings", lambda: api_attacks.regex_listings(t)),
            timed("many consumers", lambda: amqp_attacks.many_consumers(t)),
            timed("enumeration", lambda: api_attacks.enumeration(t, a_conn)),
            timed("user_id spoof", lambda: api_attacks.user_id_spoof(t)),
            timed("malformed API input", lambda: api_attacks.malformed(t)),
            timed("raw AMQP", lambda: amqp_attacks.raw_frames(t)),
            timed("20 MiB message", lambda: amqp_attacks.big_message(t))]


def _log_counts(log: Path) -> tuple[int, int]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return text.count("Traceback"), text.count("failed in the state machine")


def run(minutes: float = 0.0, keep: Path | None = None, scale: int = 1,
        half_open: tuple[int, float] = (30, HALF_OPEN_WAIT_S),
        code: Path | None = None) -> Report:
    """``minutes`` 0: one round of attacks (the short suite); more: rounds until that
    long. ``half_open``: (sockets, seconds to wait for the node to close them). ``code``:
    run the node from that tree (another release, to compare) instead of this one."""
    started = time.monotonic()
    base = keep or Path(tempfile.mkdtemp(prefix="raftmq-hostile-"))
    node = RaftMQNode(base / "data", node_id=NODE, log_path=base / "node.log")
    if code is not None:
        node.code_root = code
    node.start(timeout=60)
    report = Report()
    try:
        t = Target(node.amqp_port, node.management_port, node.metrics_port, scale)
        setup_tenants(t.management_port)
        amqp_attacks.make_evil_names(t)
        pump = amqp_attacks.DeadLetterPump(t)
        pump.start()
        pump_started = time.monotonic()
        probe = Child("tests.hostile.probe", str(t.amqp_port))
        probe.wait_ready()
        measuring = Child("tests.hostile.measuring", str(t.amqp_port), "a", PASSWORDS["a"],
                          "A")
        measuring.wait_ready()
        a_conn = a_connection(t.management_port)
        slow: list[Outcome] = []
        beside = threading.Thread(target=lambda: slow.append(
            timed("half-open HTTP", lambda: api_attacks.half_open(t, *half_open))),
            daemon=True)
        beside.start()
        while True:
            report.outcomes += one_round(t, a_conn)
            if time.monotonic() - started >= minutes * 60:
                break
        beside.join(half_open[1] + 60)
        pump_window = (pump_started, time.monotonic())
        report.outcomes += slow
        report.outcomes.append(pump.finish())
        report.outcomes[-1].window = pump_window
        report.outcomes[-1].seconds = pump_window[1] - pump_started
        report.measuring = measuring.finish()
        report.probe = probe.finish()
        report.epochs = {"probe": probe.ready_at, "measuring": measuring.ready_at}
        report.alive = node.is_running()
    finally:
        node.stop()
        report.tracebacks, report.machine_failures = _log_counts(node.log_path)
        report.seconds = time.monotonic() - started
    judge(report)
    return report


def judge(r: Report) -> None:
    for o in r.outcomes:
        r.problems += [f"{o.name}: {p}" for p in o.problems]
    a = r.measuring
    if a.get("lost", 1):
        r.problems.append(f"tenant A lost {a.get('lost', '?')} confirmed messages "
                          f"(ids {a.get('lost_ids')})")
    if a.get("nacked", 0):
        r.problems.append(f"tenant A had {a['nacked']} publishes nacked")
    if a.get("errors"):
        r.problems.append(f"tenant A errors: {a['errors'][:3]}")
    if not a.get("confirmed"):
        r.problems.append("tenant A got no confirm at all")
    if a.get("rtt_p99", 1.0) >= P99_BOUND_S:
        r.problems.append(f"tenant A publish→confirm p99 {a.get('rtt_p99', 0) * 1000:.0f} ms "
                          f"(bound {P99_BOUND_S * 1000:.0f} ms)")
    if r.probe.get("errors") or not r.probe.get("count"):
        r.problems.append(f"the loop probe failed: {r.probe}")
    if r.tracebacks:
        r.problems.append(f"{r.tracebacks} tracebacks in the node log")
    if r.machine_failures:
        r.problems.append(f"{r.machine_failures} 'failed in the state machine' in the node log")
    if not r.alive:
        r.problems.append("the node died")
