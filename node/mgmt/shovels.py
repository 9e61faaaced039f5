"""Dynamic shovels on the management API, as RabbitMQ 3.10's rabbitmq_shovel_management
has them: the ``shovel`` runtime parameters (PUT / GET / DELETE
/api/parameters/shovel/{vhost}/{name}, body ``{"value": {...}}``) and their statuses
(GET /api/shovels[/{vhost}], DELETE /api/shovels/vhost/{vhost}/{name}/restart).

The definitions and the statuses are both in the replicated state (cluster/machine/
shovels.py), so any member answers from its own replica: the status is what the node
running the shovel (the leader, node/shovel/runner.py) last reported, at most a couple of
seconds old for the message count."""

from __future__ import annotations

import datetime
from typing import Any

from aiohttp import web

from cluster import commands as C
from cluster.machine import access as machine_access
from cluster.machine.shovels import (
    Shovel,
    check_parameter,
    definition,
    parameter_json,
    redact,
)
from node.mgmt.framework import (
    bad_request,
    body,
    created_or_updated,
    has,
    needs,
    no_content,
    not_found,
    state,
    submit,
    unauthorised,
    unavailable,
)

routes = web.RouteTableDef()

SHOVEL_LEVEL = C.ShovelSet.SINCE


def _visible(request: web.Request, vhost: str) -> bool:
    """Monitoring users see every vhost's shovels, others those of the vhosts they may
    use (as RabbitMQ filters its listings)."""
    if has(request["tags"], "monitoring"):
        return True
    return machine_access.vhost_access(state(request), request["user"], vhost)


def status_json(sh: Shovel) -> dict[str, Any]:
    """RabbitMQ's /api/shovels entry of a dynamic shovel, and RaftMQ's message count."""
    d = definition(sh.value)
    at = datetime.datetime.fromtimestamp(sh.at_ms / 1000, tz=datetime.UTC)
    entry: dict[str, Any] = {
        "name": sh.name, "vhost": sh.vhost, "type": "dynamic", "state": sh.state,
        # (RabbitMQ's format: the hour not padded)
        "node": sh.node or None, "timestamp": f"{at:%Y-%m-%d} {at.hour}:{at:%M:%S}",
        "src_protocol": "amqp091", "dest_protocol": "amqp091",
        "src_uri": redact(d.src_uris[0]), "dest_uri": redact(d.dest_uris[0]),
        "src_queue": d.src_queue, "messages_moved": sh.moved,
    }
    if d.dest_queue is not None:
        entry["dest_queue"] = d.dest_queue
    if d.dest_exchange is not None:
        entry["dest_exchange"] = d.dest_exchange
    if d.dest_exchange_key is not None:
        entry["dest_exchange_key"] = d.dest_exchange_key
    if sh.state == "terminated":
        entry["reason"] = sh.reason
    return entry


def _shovels(request: web.Request, vhost: str | None = None) -> list[Shovel]:
    st = state(request)
    if vhost is not None and vhost not in st.vhosts:
        raise not_found()
    return [sh for sh in st.shovels.values()
            if (vhost is None or sh.vhost == vhost) and sh.vhost in st.vhosts
            and _visible(request, sh.vhost)]


def _one(request: web.Request) -> Shovel:
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    sh = state(request).shovels.get((vhost, name))
    if sh is None or vhost not in state(request).vhosts or not _visible(request, vhost):
        raise not_found()
    return sh


def _may_change(request: web.Request, vhost: str) -> None:
    """A policymaker changes the shovels of the vhosts it may use only (an administrator:
    every vhost's), as RabbitMQ's runtime parameters."""
    if not has(request["tags"], "administrator") and \
            not machine_access.vhost_access(state(request), request["user"], vhost):
        raise unauthorised("Access refused.")


def _level(request: web.Request) -> None:
    if state(request).level < SHOVEL_LEVEL:
        raise unavailable("shovels need every member of the cluster upgraded (command "
                          f"level {SHOVEL_LEVEL}; the cluster is at {state(request).level})")


# --- the parameters -------------------------------------------------------------------


@routes.get("/api/parameters")
@needs("policymaker")
async def list_all_parameters(request: web.Request) -> web.Response:
    """Every runtime parameter RaftMQ has, as RabbitMQ lists them (``rabbitmqadmin list
    parameters``): the vhosts' limits, then the shovels."""
    st = state(request)
    limits = [{"value": dict(vh.limits), "vhost": vh.name, "component": "vhost-limits",
               "name": "limits"} for vh in list(st.vhosts.values())
              if vh.limits and _visible(request, vh.name)]
    return web.json_response(limits + [parameter_json(sh) for sh in _shovels(request)])


@routes.get("/api/parameters/shovel")
@needs("policymaker")
async def list_parameters(request: web.Request) -> web.Response:
    return web.json_response([parameter_json(sh) for sh in _shovels(request)])


@routes.get("/api/parameters/shovel/{vhost}")
@needs("policymaker")
async def list_vhost_parameters(request: web.Request) -> web.Response:
    return web.json_response([parameter_json(sh)
                              for sh in _shovels(request, request.match_info["vhost"])])


@routes.get("/api/parameters/shovel/{vhost}/{name}")
@needs("policymaker")
async def get_parameter(request: web.Request) -> web.Response:
    return web.json_response(parameter_json(_one(request)))


@routes.put("/api/parameters/shovel/{vhost}/{name}")
@needs("policymaker")
async def put_parameter(request: web.Request) -> web.Response:
    vhost, name = request.match_info["vhost"], request.match_info["name"]
    st = state(request)
    if vhost not in st.vhosts:
        raise not_found()
    _may_change(request, vhost)
    doc = await body(request)
    if "value" not in doc:
        raise bad_request("the body must hold the shovel's definition as \"value\"")
    try:
        check_parameter(vhost, name, doc["value"], st.vhosts)
    except ValueError as e:
        raise bad_request(f"Validation failed\n\n{e}") from None
    _level(request)
    existed = (vhost, name) in st.shovels
    await submit(request, C.ShovelSet(vhost, name, doc["value"]))
    return created_or_updated(existed)


@routes.delete("/api/parameters/shovel/{vhost}/{name}")
@needs("policymaker")
async def delete_parameter(request: web.Request) -> web.Response:
    sh = _one(request)
    _may_change(request, sh.vhost)
    await submit(request, C.ShovelClear(sh.vhost, sh.name))
    return no_content()


# --- the statuses ----------------------------------------------------------------------


@routes.get("/api/shovels")
@needs("management")
async def list_statuses(request: web.Request) -> web.Response:
    return web.json_response([status_json(sh) for sh in _shovels(request)])


@routes.get("/api/shovels/{vhost}")
@needs("management")
async def list_vhost_statuses(request: web.Request) -> web.Response:
    return web.json_response([status_json(sh)
                              for sh in _shovels(request, request.match_info["vhost"])])


@routes.get("/api/shovels/vhost/{vhost}/{name}")
@needs("management")
async def get_status(request: web.Request) -> web.Response:
    return web.json_response(status_json(_one(request)))


@routes.delete("/api/shovels/vhost/{vhost}/{name}/restart")
@needs("policymaker")
async def restart(request: web.Request) -> web.Response:
    sh = _one(request)
    _may_change(request, sh.vhost)
    await submit(request, C.ShovelStatus(sh.vhost, sh.name, "", "restart"))
    return no_content()
