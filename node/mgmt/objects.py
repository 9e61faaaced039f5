"""Management API for the overview, queues, exchanges, bindings, consumers, channels and
connections: RabbitMQ 3.10's paths, JSON, status codes and error bodies.

Listings come from the replicated state, so every node answers for the whole cluster
(node/mgmt/views.py). Changes (declare, delete, bind, purge, get, publish) run as AMQP
commands on a channel of the request's own (node/mgmt/framework.py ApiSession): the
machine checks them, and the request user's permissions, exactly as it does for a
client's, and the reply or channel error that comes back becomes the HTTP answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import struct
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any

from aiohttp import web

from cluster import commands as C
from cluster import effects as E
from cluster.machine.state import State
from node.amqp.stats import Declared
from node.mgmt import listing as L
from node.mgmt import views
from node.mgmt.framework import (
    INLINE_MAX,
    INLINE_S,
    PLACEHOLDER,
    ApiSession,
    Node,
    Refusal,
    Unreachable,
    bad_request,
    body,
    checked,
    error,
    flag,
    forward,
    forward_to,
    gather,
    in_worker,
    listing,
    needs,
    no_content,
    node_of,
    not_found,
    product_version,
    rates,
    run,
    state,
    unauthorised,
)
from node.mgmt.input import check_arguments, check_name, check_short
from node.mgmt.rates import Local, Rates
from protocol.fields import check_properties
from protocol.properties import decode_properties, encode_properties

routes = web.RouteTableDef()

GET_MAX = 10_000  # messages one /get may take
GET_CHUNK = 100  # of them to a Raft entry at most
GET_BYTES = 64 << 20  # taken until this many bytes of bodies are held: the answer is bounded
ACKMODES = ("ack_requeue_true", "ack_requeue_false", "reject_requeue_true",
            "reject_requeue_false")


def _arguments(data: dict[str, Any]) -> dict[str, Any]:
    """The request's argument table (node/mgmt/input.py: 64-bit integers, finite numbers,
    short keys, bounded size)."""
    args: dict[str, Any] = checked(check_arguments, data.get("arguments"))
    return args


def _short(value: Any, what: str, empty: bool = True) -> str:
    """A name (not empty unless ``empty``) or routing key: at most 255 bytes of UTF-8."""
    text: str = checked(check_short if empty else check_name, value, what)
    return text


def _bool(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if isinstance(value, str):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise bad_request(f"{key} must be true or false")
    return value


def viewer(request: web.Request) -> views.Viewer:
    """What the request's user may see (node/mgmt/views.py Viewer), once per request."""
    found: views.Viewer | None = request.get("viewer")
    if found is None:
        found = request["viewer"] = views.Viewer.of(state(request), request["user"],
                                                    request["tags"])
    return found


def _visible(request: web.Request, vhost: str | None) -> bool:
    """The vhost's queues, exchanges and bindings are the user's to see."""
    return vhost is None or viewer(request).sees_vhost(vhost)


def _vhost_param(request: web.Request, monitors_see_all: bool = False) -> str | None:
    """The path's vhost: 404 when there is none, 401 when the user may not look into it
    (RabbitMQ's is_authorized_vhost: an administrator, or a user with permissions there;
    ``monitors_see_all``: is_authorized_vhost_visible, where a monitor may too)."""
    vhost = request.match_info.get("vhost")
    if vhost is None:
        return None
    if vhost not in state(request).vhosts:
        raise not_found()
    if not (_visible(request, vhost) or (monitors_see_all and viewer(request).monitor)):
        raise unauthorised("Not_Authorized")
    return vhost


# --- overview ------------------------------------------------------------------------------


@routes.get("/api/overview")
@needs("management")
async def overview(request: web.Request) -> web.Response:
    """RabbitMQ's overview; a user who is not a monitor sees the totals and message
    rates of what it may see only (its vhosts, its own connections)."""
    node = node_of(request)
    st: State = state(request)
    who = viewer(request)
    return web.json_response({
        "management_version": "3.10.8", "rabbitmq_version": "3.10.8",
        "product_name": "RaftMQ", "product_version": product_version(),
        "cluster_name": "raftmq", "node": node.node_id,
        "erlang_version": "n/a", "rates_mode": "basic",
        **views.totals(st, who),
        "message_stats": rates(request).overview(
            _seconds(request, "msg_rates_age"), _seconds(request, "msg_rates_incr") or 1.0,
            None if who.monitor else who.vhosts),
        "churn_rates": rates(request).churn_rates(local_churn(node)),
        **_listeners(node),
    })


def _listeners(node: Node) -> dict[str, Any]:
    """The overview's listeners and contexts (RabbitMQ's protocol names: amqp, amqp/ssl,
    http, https; a context per management port, "ssl": "true" on the HTTPS one)."""
    cfg = node.cfg
    ports = [("amqp", cfg.amqp_host, cfg.amqp_port)]
    if cfg.tls_cert and cfg.tls_port:
        ports.append(("amqp/ssl", cfg.tls_host or cfg.amqp_host, cfg.tls_port))
    if cfg.management_port:
        ports.append(("http", cfg.management_host, cfg.management_port))
    if cfg.management_tls_cert and cfg.management_tls_port:
        ports.append(("https", cfg.management_host, cfg.management_tls_port))
    contexts: list[dict[str, Any]] = [
        {"node": node.node_id, "description": "RaftMQ Management", "path": "/",
         "port": str(port), **({"ssl": "true"} if protocol == "https" else {})}
        for protocol, _host, port in ports if protocol in ("http", "https")]
    return {"listeners": [{"node": node.node_id, "protocol": protocol, "ip_address": host,
                           "port": port} for protocol, host, port in ports if port],
            "contexts": contexts}


def local_churn(node: Node) -> tuple[int, ...]:
    """This node's churn counts (node/mgmt/rates.py CHURN, the first five)."""
    m = node.metrics
    live = sum(len(conn.session.channels) for conn in list(node.connections.values()))
    return (m.connections_opened, m.connections_closed, m.channels_opened,
            max(0, m.channels_opened - live), Declared.of(node.node_id))


def local_counts(node: Node) -> Local:
    """What node/mgmt/rates.py samples of this node's own clients."""
    conns = list(node.connections.values())
    return Local(local_churn(node),
                 {ch.key: ch.stats.counts() for conn in conns
                  for ch in list(conn.session.channels.values())},
                 {conn.key: conn.octets.counts() for conn in conns})


# --- queues --------------------------------------------------------------------------------


@routes.get("/api/queues")
@routes.get("/api/queues/{vhost}")
@needs("management")
async def list_queues(request: web.Request) -> web.Response:
    vhost = _vhost_param(request)
    return await listing(request, views.queues(state(request), node_of(request).node_id,
                                                vhost, rates(request).queue, viewer(request)))


def _queue(request: web.Request) -> Any:
    vhost = _vhost_param(request)
    assert vhost is not None
    q = state(request).vhosts[vhost].queues.get(request.match_info["name"])
    if q is None or q.deleted:
        raise not_found()
    return q


@routes.get("/api/queues/{vhost}/{name}")
@needs("management")
async def get_queue(request: web.Request) -> web.Response:
    q = _queue(request)
    st = state(request)
    info = views.queue_json(st, node_of(request).node_id, q, rates(request).queue)
    # a queue may have a million consumers (2,047 channels x 1,000 on each connection)
    consumers, building = await gather(
        views.consumer_json(st, q, c, _peers(request)) for c in list(q.consumers.values()))
    info["consumer_details"] = consumers
    if len(consumers) <= INLINE_MAX and building <= INLINE_S:
        return web.json_response(info)
    text = await in_worker(request, _queue_page_json, info)
    return web.Response(text=text, content_type="application/json")


def _queue_page_json(info: dict[str, Any]) -> str:
    """The queue's page as JSON, its consumers one by one (L.encode lets the
    loop's thread in between)."""
    details = info.pop("consumer_details")
    rest = L.encode(info)
    return f'{rest[:-1]}, "consumer_details": {L.encode(details)}}}'



@routes.put("/api/queues/{vhost}/{name}")
@needs("management")
async def put_queue(request: web.Request) -> web.Response:
    vhost = request.match_info["vhost"]
    name = _short(request.match_info["name"], "queue name", empty=False)
    data = await body(request)
    existed = name in state(request).vhosts.get(vhost, _NO_VHOST).queues
    await run(request, vhost, C.QueueDeclare(
        _ch(request), name, False, _bool(data, "durable", True), False,
        _bool(data, "auto_delete", False), False, _arguments(data)))
    return web.Response(status=204 if existed else 201)


@routes.delete("/api/queues/{vhost}/{name}")
@needs("management")
async def delete_queue(request: web.Request) -> web.Response:
    _queue(request)
    await run(request, request.match_info["vhost"], C.QueueDelete(
        _ch(request), request.match_info["name"], flag(request, "if-unused"),
        flag(request, "if-empty"), False))
    return no_content()


@routes.delete("/api/queues/{vhost}/{name}/contents")
@needs("management")
async def purge_queue(request: web.Request) -> web.Response:
    _queue(request)
    await run(request, request.match_info["vhost"],
              C.QueuePurge(_ch(request), request.match_info["name"], False))
    return no_content()


@routes.post("/api/queues/{vhost}/{name}/get")
@needs("management")
async def get_messages(request: web.Request) -> web.Response:
    """RabbitMQ's "get messages": up to ``count``, then acked (ack_requeue_false), or
    rejected or requeued as ``ackmode`` says; requeued ones come back redelivered."""
    q = _queue(request)
    data = await body(request)
    count, ackmode = _int(data.get("count", 1)), data.get("ackmode", "ack_requeue_true")
    encoding, truncate = data.get("encoding", "auto"), _int(data.get("truncate"))
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= GET_MAX:
        raise bad_request(f"count must be an integer from 1 to {GET_MAX}")
    if ackmode not in ACKMODES:
        raise bad_request(f"ackmode must be one of {', '.join(ACKMODES)}")
    if encoding not in ("auto", "base64"):
        raise bad_request("encoding must be auto or base64")
    if truncate is not None and (not isinstance(truncate, int) or isinstance(truncate, bool)
                                 or truncate < 0):
        raise bad_request("truncate must be a non-negative integer")
    got = await _get_in_chunks(request, q, count, ackmode)
    out = []
    for ef, rec in got:
        if not isinstance(ef, E.GetOk) or rec is None:
            continue
        exchange, routing_key, props, payload = rec
        shown = payload[:truncate] if truncate is not None else payload
        text, how = _payload(bytes(shown), encoding)
        out.append({"payload_bytes": len(payload), "redelivered": ef.redelivered,
                    "exchange": exchange, "routing_key": routing_key,
                    "message_count": ef.message_count,
                    "properties": views.jsonable(_properties(props)), "payload": text,
                    "payload_encoding": how})
    return web.json_response(out)


async def _get_in_chunks(request: web.Request, q: Any, count: int,
                         ackmode: str) -> list[tuple[Any, Any]]:
    """Up to ``count`` messages on one session, stopping once GET_BYTES of bodies are read
    (10,000 messages of 128 MiB would be 1.2 TiB in one answer) or the queue is empty;
    then what was read is acked or rejected as ``ackmode`` says, and the session's close
    requeues the rest. The first message comes alone (the session opens in its entry),
    the rest in entries sized by the bodies seen so far; past the budget a message's
    bytes are not even read (ApiSession.budget)."""
    session = ApiSession(node_of(request), request["user"], q.vhost)
    session.budget = GET_BYTES
    closed = False
    try:
        taken = 0
        n = 1
        while taken < count and session.read_bytes < GET_BYTES:
            gets = [C.Get(PLACEHOLDER, q.name, False) for _ in range(n)]
            new = await session.step(*gets, opening=not taken)
            taken += n
            if sum(1 for ef, _ in new if isinstance(ef, E.GetOk)) < n:
                break  # the queue is empty
            mean = max(1, session.read_bytes // taken)
            n = max(1, min(GET_CHUNK, count - taken, (GET_BYTES - session.read_bytes) // mean))
        shown = [ef.delivery_tag for ef, rec in session.effects
                 if isinstance(ef, E.GetOk) and rec is not None]
        last: list[C.Command] = []
        if shown and ackmode == "ack_requeue_false":  # (tags rise: "up to the last shown")
            last.append(C.Ack(PLACEHOLDER, max(shown), True))
        elif shown and ackmode == "reject_requeue_false":
            last.append(C.Nack(PLACEHOLDER, max(shown), True, False))
        await session.step(*last, closing=True)
        closed = True
    finally:
        if not closed:
            session.abandon()
        session.forget()
    return session.effects


def _int(value: Any) -> Any:
    """Numbers may come as strings (rabbitmqadmin sends them so)."""
    if isinstance(value, str) and value.strip().lstrip("-").isdecimal() and value.isascii():
        return int(value)
    return value


def _payload(data: bytes, encoding: str) -> tuple[str, str]:
    if encoding == "auto":
        try:
            return data.decode("utf-8"), "string"
        except UnicodeDecodeError:
            pass
    return base64.b64encode(data).decode(), "base64"


def _properties(props: bytes) -> dict[str, Any]:
    decoded = decode_properties(props) if props and props != b"\x00\x00" else {}
    if "message_type" in decoded:
        decoded["type"] = decoded.pop("message_type")
    return decoded


# --- exchanges -----------------------------------------------------------------------------


@routes.get("/api/exchanges")
@routes.get("/api/exchanges/{vhost}")
@needs("management")
async def list_exchanges(request: web.Request) -> web.Response:
    return await listing(request, views.exchanges(state(request), _vhost_param(request),
                                                   viewer(request)))


def _exchange_name(name: str) -> str:
    """RabbitMQ's URLs name the default exchange "amq.default"."""
    return "" if name == "amq.default" else name


def _exchange(request: web.Request) -> Any:
    vhost = _vhost_param(request)
    assert vhost is not None
    x = state(request).vhosts[vhost].exchanges.get(_exchange_name(request.match_info["name"]))
    if x is None:
        raise not_found()
    return x


@routes.get("/api/exchanges/{vhost}/{name}")
@needs("management")
async def get_exchange(request: web.Request) -> web.Response:
    return web.json_response(views.exchange_json(request.match_info["vhost"],
                                                 _exchange(request)))


@routes.put("/api/exchanges/{vhost}/{name}")
@needs("management")
async def put_exchange(request: web.Request) -> web.Response:
    vhost = request.match_info["vhost"]
    name = _short(request.match_info["name"], "exchange name", empty=False)
    data = await body(request)
    kind = data.get("type")
    if not isinstance(kind, str) or not kind:
        raise bad_request("type is required (direct, fanout, topic, headers)")
    kind = _short(kind, "type")
    existed = name in state(request).vhosts.get(vhost, _NO_VHOST).exchanges
    await run(request, vhost, C.ExchangeDeclare(
        _ch(request), name, kind, False, _bool(data, "durable", True),
        _bool(data, "auto_delete", False), _bool(data, "internal", False), False,
        _arguments(data)))
    return web.Response(status=204 if existed else 201)


@routes.delete("/api/exchanges/{vhost}/{name}")
@needs("management")
async def delete_exchange(request: web.Request) -> web.Response:
    _exchange(request)
    await run(request, request.match_info["vhost"], C.ExchangeDelete(
        _ch(request), request.match_info["name"], flag(request, "if-unused"), False))
    return no_content()


@routes.post("/api/exchanges/{vhost}/{name}/publish")
@needs("management")
async def publish(request: web.Request) -> web.Response:
    """{"routed": bool}: whether some queue took the message (it is published mandatory
    on the session's channel; an unroutable one comes back as a basic.return)."""
    x = _exchange(request)
    data = await body(request)
    rk, payload = data.get("routing_key", ""), data.get("payload", "")
    props, how = data.get("properties"), data.get("payload_encoding", "string")
    props = {} if props is None else props
    if not isinstance(payload, str) or not isinstance(props, dict):
        raise bad_request("payload must be a string, properties an object")
    rk = checked(check_short, rk, "routing_key")
    if how not in ("string", "base64"):
        raise bad_request("payload_encoding must be string or base64")
    try:
        raw = base64.b64decode(payload, validate=True) if how == "base64" else \
            payload.encode()
    except (binascii.Error, ValueError):  # a lone surrogate is a UnicodeEncodeError
        raise bad_request(f"payload is not valid {'base64' if how == 'base64' else 'Unicode'}"
                          ) from None
    encoded = _encode_properties(props)
    refused = spoofed_user_id(props, request["user"], request["tags"])
    if refused is not None:
        raise bad_request(refused)
    got = await run(request, request.match_info["vhost"], C.Publish(
        _ch(request), x.name, rk, True, encoded, raw, 0))
    return web.json_response({"routed": not any(isinstance(ef, E.Return) for ef, _ in got)})


def spoofed_user_id(props: dict[str, Any], user: str, tags: Iterable[str]) -> str | None:
    """The refusal of a ``user_id`` that is not the publisher's login, as RabbitMQ's
    channel refuses it (rabbit_channel:check_user_id_header: 406, unless the user has
    the ``impersonator`` tag); its management API answers that channel error as 400."""
    uid = props.get("user_id")
    if uid is None or uid == user or "impersonator" in tags:
        return None
    return (f"406 PRECONDITION_FAILED - user_id property set to '{uid}' but authenticated "
            f"user was '{user}'")


SHORT_PROPERTIES = ("content_type", "content_encoding", "correlation_id", "reply_to",
                    "expiration", "message_id", "type", "user_id", "app_id", "cluster_id")
OCTET_PROPERTIES = ("delivery_mode", "priority")


def _encode_properties(props: dict[str, Any]) -> bytes:
    """The API's message properties (RabbitMQ's names) as AMQP basic properties, each
    value checked for its AMQP type first: a 400 naming the property, never a 500."""
    unknown = set(props) - {*SHORT_PROPERTIES, *OCTET_PROPERTIES, "headers", "timestamp"}
    if unknown:
        raise bad_request(f"unknown properties: {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for key, value in props.items():
        what = f"properties.{key}"
        if key == "expiration" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # RabbitMQ's API takes a number too
        if key in SHORT_PROPERTIES:
            kwargs["message_type" if key == "type" else key] = checked(check_short, value, what)
        elif key in OCTET_PROPERTIES:
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
                raise bad_request(f"{what} must be an integer from 0 to 255")
            kwargs[key] = value
        elif key == "timestamp":  # seconds since the epoch, a 64-bit AMQP timestamp
            if not isinstance(value, int) or isinstance(value, bool) or \
                    not 0 <= value <= TIMESTAMP_MAX:
                raise bad_request(f"{what} must be an integer number of seconds from 0 to "
                                  f"{TIMESTAMP_MAX}")
            kwargs[key] = datetime.datetime.fromtimestamp(value, datetime.UTC)
        else:  # headers: a field table
            kwargs[key] = checked(check_arguments, value, what)
    try:
        raw = encode_properties(**kwargs)
        # the same check as a client's publish gets at the edge (protocol/fields.py)
        check_properties(raw)
        return raw
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError,
            struct.error) as e:  # FieldError is a ValueError
        raise bad_request(f"invalid properties: {e}") from None


TIMESTAMP_MAX = 253402300799  # 9999-12-31T23:59:59Z: the last second datetime can hold


# --- bindings ------------------------------------------------------------------------------


@routes.get("/api/bindings")
@routes.get("/api/bindings/{vhost}")
@needs("management")
async def list_bindings(request: web.Request) -> web.Response:
    return await listing(request, views.bindings(state(request), _vhost_param(request),
                                                  viewer(request)))


@routes.get("/api/queues/{vhost}/{name}/bindings")
@needs("management")
async def queue_bindings(request: web.Request) -> web.Response:
    q = _queue(request)
    return web.json_response([b for b in views.bindings(state(request), q.vhost)
                              if b["destination_type"] == "queue"
                              and b["destination"] == q.name])


@routes.get("/api/exchanges/{vhost}/{name}/bindings/{side}")
@needs("management")
async def exchange_bindings(request: web.Request) -> web.Response:
    x = _exchange(request)
    side = request.match_info["side"]
    if side not in ("source", "destination"):
        raise not_found()
    vhost = request.match_info["vhost"]
    if side == "source":
        found = [b for b in views.bindings(state(request), vhost)
                 if b["source"] == x.name and (x.name or b["destination_type"] == "queue")]
    else:
        found = [b for b in views.bindings(state(request), vhost)
                 if b["destination_type"] == "exchange" and b["destination"] == x.name]
    return web.json_response(found)


def _between(request: web.Request) -> tuple[str, str, bool, str, list[dict[str, Any]]]:
    """(vhost, source, destination is an exchange, destination, bindings between them)."""
    vhost = _vhost_param(request)
    assert vhost is not None
    m = request.match_info
    src, dest, is_x = _exchange_name(m["source"]), m["destination"], m["kind"] == "e"
    if m["kind"] not in ("e", "q"):
        raise not_found()
    vh = state(request).vhosts[vhost]
    if src not in vh.exchanges or (dest not in (vh.exchanges if is_x else vh.queues)):
        raise not_found()
    found = [b for b in views.bindings(state(request), vhost)
             if b["source"] == src and b["destination"] == dest
             and (b["destination_type"] == "exchange") == is_x]
    return vhost, src, is_x, dest, found


@routes.get("/api/bindings/{vhost}/e/{source}/{kind}/{destination}")
@needs("management")
async def list_between(request: web.Request) -> web.Response:
    return web.json_response(_between(request)[4])


@routes.post("/api/bindings/{vhost}/e/{source}/{kind}/{destination}")
@needs("management")
async def bind(request: web.Request) -> web.Response:
    vhost, src, is_x, dest, _ = _between(request)
    if src == "":
        raise Refusal(error(403, "access_refused", "operation not permitted on the default "
                                                   "exchange"))
    data = await body(request)
    rk, args = _short(data.get("routing_key", ""), "routing_key"), _arguments(data)
    ch = _ch(request)
    await run(request, vhost, C.ExchangeBind(ch, dest, src, rk, False, args) if is_x else
              C.QueueBind(ch, dest, src, rk, False, args))
    location = "/api/bindings/{}/e/{}/{}/{}/{}".format(
        *(urllib.parse.quote(p, safe="") for p in (vhost, src, "e" if is_x else "q", dest)),
        views.properties_key(rk, args))
    return web.Response(status=201, headers={"Location": location})


@routes.get("/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}")
@needs("management")
async def get_binding(request: web.Request) -> web.Response:
    return web.json_response(_one_binding(request))


def _one_binding(request: web.Request) -> dict[str, Any]:
    found = _between(request)[4]
    props = request.match_info["props"]
    for b in found:
        if b["properties_key"] in (props, urllib.parse.quote(props, safe="")):
            return b
    raise not_found()


@routes.delete("/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}")
@needs("management")
async def unbind(request: web.Request) -> web.Response:
    b = _one_binding(request)
    vhost, src, is_x, dest, _ = _between(request)
    ch = _ch(request)
    args = _raw_arguments(state(request), vhost, src, is_x, dest, b["routing_key"],
                          b["properties_key"])
    await run(request, vhost, C.ExchangeUnbind(ch, dest, src, b["routing_key"], False, args)
              if is_x else C.QueueUnbind(ch, dest, src, b["routing_key"], args))
    return no_content()


def _raw_arguments(st: State, vhost: str, src: str, is_x: bool, dest: str, rk: str,
                   key: str) -> dict[str, Any]:
    """The binding's arguments as stored (typed AMQP values), for the unbind to match."""
    for ((dx, dname), brk, _f), args in st.vhosts[vhost].exchanges[src].bindings.items():
        if dx == is_x and dname == dest and brk == rk and \
                views.properties_key(brk, args) == key:
            return args
    return {}


# --- consumers, channels, connections ------------------------------------------------------


@routes.get("/api/consumers")
@routes.get("/api/consumers/{vhost}")
@needs("management")
async def list_consumers(request: web.Request) -> web.Response:
    return await listing(request, views.consumers(
        state(request), _vhost_param(request, monitors_see_all=True), _peers(request),
        viewer(request)))


@routes.get("/api/channels")
@routes.get("/api/vhosts/{vhost}/channels")
@needs("management")
async def list_channels(request: web.Request) -> web.Response:
    rows = _with_local(request, views.channels(
        state(request), _vhost_param(request, monitors_see_all=True), _peers(request),
        viewer(request)))
    return await listing(request, await _with_others(request, "/api/channels", rows))


@routes.get("/api/channels/{name}")
@needs("management")
async def get_channel(request: web.Request) -> web.Response:
    """One channel, named as the listings name it ("node:number (channel)"); one the user
    may not see is as missing as one that does not exist."""
    conn_name, sep, number = request.match_info["name"].rpartition(" (")
    key = _connection_key(request, conn_name)
    if key[0] != node_of(request).node_id:
        try:
            return await forward_to(request, key[0])
        except Refusal:
            pass  # (its node does not answer: what the state knows)
    st = state(request)
    for ch in st.conns[key].channels:
        full = (*key, ch)
        if sep and number == f"{views.channel_number(full)})" and full in st.channels:
            return web.json_response(next(_with_local(request, [views.channel_json(
                st, full, st.channels[full], _peers(request))])))
    raise not_found()


@routes.get("/api/connections/{name}/channels")
@needs("management")
async def connection_channels(request: web.Request) -> web.Response:
    key = _connection_key(request)
    st = state(request)
    peers = _peers(request)
    return await listing(request, _with_local(request, (
        views.channel_json(st, (*key, ch), st.channels[(*key, ch)], peers)
        for ch in list(st.conns[key].channels) if (*key, ch) in st.channels)))


def _with_local(request: web.Request,
                rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Channels with what only the node holding them knows (its own: confirm and
    transaction state, message_stats; node/amqp/stats.py)."""
    node, r = node_of(request), rates(request)
    mine = {views.channel_name(ch.key): ch for conn in list(node.connections.values())
            for ch in list(conn.session.channels.values())}
    for row in rows:
        row["user_who_performed_action"] = row["user"]
        ch = mine.get(row["name"])
        if ch is not None:
            kinds = [type(cmd) for cmd in ch.tx_commands]
            row.update(confirm=ch.confirm, transactional=ch.tx,
                       messages_unconfirmed=max(0, len(ch.unconfirmed) - len(ch.early)),
                       messages_uncommitted=kinds.count(C.Publish),
                       acks_uncommitted=kinds.count(C.Ack),
                       message_stats=r.channel(ch.key, ch.stats.counts()))
        yield row


def _seconds(request: web.Request, name: str) -> float:
    try:
        return max(0.0, min(float(request.query.get(name, 0)), 3600.0))
    except ValueError:
        raise bad_request(f"{name} must be a number of seconds") from None


def _peers(request: web.Request) -> views.Peers:
    return {c.key: (str(c.peer[0]), int(c.peer[1])) for c in node_of(request).connections.values()
            if c.peer and len(c.peer) >= 2}


def connections(node: Node, vhost: str | None = None, who: views.Viewer | None = None,
                r: Rates | None = None) -> Iterator[dict[str, Any]]:
    """Every client connection in the cluster that ``who`` may see (the state knows user,
    vhost, channels); this node adds what only it knows of its own (peer, client
    properties, TLS)."""
    st = node.raft.state
    for key, conn in list(st.conns.items()):
        if vhost is not None and conn.vhost != vhost:
            continue
        if who is not None and not who.sees_user(conn.user):
            continue
        if key[0] == node.node_id and key[1] in node.api_sessions:
            continue
        yield connection_json(node, key, conn, r)


def connection_json(node: Node, key: C.ConnKey, conn: Any,
                    r: Rates | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": views.connection_name(key), "node": key[0], "vhost": conn.vhost,
        "user": conn.user, "user_who_performed_action": conn.user,
        "channels": len(conn.channels), "state": "running",
        "protocol": "AMQP 0-9-1", "type": "network",
    }
    mine = node.connections.get(key[1]) if key[0] == node.node_id else None
    if mine is not None and mine.key == key:
        peer = mine.peer or ("", 0)
        here = mine.transport.get_extra_info("sockname") if mine.transport else None
        info.update(peer_host=peer[0], peer_port=peer[1], ssl=mine.tls,
                    host=here[0] if here else None, port=here[1] if here else None,
                    frame_max=mine.proto.frame_max, channel_max=mine.proto.channel_max,
                    timeout=mine.proto.heartbeat,
                    auth_mechanism="EXTERNAL" if mine.certificate_user else "PLAIN",
                    client_properties=views.jsonable(mine.client_properties),
                    connected_at=int((time.time() - (time.monotonic() - mine.created))
                                     * 1000),
                    blocked=mine.blocked,
                    send_pend=mine.flow.buffered if mine.flow is not None else 0,
                    **_tls_json(mine))
        name = mine.client_properties.get("connection_name")
        if isinstance(name, str | bytes):
            info["user_provided_name"] = views.jsonable(name)
        if r is not None:
            info.update(r.connection(key, mine.octets.counts()))
    return info


def _tls_json(conn: Any) -> dict[str, Any]:
    """RabbitMQ's ssl_* fields of a connection (null on a plain one)."""
    ssl_object = conn.transport.get_extra_info("ssl_object") if conn.tls and \
        conn.transport is not None else None
    cipher = ssl_object.cipher() if ssl_object is not None else None
    if ssl_object is None or cipher is None:
        return dict.fromkeys(("ssl_protocol", "ssl_cipher", "ssl_key_exchange", "ssl_hash"))
    return {"ssl_protocol": str(ssl_object.version()).lower(),
            "ssl_cipher": cipher[0], "ssl_key_exchange": None, "ssl_hash": None}


@routes.get("/api/connections")
@routes.get("/api/vhosts/{vhost}/connections")
@needs("management")
async def list_connections(request: web.Request) -> web.Response:
    rows = connections(node_of(request), _vhost_param(request, monitors_see_all=True),
                       viewer(request), rates(request))
    return await listing(request, await _with_others(request, "/api/connections", rows))


# What only the node holding a client knows of it (the peer, the client properties, the
# bytes, a channel's message_stats) is asked of the other members: for a listing
# ``?raftmq_own=true`` lists a node's own clients only, and the others' rows replace the
# skeletons the replicated state gives here; one connection or channel is the answer of
# the node holding it. A member that does not answer within OTHERS_TIMEOUT_S
# leaves its clients' rows as the state has them.
OWN_FLAG = "raftmq_own"
OTHERS_TIMEOUT_S = 2.0


async def _with_others(request: web.Request, path: str,
                       rows: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """``rows`` with each other member's own clients' rows (as it shows them) in place of
    the state's; only this node's own rows with ``?raftmq_own=true``."""
    here = node_of(request)
    if flag(request, OWN_FLAG):
        return (row for row in rows if row.get("node") == here.node_id)
    st = state(request)
    asked = [info.http_address for nid, info in list(st.nodes.items())
             if nid != here.node_id and info.http_address and not info.down
             and any(key[0] == nid for key in st.conns)]
    if not asked:
        return rows

    async def own_rows(address: str) -> list[Any]:
        try:
            answer = await forward(request, address, path, method="GET",
                                   params={OWN_FLAG: "true"}, timeout=OTHERS_TIMEOUT_S)
            found = answer.json() if answer.status == 200 else []
        except (Unreachable, ValueError):
            return []
        return found if isinstance(found, list) else []

    theirs = {row["name"]: row for found in await asyncio.gather(*map(own_rows, asked))
              for row in found if isinstance(row, dict) and isinstance(row.get("name"), str)}
    return (theirs.get(row["name"], row) for row in rows)


def _connection_key(request: web.Request, name: str | None = None) -> C.ConnKey:
    """The key of the connection the path names. One the user may not see (RabbitMQ:
    a monitor sees every connection, anyone else its own) is a 404 exactly as one that
    does not exist: names are sequential, and another tenant's must not be guessable."""
    here = node_of(request)
    node, sep, number = (request.match_info["name"] if name is None else name).rpartition(":")
    if not sep or not (number.isascii() and number.isdigit()):  # ("²".isdigit() is True)
        raise not_found()
    key = (node, int(number))
    conn = state(request).conns.get(key)
    if conn is None or not viewer(request).sees_user(conn.user) or \
            (node == here.node_id and key[1] in here.api_sessions):
        raise not_found()
    return key


@routes.get("/api/connections/{name}")
@needs("management")
async def get_connection(request: web.Request) -> web.Response:
    key = _connection_key(request)
    node = node_of(request)
    if key[0] != node.node_id:
        try:
            return await forward_to(request, key[0])
        except Refusal:
            pass  # (its node does not answer: what the state knows)
    return web.json_response(connection_json(node, key, state(request).conns[key],
                                             rates(request)))


@routes.delete("/api/connections/{name}")
@needs("management")
async def close_connection(request: web.Request) -> web.Response:
    """Close with 320 CONNECTION_FORCED and the X-Reason header's text, as RabbitMQ; a
    connection of another node is closed by that node (the request goes to it)."""
    key = _connection_key(request)
    node = node_of(request)
    if not viewer(request).may_close(state(request).conns[key].user):
        # a monitor, who may see it: RabbitMQ's is_authorized_user refusal
        raise unauthorised("User not authorised to access object")
    reason = request.headers.get("X-Reason", "Closed via management plugin")
    if key[0] != node.node_id:
        return await forward_to(request, key[0])
    mine = next((c for c in node.connections.values() if c.key == key), None)
    if mine is None:
        raise not_found()
    mine.force_close(320, f"CONNECTION_FORCED - {reason}")
    return no_content()


# --- helpers -------------------------------------------------------------------------------


_NO_VHOST: Any = type("NoVHost", (), {"queues": {}, "exchanges": {}})()


def _ch(request: web.Request) -> C.ChKey:
    return PLACEHOLDER
