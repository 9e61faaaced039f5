"""The replicated state as the management API shows it: RabbitMQ 3.10's JSON for users and
permissions, queues, exchanges, bindings, consumers and channels. Pure functions of the state (every node
answers the same, cluster-wide); the HTTP handlers are in node/mgmt/objects.py.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
import math
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cluster.machine.policies import effective_definition
from cluster.machine.state import Exchange, Queue, State, VHost

RATE = {"rate": 0.0}


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who asks, and what RabbitMQ's management plugin lets them see
    (rabbit_mgmt_util:filter_vhost, filter_user, is_monitor):

    * queues, exchanges, bindings: an administrator sees every vhost's; anyone else
      (monitoring users too) only those of the vhosts it has permissions in;
    * connections, channels, consumers: a monitor (administrator or monitoring) sees
      everyone's; anyone else only its own (the connection's user is itself);
    * overview totals: a monitor's are the cluster's; anyone else's count only what it
      may see (its vhosts' queues and messages, its own connections and channels).

    ``vhosts`` is None when every vhost is visible."""

    user: str
    admin: bool
    monitor: bool
    vhosts: frozenset[str] | None

    @classmethod
    def of(cls, state: State, user: str, tags: Iterable[str]) -> Viewer:
        tags = set(tags)
        admin = "administrator" in tags
        return cls(user, admin, admin or "monitoring" in tags,
                   None if admin else frozenset(v for u, v in state.permissions if u == user))

    def sees_vhost(self, vhost: str) -> bool:
        return self.vhosts is None or vhost in self.vhosts

    def sees_user(self, user: str) -> bool:
        """May see a connection, channel or consumer of ``user``."""
        return self.monitor or user == self.user

    def may_close(self, user: str) -> bool:
        """May close a connection of ``user`` (RabbitMQ: administrators, or its own)."""
        return self.admin or user == self.user


def user_json(u: Any) -> dict[str, Any]:
    return {"name": u.name, "password_hash": u.password_hash, "hashing_algorithm": u.hashing,
            "tags": list(u.tags), "limits": dict(u.limits)}


def permission_json(key: tuple[str, str], p: Any) -> dict[str, Any]:
    return {"user": key[0], "vhost": key[1], "configure": p.configure, "write": p.write,
            "read": p.read}


def policy_json(vhost: str, p: Any) -> dict[str, Any]:
    """A policy or operator policy (cluster/machine/state.py Policy), as RabbitMQ's API."""
    return {"vhost": vhost, "name": p.name, "pattern": p.pattern, "apply-to": p.apply_to,
            "definition": jsonable(p.definition), "priority": p.priority}


def topic_json(key: tuple[str, str, str], tp: tuple[str, str]) -> dict[str, Any]:
    return {"user": key[0], "vhost": key[1], "exchange": key[2], "write": tp[0], "read": tp[1]}


def jsonable(value: Any) -> Any:
    """AMQP field values (bytes, decimals, timestamps, nested tables) as JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, decimal.Decimal):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or Infinity (an AMQP double may be either)
    if isinstance(value, datetime.datetime):
        return int(value.timestamp())
    return value


def vhosts(state: State, vhost: str | None, viewer: Viewer | None = None) -> list[VHost]:
    """The vhosts a listing covers (one, or all), less those ``viewer`` may not see. A
    list: the listings below iterate copies, so a handler may build them in slices with
    the event loop running in between (node/mgmt/framework.py ``listing``)."""
    if vhost is None:
        found = list(state.vhosts.values())
    else:
        vh = state.vhosts.get(vhost)
        found = [vh] if vh is not None else []
    return found if viewer is None else [vh for vh in found if viewer.sees_vhost(vh.name)]


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
        "policy": q.policy, "operator_policy": q.operator_policy,
        "effective_policy_definition": jsonable(effective_definition(
            state.vhosts[q.vhost], q.policy, q.operator_policy))
        if q.policy or q.operator_policy else {},
        "message_stats": stats(q) if stats is not None else {},
    }


def queues(state: State, node: str, vhost: str | None = None,
           stats: Callable[[Queue], dict[str, Any]] | None = None,
           viewer: Viewer | None = None) -> Iterator[dict[str, Any]]:
    for vh in vhosts(state, vhost, viewer):
        for q in list(vh.queues.values()):
            if not q.deleted:
                yield queue_json(state, node, q, stats)


def exchange_json(vhost: str, x: Exchange) -> dict[str, Any]:
    return {"name": x.name, "vhost": vhost, "type": x.type, "durable": x.durable,
            "auto_delete": x.auto_delete, "internal": x.internal,
            "arguments": jsonable(x.arguments), "user_who_performed_action": "rmq-internal"
            if x.name == "" or x.name.startswith("amq.") else "",
            "policy": x.policy}


def exchanges(state: State, vhost: str | None = None,
              viewer: Viewer | None = None) -> Iterator[dict[str, Any]]:
    for vh in vhosts(state, vhost, viewer):
        for x in list(vh.exchanges.values()):
            yield exchange_json(vh.name, x)


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
    for q in list(vh.queues.values()):
        if not q.deleted:
            yield binding_json(vh.name, "", False, q.name, q.name, {})
    # The others in RabbitMQ's order: source, routing key, destination (exchanges first).
    found = [(x.name, rk, not is_x, dest, args) for x in vh.exchanges.values()
             for ((is_x, dest), rk, _frozen), args in x.bindings.items()]
    found.sort(key=lambda b: b[:4])
    for source, rk, to_queue, dest, args in found:
        yield binding_json(vh.name, source, not to_queue, dest, rk, args)


def bindings(state: State, vhost: str | None = None,
             viewer: Viewer | None = None) -> Iterator[dict[str, Any]]:
    for vh in vhosts(state, vhost, viewer):
        yield from _bindings(vh)


def consumers(state: State, vhost: str | None = None, peers: Peers | None = None,
              viewer: Viewer | None = None) -> Iterator[dict[str, Any]]:
    """Consumers of the vhost (or all); a viewer who is not a monitor sees only those on
    its own connections (RabbitMQ's rabbit_mgmt_wm_consumers:filter_user), found through
    them: another tenant's million consumers cost it nothing."""
    if viewer is not None and not viewer.monitor:
        for _key, ch in own_channels(state, viewer.user, vhost):
            for c in list(ch.consumers.values()):
                q = state.queues.get(c.qid)
                if q is not None and not q.deleted:
                    yield consumer_json(state, q, c, peers)
        return
    for vh in vhosts(state, vhost):
        for q in list(vh.queues.values()):
            for c in list(q.consumers.values()):
                yield consumer_json(state, q, c, peers)


def own_channels(state: State, user: str,
                 vhost: str | None = None) -> list[tuple[tuple[str, int, int], Any]]:
    """(key, channel) of every channel on ``user``'s connections (of ``vhost``)."""
    out = []
    for key, conn in state.conns.items():
        if conn.user == user and (vhost is None or conn.vhost == vhost):
            for num in conn.channels:
                ch = state.channels.get((key[0], key[1], num))
                if ch is not None:
                    out.append(((key[0], key[1], num), ch))
    return out


def queue_consumers(state: State, q: Queue, peers: Peers | None = None) -> list[dict[str, Any]]:
    return [consumer_json(state, q, c, peers) for c in q.consumers.values()]


def consumer_json(state: State, q: Queue, c: Any, peers: Peers | None) -> dict[str, Any]:
    return {
        "queue": {"name": q.name, "vhost": q.vhost},
        "consumer_tag": c.tag, "exclusive": q.exclusive_consumer,
        "ack_required": not c.no_ack, "prefetch_count": c.prefetch,
        "active": c.active, "activity_status": "up" if c.active else "waiting",
        "arguments": jsonable(c.arguments),
        "channel_details": channel_details(c.ch, state, peers),
    }


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


def channels(state: State, vhost: str | None = None, peers: Peers | None = None,
             viewer: Viewer | None = None) -> Iterator[dict[str, Any]]:
    if viewer is not None and not viewer.monitor:
        found = own_channels(state, viewer.user, vhost)
    else:
        found = [(key, ch) for key, ch in state.channels.items()
                 if vhost is None or ch.vhost == vhost]
    for key, ch in found:
        yield channel_json(state, key, ch, peers)


def channel_json(state: State, key: tuple[str, int, int], ch: Any,
                 peers: Peers | None = None) -> dict[str, Any]:
    conn = state.conns.get(key[:2])
    host, port = (peers or {}).get(key[:2], (None, None))
    return {
        "name": channel_name(key), "number": channel_number(key), "node": key[0],
        "vhost": ch.vhost, "user": conn.user if conn else "",
        "connection_details": {"name": connection_name(key[:2]), "peer_host": host,
                               "peer_port": port},
        "consumer_count": len(ch.consumers),
        "messages_unacknowledged": len(ch.unacked),
        "prefetch_count": ch.consumer_prefetch, "global_prefetch_count": ch.global_prefetch,
        "state": "running" if ch.flow else "flow",
    }


def totals(state: State, viewer: Viewer | None = None) -> dict[str, Any]:
    """Object and message totals; for a viewer who is not a monitor, of what it may see
    only, as RabbitMQ's overview for such a user (which has no consumer count)."""
    mine = viewer is not None and not viewer.monitor
    shown = vhosts(state, None, viewer if mine else None)
    ready = unacked = n_queues = n_consumers = 0
    for vh in shown:
        for q in vh.queues.values():
            if q.deleted:
                continue
            n_queues += 1
            ready += q.ready_count()
            unacked += q.unacked
            n_consumers += len(q.consumers)
    objects: dict[str, int] = {
        "exchanges": sum(len(vh.exchanges) for vh in shown), "queues": n_queues}
    if mine:
        assert viewer is not None
        chans = own_channels(state, viewer.user)
        objects.update(connections=sum(c.user == viewer.user for c in state.conns.values()),
                       channels=len(chans),
                       consumers=sum(len(ch.consumers) for _, ch in chans))
    else:
        objects.update(connections=len(state.conns), channels=len(state.channels),
                       consumers=n_consumers)
    return {
        "object_totals": objects,
        "queue_totals": {
            "messages": ready + unacked, "messages_ready": ready,
            "messages_unacknowledged": unacked, "messages_details": RATE,
            "messages_ready_details": RATE, "messages_unacknowledged_details": RATE},
    }
