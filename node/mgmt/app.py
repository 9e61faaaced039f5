"""The management API assembled: every resource module's routes on one aiohttp app, the
node it serves (node/mgmt/framework.py Node) with its maintenance operations, and the
message-rate sampler that runs while the API is served.

This is the one module of node/mgmt/ that knows the concrete node (node/broker.py) and
node/services/maintenance.py; the resource modules see the node through the framework only."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from node.mgmt import access, cluster, dashboard, definitions, health, members, objects, shovels
from node.mgmt.framework import MAINTENANCE, NODE, RATES, Maintenance, Node
from node.mgmt.rates import SAMPLE_S, Rates
from node.services import maintenance

if TYPE_CHECKING:
    from node.broker import Broker

log = logging.getLogger(__name__)

RESOURCES = (access, cluster, members, objects, definitions, health, dashboard, shovels)


def app(broker: Broker, client_max_size: int) -> web.Application:
    application = web.Application(client_max_size=client_max_size)
    node: Node = broker
    application[NODE] = node
    application[MAINTENANCE] = operations(broker)
    for module in RESOURCES:
        application.add_routes(module.routes)
    _sample_rates(application, node)
    return application


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
    rates = application[RATES] = Rates(lambda: node.raft.state)
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
