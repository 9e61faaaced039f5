"""Definitions export and import in RabbitMQ's format (GET / POST /api/definitions): users,
vhosts, permissions, topic permissions, limits, queues, exchanges and bindings. A file
exported from RabbitMQ 3.10 imports here, and one exported here imports into RabbitMQ.

An import is applied in RabbitMQ's order (users, vhosts, permissions, then per vhost
exchanges, queues, bindings), each part in one Raft entry; topology goes through a system
session (as RabbitMQ imports it whatever the importing user's own permissions) and
stops at the first refusal, which is the answer (what was applied before it stays).
RabbitMQ's cluster name and id (global parameters) are ignored; RaftMQ has no policies
or other parameters yet, so a file with some is refused rather than half-applied.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cluster import commands as C
from node import mgmt_views as views
from node.management import (
    Refusal,
    bad_request,
    body,
    broker_of,
    needs,
    permission_json,
    state,
    submit,
    topic_json,
    user_json,
)
from node.mgmt_objects import PLACEHOLDER, ApiSession, product_version
from node.passwords import ALGORITHMS, SHA256, valid_hash

routes = web.RouteTableDef()

IMPORT_MAX_ITEMS = 100_000  # items per section of one import
# RabbitMQ's own identity, in every export of it: nothing to import.
IGNORED_GLOBALS = ("cluster_name", "internal_cluster_id")


def _exported_exchange(name: str) -> bool:
    return name != "" and not name.startswith("amq.")


def export(st: Any) -> dict[str, Any]:
    vhosts = list(st.vhosts.values())
    queues = [{"name": q.name, "vhost": vh.name, "durable": q.durable,
               "auto_delete": q.auto_delete, "arguments": views.jsonable(q.arguments)}
              for vh in vhosts for q in vh.queues.values()
              if q.durable and q.exclusive_owner is None and not q.deleted]
    exported_queues = {(q["vhost"], q["name"]) for q in queues}
    exchanges = [{"name": x.name, "vhost": vh.name, "type": x.type, "durable": x.durable,
                  "auto_delete": x.auto_delete, "internal": x.internal,
                  "arguments": views.jsonable(x.arguments)}
                 for vh in vhosts for x in vh.exchanges.values()
                 if x.durable and _exported_exchange(x.name)]
    exported_x = {(x["vhost"], x["name"]) for x in exchanges}
    bindings = []
    for vh in vhosts:
        for b in views.bindings(st, vh.name):
            dest = (vh.name, b["destination"])
            if b["source"] == "" or ((vh.name, b["source"]) not in exported_x
                                     and _exported_exchange(b["source"])):
                continue
            if dest not in (exported_x if b["destination_type"] == "exchange"
                            else exported_queues):
                continue
            bindings.append({k: b[k] for k in ("source", "vhost", "destination",
                                               "destination_type", "routing_key",
                                               "arguments")})
    users = []
    for u in st.users.values():
        entry = user_json(u)
        if not entry["limits"]:
            del entry["limits"]
        users.append(entry)
    return {
        "rabbit_version": "3.10.8", "rabbitmq_version": "3.10.8",
        "product_name": "RaftMQ", "product_version": product_version(),
        "users": users,
        "vhosts": [{"name": vh.name, "limits": [],
                    "metadata": {"description": vh.description, "tags": list(vh.tags)}}
                   for vh in vhosts],
        "permissions": [permission_json(k, p) for k, p in st.permissions.items()],
        "topic_permissions": [topic_json(k, tp) for k, tp in st.topic_permissions.items()],
        "parameters": [], "global_parameters": [], "policies": [],
        "queues": queues, "exchanges": exchanges, "bindings": bindings,
    }


@routes.get("/api/definitions")
@needs("administrator")
async def get_definitions(request: web.Request) -> web.Response:
    headers = {}
    if request.query.get("download"):
        headers["Content-Disposition"] = \
            f'attachment; filename="{request.query["download"]}"'
    return web.json_response(export(state(request)), headers=headers)


@routes.post("/api/definitions")
@needs("administrator")
async def post_definitions(request: web.Request) -> web.Response:
    try:
        defs = await body(request)
        await import_definitions(request, defs)
        return web.Response(status=204)
    except Refusal as r:
        return r.response


def _section(defs: dict[str, Any], name: str) -> list[dict[str, Any]]:
    items = defs.get(name, [])
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise bad_request(f"{name} must be a list of objects")
    if len(items) > IMPORT_MAX_ITEMS:
        raise bad_request(f"{name}: more than {IMPORT_MAX_ITEMS} items")
    return items


def _str(item: dict[str, Any], key: str, section: str, default: str | None = None) -> str:
    value = item.get(key, default)
    if not isinstance(value, str):
        raise bad_request(f"{section}: {key} must be a string in {item!r}")
    return value


def _bool(item: dict[str, Any], key: str, default: bool) -> bool:
    value = item.get(key, default)
    if isinstance(value, str):
        return value.lower() == "true"
    return bool(value)


def _args(item: dict[str, Any], section: str) -> dict[str, Any]:
    args = item.get("arguments") or {}
    if not isinstance(args, dict):
        raise bad_request(f"{section}: arguments must be an object in {item!r}")
    return args


def _tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(",") if t.strip())
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return tuple(value)
    raise bad_request(f"users: tags must be a list or a comma-separated string, not {value!r}")


async def import_definitions(request: web.Request, defs: dict[str, Any]) -> None:
    for unsupported in ("policies", "parameters"):
        if _section(defs, unsupported):
            raise bad_request(f"{unsupported} are not supported by RaftMQ yet; remove them "
                              "from the file to import the rest")
    for gp in _section(defs, "global_parameters"):
        if gp.get("name") not in IGNORED_GLOBALS:
            raise bad_request(f"global parameter {gp.get('name')!r} is not supported by RaftMQ")
    cmds: list[C.Command] = []
    for u in _section(defs, "users"):
        name = _str(u, "name", "users")
        algorithm = _str(u, "hashing_algorithm", "users", SHA256)
        password_hash = _str(u, "password_hash", "users", "")
        if algorithm not in ALGORITHMS or (password_hash and
                                           not valid_hash(password_hash, algorithm)):
            raise bad_request(f"users: {name}: not a {algorithm} password hash")
        cmds.append(C.UserPut(name, password_hash, algorithm, _tags(u.get("tags", []))))
    for vh in _section(defs, "vhosts"):
        meta: dict[str, Any] = vh["metadata"] if isinstance(vh.get("metadata"), dict) else {}
        description = meta.get("description", vh.get("description", "")) or ""
        tags = meta.get("tags", vh.get("tags", [])) or []
        cmds.append(C.VHostPut(_str(vh, "name", "vhosts"), str(description), _tags(tags)))
    for p in _section(defs, "permissions"):
        cmds.append(C.PermissionSet(*(_str(p, k, "permissions")
                                      for k in ("user", "vhost", "configure", "write",
                                                "read"))))
    for tp in _section(defs, "topic_permissions"):
        cmds.append(C.TopicPermissionSet(*(_str(tp, k, "topic_permissions")
                                           for k in ("user", "vhost", "exchange", "write",
                                                     "read"))))
    if cmds:
        await submit(request, *cmds)
    by_vhost: dict[str, list[C.Command]] = {}
    for x in _section(defs, "exchanges"):
        by_vhost.setdefault(_str(x, "vhost", "exchanges", "/"), []).append(C.ExchangeDeclare(
            PLACEHOLDER, _str(x, "name", "exchanges"), _str(x, "type", "exchanges"), False,
            _bool(x, "durable", True), _bool(x, "auto_delete", False),
            _bool(x, "internal", False), False, _args(x, "exchanges")))
    for q in _section(defs, "queues"):
        by_vhost.setdefault(_str(q, "vhost", "queues", "/"), []).append(C.QueueDeclare(
            PLACEHOLDER, _str(q, "name", "queues"), False, _bool(q, "durable", True), False,
            _bool(q, "auto_delete", False), False, _args(q, "queues")))
    for b in _section(defs, "bindings"):
        vhost, kind = _str(b, "vhost", "bindings", "/"), _str(b, "destination_type",
                                                              "bindings", "queue")
        src, dest = _str(b, "source", "bindings"), _str(b, "destination", "bindings")
        rk, args = _str(b, "routing_key", "bindings", ""), _args(b, "bindings")
        if src == "":
            continue  # the default exchange's bindings are implicit
        by_vhost.setdefault(vhost, []).append(
            C.ExchangeBind(PLACEHOLDER, dest, src, rk, False, args) if kind == "exchange"
            else C.QueueBind(PLACEHOLDER, dest, src, rk, False, args))
    broker = broker_of(request)
    for vhost, topology in by_vhost.items():
        if vhost not in state(request).vhosts:
            raise bad_request(f"vhost {vhost!r} does not exist (and is not in the file)")
        await ApiSession(broker, request["user"], vhost, system=True).run(*topology)
