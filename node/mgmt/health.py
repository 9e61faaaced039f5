"""RabbitMQ's health checks on the management API: alarms (cluster-wide and this node's),
whether stopping this node would cost the cluster its Raft majority, and the aliveness
test (declare, publish, get in a vhost). 200 {"status": "ok"} or 503 {"status": "failed",
"reason": ...}, as RabbitMQ answers them."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cluster import commands as C
from cluster import effects as E
from node.mgmt.framework import PLACEHOLDER, ApiSession, needs, node_of, not_found, state

routes = web.RouteTableDef()

ALIVENESS_QUEUE = "aliveness-test"


def ok() -> web.Response:
    return web.json_response({"status": "ok"})


def failed(reason: str, **extra: Any) -> web.Response:
    return web.json_response({"status": "failed", "reason": reason, **extra}, status=503)


@routes.get("/api/health/checks/alarms")
@needs("monitoring")
async def alarms(request: web.Request) -> web.Response:
    found = [{"node": node, "resource": resource}
             for node, resource in node_of(request).alarms.in_force()]
    if found:
        return failed("There are alarms in effect in the cluster", alarms=found)
    return ok()


@routes.get("/api/health/checks/local-alarms")
@needs("monitoring")
async def local_alarms(request: web.Request) -> web.Response:
    node = node_of(request)
    found = [{"node": node.node_id, "resource": r}
             for r, on in node.alarms.monitor.active.items() if on]
    if found:
        return failed("There are alarms in effect on the node", alarms=found)
    return ok()


def quorum_critical(members: int, up: int) -> bool:
    """Whether one fewer node up than ``up`` (of ``members`` voters) loses the majority."""
    return members > 1 and up - 1 < members // 2 + 1


@routes.get("/api/health/checks/node-is-quorum-critical")
@needs("monitoring")
async def node_is_quorum_critical(request: web.Request) -> web.Response:
    """Every queue lives in the one Raft group of the cluster: stopping this node is
    critical when the members up, this one included, are just a majority."""
    st = node_of(request).raft.status()  # members: this node's address and its peers'
    if len(st.members) <= 1:
        return web.json_response({"status": "ok", "reason": "single node cluster"})
    if quorum_critical(len(st.members), 1 + len(st.connected)):
        queues = [{"name": q.name, "virtual_host": vh.name, "type": "raftmq"}
                  for vh in state(request).vhosts.values() for q in vh.queues.values()
                  if q.durable]
        return failed("There are quorum queues that would lose their quorum if the target "
                      "node is shut down", queues=queues)
    return ok()


@routes.get("/api/aliveness-test/{vhost}")
@needs("management")
async def aliveness(request: web.Request) -> web.Response:
    vhost = request.match_info["vhost"]
    if vhost not in state(request).vhosts:
        raise not_found()
    got = await ApiSession(node_of(request), request["user"], vhost).run(
        C.QueueDeclare(PLACEHOLDER, ALIVENESS_QUEUE, False, False, False, False, False, {}),
        C.Publish(PLACEHOLDER, "", ALIVENESS_QUEUE, False, b"\x00\x00", b"test_message", 0),
        C.Get(PLACEHOLDER, ALIVENESS_QUEUE, True))
    if not any(isinstance(ef, E.GetOk) and rec[3] == b"test_message" for ef, rec in got):
        return failed("aliveness test: the test message did not come back")
    return ok()
