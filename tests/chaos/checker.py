"""The verdict on one run's history, in the spirit of Jepsen's total-queue checker.

After the faults are healed and every queue drained:

* **lost**: ids whose publish was *confirmed* and that were never consumed — must be 0;
* **unexpected**: deliveries of something never published (not this run's body, an id no
  producer used, an attempt no producer made, or the wrong queue) — must be 0;
* **duplicated**: deliveries of an id after its first one. Each must be explained: by the
  ``redelivered`` flag (the broker says it may have been seen before), or by a publisher retry
  (the later copy carries a different attempt number than every earlier delivery). Anything else
  is an *unexplained duplicate*;
* **order**: per consumer session, per producer and queue, deliveries not flagged redelivered of
  ids published exactly once (so never retried) must come in sequence order. A queue keeps the
  order in which one publisher's messages were enqueued, and a message confirmed on the first
  try was enqueued before anything its producer published later.

Unconfirmed messages may be lost or delivered; they are counted, never judged.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .clients import History, decode_body, message_id

EXAMPLES = 8


@dataclass
class Verdict:
    published: int = 0  # distinct ids handed to the broker at least once
    attempts: int = 0  # publishes, retries included
    confirmed: int = 0
    deliveries: int = 0
    consumed: int = 0  # distinct ids consumed
    lost: int = 0
    unexpected: int = 0
    duplicated: int = 0
    dup_redelivered: int = 0
    dup_retry: int = 0
    dup_unexplained: int = 0
    order_violations: int = 0
    unconfirmed_consumed: int = 0  # unconfirmed but delivered (fine)
    unconfirmed_lost: int = 0  # unconfirmed and never delivered (fine)
    residual: int = 0  # messages a node still reported in a queue after the drain
    diverged: int = 0  # log indexes applied with different terms (on two nodes, or one node)
    reapplied: int = 0  # entries applied twice in one process life (their effects ran twice)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Safety: nothing confirmed lost, nothing unexpected, every duplicate explained, order
        kept, queues empty everywhere."""
        return not (self.lost or self.unexpected or self.dup_unexplained or self.order_violations
                    or self.residual or self.diverged or self.reapplied)

    def example(self, kind: str, text: str) -> None:
        ex = self.examples.setdefault(kind, [])
        if len(ex) < EXAMPLES:
            ex.append(text)

    def problems(self) -> str:
        out = []
        for kind in ("lost", "unexpected", "dup_unexplained", "order", "residual", "diverged",
                     "reapplied"):
            if self.examples.get(kind):
                out.append(f"{kind}: " + "; ".join(self.examples[kind]))
        return "\n".join(out)


def check(h: History, residual: dict[str, int] | None = None) -> Verdict:
    v = Verdict()
    pubs = h.publishes
    v.published = len(pubs)
    v.attempts = sum(p.attempts for p in pubs.values())
    confirmed = {mid for mid, p in pubs.items() if p.confirmed_at is not None}
    v.confirmed = len(confirmed)
    v.deliveries = len(h.deliveries)

    seen_attempts: dict[str, set[int]] = defaultdict(set)
    consumed: set[str] = set()
    # (session, producer, queue) -> last in-order sequence number seen
    last_seq: dict[tuple[str, int, str], tuple[int, str]] = {}
    for d in h.deliveries:
        parsed = decode_body(d.body)
        if parsed is None or parsed[0] != h.run:
            v.unexpected += 1
            v.example("unexpected", f"foreign body {d.body[:60]!r} in {d.queue} ({d.session})")
            continue
        _, producer, seq, attempt, queue = parsed
        mid = message_id(producer, seq)
        pub = pubs.get(mid)
        if pub is None or attempt < 1 or attempt > pub.attempts or queue != pub.queue \
                or d.queue != queue:
            v.unexpected += 1
            v.example("unexpected", f"{mid} attempt {attempt} from {d.queue} ({d.session}); "
                      f"published: {None if pub is None else (pub.queue, pub.attempts)}")
            continue
        if mid in consumed:
            v.duplicated += 1
            if d.redelivered:
                v.dup_redelivered += 1
            elif attempt not in seen_attempts[mid]:
                v.dup_retry += 1
            else:
                v.dup_unexplained += 1
                v.example("dup_unexplained", f"{mid} attempt {attempt} delivered again without "
                          f"redelivered ({d.session}, {d.queue})")
        consumed.add(mid)
        seen_attempts[mid].add(attempt)
        if not d.redelivered and pub.attempts == 1 and d.session != "drain":
            key = (d.session, producer, queue)
            prev = last_seq.get(key)
            if prev is not None and seq <= prev[0]:
                v.order_violations += 1
                v.example("order", f"{d.session} got {mid} after {prev[1]} ({queue})")
            else:
                last_seq[key] = (seq, mid)
    v.consumed = len(consumed)
    lost = sorted(confirmed - consumed, key=lambda m: (pubs[m].producer, pubs[m].seq))
    v.lost = len(lost)
    for mid in lost:
        p = pubs[mid]
        v.example("lost", f"{mid} ({p.queue}, confirmed on attempt {p.confirmed_attempt} of "
                  f"{p.attempts})")
    unconfirmed = set(pubs) - confirmed
    v.unconfirmed_consumed = len(unconfirmed & consumed)
    v.unconfirmed_lost = len(unconfirmed - consumed)
    for where, count in (residual or {}).items():
        if count:
            v.residual += max(count, 0) or 1
            v.example("residual", f"{where}: {count}")
    return v


def check_applied(v: Verdict, logs: dict[str, Path]) -> None:
    """Replica consistency from the nodes' apply logs (``powerloss.install_apply_log``): every
    node must apply the same term at each index it applies (Raft's state machine safety), and
    no node may apply an index twice within one process life (a snapshot older than what it had
    applied rolls it back: every effect after it runs again). Adds to ``v``."""
    terms: dict[int, tuple[int, str]] = {}  # index -> (term, first node seen)
    for node, path in sorted(logs.items()):
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            continue
        mine: dict[int, int] = {}
        high = 0  # highest index applied in this life
        rolled_back_to: int | None = None
        for line in lines:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "L":
                high, rolled_back_to = 0, None
            elif parts[0] == "S":
                applied = int(parts[1])
                if applied < high:
                    rolled_back_to = applied
                high = max(high, applied)
            elif parts[0] == "A" and len(parts) == 4:
                first, last, term = int(parts[1]), int(parts[2]), int(parts[3])
                if first <= high and rolled_back_to is not None:
                    again = min(last, high) - first + 1
                    v.reapplied += again
                    v.example("reapplied", f"{node} applied {first}..{min(last, high)} again "
                              f"after loading a snapshot at {rolled_back_to}")
                for idx in range(first, last + 1):
                    if mine.get(idx, term) != term:
                        v.diverged += 1
                        v.example("diverged", f"{node} applied index {idx} with term {mine[idx]} "
                                  f"and later with term {term}")
                    mine[idx] = term
                    seen = terms.setdefault(idx, (term, node))
                    if seen[0] != term:
                        v.diverged += 1
                        v.example("diverged", f"index {idx}: {seen[1]} applied term {seen[0]}, "
                                  f"{node} term {term}")
                high = max(high, last)
