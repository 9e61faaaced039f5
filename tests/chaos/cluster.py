"""A RaftMQ cluster (``tests.harness.cluster.RaftMQCluster``) whose Raft links all pass through
the chaos proxy (``proxy.py``), and whose nodes run under the power-loss tracker
(``powerloss.py``).

Node *j* (``nj``): Raft address ``nj:P_j`` (its member id everywhere), Raft listener bound on
``127.0.0.1:B_j`` (``--raft-bind``); on node *i* the name ``nj`` resolves (``RAFTMQ_STATIC_HOSTS``)
to ``127.88.i.j``, where the proxy of link *i → j* listens on ``P_j``. AMQP and HTTP go straight to
the node on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import time
from pathlib import Path
from typing import Any

from tests.harness.cluster import RaftMQCluster
from tests.harness.ports import free_port
from tests.harness.raftmq import RaftMQNode

from .proxy import LinkSpec, ProxyControl

SECRET = "chaos-secret"
APPLY_SLACK = 50  # entries a healthy follower may trail the leader's commit index by


def low_free_port(taken: set[int]) -> int:
    """A free loopback port below the kernel's ephemeral range (as the harness's cluster ports
    are), so no outgoing connection can be holding it while its node is down."""
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    low, high = (20000, first) if first > 21000 else (10000, 20000)
    for _ in range(200):
        port = random.randrange(low, high)
        if port in taken:
            continue
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port
    return free_port()


def link_ip(src: int, dst: int) -> str:
    """The loopback address on which node ``src`` reaches node ``dst`` (through the proxy)."""
    return f"127.88.{src}.{dst}"


class ChaosCluster:
    def __init__(self, base_dir: Path, n: int, env: dict[str, str]) -> None:
        self.base_dir = Path(base_dir)
        self.n = n
        self.raft_binds: dict[str, int] = {}
        taken: set[int] = set()

        def options(node_id: str) -> dict[str, Any]:
            i = int(node_id[1:])
            port = low_free_port(taken)
            taken.add(port)
            self.raft_binds[node_id] = port
            hosts = ",".join(f"n{j}={link_ip(i, j)}" for j in range(1, n + 1))
            return {"raft_host": node_id, "raft_bind": f"127.0.0.1:{port}",
                    "module": "tests.chaos.powerloss",
                    "extra_env": {"RAFTMQ_STATIC_HOSTS": hosts}}

        self.cluster = RaftMQCluster(self.base_dir, n=n, extra_env=env, secret=SECRET,
                                     node_options=options)
        self.nodes: list[RaftMQNode] = list(self.cluster.nodes)
        self.by_id = {nd.node_id: nd for nd in self.nodes}
        self.paused: set[str] = set()
        links = []
        for a in self.nodes:
            for b in self.nodes:
                if a is not b:
                    i, j = int(a.node_id[1:]), int(b.node_id[1:])
                    links.append(LinkSpec(a.node_id, b.node_id, (link_ip(i, j), b.raft_port),
                                          ("127.0.0.1", self.raft_binds[b.node_id])))
        self.proxy: ProxyControl | None = None
        self._links = links

    @property
    def ids(self) -> list[str]:
        return [nd.node_id for nd in self.nodes]

    def urls(self) -> list[str]:
        return [nd.url for nd in self.nodes]

    def start(self, timeout: float = 60.0) -> None:
        self.proxy = ProxyControl(self._links, self.base_dir / "proxy.log")
        self.cluster.start(timeout=timeout)

    def stop(self) -> None:
        for nd in self.nodes:  # a stopped process would sit out SIGTERM
            self.signal(nd, signal.SIGCONT)
        self.paused.clear()
        self.cluster.stop()
        if self.proxy is not None:
            self.proxy.stop()

    # ------------------------------------------------------------------ processes

    def signal(self, nd: RaftMQNode, sig: int) -> None:
        if nd.proc is not None and nd.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(nd.proc.pid, sig)

    def note(self, nd: RaftMQNode, text: str) -> None:
        """A marker line in the node's log, so the log reads alongside the schedule."""
        with contextlib.suppress(OSError), open(nd.log_path, "a") as f:
            f.write(f"##### chaos {time.strftime('%H:%M:%S')} {text}\n")

    def note_all(self, text: str) -> None:
        for nd in self.nodes:
            self.note(nd, text)

    # ------------------------------------------------------------------ status

    def statuses(self) -> dict[str, dict[str, Any] | None]:
        """``/api/status`` of every running, unpaused node (None when it does not answer)."""
        return {nd.node_id: self.cluster.try_status(nd, timeout=1.0) for nd in self.nodes
                if nd.is_running() and nd.node_id not in self.paused}

    def leader_id(self, statuses: dict[str, dict[str, Any] | None] | None = None) -> str | None:
        """The node that says it is leader (the highest term wins), or None."""
        sts = self.statuses() if statuses is None else statuses
        claims = [(st["raft"]["term"], nid) for nid, st in sts.items()
                  if st and st["raft"]["state"] == "leader"]
        return max(claims)[1] if claims else None

    def healthy(self) -> bool:
        """Every node runs, is unpaused, ready, not isolated, all agree on one leader that says
        it is leader, and every node has applied the log up to (nearly: traffic goes on) the
        leader's commit index — a node that says it is fine but does not apply is not."""
        if self.proxy is not None and (self.proxy.cut_pairs or self.proxy.slow_pairs):
            return False
        if len([nd for nd in self.nodes if nd.is_running()]) < self.n or self.paused:
            return False
        sts = self.statuses()
        if any(st is None or not st["ready"] or st["isolated"] for st in sts.values()):
            return False
        leaders = {st["raft"]["leader"] for st in sts.values() if st}
        if len(leaders) != 1 or None in leaders:
            return False
        leader = leaders.pop().partition(":")[0]
        st = sts.get(leader)
        if not (st and st["raft"]["state"] == "leader"):
            return False
        commit = int(st["raft"]["commit_index"])
        return all(s is not None and int(s["raft"]["last_applied"]) >= commit - APPLY_SLACK
                   for s in sts.values())

    def wait_healthy(self, timeout: float) -> float | None:
        """Poll until :meth:`healthy`; the time it became so, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return time.monotonic()
            time.sleep(0.2)
        return None

    def describe(self, log_lines: int = 0) -> str:
        return self.cluster.describe(log_lines=log_lines)
