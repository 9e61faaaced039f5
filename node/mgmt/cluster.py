"""Management API for the cluster as a whole: this node's status and resources, every
member's own report (/api/nodes, asked over the members' management ports) and the
maintenance operations (drain a node, move Raft leadership; node/services/maintenance.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import urllib.parse
from dataclasses import asdict
from typing import Any

from aiohttp import web

from cluster import commands as C
from cluster import machine
from node.mgmt.framework import (
    Node,
    Unreachable,
    bad_request,
    body,
    forward,
    forward_to,
    listing,
    maintenance,
    needs,
    node_of,
    not_found,
    state,
    unavailable,
)
from node.services import alarms

routes = web.RouteTableDef()

NODE_ASK_TIMEOUT_S = 2.0
_STARTED = time.time()


# --- this node ---------------------------------------------------------------------------


def status(node: Node) -> dict[str, Any]:
    st = node.raft.status()
    return {
        "node": node.node_id,
        "incarnation": node.incarnation,
        "ready": node.ready,
        "isolated": node.isolated,
        "raft_address": node.cfg.raft_address,
        "raft": asdict(st),
        "nodes": {name: asdict(info) for name, info in machine.nodes(node.raft.state).items()},
        # upgrades: the command level this node understands, the cluster's enabled level
        # and what each member announced (cluster/commands.py LEVEL)
        "levels": {"node": C.LEVEL, "cluster": node.raft.state.level,
                   "members": dict(node.raft.state.levels)},
        "connections": len(node.connections),
        **resources(node),
    }


def resources(node: Node) -> dict[str, Any]:
    """Memory and disk, this node's alarms and every alarm in the cluster (RabbitMQ's
    /api/nodes names: mem_used, mem_limit, mem_alarm, disk_free, disk_free_limit,
    disk_free_alarm)."""
    mon = node.alarms.monitor
    return {
        "mem_used": mon.memory_used, "mem_limit": mon.memory_limit,
        "mem_total": mon.memory_total, "mem_alarm": mon.active[alarms.MEMORY],
        "vm_memory_high_watermark": str(mon.memory_watermark),
        "disk_free": mon.disk_free, "disk_free_limit": mon.disk_free_limit,
        "disk_free_alarm": mon.active[alarms.DISK],
        "alarms": [{"node": n, "resource": resource} for n, resource in node.alarms.in_force()],
        "publishers_blocked": node.alarms.reason,
    }


@routes.get("/api/status")
@needs("monitoring")
async def get_status(request: web.Request) -> web.Response:
    return web.json_response(status(node_of(request)))


@routes.put("/api/nodes/{node}/limits")
@needs("administrator")
async def put_node_limits(request: web.Request) -> web.Response:
    """Change this node's memory watermark or disk free limit at run time, as
    ``rabbitmqctl set_vm_memory_high_watermark`` / ``set_disk_free_limit`` (until the
    node restarts: the command line or environment sets them at start-up)."""
    node = node_of(request)
    if request.match_info["node"] != node.node_id:
        raise not_found(f"this is node {node.node_id}: ask that node")
    data = await body(request)
    mon = node.alarms.monitor
    try:
        if "vm_memory_high_watermark" in data:
            mon.memory_watermark = alarms.parse_memory_watermark(
                str(data["vm_memory_high_watermark"]))
        if "disk_free_limit" in data:
            mon.disk_limit = alarms.parse_disk_limit(str(data["disk_free_limit"]))
    except ValueError as e:
        raise bad_request(str(e)) from None
    node.alarms.check()
    return web.json_response(resources(node))


# --- every node ----------------------------------------------------------------------------


def node_json(node: Node) -> dict[str, Any]:
    """This node as RabbitMQ's /api/nodes shows one, with its Raft view."""
    st = node.raft.status()
    lag = {peer: st.commit_index - idx for peer, idx in st.match_index}
    return {
        "name": node.node_id, "type": "disc", "running": True,
        "being_drained": node.draining,
        "uptime": int((time.time() - _STARTED) * 1000), "os_pid": str(os.getpid()),
        **{k: v for k, v in resources(node).items() if k != "alarms"},
        "raft": {"role": st.state, "leader": st.leader, "term": st.term,
                 "commit_index": st.commit_index, "last_applied": st.last_applied,
                 "log_entries": st.log_len, "has_quorum": st.has_quorum,
                 "raft_address": node.cfg.raft_address, "follower_lag": lag},
        "cluster_links": [{"name": m, "connected": m in st.connected} for m in st.members],
    }


async def _ask_node(request: web.Request, name: str, info: Any) -> dict[str, Any]:
    """``name``'s report of itself, or "not running" when it does not give one."""
    down = {"name": name, "type": "disc", "running": False}
    if info.down or not info.http_address:
        return down
    try:
        answer = await forward(request, info.http_address,
                               f"/api/nodes/{urllib.parse.quote(name, safe='')}",
                               method="GET", params={"local": "true"},
                               timeout=NODE_ASK_TIMEOUT_S)
        if answer.status == 200:
            report: dict[str, Any] = answer.json()
            return report
    except (Unreachable, ValueError):
        pass
    return down


@routes.get("/api/nodes")
@needs("monitoring")
async def list_nodes(request: web.Request) -> web.Response:
    """Every member, each as it reports itself (asked over its management port; a node
    that does not answer is listed as not running)."""
    node = node_of(request)
    others = [(n, i) for n, i in sorted(state(request).nodes.items()) if n != node.node_id]
    answers = await asyncio.gather(*(_ask_node(request, n, i) for n, i in others))
    return await listing(request, sorted([node_json(node), *answers],
                                         key=lambda n: n["name"]))


@routes.get("/api/nodes/{name}")
@needs("monitoring")
async def get_node(request: web.Request) -> web.Response:
    node = node_of(request)
    name = request.match_info["name"]
    if name == node.node_id:
        return web.json_response(node_json(node))
    info = state(request).nodes.get(name)
    if info is None or request.query.get("local") == "true":
        raise not_found()
    return web.json_response(await _ask_node(request, name, info))


# --- maintenance: drain, leadership --------------------------------------------------------


@routes.post("/api/nodes/{name}/drain")
@needs("administrator")
async def drain_node(request: web.Request) -> web.Response:
    """RaftMQ's maintenance mode for one node (node/services/maintenance.py); asked of another
    node, the request goes to it."""
    node = node_of(request)
    name = request.match_info["name"]
    if name != node.node_id:
        if name not in state(request).nodes:
            raise not_found()
        return await forward_to(request, name)
    result = await maintenance(request).drain()
    return web.json_response({"ok": result.settled, "node": node.node_id,
                              **dataclasses.asdict(result)})


@routes.post("/api/cluster/transfer-leadership")
@needs("administrator")
async def transfer_leadership(request: web.Request) -> web.Response:
    """Move Raft leadership to ``to`` (a node id or Raft address; default: the most
    up-to-date follower). Asked of a follower, the request goes to the leader."""
    node = node_of(request)
    st = state(request)
    to = request.query.get("to") or None
    if to is not None and to in st.nodes:
        to = st.nodes[to].raft_address or to
    if to is not None and to not in node.raft.status().members:
        raise bad_request(f"{to} is not a member of the cluster")
    if not node.raft.is_leader:
        leader = node.raft.leader
        owner = next((n for n, i in st.nodes.items() if i.raft_address == leader), None)
        if owner is None:
            raise unavailable("no leader known")
        return await forward_to(request, owner)
    if to == node.cfg.raft_address:
        return web.json_response({"ok": True, "leader": to})
    leader = await maintenance(request).transfer(to, None)
    if leader is None or (to is not None and leader != to):
        return web.json_response({"ok": False, "leader": node.raft.leader,
                                  "error": "the leadership did not move in time (a target "
                                           "must be connected and caught up)"}, status=409)
    return web.json_response({"ok": True, "leader": leader})
