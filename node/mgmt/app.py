"""The management API assembled: every resource module's routes on one aiohttp app, the
node it serves (node/mgmt/framework.py Node) with its maintenance operations, and the
message-rate sampler that runs while the API is served.

This is the one module of node/mgmt/ that knows the concrete node (node/broker.py) and
node/services/maintenance.py; the resource modules see the node through the framework only."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from aiohttp import web

from node.mgmt import (
    access,
    cluster,
    dashboard,
    definitions,
    health,
    members,
    objects,
    policies,
    shovels,
)
from node.mgmt.framework import MAINTENANCE, NODE, RATES, Maintenance, Node
from node.mgmt.rates import SAMPLE_S, Rates
from node.services import maintenance

if TYPE_CHECKING:
    from node.broker import Broker

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

RESOURCES = (access, cluster, members, objects, definitions, health, dashboard, shovels,
             policies)


def app(broker: Broker, client_max_size: int) -> web.Application:
    application = web.Application(client_max_size=client_max_size,
                                  middlewares=[unrouted])
    node: Node = broker
    application[NODE] = node
    application[MAINTENANCE] = operations(broker)
    for module in RESOURCES:
        application.add_routes(module.routes)
        application.add_routes(with_trailing_slash(module.routes))
    _sample_rates(application, node)
    return application


def with_trailing_slash(routes: Iterable[web.AbstractRouteDef]) -> list[web.RouteDef]:
    """Every API route again with a trailing slash: RabbitMQ's router (cowboy) ignores one
    (``GET /api/connections/`` is ``GET /api/connections``; clients rely on it). Only one:
    ``/api/connections//`` names the connection "", which does not exist (404 on both)."""
    return [web.RouteDef(r.method, r.path + "/", r.handler, r.kwargs) for r in routes
            if isinstance(r, web.RouteDef) and r.path.startswith("/api/")]


# RabbitMQ's answer to a path it does not know (its catch-all resource allows only GET,
# HEAD and OPTIONS): 404 with its error body, to anyone; any other method 405, no body.
NOT_FOUND_BODY = {"error": "Object Not Found", "reason": "Not Found"}
CATCH_ALL_METHODS = "HEAD, GET, OPTIONS"


ALLOW_ORDER = ("HEAD", "GET", "PUT", "POST", "DELETE", "OPTIONS")


@web.middleware
async def unrouted(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Requests no route takes answered as RabbitMQ 3.10's management plugin answers them:
    an unknown path is a JSON 404 to GET/HEAD and a 405 to anything else; a known path with
    a method it does not allow is a 405 with its ``Allow`` header and no body; OPTIONS is a
    200 with the ``Allow`` header, to anyone (a browser's CORS preflight)."""
    refused = request.match_info.http_exception
    allow = CATCH_ALL_METHODS
    if isinstance(refused, web.HTTPMethodNotAllowed):
        methods = {*refused.allowed_methods, "HEAD", "OPTIONS"} if "GET" in \
            refused.allowed_methods else {*refused.allowed_methods, "OPTIONS"}
        allow = ", ".join(m for m in ALLOW_ORDER if m in methods)
    if request.method == "OPTIONS" and refused is not None:
        return web.Response(status=200, headers={"Allow": allow})
    if isinstance(refused, web.HTTPMethodNotAllowed):
        return web.Response(status=405, headers={"Allow": allow})
    if isinstance(refused, web.HTTPNotFound):
        if request.method in ("GET", "HEAD"):
            return web.json_response(NOT_FOUND_BODY, status=404)
        return web.Response(status=405, headers={"Allow": allow})
    return await handler(request)


def operations(broker: Broker) -> Maintenance:
    """node/services/maintenance.py's drain and leadership transfer, for ``broker``."""

    async def drain() -> maintenance.DrainResult:
        return await maintenance.drain(broker)

    async def transfer(to: str | None, timeout: float | None) -> str | None:
        return await maintenance.transfer_leadership(
            broker, to, maintenance.TRANSFER_TIMEOUT_S if timeout is None else timeout)

    return Maintenance(drain, transfer)


def _sample_rates(application: web.Application, node: Node) -> None:
    """Message rates (node/mgmt/rates.py), sampled while the API is served."""
    rates = application[RATES] = Rates(lambda: node.raft.state,
                                       local_of=lambda: objects.local_counts(node))
    handle: list[asyncio.TimerHandle] = []

    def tick() -> None:
        wait = SAMPLE_S
        try:
            wait = rates.sample()
        except Exception:  # never let a sampling bug stop the sampling
            log.exception("sampling message rates failed")
        handle[:] = [asyncio.get_running_loop().call_later(wait, tick)]

    async def start(_app: web.Application) -> None:
        tick()

    async def stop(_app: web.Application) -> None:
        for h in handle:
            h.cancel()

    application.on_startup.append(start)
    application.on_cleanup.append(stop)
