"""The README's cluster walk-through, run as written: "A cluster"'s second block (``make cluster``
with ``CLUSTER_BASE_PORT`` and ``CLUSTER_DATA``; the first block is the same three commands on
the default ports, which a test may not assume free), whose ``cluster status`` must match the
sample under it; then "Operating a cluster"'s drain and transfer block, matched against its
sample; then ``make cluster-stop``.

Substituted: the base port, the management port derived from it and the data directory of the
``make cluster`` block; in the drain block ``10.0.0.12:15672`` (a node's management address: here
n3's) and, through ``RAFTMQ_ADMIN_URL``, the CLI's default node (n1's)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from harness.ports import free_local_cluster_base
from tests.harness.api import Api
from tests.readme.readme import README, REPO, Shell, block, clean_env, commands, mismatches

pytestmark = pytest.mark.timeout(240)

ROLE = {"leader": "(leader|follower)", "follower": "(leader|follower)"}


def _kill_leftovers(data: Path) -> None:
    """If cluster-stop did not run (a failure before it), end the nodes we started, by PID."""
    for pid_file in data.glob("n?.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_cluster_walkthrough(tmp_path: Path) -> None:
    readme = README.read_text()
    base, data = free_local_cluster_base(), tmp_path / "cluster"
    if base is None:
        pytest.skip("no free block of cluster ports on this machine")
    mgmt = [base + 10000 + i for i in range(3)]
    shell = Shell(REPO, {**clean_env(), "RAFTMQ_ADMIN_URL": f"http://127.0.0.1:{mgmt[0]}"},
                  {"CLUSTER_BASE_PORT=7672": f"CLUSTER_BASE_PORT={base}",
                   "127.0.0.1:17672": f"127.0.0.1:{mgmt[0]}",
                   "/tmp/raftmq-cluster": str(data),
                   "10.0.0.12:15672": f"127.0.0.1:{mgmt[2]}"})
    start, status, stop = commands(block(readme, "A cluster", 1, "sh").text)
    try:
        assert "ready" in shell.run(start)
        out = shell.run(status)
        problems = mismatches(block(readme, "A cluster", 0, "").text, out, ROLE)
        assert not problems, "\n".join(problems) + "\n--- printed:\n" + out

        out = shell.run_block(block(readme, "Operating a cluster", 0, "sh").text)
        problems = mismatches(block(readme, "Operating a cluster", 0, "").text, out)
        assert not problems, "\n".join(problems) + "\n--- printed:\n" + out
        assert out.startswith("node n3 drained"), out
        nodes = {n["name"]: n for n in Api(mgmt[0])("GET", "/api/nodes")[1]}
        assert nodes["n3"]["being_drained"] and nodes["n2"]["raft"]["role"] == "leader", nodes
        assert "stopped" in shell.run(stop)
        assert not list(data.glob("n?.pid"))
    finally:
        _kill_leftovers(data)
        shell.close()
