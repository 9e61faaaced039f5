"""Bindings, kept at both ends: a source exchange's ``bindings`` (key -> arguments)
and the destination's back references, so deleting either end is linear in its
own bindings. Auto-delete exchanges go with their last binding."""

from __future__ import annotations

from typing import Any

from cluster.effects import Effect
from cluster.machine.routing import freeze
from cluster.machine.state import BindKey, Dest, Exchange, State, VHost

_ABSENT = object()


def add_binding(vh: VHost, source: Exchange, dest: Dest, routing_key: str,
                args: dict[str, Any]) -> None:
    key: BindKey = (dest, routing_key, freeze(args))
    if key in source.bindings:
        return
    source.bindings[key] = dict(args)
    source.index = None
    if dest[0]:
        vh.exchanges[dest[1]].dest_bindings[(source.name, key)] = None
    else:
        vh.queues[dest[1]].bindings[(source.name, key)] = None


def remove_binding(state: State, vh: VHost, source: str, key: BindKey,
                   out: list[Effect]) -> None:
    """Remove one binding from both ends; an auto-delete source exchange that
    loses its last binding is deleted (as rabbit_binding's maybe_auto_delete)."""
    dest = key[0]
    if dest[0]:
        dx = vh.exchanges.get(dest[1])
        if dx is not None:
            dx.dest_bindings.pop((source, key), None)
    else:
        dq = vh.queues.get(dest[1])
        if dq is not None:
            dq.bindings.pop((source, key), None)
    ex = vh.exchanges.get(source)
    if ex is not None and ex.bindings.pop(key, _ABSENT) is not _ABSENT:
        ex.index = None
        if ex.auto_delete and not ex.bindings:
            delete_exchange(state, vh, ex, out)


def delete_exchange(state: State, vh: VHost, ex: Exchange, out: list[Effect]) -> None:
    del vh.exchanges[ex.name]
    for key in ex.bindings:
        dest = key[0]
        if dest[0]:
            dx = vh.exchanges.get(dest[1])
            if dx is not None:
                dx.dest_bindings.pop((ex.name, key), None)
        else:
            dq = vh.queues.get(dest[1])
            if dq is not None:
                dq.bindings.pop((ex.name, key), None)
    ex.bindings.clear()
    ex.index = None
    for source, key in list(ex.dest_bindings):
        remove_binding(state, vh, source, key, out)
    ex.dest_bindings.clear()
