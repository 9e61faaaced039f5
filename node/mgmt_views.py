"""The replicated state as the management API shows it: RabbitMQ 3.10's JSON for queues,
exchanges, bindings, consumers and channels. Pure functions of the state (every node
answers the same, cluster-wide); the HTTP handlers are in node/mgmt_objects.py.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cluster.machine.state import Exchange, Queue, State, VHost

RATE = {"rate": 0.0}


def jsonable(value: Any) -> Any:
    """AMQP field values (bytes, decimals, timestamps, nested tables) as JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.datetime):
        return int(value.timestamp())
    return value


def vhosts(state: State, vhost: str | None) -> Iterable[VHost]:
    if vhost is None:
        return state.vhosts.values()
    vh = state.vhosts.get(vhost)
    return [vh] if vh is not None else []


def queue_type(q: Queue) -> str:
    kind = q.arguments.get("x-queue-type")
    return jsonable(kind) if kind else "classic"


def queue_json(state: State, node: str, q: Queue,
               stats: Callable[[Queue], dict[str, Any]] | None = None) -> dict[str, Any]:
    ready, unacked = q.ready_count(), q.unacked
    owner = q.exclusive_owner
    return {
        "name": q.name, "vhost": q.vhost, "durable": q.durable, "auto_delete": q.auto_delete,
        "exclusive": owner is not None, "arguments": jsonable(q.arguments),
        "type": queue_type(q), "state": "running", "node": q.home[0] or node,
        "owner_pid_details": {"name": f"{owner[0]}:{owner[1]}"} if owner else None,
        "consumers": len(q.consumers),
        "single_active_consumer_tag": (q.active_consumer[1] if q.active_consumer else None),
        "exclusive_consumer_tag": next((c.tag for c in q.consumers.values()
                                        if q.exclusive_consumer), None),
        "messages": ready + unacked, "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "messages_details": RATE, "messages_ready_details": RATE,
        "messages_unacknowledged_details": RATE,
        "message_bytes_ready": q.ready_bytes if q.max_length_bytes is not None else None,
        "policy": None, "operator_policy": None, "effective_policy_definition": {},
        "message_stats": stats(q) if stats is not None else {},
    }


def queues(state: State, node: str, vhost: str | None = None,
           stats: Callable[[Queue], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [queue_json(state, node, q, stats) for vh in vhosts(state, vhost)
            for q in vh.queues.values() if not q.deleted]


def exchange_json(vhost: str, x: Exchange) -> dict[str, Any]:
    return {"name": x.name, "vhost": vhost, "type": x.type, "durable": x.durable,
            "auto_delete": x.auto_delete, "internal": x.internal,
            "arguments": jsonable(x.arguments), "user_who_performed_action": "rmq-internal"
            if x.name == "" or x.name.startswith("amq.") else "",
            "policy": None}


def exchanges(state: State, vhost: str | None = None) -> list[dict[str, Any]]:
    return [exchange_json(vh.name, x) for vh in vhosts(state, vhost)
            for x in vh.exchanges.values()]


def properties_key(routing_key: str, arguments: dict[str, Any]) -> str:
    """RabbitMQ's name of a binding in URLs: the routing key, and a digest of the
    arguments after "~" when there are any ("~" alone for an empty key)."""
    key = _quote(routing_key)
    if not arguments:
        return key or "~"
    digest = hashlib.sha256(repr(sorted(jsonable(arguments).items())).encode()).digest()
    return f"{key}~{base64.urlsafe_b64encode(digest[:9]).decode()}"


def _quote(name: str) -> str:
    """RabbitMQ's quote_binding: quote_plus, then "~" escaped (it separates the parts)."""
    return urllib.parse.quote_plus(name, safe="").replace("~", "%7E")


def binding_json(vhost: str, source: str, dest_is_exchange: bool, dest: str,
                 routing_key: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"source": source, "vhost": vhost, "destination": dest,
            "destination_type": "exchange" if dest_is_exchange else "queue",
            "routing_key": routing_key, "arguments": jsonable(arguments),
            "properties_key": properties_key(routing_key, arguments)}


def _bindings(vh: VHost) -> Iterator[dict[str, Any]]:
    # The default exchange binds every queue by its name (RabbitMQ lists these first).
    for q in vh.queues.values():
        if not q.deleted:
            yield binding_json(vh.name, "", False, q.name, q.name, {})
    # The others in RabbitMQ's order: source, routing key, destination (exchanges first).
    found = [(x.name, rk, not is_x, dest, args) for x in vh.exchanges.values()
             for ((is_x, dest), rk, _frozen), args in x.bindings.items()]
    found.sort(key=lambda b: b[:4])
    for source, rk, to_queue, dest, args in found:
        yield binding_json(vh.name, source, not to_queue, dest, rk, args)


def bindings(state: State, vhost: str | None = None) -> list[dict[str, Any]]:
    return [b for vh in vhosts(state, vhost) for b in _bindings(vh)]


def consumers(state: State, vhost: str | None = None,
              peers: Peers | None = None) -> list[dict[str, Any]]:
    out = []
    for vh in vhosts(state, vhost):
        for q in vh.queues.values():
            for c in q.consumers.values():
                out.append({
                    "queue": {"name": q.name, "vhost": vh.name},
                    "consumer_tag": c.tag, "exclusive": q.exclusive_consumer,
                    "ack_required": not c.no_ack, "prefetch_count": c.prefetch,
                    "active": c.active, "activity_status": "up" if c.active else "waiting",
                    "arguments": jsonable(c.arguments),
                    "channel_details": channel_details(c.ch, state, peers),
                })
    return out


# Peers of this node's own connections, (host, port) by connection key: only the node
# a client is connected to knows them.
Peers = dict[tuple[str, int], tuple[str, int]]


def connection_name(key: tuple[str, int]) -> str:
    """Unique in the cluster, and names the node that holds the connection."""
    return f"{key[0]}:{key[1]}"


def channel_number(ch: tuple[str, int, int]) -> int:
    return ch[2] & 0xFFFF  # the bits above count the channel number's reuses


def channel_name(ch: tuple[str, int, int]) -> str:
    return f"{connection_name(ch[:2])} ({channel_number(ch)})"


def channel_details(ch: tuple[str, int, int], state: State,
                    peers: Peers | None = None) -> dict[str, Any]:
    conn = state.conns.get(ch[:2])
    host, port = (peers or {}).get(ch[:2], (None, None))
    return {"name": channel_name(ch), "number": channel_number(ch), "node": ch[0],
            "connection_name": connection_name(ch[:2]),
            "user": conn.user if conn else "", "peer_host": host, "peer_port": port}


def channels(state: State, vhost: str | None = None,
             peers: Peers | None = None) -> list[dict[str, Any]]:
    out = []
    for key, ch in state.channels.items():
        if vhost is not None and ch.vhost != vhost:
            continue
        conn = state.conns.get(key[:2])
        host, port = (peers or {}).get(key[:2], (None, None))
        out.append({
            "name": channel_name(key), "number": channel_number(key), "node": key[0],
            "vhost": ch.vhost, "user": conn.user if conn else "",
            "connection_details": {"name": connection_name(key[:2]), "peer_host": host,
                                   "peer_port": port},
            "consumer_count": len(ch.consumers),
            "messages_unacknowledged": len(ch.unacked),
            "prefetch_count": ch.consumer_prefetch, "global_prefetch_count": ch.global_prefetch,
            "state": "running" if ch.flow else "flow",
        })
    return out


def totals(state: State) -> dict[str, Any]:
    ready = unacked = n_queues = n_consumers = 0
    for vh in state.vhosts.values():
        for q in vh.queues.values():
            if q.deleted:
                continue
            n_queues += 1
            ready += q.ready_count()
            unacked += q.unacked
            n_consumers += len(q.consumers)
    return {
        "object_totals": {
            "connections": len(state.conns), "channels": len(state.channels),
            "exchanges": sum(len(vh.exchanges) for vh in state.vhosts.values()),
            "queues": n_queues, "consumers": n_consumers},
        "queue_totals": {
            "messages": ready + unacked, "messages_ready": ready,
            "messages_unacknowledged": unacked, "messages_details": RATE,
            "messages_ready_details": RATE, "messages_unacknowledged_details": RATE},
    }
