"""Definitions export and import in RabbitMQ's format (GET / POST /api/definitions): users,
vhosts, permissions, topic permissions, limits, queues, exchanges and bindings. A file
exported from RabbitMQ 3.10 imports here, and one exported here imports into RabbitMQ.

An import is checked whole before anything is applied (:func:`plan`): types, names and
routing keys (255 bytes), argument tables (node/mgmt/input.py), permission patterns
(compiled), queue arguments as the machine checks them, exchange types, and every
reference (a permission's user and vhost, a binding's source and destination, a queue's
vhost, the vhost's max-queues limit) against the state and the file. The first bad item
is a 400 naming it (``queues[3] 'q': ...``), and nothing is applied: RabbitMQ applies
item by item, queues and bindings concurrently, and leaves what it did when one fails.

It is then applied (:func:`apply`) in RabbitMQ's order (users, vhosts, permissions, then
per vhost exchanges, queues, bindings), ``CHUNK`` commands to a Raft entry, each awaited;
topology goes through a system session (as RabbitMQ imports it whatever the importing
user's own permissions). What only the machine can refuse (a queue redeclared with other
arguments than it has) stops the import there: a 400 naming the item and how much was
applied before it (that stays, as in RabbitMQ). 204 means everything was applied.
Names beginning with amq. are skipped with a warning, as RabbitMQ skips them. RabbitMQ's
cluster name and id (global parameters) are ignored. Vhost limits are what RabbitMQ 3.10
exports them as, runtime parameters ``{"component": "vhost-limits", "name": "limits",
"vhost": v, "value": {"max-connections": 100}}`` (the ``"limits"`` of our vhost entries,
not in 3.10's, stays ``[]``), and an imported one replaces the vhost's limits, as
RabbitMQ's does; user limits are the users' ``"limits"`` object.

The export holds what RabbitMQ 3.10's does (tests/integration/test_definitions_rabbitmq.py
compares every kind both ways): non-exclusive queues and exchanges, transient ones too,
and bindings naming a standard exchange (amq.direct...), which an import takes as existing
in every vhost, a new one too. What RaftMQ cannot keep is refused, the whole file, naming
it, rather than dropped: global parameters other than RabbitMQ's identity, runtime
parameters other than vhost-limits and shovel (federation upstreams...), and a vhost's
``default_queue_type`` other than classic (a 3.11 export's). Policies are exported and
imported as RabbitMQ's (node/mgmt/policies.py's JSON, checked as PUT /api/policies), and so
are shovels (checked as PUT /api/parameters/shovel, set after their vhost's queues).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from cluster import commands as C
from cluster.machine import policies as P
from cluster.machine import qargs
from cluster.machine.shovels import COMPONENT as SHOVEL_COMPONENT
from cluster.machine.shovels import check_parameter, parameter_json
from cluster.machine.state import DEFAULT_EXCHANGES
from cluster.machine.topology import EXCHANGE_TYPES, PLUGIN_EXCHANGE_TYPES
from node.amqp.passwords import ALGORITHMS, SHA256, valid_hash
from node.mgmt import views
from node.mgmt.framework import (
    MAX_TEXT_BYTES,
    PLACEHOLDER,
    ApiSession,
    Refusal,
    bad_request,
    body,
    error,
    needs,
    node_of,
    product_version,
    state,
    submit,
)
from node.mgmt.input import (
    INT64_MAX,
    INT64_MIN,
    MAX_TAGS,
    USER_LIMITS,
    VHOST_LIMITS,
    InputError,
    check_arguments,
    check_name,
    check_regex,
    check_short,
    check_text,
)
from node.mgmt.views import permission_json, policy_json, topic_json, user_json
from protocol.errors import AMQPError

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

IMPORT_MAX_ITEMS = 100_000  # items per section of one import
IMPORT_MAX_BYTES = 16 << 20  # node/services/web.py's client_max_size of the management port
# Commands per Raft entry of an import: measured, 500 queue declarations apply in a few
# ms on each replica, where one entry of 100,000 stalled the loop 3.8 s (issue 19).
CHUNK = 500
YIELD_EVERY = 1000  # items checked between two yields to the event loop
SLICE_S = 0.005  # of building or encoding an export between two yields to the loop
_T = TypeVar("_T")
_Item = tuple[str, C.Command]
# RabbitMQ's own identity, in every export of it: nothing to import.
IGNORED_GLOBALS = ("cluster_name", "internal_cluster_id")
VHOST_LIMITS_COMPONENT = "vhost-limits"  # RabbitMQ's runtime parameter of a vhost's limits
# amq.direct, amq.topic...: in every vhost, a new one too (bindings may name them)
STANDARD_EXCHANGES = frozenset(name for name, _ in DEFAULT_EXCHANGES if name)
# a vhost's default queue type (3.11's, or 3.10's PUT /api/vhosts): RaftMQ has only its
# own ("classic" when asked), so a file asking for another is refused, not ignored
CLASSIC_QUEUE_TYPES = (None, "", "classic", "undefined")


def _exported_exchange(name: str) -> bool:
    return name != "" and not name.startswith("amq.")


class _Pause:
    """Lets the event loop run every SLICE_S of work (``await pause()`` per item)."""

    def __init__(self) -> None:
        self.since = time.perf_counter()

    async def __call__(self) -> None:
        if time.perf_counter() - self.since > SLICE_S:
            await asyncio.sleep(0)
            self.since = time.perf_counter()


async def export(st: Any) -> dict[str, Any]:
    """The definitions, built in slices with the loop let run between them (100,000
    queues took one stretch of ~1 s). The state is read through lists taken at once, so
    what changes meanwhile cannot break an iteration; the export is as of each slice,
    as RabbitMQ's is not a snapshot either."""
    pause = _Pause()
    vhosts = list(st.vhosts.values())
    queues = []
    for vh in vhosts:
        for q in list(vh.queues.values()):
            if q.exclusive_owner is None and not q.deleted:
                queues.append({"name": q.name, "vhost": vh.name, "durable": q.durable,
                               "auto_delete": q.auto_delete,
                               "arguments": views.jsonable(q.arguments)})
            await pause()
    exported_queues = {(q["vhost"], q["name"]) for q in queues}
    exchanges = []
    for vh in vhosts:
        for x in list(vh.exchanges.values()):
            if _exported_exchange(x.name):
                exchanges.append({"name": x.name, "vhost": vh.name, "type": x.type,
                                  "durable": x.durable, "auto_delete": x.auto_delete,
                                  "internal": x.internal,
                                  "arguments": views.jsonable(x.arguments)})
            await pause()
    exported_x = {(x["vhost"], x["name"]) for x in exchanges}
    bindings = []
    for vh in vhosts:
        for b in views.bindings(st, vh.name):  # (it lists what it reads first)
            await pause()
            # (a standard amq.* exchange at either end is in every vhost: RabbitMQ
            # exports those bindings; the default exchange's are implicit)
            src, dest, to_x = b["source"], b["destination"], \
                b["destination_type"] == "exchange"
            if src == "" or ((vh.name, src) not in exported_x and _exported_exchange(src)):
                continue
            if (vh.name, dest) not in (exported_x if to_x else exported_queues) and \
                    not (to_x and dest.startswith("amq.")):
                continue
            bindings.append({k: b[k] for k in ("source", "vhost", "destination",
                                               "destination_type", "routing_key",
                                               "arguments")})
    users = []
    for u in list(st.users.values()):
        entry = user_json(u)
        if not entry["limits"]:
            del entry["limits"]
        users.append(entry)
        await pause()
    return {
        "rabbit_version": "3.10.8", "rabbitmq_version": "3.10.8",
        "product_name": "RaftMQ", "product_version": product_version(),
        "users": users,
        "vhosts": [{"name": vh.name, "limits": [],
                    "metadata": {"description": vh.description, "tags": list(vh.tags)}}
                   for vh in vhosts],
        "permissions": [permission_json(k, p) for k, p in st.permissions.items()],
        "topic_permissions": [topic_json(k, tp) for k, tp in st.topic_permissions.items()],
        "parameters": [{"value": dict(vh.limits), "vhost": vh.name,
                        "component": VHOST_LIMITS_COMPONENT, "name": "limits"}
                       for vh in vhosts if vh.limits] + _shovel_parameters(st, vhosts),
        "global_parameters": [],
        "policies": [policy_json(vh.name, p) for vh in vhosts for p in list(vh.policies.values())],
        "queues": queues, "exchanges": exchanges, "bindings": bindings,
    }


async def encode(doc: dict[str, Any]) -> str:
    """``doc`` as JSON, its lists item by item in slices. A non-finite float (which an
    AMQP client could have put in an argument) is written as null: JSON has none, and
    one would make the whole export unreadable."""
    pause = _Pause()
    out = []
    for key, value in doc.items():
        if isinstance(value, list):
            items = []
            for item in value:
                items.append(_dumps(item))
                await pause()
            out.append(f"{json.dumps(key)}: [{', '.join(items)}]")
        else:
            out.append(f"{json.dumps(key)}: {_dumps(value)}")
    return "{" + ", ".join(out) + "}"


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


@routes.get("/api/definitions")
@needs("administrator")
async def get_definitions(request: web.Request) -> web.Response:
    headers = {}
    if request.query.get("download"):
        # the client's file name in a header: only characters that cannot break out of it
        name = re.sub(r"[^\w.\- ]", "_", request.query["download"], flags=re.ASCII)[:200]
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return web.Response(text=await encode(await export(state(request))),
                        content_type="application/json", headers=headers)


@routes.post("/api/definitions")
@needs("administrator")
async def post_definitions(request: web.Request) -> web.Response:
    defs = await body(request, IMPORT_MAX_BYTES)
    await apply(request, await plan(defs, state(request)))
    return web.Response(status=204)


# --- checking the whole file first -----------------------------------------------------


@dataclass
class Plan:
    """An import, checked whole: the commands to apply, each with the item it came from
    (to name it if the machine refuses it all the same)."""

    # users, vhosts, permissions, topic permissions: proposed as the importing user
    globals: list[tuple[str, C.Command]] = field(default_factory=list)
    # per vhost: exchanges, queues, bindings, through a system session
    topology: dict[str, list[tuple[str, C.Command]]] = field(default_factory=dict)

    def size(self) -> int:
        return len(self.globals) + sum(len(t) for t in self.topology.values())


class _Items:
    """One section of the file, item by item, naming the item in every refusal."""

    def __init__(self, defs: dict[str, Any], section: str) -> None:
        self.section = section
        items = defs.get(section, [])
        if items is None:
            items = []
        if not isinstance(items, list):
            raise bad_request(f"{section} must be a list of objects")
        if len(items) > IMPORT_MAX_ITEMS:
            raise bad_request(f"{section}: more than {IMPORT_MAX_ITEMS} items")
        self.items: list[Any] = items
        self.label = section

    async def each(self) -> AsyncIterator[dict[str, Any]]:
        """The items, yielding to the event loop every YIELD_EVERY of them."""
        for i, item in enumerate(self.items):
            if i and i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            name = item.get("name", item.get("destination")) if isinstance(item, dict) \
                else None
            self.label = f"{self.section}[{i}]" + \
                (f" {name[:60]!r}" if isinstance(name, str) else "")
            if not isinstance(item, dict):
                raise self.refuse("must be an object")
            yield item

    def refuse(self, reason: str) -> Refusal:
        return bad_request(f"{self.label}: {reason}")

    def check(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)``, an InputError from it refused naming the item."""
        try:
            return fn(*args)
        except InputError as e:
            raise self.refuse(str(e)) from None

    def text(self, item: dict[str, Any], key: str, default: str | None = None,
             short: bool = False) -> str:
        """A string field (``short``: at most 255 bytes of UTF-8, a name or routing key)."""
        value = item.get(key, default)
        if value is None:
            raise self.refuse(f"{key} is required")
        return self.check(check_short if short else check_text, value, key)

    def name(self, item: dict[str, Any], key: str = "name") -> str:
        return self.check(check_name, item.get(key), key)

    def flag(self, item: dict[str, Any], key: str, default: bool) -> bool:
        value = item.get(key, default)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise self.refuse(f"{key} must be true or false")
        return value

    def arguments(self, item: dict[str, Any]) -> dict[str, Any]:
        return self.check(check_arguments, item.get("arguments"))

    def tags(self, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or len(items) > MAX_TAGS or \
                not all(isinstance(t, str) for t in items):
            raise self.refuse(f"tags must be a list of strings or a comma-separated string "
                              f"(at most {MAX_TAGS})")
        return tuple(self.check(check_short, t, "tag").strip() for t in items if t.strip())


async def plan(defs: dict[str, Any], st: Any) -> Plan:
    """Every item of ``defs`` checked (types, names, arguments, patterns, references to
    users, vhosts, exchanges and queues, queue arguments as the machine checks them)
    before anything is applied; a 400 naming the first bad item."""
    gps = _Items(defs, "global_parameters")
    async for gp in gps.each():
        if gp.get("name") not in IGNORED_GLOBALS:
            raise gps.refuse("global parameters are not supported by RaftMQ")
    out = Plan()
    users, vhosts = set(st.users), set(st.vhosts)
    us = _Items(defs, "users")
    async for u in us.each():
        name = us.name(u)
        algorithm = us.text(u, "hashing_algorithm", SHA256)
        password_hash = us.text(u, "password_hash", "")
        if algorithm not in ALGORITHMS or (password_hash and
                                           not valid_hash(password_hash, algorithm)):
            raise us.refuse(f"not a {algorithm[:40]} password hash")
        out.globals.append((us.label, C.UserPut(name, password_hash, algorithm,
                                                us.tags(u.get("tags", [])))))
        if u.get("limits"):  # (an empty one is [] in some RabbitMQ exports)
            out.globals.append((us.label, C.LimitsSet(
                "user", name, _limits(us, u["limits"], USER_LIMITS))))
        users.add(name)
    vs = _Items(defs, "vhosts")
    async for vh in vs.each():
        meta: dict[str, Any] = vh["metadata"] if isinstance(vh.get("metadata"), dict) else {}
        description = meta.get("description", vh.get("description", "")) or ""
        name = vs.name(vh)
        queue_type = meta.get("default_queue_type", vh.get("default_queue_type"))
        if queue_type not in CLASSIC_QUEUE_TYPES:
            raise vs.refuse(f"default_queue_type {str(queue_type)[:40]!r} is not supported "
                            "by RaftMQ (a queue declared without x-queue-type is classic "
                            "here); remove it from the file to import the rest")
        out.globals.append((vs.label, C.VHostPut(
            name, vs.check(check_text, description, "description", MAX_TEXT_BYTES),
            vs.tags(meta.get("tags", vh.get("tags", [])) or []))))
        vhosts.add(name)
    ps = _Items(defs, "permissions")
    async for p in ps.each():
        user, vhost = _refer(ps, p, users, vhosts)
        out.globals.append((ps.label, C.PermissionSet(
            user, vhost, *(ps.check(check_regex, p.get(k), k)
                           for k in ("configure", "write", "read")))))
    tps = _Items(defs, "topic_permissions")
    async for tp in tps.each():
        user, vhost = _refer(tps, tp, users, vhosts)
        out.globals.append((tps.label, C.TopicPermissionSet(
            user, vhost, tps.text(tp, "exchange", short=True),
            *(tps.check(check_regex, tp.get(k), k) for k in ("write", "read")))))
    # vhost limits: after the vhosts, before the queues they count (RabbitMQ's order)
    limits: dict[str, dict[str, int]] = {}  # per vhost, what the file sets
    prs = _Items(defs, "parameters")
    shovels: list[tuple[str, C.ShovelSet]] = []  # set after the topology they move into
    async for pr in prs.each():
        if pr.get("component") == SHOVEL_COMPONENT:
            shovels.append((prs.label, _shovel(prs, pr, vhosts, st)))
            continue
        if pr.get("component") != VHOST_LIMITS_COMPONENT:
            raise prs.refuse(f"parameters other than {VHOST_LIMITS_COMPONENT} and "
                             f"{SHOVEL_COMPONENT} are not "
                             "supported by RaftMQ yet; remove them from the file to import "
                             "the rest")
        vhost = prs.text(pr, "vhost", "/")
        if vhost not in vhosts:
            raise prs.refuse(f"vhost {vhost[:60]!r} does not exist (and is not in the file)")
        value = _limits(prs, pr.get("value"), VHOST_LIMITS)
        limits[vhost] = {k: v for k, v in value.items() if v >= 0}
        # replaces the vhost's limits, as RabbitMQ's import of the parameter does
        out.globals.append((prs.label, C.LimitsSet(
            "vhost", vhost, {k: value.get(k, -1) for k in VHOST_LIMITS})))
    await _policies(defs, st, vhosts, out)
    await _topology(defs, st, vhosts, limits, out)
    for label, shovel in shovels:  # (a vhost's shovels: in its last entry, after its queues)
        out.topology.setdefault(shovel.vhost, []).append((label, shovel))
    return out


async def _policies(defs: dict[str, Any], st: Any, vhosts: set[str], out: Plan) -> None:
    """Policies (RabbitMQ exports them as {vhost, name, pattern, apply-to, definition,
    priority}), checked as PUT /api/policies checks one; applied before the queues and
    exchanges they apply to, as RabbitMQ's import orders them."""
    pols = _Items(defs, "policies")
    names: dict[str, set[str]] = {}  # per vhost, the policies it will have
    async for p in pols.each():
        vhost, name = pols.text(p, "vhost", "/"), pols.name(p)
        if vhost not in vhosts:
            raise pols.refuse(f"vhost {vhost[:60]!r} does not exist (and is not in the file)")
        have = names.setdefault(vhost, set(st.vhosts[vhost].policies)
                                if vhost in st.vhosts else set())
        have.add(name)
        if len(have) > P.MAX_PER_VHOST:
            raise pols.refuse(f"vhost {vhost[:60]!r} would have more than "
                              f"{P.MAX_PER_VHOST} policies")
        apply_to = p.get("apply-to")
        priority = p.get("priority")
        definition = p.get("definition")
        if isinstance(definition, str):  # (older exports held it as a JSON string)
            try:
                definition = json.loads(definition)
            except ValueError:
                raise pols.refuse("definition is not a JSON object") from None
        if not isinstance(definition, dict):
            raise pols.refuse("definition must be a JSON object")
        reason = P.problem(p.get("pattern"), "all" if apply_to is None else apply_to,
                           0 if priority is None else priority, definition)
        if reason is not None:
            raise pols.refuse(reason)
        if st.level < C.SetPolicy.SINCE:
            raise pols.refuse("policies need every cluster member at release level 4")
        out.globals.append((pols.label, C.SetPolicy(
            vhost, name, p["pattern"], "all" if apply_to is None else apply_to,
            0 if priority is None else priority, dict(definition))))


def _shovel_check(vhost: str, name: Any, value: Any, vhosts: Any) -> None:
    try:
        check_parameter(vhost, name, value, vhosts)
    except ValueError as e:
        raise InputError(str(e)) from None


def _shovel_parameters(st: Any, vhosts: Any) -> list[dict[str, Any]]:
    """The shovels of ``vhosts`` (VHost objects) as an export lists them."""
    names = {vh.name for vh in vhosts}
    return [parameter_json(sh) for sh in list(st.shovels.values())
            if sh.vhost in names]


def _shovel(items: _Items, item: dict[str, Any], vhosts: set[str], st: Any) -> C.ShovelSet:
    """A shovel parameter, checked as PUT /api/parameters/shovel checks one."""
    vhost, name = items.text(item, "vhost", "/"), items.name(item)
    items.check(_shovel_check, vhost, name, item.get("value"), vhosts)
    if st.level < C.ShovelSet.SINCE:
        raise items.refuse("shovels need every member of the cluster upgraded")
    return C.ShovelSet(vhost, name, item["value"])


def _limits(items: _Items, value: Any, allowed: tuple[str, ...]) -> dict[str, int]:
    """A limits object ``{"max-connections": 100}``: known names, 64-bit integers
    (negative: no limit), as PUT /api/vhost-limits and /api/user-limits take them."""
    if not isinstance(value, dict):
        raise items.refuse("limits must be an object of limit names and integers")
    for name, limit in value.items():
        if name not in allowed:
            raise items.refuse(f"unknown limit {str(name)[:60]!r} (one of "
                               f"{', '.join(allowed)})")
        if not isinstance(limit, int) or isinstance(limit, bool) or \
                not INT64_MIN <= limit <= INT64_MAX:
            raise items.refuse(f"{name}: must be a 64-bit integer (negative: no limit)")
    return dict(value)


def _refer(items: _Items, item: dict[str, Any], users: set[str],
           vhosts: set[str]) -> tuple[str, str]:
    """The item's user and vhost, which must exist or be in the file (the machine would
    skip the permission silently: a 204 with it missing)."""
    user, vhost = items.text(item, "user"), items.text(item, "vhost")
    if user not in users:
        raise items.refuse(f"user {user[:60]!r} does not exist (and is not in the file)")
    if vhost not in vhosts:
        raise items.refuse(f"vhost {vhost[:60]!r} does not exist (and is not in the file)")
    return user, vhost


async def _topology(defs: dict[str, Any], st: Any, vhosts: set[str],
                    limits: dict[str, dict[str, int]], out: Plan) -> None:
    """Exchanges, queues and bindings per vhost, checked as the machine checks a new one
    (``limits``: the vhost limits the file sets, applied before the queues)."""
    exchanges: set[tuple[str, str]] = set()  # (vhost, name) in the file
    queues: set[tuple[str, str]] = set()
    new_queues: dict[str, int] = {}  # per vhost, for its max-queues limit

    def vhost_of(items: _Items, item: dict[str, Any]) -> str:
        vhost = items.text(item, "vhost", "/")
        if vhost not in vhosts:
            raise items.refuse(f"vhost {vhost[:60]!r} does not exist (and is not in the file)")
        return vhost

    def existing(vhost: str) -> Any:
        return st.vhosts.get(vhost)

    xs = _Items(defs, "exchanges")
    async for x in xs.each():
        vhost, name = vhost_of(xs, x), xs.name(x)
        kind = xs.text(x, "type", short=True)
        if kind not in EXCHANGE_TYPES + PLUGIN_EXCHANGE_TYPES:
            raise xs.refuse(f"unknown exchange type {kind!r}")
        vh = existing(vhost)
        current = vh.exchanges.get(name) if vh is not None else None
        if name.startswith("amq."):
            log.warning("import: %s skipped: the prefix amq. is reserved", xs.label)
            continue  # (as RabbitMQ skips them)
        if current is not None and current.type != kind:
            raise xs.refuse(f"exchange {name!r} in vhost {vhost!r} exists with type "
                            f"{current.type!r}")
        out.topology.setdefault(vhost, []).append((xs.label, C.ExchangeDeclare(
            PLACEHOLDER, name, kind, False, xs.flag(x, "durable", True),
            xs.flag(x, "auto_delete", False), xs.flag(x, "internal", False), False,
            xs.arguments(x))))
        exchanges.add((vhost, name))
    qs = _Items(defs, "queues")
    async for qd in qs.each():
        vhost, name = vhost_of(qs, qd), qs.name(qd)
        args = qs.arguments(qd)
        vh = existing(vhost)
        if name.startswith("amq."):
            log.warning("import: %s skipped: the prefix amq. is reserved", qs.label)
            continue  # (as RabbitMQ skips them)
        if (vh is None or name not in vh.queues) and (vhost, name) not in queues:
            new_queues[vhost] = new_queues.get(vhost, 0) + 1
            limit = limits[vhost].get("max-queues") if vhost in limits else \
                vh.limits.get("max-queues") if vh is not None else None
            have = len(vh.queues) if vh is not None else 0
            if limit is not None and 0 <= limit < have + new_queues[vhost]:
                raise qs.refuse(f"vhost {vhost!r} would have more queues than its "
                                f"max-queues limit ({limit})")
        try:
            qargs.validate_queue_args(name, vhost, args)
        except AMQPError as e:
            raise qs.refuse(e.reply_text) from None
        out.topology.setdefault(vhost, []).append((qs.label, C.QueueDeclare(
            PLACEHOLDER, name, False, qs.flag(qd, "durable", True), False,
            qs.flag(qd, "auto_delete", False), False, args)))
        queues.add((vhost, name))
    bs = _Items(defs, "bindings")
    async for b in bs.each():
        vhost = vhost_of(bs, b)
        kind = bs.text(b, "destination_type", "queue")
        if kind not in ("queue", "exchange"):
            raise bs.refuse("destination_type must be queue or exchange")
        src, dest = bs.text(b, "source", short=True), bs.name(b, "destination")
        rk, args = bs.text(b, "routing_key", "", short=True), bs.arguments(b)
        if src == "":
            continue  # the default exchange's bindings are implicit
        vh = existing(vhost)
        if (vhost, src) not in exchanges and src not in STANDARD_EXCHANGES and \
                (vh is None or src not in vh.exchanges):
            raise bs.refuse(f"source exchange {src[:60]!r} does not exist in vhost "
                            f"{vhost[:60]!r} (and is not in the file)")
        known, have = (exchanges, vh.exchanges if vh else {}) if kind == "exchange" else \
            (queues, vh.queues if vh else {})
        if (vhost, dest) not in known and dest not in have and \
                not (kind == "exchange" and dest in STANDARD_EXCHANGES):
            raise bs.refuse(f"destination {kind} {dest[:60]!r} does not exist in vhost "
                            f"{vhost[:60]!r} (and is not in the file)")
        out.topology.setdefault(vhost, []).append((bs.label, C.ExchangeBind(
            PLACEHOLDER, dest, src, rk, False, args) if kind == "exchange"
            else C.QueueBind(PLACEHOLDER, dest, src, rk, False, args)))


# --- applying it in chunks -------------------------------------------------------------


async def apply(request: web.Request, plan: Plan) -> None:
    """``plan`` in RabbitMQ's order, CHUNK commands to a Raft entry (each one awaited: the
    loop serves everyone else between them, and no replica applies one huge entry). What
    only the machine can refuse (a queue redeclared with other arguments) stops the
    import at that item: a 400 naming it and saying how much was applied before."""
    node, total, done = node_of(request), plan.size(), 0
    try:
        for chunk in _chunks(plan.globals):
            await submit(request, *(cmd for _, cmd in chunk))
            done += len(chunk)
        for vhost, topology in plan.topology.items():
            for chunk in _chunks(topology):
                try:
                    await ApiSession(node, request["user"], vhost, system=True).run(
                        *(cmd for _, cmd in chunk))
                except Refusal as r:
                    # a channel's commands apply in order up to the one refused
                    refused, at = _stopped(r, chunk)
                    done += at if at is not None else 0
                    raise refused from None
                done += len(chunk)
    except Refusal as r:
        if done == 0:
            raise
        raise Refusal(_with_progress(r.response, done, total)) from None


def _chunks(items: list[_Item]) -> Iterator[list[_Item]]:
    for i in range(0, len(items), CHUNK):
        yield items[i:i + CHUNK]


def _reason(response: web.Response) -> tuple[Any, str]:
    try:
        answer = json.loads(response.text or "{}")
    except ValueError:
        answer = {}
    return answer.get("error", "bad_request"), str(answer.get("reason", ""))


def _mentions(cmd: C.Command) -> tuple[str, ...]:
    """How a refusal of ``cmd`` names its object (RabbitMQ's "queue 'q' in vhost ...")."""
    if isinstance(cmd, C.QueueDeclare):
        return (f"queue '{cmd.queue}'",)
    if isinstance(cmd, C.ExchangeDeclare):
        return (f"exchange '{cmd.exchange}'",)
    if isinstance(cmd, C.QueueBind):
        return (f"queue '{cmd.queue}'", f"exchange '{cmd.exchange}'")
    if isinstance(cmd, C.ExchangeBind):
        return (f"exchange '{cmd.destination}'", f"exchange '{cmd.source}'")
    return ()


def _stopped(refusal: Refusal, chunk: list[_Item]) -> tuple[Refusal, int | None]:
    """The machine's refusal of a chunk, naming the item its text names, and that item's
    place in the chunk (None: not found, the chunk's first and last are named)."""
    kind, reason = _reason(refusal.response)
    at = next((i for i, (_, cmd) in enumerate(chunk)
               if any(m in reason for m in _mentions(cmd))), None)
    prefix = f"{chunk[at][0]}: " if at is not None else \
        f"one of {chunk[0][0]} .. {chunk[-1][0]}: "
    return Refusal(error(refusal.response.status, kind, prefix + reason)), at


def _with_progress(response: web.Response, done: int, total: int) -> web.Response:
    kind, reason = _reason(response)
    return error(response.status, kind, f"{reason} ({done} of {total} definitions were "
                                        "applied before it, the rest were not)")
