"""Raft membership on the management API: ``POST /api/members?address=`` adds a member,
``DELETE`` removes one (``raftmq cluster add`` / ``remove``). Answers are
``{"ok", "error", "address"}``: 200 when done, 409 when refused, 504 on a timeout."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from cluster import machine
from cluster.replica import MembershipResult
from node.mgmt.framework import (
    Node,
    Unreachable,
    bad_request,
    forward,
    maintenance,
    needs,
    node_of,
)

routes = web.RouteTableDef()

MEMBERSHIP_TIMEOUT_S = 10.0
MEMBERSHIP_ATTEMPTS = 3


@routes.post("/api/members")
@needs("administrator")
async def add_member(request: web.Request) -> web.Response:
    return await _membership(request, "POST")


@routes.delete("/api/members")
@needs("administrator")
async def remove_member(request: web.Request) -> web.Response:
    return await _membership(request, "DELETE")


def _answer(result: MembershipResult | str, address: str) -> web.Response:
    ok = result == MembershipResult.OK
    return web.json_response({"ok": ok, "error": None if ok else str(result),
                              "address": address}, status=200 if ok else 409)


async def _membership(request: web.Request, method: str) -> web.Response:
    """Add or remove a Raft member. An address that does not answer as a RaftMQ node with
    this cluster's secret is refused (``force=true`` skips the check), so a typo cannot
    add a member that never comes and cost the cluster its quorum."""
    node = node_of(request)
    address = request.query.get("address", "")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or \
            not 0 < int(port) < 65536 or len(address) > 1024:
        raise bad_request("address=HOST:PORT is required")
    if method == "POST" and request.query.get("force") != "true":
        if not node.cfg.cluster_secret:
            raise bad_request("this node has no --cluster-secret: a cluster needs one (its "
                              "Raft traffic is encrypted and authenticated with it)")
        # (pysyncobj is imported only where a real node runs: not on import of the API)
        from cluster.raft.probe import probe_member

        ok, why = await asyncio.to_thread(probe_member, address, node.cfg.cluster_secret)
        if not ok:
            return web.json_response({"ok": False, "address": address, "error":
                                      f"{address} does not answer as a RaftMQ node with this "
                                      f"cluster's secret ({why}); force=true adds it anyway"},
                                     status=409)
    if method == "DELETE" and (not node.raft.is_leader or address == node.cfg.raft_address):
        # Removals are done by the leader: a removed node never learns the commit of its
        # own removal. A leader cannot remove itself: it hands leadership over first.
        if node.raft.is_leader and not await _step_down(request, node):
            return web.json_response({"ok": False, "error": "could not transfer leadership"},
                                     status=409)
        return await _forward_to_leader(request, node, method, address)
    for attempt in range(MEMBERSHIP_ATTEMPTS):
        done: asyncio.Future[MembershipResult] = asyncio.get_running_loop().create_future()

        def callback(result: MembershipResult, done: asyncio.Future[MembershipResult] = done,
                     ) -> None:
            if not done.done():
                done.set_result(result)

        if method == "POST":
            node.raft.add_member(address, callback)
        else:
            node.raft.remove_member(address, callback)
        node.wake()
        try:
            result = await asyncio.wait_for(done, MEMBERSHIP_TIMEOUT_S)
        except TimeoutError:
            return web.json_response({"ok": False, "error": "timeout", "address": address},
                                     status=504)
        # A removal lost to a change of leader (the node being removed may stand for
        # election once the leader stops heartbeating it) is done again, by the leader.
        retry = (method == "DELETE" and attempt + 1 < MEMBERSHIP_ATTEMPTS
                 and result in (MembershipResult.DISCARDED, MembershipResult.LEADER_CHANGED))
        if not retry:
            return _answer(result, address)
        await asyncio.sleep(0.5)
        if address not in node.raft.status().members:
            return _answer(MembershipResult.OK, address)
        if not node.raft.is_leader:
            return await _forward_to_leader(request, node, method, address)
    return _answer(result, address)


async def _step_down(request: web.Request, node: Node) -> bool:
    """Hand leadership over (the leader is to be removed) the way a drain does: new entries
    held back until a follower has them all (pysyncobj's bare transfer was refused under
    load, where no follower is ever fully caught up: found by the chaos suite)."""
    deadline = time.monotonic() + MEMBERSHIP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not node.raft.is_leader:
            if node.raft.leader is not None:
                return True
            await asyncio.sleep(0.2)
            continue
        await maintenance(request).transfer(None, max(0.5, deadline - time.monotonic()))
    return False


async def _forward_to_leader(request: web.Request, node: Node, method: str,
                             address: str) -> web.Response:
    leader = node.raft.leader
    http = next((i.http_address for i in machine.nodes(node.raft.state).values()
                 if i.raft_address == leader and i.http_address), None)
    if http is None:
        return web.json_response({"ok": False, "error": f"no HTTP address known for the leader "
                                  f"{leader}"}, status=409)
    try:
        answer = await forward(request, http, "/api/members", method=method,
                               params={"address": address}, timeout=MEMBERSHIP_TIMEOUT_S + 5)
        return web.json_response(answer.json(), status=answer.status)
    except (Unreachable, ValueError) as e:
        return web.json_response({"ok": False, "error": str(e)}, status=504)
