"""Minimal RabbitMQ launcher, used only when ``tests.harness.rabbitmq`` is not importable.

Same surface as the harness class: ``RabbitMQ(base_dir, amqp_port=None)``, ``.start()``,
``.stop()``, ``.url``. Runs the installed RabbitMQ 3.10 as the current user with every file
under ``base_dir``, listening on 127.0.0.1 only, no plugins.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.integration.rawclient import amqp_answers

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RabbitMQ:
    def __init__(self, base_dir: Path, amqp_port: int | None = None) -> None:
        self.base = Path(base_dir)
        self.amqp_port = amqp_port or _free_port()
        self.dist_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    def start(self, timeout: float = 60.0) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        conf = self.base / "rabbitmq.conf"
        conf.write_text(f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n")
        plugins = self.base / "enabled_plugins"
        plugins.write_text("[].\n")
        env = dict(os.environ)
        env.update(
            RABBITMQ_BASE=str(self.base),
            RABBITMQ_NODENAME=f"it{self.amqp_port}@localhost",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(conf),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(plugins),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_PID_FILE=str(self.base / "pid"),
        )
        log = open(self.base / "server.out", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([str(SERVER)], env=env, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited early; see {self.base / 'server.out'}")
            try:
                if amqp_answers("127.0.0.1", self.amqp_port, 1.0):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"RabbitMQ not up after {timeout}s")
            time.sleep(0.2)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.proc = None
