"""Who may do what: users, virtual hosts, permissions, topic permissions and limits, as
RabbitMQ's management API has them (paths, JSON, status codes). Reading them needs
``administrator`` (limits: ``monitoring``; a user's own vhosts: ``management``), every
change too; a change is one Raft entry, answered once applied."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cluster import commands as C
from node.amqp.passwords import ALGORITHMS, SHA256, hash_password, valid_hash
from node.mgmt.framework import (
    MAX_TEXT_BYTES,
    PLACEHOLDER,
    ApiSession,
    Refusal,
    bad_request,
    body,
    checked,
    created_or_updated,
    has,
    needs,
    no_content,
    node_of,
    not_found,
    state,
    submit,
)
from node.mgmt.input import (
    INT64_MAX,
    INT64_MIN,
    MAX_TAGS,
    USER_LIMITS,
    VHOST_LIMITS,
    check_name,
    check_regex,
    check_short,
    check_text,
)
from node.mgmt.views import permission_json, topic_json, user_json

routes = web.RouteTableDef()

DELETE_CHUNK = 500  # queues or exchanges deleted per Raft entry when a vhost is deleted


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


def _name(value: Any, what: str) -> str:
    name: str = checked(check_name, value, what)
    return name


def _text(value: Any, what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    text: str = checked(check_text, value, what, max_bytes)
    return text


def _regex(value: Any, what: str) -> str:
    pattern: str = checked(check_regex, value, what)
    return pattern


# --- who am I ----------------------------------------------------------------------------


@routes.get("/api/whoami")
@needs("management")
async def whoami(request: web.Request) -> web.Response:
    return web.json_response({"name": request["user"], "tags": list(request["tags"])})


# --- users -----------------------------------------------------------------------------


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
        raise not_found()
    return web.json_response(user_json(u))


@routes.put("/api/users/{name}")
@needs("administrator")
async def put_user(request: web.Request) -> web.Response:
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


@routes.delete("/api/users/{name}")
@needs("administrator")
async def delete_user(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in state(request).users:
        raise not_found()
    await submit(request, C.UserDelete(name))
    return no_content()


@routes.post("/api/users/bulk-delete")
@needs("administrator")
async def bulk_delete_users(request: web.Request) -> web.Response:
    users = (await body(request)).get("users")
    if not isinstance(users, list):
        raise bad_request("users must be a list of names")
    users = [_name(u, "a user name") for u in users]
    await submit(request, *(C.UserDelete(u) for u in users))
    return no_content()


# --- virtual hosts ------------------------------------------------------------------------


def vhost_json(vh: Any) -> dict[str, Any]:
    return {"name": vh.name, "description": vh.description, "tags": list(vh.tags),
            "tracing": False, "default_queue_type": "classic",
            "metadata": {"description": vh.description, "tags": list(vh.tags)},
            "messages": sum(q.ready_count() + q.unacked for q in vh.queues.values()),
            "messages_ready": sum(q.ready_count() for q in vh.queues.values()),
            "messages_unacknowledged": sum(q.unacked for q in vh.queues.values())}


def _visible(request: web.Request, vhost: str) -> bool:
    if has(request["tags"], "monitoring"):
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
        raise not_found()
    return web.json_response(vhost_json(vh))


@routes.put("/api/vhosts/{name}")
@needs("administrator")
async def put_vhost(request: web.Request) -> web.Response:
    name = _name(request.match_info["name"], "vhost name")
    data = await body(request)
    description = _text(data.get("description", ""), "description")
    existed = name in state(request).vhosts
    put = C.VHostPut(name, description, _tags(data.get("tags")))
    if existed:
        await submit(request, put)
    else:  # as RabbitMQ's API does: its creator may use the new vhost at once (one entry)
        await submit(request, put, C.PermissionSet(request["user"], name, ".*", ".*", ".*"))
    return created_or_updated(existed)


@routes.delete("/api/vhosts/{name}")
@needs("administrator")
async def delete_vhost(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in state(request).vhosts:
        raise not_found()
    await _empty_vhost(request, name)
    await submit(request, C.VHostDelete(name))
    return no_content()


async def _empty_vhost(request: web.Request, name: str) -> None:
    """Delete the vhost's queues and exchanges DELETE_CHUNK to a Raft entry first (as
    RabbitMQ deletes a vhost's queues one by one, before its connections are closed), so
    no entry removes 100,000 queues at once on every replica (measured: 2.3 s stalls).
    Best effort: exclusive queues, and whatever a chunk could not delete (an object gone
    or locked meanwhile), go with the VHostDelete that follows."""
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
            await ApiSession(node_of(request), request["user"], name, system=True).run(
                *doomed[i:i + DELETE_CHUNK])
        except Refusal as r:  # (a chunk refused goes on: best effort, but for no quorum)
            if r.response.status == 503:
                raise


# --- permissions --------------------------------------------------------------------------


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
        raise not_found()
    return web.json_response(_permissions(request, user=name))


@routes.get("/api/vhosts/{name}/permissions")
@needs("administrator")
async def vhost_permissions(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in state(request).vhosts:
        raise not_found()
    return web.json_response(_permissions(request, vhost=name))


@routes.get("/api/permissions/{vhost}/{user}")
@needs("administrator")
async def get_permission(request: web.Request) -> web.Response:
    key = (request.match_info["user"], request.match_info["vhost"])
    p = state(request).permissions.get(key)
    if p is None:
        raise not_found()
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
    user, vhost = _user_and_vhost(request)
    data = await body(request)
    existed = (user, vhost) in state(request).permissions
    await submit(request, C.PermissionSet(user, vhost, _regex(data.get("configure"), "configure"),
                                          _regex(data.get("write"), "write"),
                                          _regex(data.get("read"), "read")))
    return created_or_updated(existed)


@routes.delete("/api/permissions/{vhost}/{user}")
@needs("administrator")
async def delete_permission(request: web.Request) -> web.Response:
    key = (request.match_info["user"], request.match_info["vhost"])
    if key not in state(request).permissions:
        raise not_found()
    await submit(request, C.PermissionClear(*key))
    return no_content()


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
        raise not_found()
    return web.json_response(found)


@routes.put("/api/topic-permissions/{vhost}/{user}")
@needs("administrator")
async def put_topic_permission(request: web.Request) -> web.Response:
    user, vhost = _user_and_vhost(request)
    data = await body(request)
    exchange = data.get("exchange")
    if exchange is None:
        raise bad_request("exchange is required")
    exchange = checked(check_short, exchange, "exchange")
    existed = (user, vhost, exchange) in state(request).topic_permissions
    await submit(request, C.TopicPermissionSet(user, vhost, exchange,
                                               _regex(data.get("write"), "write"),
                                               _regex(data.get("read"), "read")))
    return created_or_updated(existed)


@routes.delete("/api/topic-permissions/{vhost}/{user}")
@needs("administrator")
async def delete_topic_permissions(request: web.Request) -> web.Response:
    """All of the user's topic permissions in the vhost (``?exchange=`` for one)."""
    user, vhost = request.match_info["user"], request.match_info["vhost"]
    only = request.query.get("exchange")
    keys = [k for k in state(request).topic_permissions
            if k[0] == user and k[1] == vhost and (only is None or k[2] == only)]
    if not keys:
        raise not_found()
    await submit(request, *(C.TopicPermissionClear(*k) for k in keys))
    return no_content()


# --- limits --------------------------------------------------------------------------------


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
        raise not_found()
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
        raise not_found()
    return web.json_response([{"user": u.name, "value": dict(u.limits)}] if u.limits else [])


async def _set_limit(request: web.Request, kind: str, target: str, allowed: tuple[str, ...],
                     remove: bool) -> web.Response:
    name = request.match_info["name"]
    if name not in allowed:
        raise bad_request(f"unknown {kind} limit {name!r} (one of {', '.join(allowed)})")
    table = state(request).vhosts if kind == "vhost" else state(request).users
    if target not in table:
        raise not_found()
    value: Any = -1
    if not remove:
        value = (await body(request)).get("value")
        if not isinstance(value, int) or isinstance(value, bool) or \
                not INT64_MIN <= value <= INT64_MAX:
            raise bad_request("value must be a 64-bit integer (negative: no limit)")
    await submit(request, C.LimitsSet(kind, target, {name: value}))
    return no_content()


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
