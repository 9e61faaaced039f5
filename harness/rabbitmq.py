"""Run RabbitMQ (Debian's package) as throwaway brokers on loopback, for comparison and tests.

Each broker gets its own directory, free ports, an Erlang cookie under its own HOME, and an epmd
of our own on a free port, so nothing touches a system RabbitMQ, epmd or port 5672.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

from .ports import free_port, wait_amqp, wait_port
from .procs import log_tail, process_name, rss_bytes, start_group, stop_group, tree_pids

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
RABBITMQ_SERVER = RABBITMQ_BIN / "rabbitmq-server"
RABBITMQCTL = RABBITMQ_BIN / "rabbitmqctl"
LOOPBACK_ERL = "-kernel inet_dist_use_interface {127,0,0,1}"


def ensure_installed(timeout: float = 600) -> None:
    """Install Debian's rabbitmq-server with apt when it is missing (we run as root)."""
    if RABBITMQ_SERVER.exists():
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "rabbitmq-server"]
    if subprocess.run(install, env=env, timeout=timeout).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, timeout=timeout, check=True)
        subprocess.run(install, env=env, timeout=timeout, check=True)
    if not RABBITMQ_SERVER.exists():
        raise RuntimeError(f"apt installed rabbitmq-server but {RABBITMQ_SERVER} is missing")
    # The package may start its system service; leave it alone, we use our own ports and epmd.


class Epmd:
    """A private Erlang port mapper on a free loopback port (never the system one on 4369)."""

    def __init__(self, base_dir: Path, port: int | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10) -> Epmd:
        epmd = shutil.which("epmd") or "/usr/bin/epmd"
        argv = [epmd, "-port", str(self.port), "-address", "127.0.0.1"]
        self.proc = start_group(argv, dict(os.environ), self.base_dir / "epmd.log")
        wait_port(
            "127.0.0.1",
            self.port,
            timeout,
            alive=lambda: self.proc is not None and self.proc.poll() is None,
        )
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, timeout=2)
            self.proc = None


class RabbitMQ:
    """One RabbitMQ node started straight from ``rabbitmq-server`` (not the system service)."""

    def __init__(
        self,
        base_dir: Path,
        amqp_port: int | None = None,
        nodename: str | None = None,
        *,
        epmd: Epmd | None = None,
        home: Path | None = None,
        extra_conf: str = "",
        management_port: int | None = None,
    ) -> None:
        """``management_port``: enable the management plugin there (statistics every
        500 ms, so that the API's counts follow the tests quickly)."""
        self.base_dir = Path(base_dir)
        self.management_port = management_port
        self.amqp_port = amqp_port or free_port()
        self.dist_port = free_port()
        self.nodename = nodename or f"rmq-{self.amqp_port}@localhost"
        self.home = Path(home) if home else self.base_dir
        self.extra_conf = extra_conf
        self.log_path = self.base_dir / "stdout.log"
        self._epmd = epmd
        self._own_epmd: Epmd | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    # ---- addresses -------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # ---- lifecycle -------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        assert self._epmd is not None
        b = self.base_dir
        return dict(
            os.environ,
            HOME=str(self.home),
            ERL_EPMD_PORT=str(self._epmd.port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_CONF_ENV_FILE=str(b / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(b / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(b / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(b / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(b / "mnesia"),
            RABBITMQ_LOG_BASE=str(b / "log"),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=LOOPBACK_ERL,
            RABBITMQ_CTL_ERL_ARGS=LOOPBACK_ERL,
        )

    def _write_config(self) -> None:
        b = self.base_dir
        for sub in ("mnesia", "log"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        (b / "rabbitmq-env.conf").write_text("# empty: keep /etc/rabbitmq/rabbitmq-env.conf out\n")
        management = ""
        if self.management_port:
            (b / "enabled_plugins").write_text("[rabbitmq_management].\n")
            management = (f"management.tcp.port = {self.management_port}\n"
                          "management.tcp.ip = 127.0.0.1\n"
                          "collect_statistics_interval = 500\n")
        else:
            (b / "enabled_plugins").write_text("[].\n")  # no management, no prometheus
        (b / "advanced.config").write_text("[].\n")
        (b / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            "log.console = false\n"
            "log.file.level = info\n" + management + self.extra_conf
        )

    def start(self, timeout: float = 60, wait: bool = True) -> RabbitMQ:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.nodename} is already running")
        ensure_installed()
        self._write_config()
        if self._epmd is None:
            self._own_epmd = self._epmd = Epmd(self.base_dir).start()
        self.proc = start_group(
            [str(RABBITMQ_SERVER)], self._env(), self.log_path, cwd=self.base_dir
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until AMQP answers; on failure stop the node and raise with its log's tail."""
        proc = self.proc
        assert proc is not None, "start() first"
        try:
            wait_amqp("127.0.0.1", self.amqp_port, timeout, alive=lambda: proc.poll() is None)
        except (TimeoutError, RuntimeError) as exc:
            self.stop()
            raise RuntimeError(
                f"RabbitMQ {self.nodename} did not start: {exc}\n{self.log_tail()}"
            ) from exc

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM the node's process group (a graceful shutdown in 3.x), SIGKILL after ``timeout``;
        then stop our epmd if we started it."""
        if self.proc is not None:
            stop_group(self.proc, timeout=timeout)
        if self._own_epmd is not None:
            self._own_epmd.stop()
            self._own_epmd = self._epmd = None

    def kill(self) -> None:
        """kill -9 the node (its process group); keeps epmd, so start() brings it back."""
        if self.proc is not None:
            stop_group(self.proc, timeout=0, sig=signal.SIGKILL)

    def __enter__(self) -> RabbitMQ:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- inspection ------------------------------------------------------------------------
    def pids(self) -> list[int]:
        """Every live process we started for this node: its process group plus our epmd."""
        found = list(tree_pids(self.proc.pid)) if self.proc else []
        if self._own_epmd and self._own_epmd.proc and self._own_epmd.proc.poll() is None:
            found.append(self._own_epmd.proc.pid)
        return found

    def beam_pid(self) -> int | None:
        for pid in tree_pids(self.proc.pid) if self.proc else []:
            if process_name(pid).startswith("beam"):
                return pid
        return None

    def rss_bytes(self) -> int:
        """RSS of the node's Erlang VM (beam.smp)."""
        pid = self.beam_pid()
        return rss_bytes(pid) if pid else 0

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl -n <node> ARGS`` against this node; returns stdout, raises on failure."""
        assert self._epmd is not None, "start() first"
        env = self._env()
        port = str(free_port())
        env.update(RABBITMQ_CTL_DIST_PORT_MIN=port, RABBITMQ_CTL_DIST_PORT_MAX=port)
        res = subprocess.run(
            [str(RABBITMQCTL), "-n", self.nodename, *args],
            env=env,
            cwd=self.base_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
        if res.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} failed ({res.returncode}): {res.stderr or res.stdout}"
            )
        return res.stdout


class RabbitMQCluster:
    """``n`` RabbitMQ nodes on loopback sharing one private epmd and one Erlang cookie, clustered
    with ``rabbitmqctl join_cluster``. Clients get quorum queues by declaring them with
    ``arguments={"x-queue-type": "quorum"}``."""

    def __init__(self, base_dir: Path, n: int = 3) -> None:
        self.base_dir = Path(base_dir)
        self.home = self.base_dir / "home"
        self.epmd = Epmd(self.base_dir)
        self.nodes = [
            RabbitMQ(self.base_dir / f"node{i + 1}", epmd=self.epmd, home=self.home)
            for i in range(n)
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 120) -> RabbitMQCluster:
        ensure_installed()
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(20))
            cookie.chmod(0o400)
        try:
            self.epmd.start()
            for node in self.nodes:  # boot in parallel, then wait for each
                node.start(wait=False)
            for node in self.nodes:
                node.wait_ready(timeout)
            first = self.nodes[0].nodename
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first)
                node.ctl("start_app")
                node.wait_ready(timeout)
            self.wait_clustered(timeout=30)
        except BaseException:
            self.stop()
            raise
        return self

    def running_nodes(self) -> list[str]:
        status = json.loads(self.nodes[0].ctl("cluster_status", "--formatter", "json"))
        return sorted(status.get("running_nodes", []))

    def wait_clustered(self, timeout: float = 30) -> None:
        want = sorted(node.nodename for node in self.nodes)
        deadline = time.monotonic() + timeout
        while (running := self.running_nodes()) != want:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"cluster not formed: running {running}, want {want}")
            time.sleep(0.5)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.epmd.stop()

    def pids(self) -> list[int]:
        pids = [pid for node in self.nodes for pid in node.pids()]
        if self.epmd.proc is not None and self.epmd.proc.poll() is None:
            pids.append(self.epmd.proc.pid)
        return pids

    def rss_bytes(self) -> list[int]:
        return [node.rss_bytes() for node in self.nodes]

    def __enter__(self) -> RabbitMQCluster:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
