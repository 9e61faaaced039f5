"""The management API: RabbitMQ's paths, JSON and status codes, on the management port.

Every request authenticates with HTTP basic auth against the replicated user table
(the same users, hashes and login throttle as AMQP). RabbitMQ's tags decide what a
user may do: ``management`` (its own view), ``monitoring`` (everything, read-only),
``administrator`` (everything, including every change). Every endpoint that changes
anything needs ``administrator``; refusals are RabbitMQ's ``401 not_authorised``.

Changes are Raft commands: a handler proposes them and answers once they are applied
(or 503 when the cluster cannot commit them in time). Every client value is checked before
it is proposed (node/mgmt_input.py): bad input is a 400 with a reason, never a 201/204 for
something not done and never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from aiohttp import ClientSession, ClientTimeout, web

from cluster import commands as C
from cluster import machine
from cluster.replica import MembershipResult
from node import alarms
from node.login import Accepted, Attempt, Refused, is_loopback
from node.maintenance import transfer_leadership
from node.mgmt.input import (
    INT64_MAX,
    INT64_MIN,
    InputError,
    check_name,
    check_regex,
    check_short,
    check_text,
    parse_json,
)
from node.passwords import ALGORITHMS, SHA256, hash_password, valid_hash

if TYPE_CHECKING:
    from node.broker import Broker

log = logging.getLogger(__name__)

REALM = 'Basic realm="RabbitMQ Management"'
APPLY_TIMEOUT_S = 10.0
MEMBERSHIP_TIMEOUT_S = 10.0
MEMBERSHIP_ATTEMPTS = 3
TAGS = ("administrator", "monitoring", "policymaker", "management", "impersonator")
MAX_TAGS = 64  # of a user or a vhost
MAX_TEXT_BYTES = 65535  # a description, a password
MAX_REQUEST_BYTES = 4 << 20  # a request's JSON body, but for a definitions import
DELETE_CHUNK = 500  # queues or exchanges deleted per Raft entry when a vhost is deleted

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
routes = web.RouteTableDef()


# --- answers ---------------------------------------------------------------------------


def error(status: int, kind: str, reason: str, **headers: str) -> web.Response:
    """RabbitMQ's error body: {"error": kind, "reason": reason}."""
    return web.json_response({"error": kind, "reason": reason}, status=status,
                             headers=headers or None)


class Refusal(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def bad_request(reason: str) -> Refusal:
    return Refusal(error(400, "bad_request", reason))


def not_found(reason: str = "Not Found") -> Refusal:
    return Refusal(error(404, "Object Not Found", reason))


def no_content() -> web.Response:
    return web.Response(status=204)


def created_or_updated(existed: bool) -> web.Response:
    return web.Response(status=204 if existed else 201)


# --- authentication ----------------------------------------------------------------------


def broker_of(request: web.Request) -> Broker:
    broker: Broker = request.app["broker"]
    return broker


async def authenticate(request: web.Request) -> tuple[str, tuple[str, ...]]:
    """(user, tags) of the request's basic credentials; raises a 401 refusal."""
    header = request.headers.get("Authorization", "")
    # No challenge for the dashboard's own requests: a browser would answer it with its
    # login prompt instead of letting the page show its form.
    challenge = {} if request.headers.get("X-Requested-With") == "XMLHttpRequest" else \
        {"WWW-Authenticate": REALM}
    if not header.startswith("Basic "):
        raise Refusal(error(401, "not_authorised", "Not_Authorized", **challenge))
    try:
        user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Refusal(error(401, "not_authorised", "Login failed")) from None
    broker = broker_of(request)
    peer = request.transport.get_extra_info("peername") if request.transport else None
    auth = broker.auth
    step: Attempt | Accepted | Refused = auth.start(peer, "PLAIN",
                                                    f"\0{user}\0{password}".encode())
    if isinstance(step, Attempt):
        if step.wait > 0:
            await asyncio.sleep(step.wait)
        step = auth.check(step, peer)
    if isinstance(step, Refused):
        if step.delay > 0:
            await asyncio.sleep(step.delay)
        raise Refusal(error(401, "not_authorised", "Login failed", **challenge))
    assert isinstance(step, Accepted)
    if step.user in broker.cfg.loopback_users and not is_loopback(peer):
        raise Refusal(error(401, "not_authorised", "Login failed"))
    record = broker.raft.state.users.get(step.user)
    return step.user, tuple(record.tags) if record is not None else ()


def needs(tag: str) -> Callable[[Handler], Handler]:
    """The request's user must have ``tag`` (administrator implies every tag,
    monitoring implies management). A Refusal raised by the handler is its answer."""

    def wrap(handler: Handler) -> Handler:
        async def run(request: web.Request) -> web.StreamResponse:
            try:
                user, tags = await authenticate(request)
                if not _has(tags, tag):
                    return error(401, "not_authorised", f"Not {tag} user")
                request["user"], request["tags"] = user, tags
                return await handler(request)
            except Refusal as r:
                return r.response

        return run

    return wrap


def _has(tags: tuple[str, ...], tag: str) -> bool:
    if "administrator" in tags:
        return True
    if tag == "management":
        return bool({"management", "monitoring", "policymaker"} & set(tags))
    return tag in tags


async def body(request: web.Request, max_bytes: int = MAX_REQUEST_BYTES) -> dict[str, Any]:
    """The request's JSON object (node/mgmt_input.py's rules: no NaN, bounded depth), of at
    most ``max_bytes`` (parsing costs the loop ~50 ms a MiB: a large body only where a
    large document is expected, a definitions import)."""
    if not request.body_exists:  # (node/web.py has read it already: can_read_body is False)
        return {}
    raw = await request.read()
    if len(raw) > max_bytes:
        raise Refusal(error(413, "bad_request", f"the request body is larger than "
                                                f"{max_bytes} bytes"))
    try:
        data = parse_json(raw)
    except InputError as e:
        raise bad_request(str(e)) from None
    if not isinstance(data, dict):
        raise bad_request("a JSON object is required")
    return data


def checked(value: Callable[[], Any]) -> Any:
    """``value()``, an InputError from it answered as 400."""
    try:
        return value()
    except InputError as e:
        raise bad_request(str(e)) from None


async def submit(request: web.Request, *cmds: C.Command) -> None:
    """Propose ``cmds`` in one Raft entry and wait until it is applied."""
    await propose_and_wait(broker_of(request), *cmds)


async def propose_and_wait(broker: Broker, *cmds: C.Command,
                           timeout: float = APPLY_TIMEOUT_S) -> None:
    """Propose ``cmds`` in this turn's Raft entry and wait until it is applied here.
    A command that cannot be encoded is refused (400) before anything is proposed; one
    the proposer left out all the same (cluster/proposer.py ``dropped``) is a 500 naming
    it, never a success; an entry not applied in ``timeout`` is a 503."""
    for cmd in cmds:
        try:
            C.check_encodable(cmd)
        except C.Unencodable as e:
            raise bad_request(str(e)) from None
    proposer = broker.proposer
    turn = proposer.turn()
    done: asyncio.Future[tuple[C.Command, ...]] = broker.loop.create_future()

    def applied() -> None:
        if not done.done():
            done.set_result(proposer.dropped(turn))

    for cmd in cmds:
        broker.propose(cmd)
    broker.after_apply(applied)
    try:
        left_out = await asyncio.wait_for(done, timeout)
    except TimeoutError:
        raise Refusal(error(503, "unavailable", "the cluster did not commit the change in "
                                                f"{timeout:g}s (no quorum?)")) from None
    lost = [type(c).__name__ for c in cmds if any(c is d for d in left_out)]
    if lost:
        raise Refusal(error(500, "internal_error", f"{', '.join(lost)} could not be "
                                                   "encoded and was not applied"))


def state(request: web.Request) -> Any:
    return broker_of(request).raft.state


def _tags(value: Any) -> tuple[str, ...]:
    """RabbitMQ takes tags as "a,b" or ["a", "b"]."""
    if value is None or value == "":
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        raise bad_request("tags must be a comma-separated string or a list of strings")
    if len(items) > MAX_TAGS:
        raise bad_request(f"more than {MAX_TAGS} tags")
    tags = []
    for t in items:
        if t.strip():
            tags.append(_text(t, "a tag", 255).strip())
    return tuple(tags)


def _regex(value: Any, what: str) -> str:
    result: str = checked(lambda: check_regex(value, what))
    return result


def _name(value: Any, what: str) -> str:
    result: str = checked(lambda: check_name(value, what))
    return result


def _text(value: Any, what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    result: str = checked(lambda: check_text(value, what, max_bytes))
    return result


# --- who am I, status ---------------------------------------------------------------------


@routes.get("/api/whoami")
@needs("management")
async def whoami(request: web.Request) -> web.Response:
    return web.json_response({"name": request["user"], "tags": list(request["tags"])})


def status(broker: Broker) -> dict[str, Any]:
    st = broker.raft.status()
    return {
        "node": broker.node_id,
        "incarnation": broker.incarnation,
        "ready": broker.ready,
        "isolated": broker.isolated,
        "raft_address": broker.cfg.raft_address,
        "raft": asdict(st),
        "nodes": {name: asdict(info) for name, info in machine.nodes(broker.raft.state).items()},
        # upgrades: the command level this node understands, the cluster's enabled level
        # and what each member announced (cluster/commands.py LEVEL)
        "levels": {"node": C.LEVEL, "cluster": broker.raft.state.level,
                   "members": dict(broker.raft.state.levels)},
        "connections": len(broker.connections),
        **resources(broker),
    }


def resources(broker: Broker) -> dict[str, Any]:
    """Memory and disk, this node's alarms and every alarm in the cluster (RabbitMQ's
    /api/nodes names: mem_used, mem_limit, mem_alarm, disk_free, disk_free_limit,
    disk_free_alarm)."""
    mon = broker.alarms.monitor
    return {
        "mem_used": mon.memory_used, "mem_limit": mon.memory_limit,
        "mem_total": mon.memory_total, "mem_alarm": mon.active[alarms.MEMORY],
        "vm_memory_high_watermark": str(mon.memory_watermark),
        "disk_free": mon.disk_free, "disk_free_limit": mon.disk_free_limit,
        "disk_free_alarm": mon.active[alarms.DISK],
        "alarms": [{"node": node, "resource": resource}
                   for node, resource in broker.alarms.in_force()],
        "publishers_blocked": broker.alarm,
    }


@routes.put("/api/nodes/{node}/limits")
@needs("administrator")
async def put_node_limits(request: web.Request) -> web.Response:
    """Change this node's memory watermark or disk free limit at run time, as
    ``rabbitmqctl set_vm_memory_high_watermark`` / ``set_disk_free_limit`` (until the
    node restarts: the command line or environment sets them at start-up)."""
    broker = broker_of(request)
    try:
        if request.match_info["node"] != broker.node_id:
            raise not_found(f"this is node {broker.node_id}: ask that node")
        data = await body(request)
        mon = broker.alarms.monitor
        try:
            if "vm_memory_high_watermark" in data:
                mon.memory_watermark = alarms.parse_memory_watermark(
                    str(data["vm_memory_high_watermark"]))
            if "disk_free_limit" in data:
                mon.disk_limit = alarms.parse_disk_limit(str(data["disk_free_limit"]))
        except ValueError as e:
            raise bad_request(str(e)) from None
        broker.alarms.check()
        return web.json_response(resources(broker))
    except Refusal as r:
        return r.response


@routes.get("/api/status")
@needs("monitoring")
async def get_status(request: web.Request) -> web.Response:
    return web.json_response(status(broker_of(request)))


# --- users -----------------------------------------------------------------------------


def user_json(u: Any) -> dict[str, Any]:
    return {"name": u.name, "password_hash": u.password_hash, "hashing_algorithm": u.hashing,
            "tags": list(u.tags), "limits": dict(u.limits)}


@routes.get("/api/users")
@needs("administrator")
async def list_users(request: web.Request) -> web.Response:
    return web.json_response([user_json(u) for u in state(request).users.values()])


@routes.get("/api/users/without-permissions")
@needs("administrator")
async def users_without_permissions(request: web.Request) -> web.Response:
    s = state(request)
    with_perms = {u for u, _ in s.permissions}
    return web.json_response([user_json(u) for n, u in s.users.items() if n not in with_perms])


@routes.get("/api/users/{name}")
@needs("administrator")
async def get_user(request: web.Request) -> web.Response:
    u = state(request).users.get(request.match_info["name"])
    if u is None:
        return error(404, "Object Not Found", "Not Found")
    return web.json_response(user_json(u))


@routes.put("/api/users/{name}")
@needs("administrator")
async def put_user(request: web.Request) -> web.Response:
    try:
        name = _name(request.match_info["name"], "user name")
        data = await body(request)
        existing = state(request).users.get(name)
        algorithm = data.get("hashing_algorithm", SHA256)
        if algorithm not in ALGORITHMS:
            raise bad_request(f"unsupported hashing_algorithm {algorithm!r}")
        if "password" in data:
            password_hash = hash_password(_text(data["password"], "password"), algorithm)
        elif "password_hash" in data:
            password_hash = _text(data["password_hash"], "password_hash")
            if not valid_hash(password_hash, algorithm):
                raise bad_request(f"password_hash is not a {algorithm} hash")
        elif existing is not None:
            password_hash, algorithm = existing.password_hash, existing.hashing
        else:
            raise bad_request("password or password_hash is required for a new user")
        tags = _tags(data.get("tags", list(existing.tags) if existing else ""))
        await submit(request, C.UserPut(name, password_hash, algorithm, tags))
        return created_or_updated(existing is not None)
    except Refusal as r:
        return r.response


@routes.delete("/api/users/{name}")
@needs("administrator")
async def delete_user(request: web.Request) -> web.Response:
    try:
        name = request.match_info["name"]
        if name not in state(request).users:
            return error(404, "Object Not Found", "Not Found")
        await submit(request, C.UserDelete(name))
        return no_content()
    except Refusal as r:
        return r.response


@routes.post("/api/users/bulk-delete")
@needs("administrator")
async def bulk_delete_users(request: web.Request) -> web.Response:
    try:
        users = (await body(request)).get("users")
        if not isinstance(users, list):
            raise bad_request("users must be a list of names")
        users = [_name(u, "a user name") for u in users]
        await submit(request, *(C.UserDelete(u) for u in users))
        return no_content()
    except Refusal as r:
        return r.response


# --- virtual hosts ------------------------------------------------------------------------


def vhost_json(vh: Any) -> dict[str, Any]:
    return {"name": vh.name, "description": vh.description, "tags": list(vh.tags),
            "tracing": False, "default_queue_type": "classic",
            "metadata": {"description": vh.description, "tags": list(vh.tags)},
            "messages": sum(q.ready_count() + q.unacked for q in vh.queues.values()),
            "messages_ready": sum(q.ready_count() for q in vh.queues.values()),
            "messages_unacknowledged": sum(q.unacked for q in vh.queues.values())}


def _visible(request: web.Request, vhost: str) -> bool:
    tags = request["tags"]
    if _has(tags, "monitoring"):
        return True
    return (request["user"], vhost) in state(request).permissions


@routes.get("/api/vhosts")
@needs("management")
async def list_vhosts(request: web.Request) -> web.Response:
    return web.json_response([vhost_json(v) for n, v in state(request).vhosts.items()
                              if _visible(request, n)])


@routes.get("/api/vhosts/{name}")
@needs("management")
async def get_vhost(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    vh = state(request).vhosts.get(name)
    if vh is None or not _visible(request, name):
        return error(404, "Object Not Found", "Not Found")
    return web.json_response(vhost_json(vh))


@routes.put("/api/vhosts/{name}")
@needs("administrator")
async def put_vhost(request: web.Request) -> web.Response:
    try:
        name = _name(request.match_info["name"], "vhost name")
        data = await body(request)
        description = _text(data.get("description", ""), "description")
        existed = name in state(request).vhosts
        await submit(request, C.VHostPut(name, description, _tags(data.get("tags"))))
        return created_or_updated(existed)
    except Refusal as r:
        return r.response


@routes.delete("/api/vhosts/{name}")
@needs("administrator")
async def delete_vhost(request: web.Request) -> web.Response:
    try:
        name = request.match_info["name"]
        if name not in state(request).vhosts:
            return error(404, "Object Not Found", "Not Found")
        await _empty_vhost(request, name)
        await submit(request, C.VHostDelete(name))
        return no_content()
    except Refusal as r:
        return r.response


async def _empty_vhost(request: web.Request, name: str) -> None:
    """Delete the vhost's queues and exchanges DELETE_CHUNK to a Raft entry first (as
    RabbitMQ deletes a vhost's queues one by one, before its connections are closed), so
    no entry removes 100,000 queues at once on every replica (measured: 2.3 s stalls).
    Best effort: exclusive queues, and whatever a chunk could not delete (an object gone
    or locked meanwhile), go with the VHostDelete that follows."""
    from node.mgmt.objects import PLACEHOLDER, ApiSession

    vh = state(request).vhosts[name]
    doomed: list[C.Command] = [C.QueueDelete(PLACEHOLDER, q.name, False, False, False)
                               for q in vh.queues.values()
                               if q.exclusive_owner is None and not q.deleted]
    doomed += [C.ExchangeDelete(PLACEHOLDER, x, False, False) for x in vh.exchanges
               if x and not x.startswith("amq.")]
    if len(doomed) <= DELETE_CHUNK:
        return  # (one entry either way)
    for i in range(0, len(doomed), DELETE_CHUNK):
        if name not in state(request).vhosts:
            return
        try:
            await ApiSession(broker_of(request), request["user"], name, system=True).run(
                *doomed[i:i + DELETE_CHUNK])
        except Refusal as r:
            if r.response.status == 503:
                raise


# --- permissions --------------------------------------------------------------------------


def permission_json(key: tuple[str, str], p: Any) -> dict[str, Any]:
    return {"user": key[0], "vhost": key[1], "configure": p.configure, "write": p.write,
            "read": p.read}


def topic_json(key: tuple[str, str, str], tp: tuple[str, str]) -> dict[str, Any]:
    return {"user": key[0], "vhost": key[1], "exchange": key[2], "write": tp[0], "read": tp[1]}


def _permissions(request: web.Request, user: str | None = None,
                 vhost: str | None = None) -> list[dict[str, Any]]:
    return [permission_json(k, p) for k, p in state(request).permissions.items()
            if (user is None or k[0] == user) and (vhost is None or k[1] == vhost)]


def _topic_permissions(request: web.Request, user: str | None = None,
                       vhost: str | None = None) -> list[dict[str, Any]]:
    return [topic_json(k, tp) for k, tp in state(request).topic_permissions.items()
            if (user is None or k[0] == user) and (vhost is None or k[1] == vhost)]


@routes.get("/api/permissions")
@needs("administrator")
async def list_permissions(request: web.Request) -> web.Response:
    return web.json_response(_permissions(request))


@routes.get("/api/users/{name}/permissions")
@needs("administrator")
async def user_permissions(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in state(request).users:
        return error(404, "Object Not Found", "Not Found")
    return web.json_response(_permissions(request, user=name))


@routes.get("/api/vhosts/{name}/permissions")
@needs("administrator")
async def vhost_permissions(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in state(request).vhosts:
        return error(404, "Object Not Found", "Not Found")
    return web.json_response(_permissions(request, vhost=name))


@routes.get("/api/permissions/{vhost}/{user}")
@needs("administrator")
async def get_permission(request: web.Request) -> web.Response:
    key = (request.match_info["user"], request.match_info["vhost"])
    p = state(request).permissions.get(key)
    if p is None:
        return error(404, "Object Not Found", "Not Found")
    return web.json_response(permission_json(key, p))


def _user_and_vhost(request: web.Request) -> tuple[str, str]:
    user, vhost = request.match_info["user"], request.match_info["vhost"]
    s = state(request)
    if vhost not in s.vhosts:
        raise bad_request(f"vhost_not_found: {vhost}")
    if user not in s.users:
        raise bad_request(f"user_not_found: {user}")
    return user, vhost


@routes.put("/api/permissions/{vhost}/{user}")
@needs("administrator")
async def put_permission(request: web.Request) -> web.Response:
    try:
        user, vhost = _user_and_vhost(request)
        data = await body(request)
        existed = (user, vhost) in state(request).permissions
        await submit(request, C.PermissionSet(user, vhost, _regex(data.get("configure"),
                                                                   "configure"),
                                              _regex(data.get("write"), "write"),
                                              _regex(data.get("read"), "read")))
        return created_or_updated(existed)
    except Refusal as r:
        return r.response


@routes.delete("/api/permissions/{vhost}/{user}")
@needs("administrator")
async def delete_permission(request: web.Request) -> web.Response:
    try:
        key = (request.match_info["user"], request.match_info["vhost"])
        if key not in state(request).permissions:
            return error(404, "Object Not Found", "Not Found")
        await submit(request, C.PermissionClear(*key))
        return no_content()
    except Refusal as r:
        return r.response


@routes.get("/api/topic-permissions")
@needs("administrator")
async def list_topic_permissions(request: web.Request) -> web.Response:
    return web.json_response(_topic_permissions(request))


@routes.get("/api/users/{name}/topic-permissions")
@needs("administrator")
async def user_topic_permissions(request: web.Request) -> web.Response:
    return web.json_response(_topic_permissions(request, user=request.match_info["name"]))


@routes.get("/api/vhosts/{name}/topic-permissions")
@needs("administrator")
async def vhost_topic_permissions(request: web.Request) -> web.Response:
    return web.json_response(_topic_permissions(request, vhost=request.match_info["name"]))


@routes.get("/api/topic-permissions/{vhost}/{user}")
@needs("administrator")
async def get_topic_permissions(request: web.Request) -> web.Response:
    found = _topic_permissions(request, request.match_info["user"], request.match_info["vhost"])
    if not found:
        return error(404, "Object Not Found", "Not Found")
    return web.json_response(found)


@routes.put("/api/topic-permissions/{vhost}/{user}")
@needs("administrator")
async def put_topic_permission(request: web.Request) -> web.Response:
    try:
        user, vhost = _user_and_vhost(request)
        data = await body(request)
        exchange = data.get("exchange")
        if exchange is None:
            raise bad_request("exchange is required")
        exchange = checked(lambda: check_short(exchange, "exchange"))
        existed = (user, vhost, exchange) in state(request).topic_permissions
        await submit(request, C.TopicPermissionSet(user, vhost, exchange,
                                                   _regex(data.get("write"), "write"),
                                                   _regex(data.get("read"), "read")))
        return created_or_updated(existed)
    except Refusal as r:
        return r.response


@routes.delete("/api/topic-permissions/{vhost}/{user}")
@needs("administrator")
async def delete_topic_permissions(request: web.Request) -> web.Response:
    """All of the user's topic permissions in the vhost (``?exchange=`` for one)."""
    try:
        user, vhost = request.match_info["user"], request.match_info["vhost"]
        only = request.query.get("exchange")
        keys = [k for k in state(request).topic_permissions
                if k[0] == user and k[1] == vhost and (only is None or k[2] == only)]
        if not keys:
            return error(404, "Object Not Found", "Not Found")
        await submit(request, *(C.TopicPermissionClear(*k) for k in keys))
        return no_content()
    except Refusal as r:
        return r.response


# --- limits --------------------------------------------------------------------------------

VHOST_LIMITS = ("max-connections", "max-queues")
USER_LIMITS = ("max-connections", "max-channels")


def _limits(items: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [{key: name, "value": dict(o.limits)} for name, o in items.items() if o.limits]


@routes.get("/api/vhost-limits")
@needs("monitoring")
async def list_vhost_limits(request: web.Request) -> web.Response:
    return web.json_response(_limits(state(request).vhosts, "vhost"))


@routes.get("/api/vhost-limits/{vhost}")
@needs("monitoring")
async def get_vhost_limits(request: web.Request) -> web.Response:
    vh = state(request).vhosts.get(request.match_info["vhost"])
    if vh is None:
        return error(404, "Object Not Found", "Not Found")
    return web.json_response([{"vhost": vh.name, "value": dict(vh.limits)}] if vh.limits else [])


@routes.get("/api/user-limits")
@needs("monitoring")
async def list_user_limits(request: web.Request) -> web.Response:
    return web.json_response(_limits(state(request).users, "user"))


@routes.get("/api/user-limits/{user}")
@needs("monitoring")
async def get_user_limits(request: web.Request) -> web.Response:
    u = state(request).users.get(request.match_info["user"])
    if u is None:
        return error(404, "Object Not Found", "Not Found")
    return web.json_response([{"user": u.name, "value": dict(u.limits)}] if u.limits else [])


async def _set_limit(request: web.Request, kind: str, target: str, allowed: tuple[str, ...],
                     remove: bool) -> web.Response:
    try:
        name = request.match_info["name"]
        if name not in allowed:
            raise bad_request(f"unknown {kind} limit {name!r} (one of {', '.join(allowed)})")
        table = state(request).vhosts if kind == "vhost" else state(request).users
        if target not in table:
            return error(404, "Object Not Found", "Not Found")
        value: Any = -1
        if not remove:
            value = (await body(request)).get("value")
            if not isinstance(value, int) or isinstance(value, bool) or \
                    not INT64_MIN <= value <= INT64_MAX:
                raise bad_request("value must be a 64-bit integer (negative: no limit)")
        await submit(request, C.LimitsSet(kind, target, {name: value}))
        return no_content()
    except Refusal as r:
        return r.response


@routes.put("/api/vhost-limits/{vhost}/{name}")
@needs("administrator")
async def put_vhost_limit(request: web.Request) -> web.Response:
    return await _set_limit(request, "vhost", request.match_info["vhost"], VHOST_LIMITS, False)


@routes.delete("/api/vhost-limits/{vhost}/{name}")
@needs("administrator")
async def delete_vhost_limit(request: web.Request) -> web.Response:
    return await _set_limit(request, "vhost", request.match_info["vhost"], VHOST_LIMITS, True)


@routes.put("/api/user-limits/{user}/{name}")
@needs("administrator")
async def put_user_limit(request: web.Request) -> web.Response:
    return await _set_limit(request, "user", request.match_info["user"], USER_LIMITS, False)


@routes.delete("/api/user-limits/{user}/{name}")
@needs("administrator")
async def delete_user_limit(request: web.Request) -> web.Response:
    return await _set_limit(request, "user", request.match_info["user"], USER_LIMITS, True)


# --- cluster membership ---------------------------------------------------------------------


@routes.post("/api/members")
@needs("administrator")
async def add_member(request: web.Request) -> web.Response:
    return await _membership(request, "POST")


@routes.delete("/api/members")
@needs("administrator")
async def remove_member(request: web.Request) -> web.Response:
    return await _membership(request, "DELETE")


def _answer(result: MembershipResult | str, address: str) -> web.Response:
    ok = result == MembershipResult.OK
    return web.json_response({"ok": ok, "error": None if ok else str(result),
                              "address": address}, status=200 if ok else 409)


async def _membership(request: web.Request, method: str) -> web.Response:
    """Add or remove a Raft member. An address that does not answer as a RaftMQ node with
    this cluster's secret is refused (``force=true`` skips the check), so a typo cannot
    add a member that never comes and cost the cluster its quorum."""
    broker = broker_of(request)
    address = request.query.get("address", "")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or \
            not 0 < int(port) < 65536 or len(address) > 1024:
        return error(400, "bad_request", "address=HOST:PORT is required")
    if method == "POST" and request.query.get("force") != "true":
        if not broker.cfg.cluster_secret:
            return error(400, "bad_request", "this node has no --cluster-secret: a cluster "
                         "needs one (its Raft traffic is encrypted and authenticated with it)")
        from cluster.raft import probe_member  # pysyncobj: only here and in the replica

        ok, why = await asyncio.to_thread(probe_member, address, broker.cfg.cluster_secret)
        if not ok:
            return web.json_response({"ok": False, "address": address, "error":
                                      f"{address} does not answer as a RaftMQ node with this "
                                      f"cluster's secret ({why}); force=true adds it anyway"},
                                     status=409)
    if method == "DELETE" and (not broker.raft.is_leader or address == broker.cfg.raft_address):
        # Removals are done by the leader: a removed node never learns the commit of its
        # own removal. A leader cannot remove itself: it hands leadership over first.
        if broker.raft.is_leader and not await _step_down(broker):
            return web.json_response({"ok": False, "error": "could not transfer leadership"},
                                     status=409)
        return await _forward_to_leader(request, method, address)
    for attempt in range(MEMBERSHIP_ATTEMPTS):
        done: asyncio.Future[MembershipResult] = broker.loop.create_future()

        def callback(result: MembershipResult, done: asyncio.Future[MembershipResult] = done,
                     ) -> None:
            if not done.done():
                done.set_result(result)

        if method == "POST":
            broker.raft.add_member(address, callback)
        else:
            broker.raft.remove_member(address, callback)
        broker.wake()
        try:
            result = await asyncio.wait_for(done, MEMBERSHIP_TIMEOUT_S)
        except TimeoutError:
            return web.json_response({"ok": False, "error": "timeout", "address": address},
                                     status=504)
        # A removal lost to a change of leader (the node being removed may stand for
        # election once the leader stops heartbeating it) is done again, by the leader.
        retry = (method == "DELETE" and attempt + 1 < MEMBERSHIP_ATTEMPTS
                 and result in (MembershipResult.DISCARDED, MembershipResult.LEADER_CHANGED))
        if not retry:
            return _answer(result, address)
        await asyncio.sleep(0.5)
        if address not in broker.raft.status().members:
            return _answer(MembershipResult.OK, address)
        if not broker.raft.is_leader:
            return await _forward_to_leader(request, method, address)
    return _answer(result, address)


async def _step_down(broker: Broker) -> bool:
    """Hand leadership over (the leader is to be removed) the way a drain does: new entries
    held back until a follower has them all (pysyncobj's bare transfer was refused under
    load, where no follower is ever fully caught up: found by the chaos suite)."""
    deadline = time.monotonic() + MEMBERSHIP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not broker.raft.is_leader:
            if broker.raft.leader is not None:
                return True
            await asyncio.sleep(0.2)
            continue
        await transfer_leadership(broker, timeout=max(0.5, deadline - time.monotonic()))
    return False


async def _forward_to_leader(request: web.Request, method: str, address: str) -> web.Response:
    broker = broker_of(request)
    leader = broker.raft.leader
    http = next((i.http_address for i in machine.nodes(broker.raft.state).values()
                 if i.raft_address == leader and i.http_address), None)
    if http is None:
        return web.json_response({"ok": False, "error": f"no HTTP address known for the leader "
                                  f"{leader}"}, status=409)
    url = f"http://{http}/api/members"
    try:
        async with ClientSession(timeout=ClientTimeout(total=MEMBERSHIP_TIMEOUT_S + 5)) as s, \
                s.request(method, url, params={"address": address},
                          headers={"Authorization": request.headers["Authorization"]}) as r:
            return web.json_response(await r.json(content_type=None), status=r.status)
    except (OSError, TimeoutError, ValueError) as e:
        return web.json_response({"ok": False, "error": str(e)}, status=504)


def _sample_rates(application: web.Application, broker: Broker) -> None:
    """Message rates (node/mgmt_rates.py), sampled while the API is served."""
    from node.mgmt.rates import SAMPLE_S, Rates

    rates = application["rates"] = Rates(lambda: broker.raft.state)
    handle: list[asyncio.TimerHandle] = []

    def tick() -> None:
        wait = SAMPLE_S
        try:
            wait = rates.sample()
        except Exception:  # never let a sampling bug stop the sampling
            log.exception("sampling message rates failed")
        handle[:] = [broker.loop.call_later(wait, tick)]

    async def start(_app: web.Application) -> None:
        tick()

    async def stop(_app: web.Application) -> None:
        for h in handle:
            h.cancel()

    application.on_startup.append(start)
    application.on_cleanup.append(stop)


def app(broker: Broker, client_max_size: int) -> web.Application:
    application = web.Application(client_max_size=client_max_size)
    application["broker"] = broker
    application.add_routes(routes)
    # their handlers build on this module's
    from node import mgmt_definitions
    from node.mgmt import cluster, dashboard, health, objects

    for extra in (objects, cluster, mgmt_definitions, health, dashboard):
        application.add_routes(extra.routes)
    _sample_rates(application, broker)
    return application
