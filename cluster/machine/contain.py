"""Failures that stay with their item.

A command may work through many items that belong to different tenants: the
dead-letters of a tick, the queues whose deadline came, the connections of a node
that went down, the queues a settle touched. An item that raises there is a bug (what
a client or API user can send is validated before anything changes); it must not take
the other items with it, nor the command that happened to trigger the loop. Each loop
catches per item, goes on, and reports what failed as one Fault for the whole loop: the
log gets one line, not one per item (a tick may expire thousands of messages).

The same bug raises at the same point on every replica, so whatever the item left
behind, the replicas stay equal.
"""

from __future__ import annotations

from cluster.effects import Effect, Fault
from cluster.machine.state import State

# (what failed, its exception), in the order they failed
Failed = list[tuple[str, Exception]]


def note(failed: Failed | None, what: str, exc: Exception) -> Failed:
    """Record one failed item; a loop starts with ``failed = None`` (nothing allocated
    while nothing fails)."""
    if failed is None:
        failed = []
    failed.append((what, exc))
    return failed


def report(state: State, failed: Failed | None, doing: str, out: list[Effect]) -> None:
    """One Fault for the node that proposed the batch being applied: the first failure,
    and how many more there were."""
    if not failed:
        return
    what, exc = failed[0]
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    node = state.origin[0] if state.origin is not None else ""
    out.append(Fault(node, f"{doing}: {what}{more}", f"{type(exc).__name__}: {exc}"))
