"""`make cluster` (deploy/local-cluster.sh) honours CLUSTER_BASE_PORT and CLUSTER_DATA: three
nodes start on the moved ports with their data and logs in the given directory, form a cluster,
and `stop` ends exactly the processes it started. Nothing is written to ./data/cluster."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from harness.ports import free_local_cluster_base

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "local-cluster.sh"
def _free_base() -> int:
    base = free_local_cluster_base()
    if base is None:
        pytest.skip("no free block of cluster ports on this machine")
    return base


def _run(action: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), action], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_make_passes_the_settings_to_the_script() -> None:
    out = subprocess.run(["make", "-n", "cluster", "cluster-stop", "CLUSTER_BASE_PORT=11000",
                          "CLUSTER_DATA=/tmp/elsewhere"], capture_output=True, text=True,
                         cwd=REPO, timeout=30, check=True).stdout
    assert "CLUSTER_BASE_PORT=11000 CLUSTER_DATA=/tmp/elsewhere deploy/local-cluster.sh start" in out
    assert "CLUSTER_BASE_PORT=11000 CLUSTER_DATA=/tmp/elsewhere deploy/local-cluster.sh stop" in out
    default = subprocess.run(["make", "-n", "cluster-stop"], capture_output=True, text=True,
                             cwd=REPO, timeout=30, check=True).stdout
    assert "CLUSTER_BASE_PORT=5672 CLUSTER_DATA=data/cluster deploy/local-cluster.sh stop" in default


def test_bad_base_port_is_refused() -> None:
    env = {**os.environ, "CLUSTER_BASE_PORT": "50000"}
    r = _run("ports", env)
    assert r.returncode == 2 and "must be 1..45533" in r.stderr


def test_cluster_on_moved_ports_and_data(tmp_path: Path) -> None:
    base = _free_base()
    data = tmp_path / "cluster"
    env = {**os.environ, "CLUSTER_BASE_PORT": str(base), "CLUSTER_DATA": str(data)}
    ports = _run("ports", env).stdout.splitlines()
    assert ports[0] == (f"n1 amqp {base} management {base + 10000} metrics {base + 10020} "
                        f"raft {base + 20000} data {data}/n1")
    default_pids = {p.name for p in (REPO / "data" / "cluster").glob("n?.pid")}
    started = _run("start", env)
    try:
        assert started.returncode == 0, started.stderr
        assert f"api http://127.0.0.1:{base + 10000}/api" in started.stdout
        pids = [int((data / f"n{i}.pid").read_text()) for i in (1, 2, 3)]
        deadline = time.monotonic() + 40
        status = _run("status", env)
        while "members: 3" not in status.stdout or "leader: 127.0.0.1" not in status.stdout:
            assert time.monotonic() < deadline, (status.stdout, status.stderr,
                                                 (data / "n1.log").read_text()[-2000:])
            for pid in pids:
                os.kill(pid, 0)  # still running
            time.sleep(0.3)
            status = _run("status", env)
        for i in (1, 2, 3):
            assert f"127.0.0.1:{base + 20000 + i - 1}" in status.stdout
            assert (data / f"n{i}" / "raft.journal").exists()
            assert (data / f"n{i}.log").stat().st_size > 0
        with socket.create_connection(("127.0.0.1", base + 10022), timeout=2):
            pass  # n3's metrics port
    finally:
        stopped = _run("stop", env, timeout=60)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not list(data.glob("n?.pid"))
    assert {p.name for p in (REPO / "data" / "cluster").glob("n?.pid")} == default_pids
