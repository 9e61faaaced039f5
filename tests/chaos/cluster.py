"""A RaftMQ cluster (``harness.cluster.RaftMQCluster``) whose Raft links all pass through
the chaos proxy (``proxy.py``), and whose nodes run under the power-loss tracker
(``powerloss.py``).

Node *j* (``nj``): Raft address ``nj:P_j`` (its member id everywhere), Raft listener bound on
``127.0.0.1:B_j`` (``--raft-bind``); on node *i* the name ``nj`` resolves (``RAFTMQ_STATIC_HOSTS``)
to ``127.88.i.j``, where the proxy of link *i → j* listens on ``P_j``. AMQP and HTTP go straight to
the node on 127.0.0.1.

Membership changes (the ``membership`` fault): ``spare`` extra node ids are provisioned up front
(every node's ``RAFTMQ_STATIC_HOSTS`` names them), :meth:`ChaosCluster.remove_member` removes a
member as ``raftmq cluster remove`` does and stops it, :meth:`ChaosCluster.add_member` starts a
fresh node (new id, data directory and ports, ``--peers`` = the current members), gives the proxy
its links and adds it as ``raftmq cluster add`` does. ``nodes`` / ``ids`` / ``urls()`` are always
the current members (the clients ask ``urls()`` on every reconnect).

Every node runs with the slow-disk shim preloaded (``slowdisk.py``; no delay until its control
file ``<id>.slowsync`` says so), when a C compiler is there to build it.

``tmpfs_mib``: every node's data directory is a tmpfs of that size (the ``full-disk`` fault fills
one), mounted here and unmounted by :meth:`ChaosCluster.stop`; the power-loss tracker's files
then go to ``<id>.side/`` so that they are not what runs out of space.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from harness.cluster import ClusterError, RaftMQCluster, http_json
from harness.ports import free_port
from harness.raftmq import RaftMQNode

from .powerloss import SIDE_DIR_ENV
from .proxy import LinkSpec, ProxyControl
from .slowdisk import ShimError, build_shim, clear_delay, shim_env

SECRET = "chaos-secret"
APPLY_SLACK = 50  # entries a healthy follower may trail the leader's commit index by
TMPFS_DISK_FREE_LIMIT = "4MB"  # the disk alarm's limit on a tmpfs data directory
# =1: work around a leader that refuses to remove itself (fixed in d058d25; for bisecting)
WORKAROUND_ENV = "CHAOS_LEADER_REMOVAL_WORKAROUND"


class MountError(RuntimeError):
    pass


def mount_tmpfs(path: Path, mib: int) -> None:
    """A tmpfs of ``mib`` MiB at ``path`` (created; must be empty). Needs root."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0755", "tmpfs",
                               str(path)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MountError(f"mount tmpfs on {path}: {e}") from e
    if proc.returncode != 0:
        raise MountError(f"mount tmpfs on {path}: {proc.stderr.strip() or proc.returncode}")


def unmount(path: Path) -> str | None:
    """Unmount what we mounted at ``path`` (lazily if busy); an error text or None."""
    for args in (["umount", str(path)], ["umount", "-l", str(path)]):
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            return str(e)
        if proc.returncode == 0:
            return None
    return f"umount {path}: {proc.stderr.strip()}"


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
    def __init__(self, base_dir: Path, n: int, env: dict[str, str], spare: int = 0,
                 tmpfs_mib: int = 0) -> None:
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.n = n
        self.capacity = n + spare  # node ids n1..n<capacity> exist in every node's hosts
        self.tmpfs_mib = tmpfs_mib
        self.mounted: list[Path] = []
        self.raft_binds: dict[str, int] = {}
        try:
            self.shim: Path | None = build_shim()
            self.shim_error = ""
        except ShimError as e:
            self.shim, self.shim_error = None, str(e)
        taken: set[int] = set()

        def options(node_id: str) -> dict[str, Any]:
            i = int(node_id[1:])
            if i > self.capacity:
                raise ClusterError(f"no spare node id for {node_id} (capacity {self.capacity})")
            # (also never a port the harness gave a node that is down for the moment)
            harness = self.__dict__.get("cluster")
            port = low_free_port(taken | (harness._ports if harness is not None else set()))
            taken.add(port)
            self.raft_binds[node_id] = port
            hosts = ",".join(f"n{j}={link_ip(i, j)}" for j in range(1, self.capacity + 1))
            # PYTHONFAULTHANDLER: a node killed by a signal (SIGBUS from an mmap on a full
            # disk, SIGSEGV) leaves its threads' tracebacks in its log.
            extra = {"RAFTMQ_STATIC_HOSTS": hosts, "PYTHONFAULTHANDLER": "1"}
            if self.shim is not None:
                control = self.slowsync_file(node_id)
                clear_delay(control)
                extra.update(shim_env(control, control.with_name(control.name + ".log")))
            if tmpfs_mib:
                data = self.base_dir / node_id
                mount_tmpfs(data, tmpfs_mib)
                self.mounted.append(data)
                side = self.side_dir(node_id)
                side.mkdir(parents=True, exist_ok=True)
                extra[SIDE_DIR_ENV] = str(side)
                if "RAFTMQ_DISK_FREE_LIMIT" not in env:
                    extra["RAFTMQ_DISK_FREE_LIMIT"] = TMPFS_DISK_FREE_LIMIT
            return {"raft_host": node_id, "raft_bind": f"127.0.0.1:{port}",
                    "module": "tests.chaos.powerloss", "extra_env": extra}

        try:
            self.cluster = RaftMQCluster(self.base_dir, n=n, extra_env=env, secret=SECRET,
                                         node_options=options)
        except BaseException:
            self._unmount_all()
            raise
        self.nodes: list[RaftMQNode] = list(self.cluster.nodes)
        self.by_id = {nd.node_id: nd for nd in self.nodes}  # every node ever, removed ones too
        self.paused: set[str] = set()
        links = []
        for a in self.nodes:
            for b in self.nodes:
                if a is not b:
                    links.append(self._link(a, b))
        self.proxy: ProxyControl | None = None
        self._links = links

    def _link(self, a: RaftMQNode, b: RaftMQNode) -> LinkSpec:
        i, j = int(a.node_id[1:]), int(b.node_id[1:])
        return LinkSpec(a.node_id, b.node_id, (link_ip(i, j), b.raft_port),
                        ("127.0.0.1", self.raft_binds[b.node_id]))

    def slowsync_file(self, node_id: str) -> Path:
        """The slow-disk shim's control file of ``node_id``."""
        return self.base_dir / f"{node_id}.slowsync"

    def side_dir(self, node_id: str) -> Path:
        """Where the power-loss tracker of ``node_id`` keeps its files (shadow journal, apply
        log): the data directory, or ``<id>.side`` when data directories are tmpfs mounts."""
        return self.base_dir / (f"{node_id}.side" if self.tmpfs_mib else node_id)

    @property
    def all_nodes(self) -> list[RaftMQNode]:
        """Every node this cluster ever had (removed members too), in order of creation."""
        return list(self.by_id.values())

    @property
    def ids(self) -> list[str]:
        return [nd.node_id for nd in self.nodes]

    def urls(self) -> list[str]:
        return [nd.url for nd in self.nodes]

    def start(self, timeout: float = 60.0) -> None:
        self.proxy = ProxyControl(self._links, self.base_dir / "proxy.log")
        self.cluster.start(timeout=timeout)

    def stop(self, keep_data: bool = False) -> list[str]:
        """Stop every node and the proxy; unmount the tmpfs data directories (their content is
        copied back into the emptied mount points first when ``keep_data``). Returns problems
        (unmount errors)."""
        for nd in self.all_nodes:  # a stopped process would sit out SIGTERM
            self.signal(nd, signal.SIGCONT)
        self.paused.clear()
        try:
            self.cluster.stop()
        finally:
            if self.proxy is not None:
                self.proxy.stop()
        return self._unmount_all(keep_data)

    def _unmount_all(self, keep_data: bool = False) -> list[str]:
        problems = []
        for path in self.mounted[:]:
            copy = path.with_name(path.name + ".tmpfs-copy")
            if keep_data:
                with contextlib.suppress(OSError):
                    shutil.copytree(path, copy, dirs_exist_ok=True)
            error = unmount(path)
            if error:
                problems.append(error)
                continue
            self.mounted.remove(path)
            if keep_data and copy.exists():
                with contextlib.suppress(OSError):
                    shutil.copytree(copy, path, dirs_exist_ok=True)
                    shutil.rmtree(copy)
        return problems

    # ------------------------------------------------------------------ membership

    def remove_member(self, nd: RaftMQNode, timeout: float = 45.0,
                      workaround: bool | None = None) -> tuple[Any, list[str]]:
        """Remove ``nd`` from the Raft members through the leader's API (``DELETE
        /api/members``, as ``raftmq cluster remove`` does), wait until the other members agree,
        stop its process. Returns the API's answer and notes; raises ``ClusterError`` if the
        membership did not change.

        ``workaround``: when the leader refuses to remove itself ("could not transfer
        leadership": under load before d058d25, whose step-down used pysyncobj's bare
        transfer), do what an operator would: ``transfer-leadership`` first, then remove it
        through the new leader (noted as ``BROKER: ...``). Default: off (the refusal fails the
        run), on with ``CHAOS_LEADER_REMOVAL_WORKAROUND=1`` in the environment."""
        if workaround is None:
            workaround = os.environ.get(WORKAROUND_ENV, "") == "1"
        cl = self.cluster
        deadline = time.monotonic() + timeout
        notes: list[str] = []

        def delete(via: RaftMQNode) -> Any:
            url = f"{via.management_url}/api/members?address={nd.raft_address}"
            try:
                return http_json(url, method="DELETE",
                                 timeout=max(1.0, deadline - time.monotonic()))
            except (OSError, ValueError, ClusterError) as e:
                return {"ok": False, "error": f"{type(e).__name__}: {e}"}

        leader = cl.leader(timeout=15)
        answer = delete(leader)
        if (workaround and not answer.get("ok") and leader is nd
                and nd.raft_address in (self.cluster.try_status(nd) or {}).get(
                    "raft", {}).get("members", [nd.raft_address])):
            notes.append(f"BROKER: DELETE /api/members of the leader {nd.node_id} answered "
                         f"{answer}; workaround: transfer-leadership, then remove")
            self.note_all(notes[-1])
            moved = http_json(f"{nd.management_url}/api/cluster/transfer-leadership",
                              method="POST", timeout=max(1.0, deadline - time.monotonic()))
            notes.append(f"transfer: {moved}")
            others = [x for x in self.nodes if x is not nd]
            new = cl.leader(timeout=max(1.0, deadline - time.monotonic()), among=others)
            answer = delete(new)
        rest = sorted(x.raft_address for x in self.nodes if x is not nd)
        others = [x for x in self.nodes if x is not nd and x.is_running()]
        cl.wait_for(lambda: all((st := cl.try_status(x)) and sorted(st["raft"]["members"]) == rest
                                for x in others), max(1.0, deadline - time.monotonic()),
                    f"members without {nd.node_id} (DELETE answered {answer})")
        if nd in cl.nodes:
            cl.nodes.remove(nd)
        if nd in self.nodes:
            self.nodes.remove(nd)
        nd.stop()
        self.paused.discard(nd.node_id)
        return answer, notes

    def add_member(self, timeout: float = 45.0) -> RaftMQNode:
        """A fresh node (next unused id, new data directory and ports, ``--peers`` = the current
        members, proxied Raft links to and from every member) started and added through the
        leader's API (``POST /api/members``, as ``raftmq cluster add`` does); waits until it
        is ready. Raises ``ClusterError``."""
        cl = self.cluster
        deadline = time.monotonic() + timeout
        members = cl.members()
        used = set(self.by_id)
        node_id = next((f"n{i}" for i in range(1, self.capacity + 1) if f"n{i}" not in used),
                       None)
        if node_id is None:
            raise ClusterError(f"no spare node id left (capacity {self.capacity})")
        nd = cl._make_node(node_id, peers=members)  # the harness's own node factory
        self.by_id[node_id] = nd
        assert self.proxy is not None
        links = []
        for other in self.nodes:
            links += [self._link(other, nd), self._link(nd, other)]
        self.proxy.add_links(links)
        nd.start(wait=False)
        leader = cl.leader(timeout=max(1.0, deadline - time.monotonic()))
        cl.add_result = cl._change(
            leader, "POST", nd.raft_address,
            lambda: nd.raft_address in cl.status(leader)["raft"]["members"],
            max(1.0, deadline - time.monotonic()))
        cl.nodes.append(nd)
        self.nodes.append(nd)
        cl.wait_ready([nd], max(1.0, deadline - time.monotonic()))
        return nd

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
        """``/api/status`` of every running, unpaused node (None when it does not answer, or
        answers an error such as 401 from a node that lost its users)."""
        out: dict[str, dict[str, Any] | None] = {}
        for nd in self.nodes:
            if nd.is_running() and nd.node_id not in self.paused:
                st = self.cluster.try_status(nd, timeout=1.0)
                out[nd.node_id] = st if st and "ready" in st and "raft" in st else None
        return out

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
