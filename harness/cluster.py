"""A RaftMQ cluster of real node processes on loopback, built from ``RaftMQNode``.

Every node gets free AMQP / HTTP / Raft ports (kept across restarts), a data directory
``base_dir/<id>`` and a log ``base_dir/<id>.log``. Every wait is bounded by a deadline; the
errors raised on timeout carry what the nodes last said and the tails of their logs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import signal as _signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from .ports import free_port
from .raftmq import RaftMQNode

Status = dict[str, Any]


def _port_range() -> tuple[int, int]:
    """[low, high) for test ports: from 20000 to the start of the ephemeral range."""
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    return (20000, first) if first > 21000 else (10000, 20000)


class ClusterError(AssertionError):
    """A cluster-level wait timed out or a membership change failed."""


def http_json(url: str, method: str = "GET", timeout: float = 5.0,
              auth: tuple[str, str] = ("guest", "guest")) -> Any:
    """JSON of ``url`` (basic auth as ``auth``, the management API's default user); HTTP
    errors with a JSON body are returned, not raised."""
    req = urllib.request.Request(url, method=method)
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return json.loads(body)
        except ValueError:
            raise ClusterError(f"{method} {url}: HTTP {e.code} {body!r}") from e


class RaftMQCluster:
    """``n`` RaftMQ nodes ``n1..nN`` that know each other as ``--peers``."""

    def __init__(self, base_dir: Path, n: int = 3, extra_env: dict[str, str] | None = None,
                 secret: str = "test-secret",
                 node_options: Callable[[str], dict[str, Any]] | None = None) -> None:
        """``node_options(node_id)``: extra ``RaftMQNode`` keyword arguments for that node (its
        ``extra_env`` is merged over the cluster's)."""
        self.node_options = node_options
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.secret = secret
        self.extra_env = dict(extra_env or {})
        self._ports: set[int] = set()
        self._all: list[RaftMQNode] = []  # every node ever made, for stop()
        self.add_result: Any = None  # the last add_node's HTTP answer
        self.nodes: list[RaftMQNode] = []  # current members, in order of creation
        for i in range(1, n + 1):
            self.nodes.append(self._make_node(f"n{i}"))
        addrs = [nd.raft_address for nd in self.nodes]
        for nd in self.nodes:
            nd.peers = [a for a in addrs if a != nd.raft_address]

    # ------------------------------------------------------------------ construction

    def _port(self) -> int:
        """A free port that no other node of this cluster was given, below the kernel's
        ephemeral range: a port from that range (``free_port``) may be taken, while its node is
        down for a restart, as the local port of some outgoing connection or by another harness
        picking ports the same way."""
        low, high = _port_range()
        for _ in range(200):
            p = random.randrange(low, high)
            if p in self._ports:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    continue
            self._ports.add(p)
            return p
        p = free_port()
        self._ports.add(p)
        return p

    def _make_node(self, node_id: str, peers: list[str] | None = None) -> RaftMQNode:
        env = {"RAFTMQ_CLUSTER_SECRET": self.secret, **self.extra_env}
        options = dict(self.node_options(node_id)) if self.node_options else {}
        env.update(options.pop("extra_env", None) or {})
        bind = str(options.get("raft_bind") or "")
        if bind.rpartition(":")[2].isdigit():  # picked by the caller: not for another port
            self._ports.add(int(bind.rpartition(":")[2]))
        nd = RaftMQNode(
            self.base_dir / node_id, node_id=node_id,
            amqp_port=self._port(), metrics_port=self._port(), raft_port=self._port(),
            management_port=self._port(),
            peers=peers, extra_env=env, log_path=self.base_dir / f"{node_id}.log", **options,
        )  # fmt: skip
        self._all.append(nd)
        return nd

    # ------------------------------------------------------------------ lookup

    def node(self, i: int) -> RaftMQNode:
        """The i-th current member (0-based)."""
        return self.nodes[i]

    def by_raft_address(self, address: str) -> RaftMQNode:
        for nd in self._all:
            if nd.raft_address == address:
                return nd
        raise KeyError(address)

    def alive(self) -> list[RaftMQNode]:
        return [nd for nd in self.nodes if nd.is_running()]

    def others(self, *exclude: RaftMQNode) -> list[RaftMQNode]:
        return [nd for nd in self.nodes if nd not in exclude]

    # ------------------------------------------------------------------ status

    @staticmethod
    def http_url(node: RaftMQNode) -> str:
        return node.management_url

    def status(self, node: RaftMQNode, timeout: float = 2.0) -> Status:
        """``GET /api/status`` of ``node`` (raises on connection errors)."""
        return http_json(self.http_url(node) + "/api/status", timeout=timeout)

    def try_status(self, node: RaftMQNode, timeout: float = 2.0) -> Status | None:
        if not node.is_running():
            return None
        try:
            return self.status(node, timeout)
        except (OSError, ValueError, ClusterError):
            return None

    def statuses(self, nodes: Iterable[RaftMQNode] | None = None) -> dict[str, Status | None]:
        return {nd.node_id: self.try_status(nd) for nd in (self.alive() if nodes is None else nodes)}

    def describe(self, log_lines: int = 15) -> str:
        """Every node's status and log tail, for failure messages."""
        out = []
        for nd in self._all:
            st = self.try_status(nd)
            brief: Any = st
            if st:
                r = st["raft"]
                brief = {k: st[k] for k in ("ready", "isolated")} | {
                    k: r[k] for k in ("state", "leader", "term", "commit_index", "last_applied",
                                      "members")}
            out.append(f"--- {nd.node_id} {nd.raft_address} pid={nd.pid} "
                       f"running={nd.is_running()} status={brief}\n{nd.log_tail(log_lines)}")
        return "\n".join(out)

    def wait_level(self, level: int, timeout: float = 30.0) -> None:
        """Until the cluster has enabled command ``level`` (a starting node waits for it
        itself, 5 s at most, before it serves clients: this is the tests' guard)."""
        self.wait_for(lambda: (self.status(self.leader()).get("levels") or {}).get(
            "cluster") == level, timeout, f"command level {level} enabled")

    def wait_for(self, pred: Callable[[], Any], timeout: float, what: str,
                 interval: float = 0.1) -> Any:
        """Poll ``pred`` until truthy; ``ClusterError`` (with the cluster's state) after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = pred()
            except (OSError, ValueError, ClusterError, KeyError):
                result = None
            if result:
                return result
            if time.monotonic() >= deadline:
                raise ClusterError(f"timed out after {timeout}s waiting for {what}\n{self.describe()}")
            time.sleep(interval)

    def _agreed_leader(self, among: list[RaftMQNode]) -> RaftMQNode | None:
        """The node every one of ``among`` names as leader, if it says so itself and is ready."""
        views = [self.try_status(nd) for nd in among]
        if not views or any(v is None for v in views):
            return None
        leaders = {v["raft"]["leader"] for v in views if v}
        if len(leaders) != 1 or None in leaders:
            return None
        addr = leaders.pop()
        try:
            leader = self.by_raft_address(addr)
        except KeyError:
            return None
        own = next((v for nd, v in zip(among, views, strict=True) if nd is leader), None)
        if own is None:
            own = self.try_status(leader)
        if own is None or own["raft"]["state"] != "leader":
            return None
        return leader

    def leader(self, timeout: float = 15.0, among: list[RaftMQNode] | None = None) -> RaftMQNode:
        """The leader every alive member (or every node of ``among``) agrees on."""
        return self.wait_for(lambda: self._agreed_leader(among or self.alive()), timeout,
                             "one agreed leader")

    def followers(self, timeout: float = 15.0) -> list[RaftMQNode]:
        lead = self.leader(timeout)
        return [nd for nd in self.alive() if nd is not lead]

    def wait_ready(self, nodes: Iterable[RaftMQNode] | None = None, timeout: float = 30.0) -> None:
        """Every node of ``nodes`` (default: alive members) answers AMQP and says ready."""
        deadline = time.monotonic() + timeout
        targets = list(self.alive() if nodes is None else nodes)
        for nd in targets:
            nd.wait_ready(max(1.0, deadline - time.monotonic()))
        for nd in targets:
            def ready(nd: RaftMQNode = nd) -> bool:
                s = self.try_status(nd)
                return bool(s and s["ready"] and not s["isolated"])

            self.wait_for(ready, max(1.0, deadline - time.monotonic()), f"{nd.node_id} ready")

    def wait_converged(self, timeout: float = 15.0) -> int:
        """Every alive member's last_applied reaches the leader's commit_index; returns it."""
        def converged() -> int | None:
            lead = self._agreed_leader(self.alive())
            if lead is None:
                return None
            commit = self.status(lead)["raft"]["commit_index"]
            for nd in self.alive():
                st = self.try_status(nd)
                if st is None or st["raft"]["last_applied"] < commit:
                    return None
            return int(commit) or None

        return self.wait_for(converged, timeout, "all nodes to apply the leader's commit index")

    def wait_members(self, addresses: Iterable[str], timeout: float = 15.0) -> None:
        """Every alive member lists exactly ``addresses`` as Raft members."""
        want = sorted(addresses)
        self.wait_for(lambda: all((s := self.try_status(nd)) and sorted(s["raft"]["members"]) == want
                                  for nd in self.alive()), timeout, f"members == {want}")

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 30.0) -> RaftMQCluster:
        deadline = time.monotonic() + timeout
        for nd in self.nodes:
            nd.start(wait=False)
        try:
            self.wait_ready(self.nodes, timeout=max(1.0, deadline - time.monotonic()))
            self.leader(timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, node: RaftMQNode, sig: int = _signal.SIGKILL) -> float:
        """Send ``sig`` to the node's process group (SIGKILL: reaped before returning); returns
        the ``time.monotonic()`` right after the signal was sent."""
        if node.proc is not None and node.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(node.proc.pid, sig)
        sent = time.monotonic()
        if sig == _signal.SIGKILL:
            node.kill(sig)  # the rest of the group, and reap
        return sent

    def kill_all(self, nodes: Iterable[RaftMQNode] | None = None,
                 sig: int = _signal.SIGKILL) -> float:
        """Signal every node of ``nodes`` (default: all alive members) back to back, then reap;
        returns the time the last signal was sent."""
        targets = list(self.alive() if nodes is None else nodes)
        for nd in targets:
            if nd.proc is not None and nd.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(nd.proc.pid, sig)
        sent = time.monotonic()
        if sig == _signal.SIGKILL:
            for nd in targets:
                nd.kill(sig)
        return sent

    def start_all(self, timeout: float = 45.0) -> None:
        """Start every member that is not running (same data directories and ports) and wait
        until all are ready and agree on a leader."""
        deadline = time.monotonic() + timeout
        for nd in self.nodes:
            if not nd.is_running():
                nd.start(wait=False)
        self.wait_ready(self.nodes, timeout=max(1.0, deadline - time.monotonic()))
        self.leader(timeout=max(1.0, deadline - time.monotonic()))

    def restart(self, node: RaftMQNode, timeout: float = 30.0) -> RaftMQNode:
        """Start ``node`` again on the same data directory and ports; wait until it is ready."""
        if node.is_running():
            node.stop()
        node.start(wait=False)
        self.wait_ready([node], timeout)
        return node

    def members(self, timeout: float = 10.0) -> list[str]:
        """Raft addresses of the members, as the leader sees them."""
        return sorted(self.status(self.leader(timeout))["raft"]["members"])

    def _change(self, via: RaftMQNode, method: str, address: str, done: Callable[[], bool],
                timeout: float = 30.0, force: bool = False) -> Any:
        """Send a membership change to ``via`` until it answers ok or ``done()`` (the change is
        visible); returns the last answer. ``force``: add a member that does not answer yet."""
        url = f"{self.http_url(via)}/api/members?address={address}" + (
            "&force=true" if force else "")
        deadline = time.monotonic() + timeout
        while True:
            result = http_json(url, method=method, timeout=15)
            if result.get("ok") or done():
                return result
            # pysyncobj allows one change at a time: a change still in progress answers an
            # error; try again until the deadline.
            if time.monotonic() >= deadline:
                raise ClusterError(f"{method} {url}: {result}\n{self.describe()}")
            time.sleep(0.5)

    def add_node(self, timeout: float = 30.0, add_first: bool = False) -> RaftMQNode:
        """Start a new node with ``--peers`` = the current members and add it through the
        leader's HTTP API (``raftmq cluster add``) right after it starts (``add_first``: before
        it starts); wait until it is ready; returns it. The HTTP answer is in ``add_result``."""
        members = self.members()
        used = {nd.node_id for nd in self._all}
        node_id = next(f"n{i}" for i in range(1, 1000) if f"n{i}" not in used)
        nd = self._make_node(node_id, peers=members)
        deadline = time.monotonic() + timeout
        if not add_first:
            nd.start(wait=False)
        leader = self.leader()
        self.add_result = self._change(
            leader, "POST", nd.raft_address,
            lambda: nd.raft_address in self.status(leader)["raft"]["members"], timeout,
            force=add_first)  # (not started yet: it cannot answer the secret check)
        if add_first:
            nd.start(wait=False)
        self.nodes.append(nd)
        self.wait_ready([nd], max(1.0, deadline - time.monotonic()))
        return nd

    def remove_node(self, node: RaftMQNode, via: RaftMQNode | None = None,
                    timeout: float = 30.0, response_timeout: float | None = None) -> Any:
        """Remove ``node`` with ``DELETE /api/members`` sent to ``via`` (default: the leader, as
        ``raftmq cluster remove`` does), wait until every other member agrees on the new
        membership, then stop its process. Returns the HTTP answer (JSON), or None when it had not
        come ``response_timeout`` s (default: the rest of ``timeout``) after the membership
        changed. A failed answer is *returned*, not raised, when the membership did change: the
        test decides what it makes of it. Raises if the membership never changes."""
        via = via or self.leader()
        url = f"{self.http_url(via)}/api/members?address={node.raft_address}"
        rest = sorted(nd.raft_address for nd in self.nodes if nd is not node)
        deadline = time.monotonic() + timeout
        answer: list[Any] = []

        def send() -> None:
            try:
                answer.append(http_json(url, method="DELETE", timeout=timeout))
            except Exception as e:  # noqa: BLE001 - reported in the answer
                answer.append({"ok": False, "error": f"{type(e).__name__}: {e}"})

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        others = [nd for nd in self.alive() if nd is not node]
        self.wait_for(lambda: all((s := self.try_status(nd)) and sorted(s["raft"]["members"]) == rest
                                  for nd in others), timeout,
                      f"members without {node.node_id} (DELETE {url}: {answer})")
        wait = max(0.0, deadline - time.monotonic()) if response_timeout is None else response_timeout
        sender.join(wait)
        self.nodes.remove(node)
        node.stop()
        return answer[0] if answer else None

    def stop(self) -> None:
        """Stop every node ever started here (SIGTERM, then SIGKILL), by process group."""
        for nd in self._all:  # signal all first, so they shut down in parallel
            if nd.is_running():
                with contextlib.suppress(Exception):
                    nd.kill(_signal.SIGTERM)
                    nd.kill(_signal.SIGCONT)  # a frozen (SIGSTOP) node must run to exit
        for nd in self._all:
            with contextlib.suppress(Exception):
                nd.stop(timeout=5)

    def __enter__(self) -> RaftMQCluster:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
