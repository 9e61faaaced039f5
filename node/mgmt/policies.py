"""Policies and operator policies in the management API, as RabbitMQ 3.10's:
``/api/policies[/{vhost}[/{name}]]`` and ``/api/operator-policies[...]`` (GET, PUT,
DELETE), the same JSON ({vhost, name, pattern, apply-to, definition, priority}), statuses
and error bodies (checked side by side: tests/integration/test_policies_compare.py).

Who may (as RabbitMQ 3.10 answers, compared): any management user lists the policies and
operator policies of the vhosts it has permissions in; reading, setting or clearing one
policy needs the ``policymaker`` tag (or ``administrator``) and permissions in its vhost;
one operator policy needs ``administrator``. A change is one Raft entry
(cluster/machine/policies.py applies it on every member), answered once applied here."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cluster import commands as C
from cluster.machine import policies as P
from cluster.machine.state import Policy, State, VHost
from node.mgmt import views
from node.mgmt.framework import (
    Refusal,
    bad_request,
    body,
    checked,
    created_or_updated,
    error,
    has,
    listing,
    needs,
    no_content,
    not_found,
    state,
    submit,
    unauthorised,
)
from node.mgmt.input import check_name

routes = web.RouteTableDef()




def policies(st: State, operator: bool, vhost: str | None = None,
             viewer: views.Viewer | None = None) -> list[dict[str, Any]]:
    """Every policy (``operator``: operator policy) of the vhosts ``viewer`` sees."""
    rows: list[dict[str, Any]] = []
    for vh in views.vhosts(st, vhost, viewer):
        table = vh.operator_policies if operator else vh.policies
        rows.extend(views.policy_json(vh.name, p) for p in table.values())
    return rows


def _operator(request: web.Request) -> bool:
    return request.path.startswith("/api/operator-policies")


def _viewer(request: web.Request) -> views.Viewer:
    return views.Viewer.of(state(request), request["user"], request["tags"])


def _vhost(request: web.Request) -> VHost | None:
    """The path's vhost (None: all): 404 when it does not exist, 401 when the user may not
    look into it."""
    name = request.match_info.get("vhost")
    if name is None:
        return None
    vh: VHost | None = state(request).vhosts.get(name)
    if vh is None:
        raise not_found()
    if not _viewer(request).sees_vhost(name):
        raise unauthorised("User not authorised to access virtual host")
    return vh


def _may_edit(request: web.Request) -> None:
    """One policy: a policymaker with permissions in its vhost (RabbitMQ's 401 else)."""
    if not (has(request["tags"], "policymaker")
            and _viewer(request).sees_vhost(request.match_info["vhost"])):
        raise unauthorised("User not authorised to access object")


def _refused(operator: bool, reason: str) -> Refusal:
    """RabbitMQ's 400: its policy validation's message, HTML-escaped for policies (the
    management plugin escapes it there, not for operator policies)."""
    text = f"Validation failed\n\n{reason}\n"
    if not operator:
        text = text.replace("<", "&lt;").replace(">", "&gt;")
    return bad_request(text)


@routes.get("/api/policies")
@routes.get("/api/policies/{vhost}")
@needs("management")
async def list_policies(request: web.Request) -> web.Response:
    vh = _vhost(request)
    return await listing(request, policies(state(request), False,
                                           vh.name if vh else None, _viewer(request)))


@routes.get("/api/operator-policies")
@routes.get("/api/operator-policies/{vhost}")
@needs("management")
async def list_operator_policies(request: web.Request) -> web.Response:
    vh = _vhost(request)
    return await listing(request, policies(state(request), True, vh.name if vh else None,
                                           _viewer(request)))


def _one(request: web.Request) -> tuple[VHost, Policy | None]:
    if not _operator(request):
        _may_edit(request)
    vh = _vhost(request)
    assert vh is not None
    table = vh.operator_policies if _operator(request) else vh.policies
    return vh, table.get(request.match_info["name"])


def _get(request: web.Request) -> web.Response:
    vh, p = _one(request)
    if p is None:
        raise not_found()
    return web.json_response(views.policy_json(vh.name, p))


@routes.get("/api/policies/{vhost}/{name}")
@needs("management")
async def get_policy(request: web.Request) -> web.Response:
    return _get(request)


@routes.get("/api/operator-policies/{vhost}/{name}")
@needs("administrator")
async def get_operator_policy(request: web.Request) -> web.Response:
    return _get(request)


async def _put(request: web.Request) -> web.Response:
    operator = _operator(request)
    if not operator:
        _may_edit(request)
    name = request.match_info["vhost"]
    if name not in state(request).vhosts:
        raise Refusal(error(404, "not_found", "vhost_not_found"))
    vh, existing = _one(request)
    policy_name: str = checked(check_name, request.match_info["name"], "policy name")
    data = await body(request)
    missing = [k for k in ("pattern", "definition") if k not in data]
    if missing:
        raise bad_request("[" + ",".join(f"{{key_missing,{k}}}" for k in missing) + "]")
    pattern, definition = data["pattern"], data["definition"]
    apply_to = data.get("apply-to")
    if apply_to is None:
        apply_to = "all"
    priority = data.get("priority", 0)
    if priority is None:
        priority = 0
    if not isinstance(definition, dict):
        raise bad_request("definition must be a JSON object")
    reason = P.problem(pattern, apply_to, priority, definition, operator)
    if reason is not None:
        raise _refused(operator, reason)
    table = vh.operator_policies if operator else vh.policies
    if existing is None and len(table) >= P.MAX_PER_VHOST:
        raise bad_request(f"vhost '{vh.name}' has {P.MAX_PER_VHOST} policies already")
    if state(request).level < C.SetPolicy.SINCE:
        raise Refusal(error(503, "unavailable", "policies need every cluster member at "
                                                "release level 4 (raftmq cluster status)"))
    await submit(request, C.SetPolicy(vh.name, policy_name, pattern, apply_to, priority,
                                      definition, operator))
    return created_or_updated(existing is not None)


@routes.put("/api/policies/{vhost}/{name}")
@needs("management")
async def put_policy(request: web.Request) -> web.Response:
    return await _put(request)


@routes.put("/api/operator-policies/{vhost}/{name}")
@needs("administrator")
async def put_operator_policy(request: web.Request) -> web.Response:
    return await _put(request)


async def _delete(request: web.Request) -> web.Response:
    vh, p = _one(request)
    if p is None:
        raise not_found()
    await submit(request, C.ClearPolicy(vh.name, p.name, _operator(request)))
    return no_content()


@routes.delete("/api/policies/{vhost}/{name}")
@needs("management")
async def delete_policy(request: web.Request) -> web.Response:
    return await _delete(request)


@routes.delete("/api/operator-policies/{vhost}/{name}")
@needs("administrator")
async def delete_operator_policy(request: web.Request) -> web.Response:
    return await _delete(request)
