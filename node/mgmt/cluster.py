"""Management API for the cluster as a whole: every member's own report (/api/nodes, asked
over the members' management ports) and the maintenance operations (drain a node, move
Raft leadership; node/maintenance.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

from aiohttp import ClientSession, ClientTimeout, web

from node.mgmt.framework import Refusal, bad_request, broker_of, error, needs, not_found, state
from node.mgmt.objects import forward, listing

if TYPE_CHECKING:
    from node.broker import Broker

routes = web.RouteTableDef()


# --- nodes ---------------------------------------------------------------------------------

NODE_ASK_TIMEOUT_S = 2.0
_STARTED = time.time()


def node_json(broker: Broker) -> dict[str, Any]:
    """This node as RabbitMQ's /api/nodes shows one, with its Raft view."""
    from node.mgmt.framework import resources

    st = broker.raft.status()
    lag = {peer: st.commit_index - idx for peer, idx in st.match_index}
    return {
        "name": broker.node_id, "type": "disc", "running": True,
        "being_drained": broker.draining,
        "uptime": int((time.time() - _STARTED) * 1000), "os_pid": str(os.getpid()),
        **{k: v for k, v in resources(broker).items() if k != "alarms"},
        "raft": {"role": st.state, "leader": st.leader, "term": st.term,
                 "commit_index": st.commit_index, "last_applied": st.last_applied,
                 "log_entries": st.log_len, "has_quorum": st.has_quorum,
                 "raft_address": broker.cfg.raft_address, "follower_lag": lag},
        "cluster_links": [{"name": m, "connected": m in st.connected} for m in st.members],
    }


async def _ask_node(request: web.Request, name: str, info: Any) -> dict[str, Any]:
    down = {"name": name, "type": "disc", "running": False}
    if info.down or not info.http_address:
        return down
    url = f"http://{info.http_address}/api/nodes/{urllib.parse.quote(name, safe='')}"
    try:
        async with ClientSession(timeout=ClientTimeout(total=NODE_ASK_TIMEOUT_S)) as s, \
                s.get(url, params={"local": "true"},
                      headers={"Authorization": request.headers["Authorization"]}) as r:
            if r.status == 200:
                answer: dict[str, Any] = await r.json(content_type=None)
                return answer
    except (OSError, TimeoutError, ValueError):
        pass
    return down


@routes.get("/api/nodes")
@needs("monitoring")
async def list_nodes(request: web.Request) -> web.Response:
    """Every member, each as it reports itself (asked over its management port; a node
    that does not answer is listed as not running)."""
    broker = broker_of(request)
    others = [(n, i) for n, i in sorted(state(request).nodes.items()) if n != broker.node_id]
    answers = await asyncio.gather(*(_ask_node(request, n, i) for n, i in others))
    return await listing(request, sorted([node_json(broker), *answers],
                                         key=lambda n: n["name"]))


@routes.get("/api/nodes/{name}")
@needs("monitoring")
async def get_node(request: web.Request) -> web.Response:
    broker = broker_of(request)
    name = request.match_info["name"]
    if name == broker.node_id:
        return web.json_response(node_json(broker))
    info = state(request).nodes.get(name)
    if info is None or request.query.get("local") == "true":
        raise not_found()
    return web.json_response(await _ask_node(request, name, info))


# --- maintenance: drain, leadership --------------------------------------------------------


@routes.post("/api/nodes/{name}/drain")
@needs("administrator")
async def drain_node(request: web.Request) -> web.Response:
    """RaftMQ's maintenance mode for one node (node/maintenance.py); asked of another
    node, the request goes to it."""
    from node.maintenance import drain

    broker = broker_of(request)
    name = request.match_info["name"]
    if name != broker.node_id:
        if name not in state(request).nodes:
            raise not_found()
        return await forward(request, name)
    result = await drain(broker)
    return web.json_response({"ok": result.settled, "node": broker.node_id,
                              **dataclasses.asdict(result)})


@routes.post("/api/cluster/transfer-leadership")
@needs("administrator")
async def transfer_leadership(request: web.Request) -> web.Response:
    """Move Raft leadership to ``to`` (a node id or Raft address; default: the most
    up-to-date follower). Asked of a follower, the request goes to the leader."""
    from node.maintenance import transfer_leadership as transfer

    broker = broker_of(request)
    st = state(request)
    to = request.query.get("to") or None
    if to is not None and to in st.nodes:
        to = st.nodes[to].raft_address or to
    if to is not None and to not in broker.raft.status().members:
        raise bad_request(f"{to} is not a member of the cluster")
    if not broker.raft.is_leader:
        leader = broker.raft.leader
        owner = next((n for n, i in st.nodes.items() if i.raft_address == leader), None)
        if owner is None:
            raise Refusal(error(503, "unavailable", "no leader known"))
        return await forward(request, owner)
    if to == broker.cfg.raft_address:
        return web.json_response({"ok": True, "leader": to})
    leader = await transfer(broker, to)
    if leader is None or (to is not None and leader != to):
        return web.json_response({"ok": False, "leader": broker.raft.leader,
                                  "error": "the leadership did not move in time (a target "
                                           "must be connected and caught up)"}, status=409)
    return web.json_response({"ok": True, "leader": leader})
