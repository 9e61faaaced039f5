"""Run one RaftMQ node (``python -m node serve``) as a subprocess on loopback."""

from __future__ import annotations

import os
import signal as _signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from .ports import free_port, wait_amqp
from .procs import log_tail, rss_bytes, start_group, stop_group

REPO_ROOT = Path(__file__).resolve().parents[1]


class RaftMQNode:
    """One RaftMQ node process in its own process group. Ports left as None are picked free once
    (in the constructor), so ``restart()`` comes back on the same addresses."""

    def __init__(
        self,
        data_dir: Path,
        node_id: str = "n1",
        amqp_port: int | None = None,
        metrics_port: int | None = None,
        raft_port: int | None = None,
        management_port: int | None = None,
        peers: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
        log_path: Path | None = None,
        raft_host: str = "127.0.0.1",
        raft_bind: str | None = None,
        module: str = "node",
    ) -> None:
        """``raft_host``: the host part of the node's Raft address (its member id; may be a name
        that ``RAFTMQ_STATIC_HOSTS`` resolves). ``raft_bind``: ``--raft-bind`` (HOST:PORT the Raft
        listener binds when that is not the Raft address). ``module``: run ``python -m MODULE
        serve`` (a test wrapper around ``node``)."""
        self.data_dir = Path(data_dir)
        self.node_id = node_id
        self.amqp_port = amqp_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.raft_port = raft_port or free_port()
        self.management_port = management_port or free_port()
        self.peers = list(peers or [])
        self.extra_env = dict(extra_env or {})
        self.log_path = (
            Path(log_path) if log_path else self.data_dir.with_name(self.data_dir.name + ".log")
        )
        self.raft_host = raft_host
        self.raft_bind = raft_bind
        self.module = module
        # where the node's code is imported from: a previous release's tree in upgrade tests
        self.code_root = REPO_ROOT
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def raft_address(self) -> str:
        return f"{self.raft_host}:{self.raft_port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", self.module, "serve",
            "--node-id", self.node_id,
            "--amqp-host", "127.0.0.1",
            "--amqp-port", str(self.amqp_port),
            "--metrics-port", str(self.metrics_port),
            "--management-port", str(self.management_port),
            "--raft-address", self.raft_address,
            "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        if self.raft_bind:
            argv += ["--raft-bind", self.raft_bind]
        if self.peers:
            argv += ["--peers", ",".join(self.peers)]
        return argv

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True, timeout: float = 30) -> RaftMQNode:
        if self.is_running():
            raise RuntimeError(f"node {self.node_id} is already running (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **self.extra_env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.code_root),
                                                          env.get("PYTHONPATH")]))
        self.proc = start_group(self.argv(), env, self.log_path, cwd=self.code_root)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until the node answers AMQP; on failure stop it and raise with the log's tail."""
        proc = self.proc
        assert proc is not None, "start() first"
        try:
            wait_amqp("127.0.0.1", self.amqp_port, timeout, alive=lambda: proc.poll() is None)
        except (TimeoutError, RuntimeError) as exc:
            code = proc.poll()
            self.stop(timeout=2)
            raise RuntimeError(
                f"RaftMQ node {self.node_id} not ready (exit code {code}): {exc}\n"
                f"$ {' '.join(self.argv())}\n{self.log_tail()}"
            ) from exc

    def kill(self, signal: int = _signal.SIGKILL) -> None:
        """Send ``signal`` to the node's process group and, for SIGKILL, reap it."""
        if self.proc is None:
            return
        if signal == _signal.SIGKILL:
            stop_group(self.proc, timeout=0, sig=_signal.SIGKILL)
        elif self.proc.poll() is None:
            os.killpg(self.proc.pid, signal)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` s; returns the exit code."""
        if self.proc is None:
            return None
        stop_group(self.proc, timeout=timeout)
        return self.proc.returncode

    def restart(self, wait: bool = True, timeout: float = 30) -> RaftMQNode:
        self.stop()
        return self.start(wait=wait, timeout=timeout)

    def rss_bytes(self) -> int:
        return rss_bytes(self.proc.pid) if self.is_running() and self.proc else 0

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> RaftMQNode:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
