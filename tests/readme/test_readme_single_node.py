"""The README's single-node walk-through, run as written, in its order: ``make run`` (on free
ports), the pika example, the alarm settings, the Security commands (whose output must match the
sample shown under them) and their curl equivalents, then the CLI block of "Managing a cluster",
and finally stopping the node as "Starting, stopping, logs" says.

Substituted, and only these: the ports (``make run`` gets them as ``RAFTMQ_*`` variables, the
README's way of setting any option, and ``RAFTMQ_ADMIN_URL`` points the CLI at the node, as the
README says), ``admin:pw`` / ``node:15672`` in the curl lines, and the connection name given as
an example to ``raftmq close connection``."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest

from harness.ports import free_port, wait_amqp
from harness.procs import stop_group
from tests.harness.api import Api
from tests.readme.readme import (
    README,
    REPO,
    VENV_BIN,
    Shell,
    block,
    clean_env,
    commands,
    mismatches,
)

pytestmark = pytest.mark.timeout(240)

NEW_PASSWORD = "another-long-password"  # what the Security block sets for guest


class MadeNode:
    """``make run`` with the node's ports and data directory moved by environment variables."""

    def __init__(self, data: Path) -> None:
        self.amqp, self.mgmt, self.metrics, self.raft = (free_port() for _ in range(4))
        env = {**clean_env(), "RAFTMQ_AMQP_PORT": str(self.amqp),
               "RAFTMQ_MANAGEMENT_PORT": str(self.mgmt), "RAFTMQ_METRICS_PORT": str(self.metrics),
               "RAFTMQ_RAFT_ADDRESS": f"127.0.0.1:{self.raft}", "RAFTMQ_DATA_DIR": str(data)}
        line = commands(block(README.read_text(), "RaftMQ", 0, "sh").text)[0]
        assert line.startswith("make run"), line
        self.log = data.with_suffix(".log")
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(["bash", "-c", line], cwd=REPO, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, timeout: float = 60) -> None:
        """README: ``GET /healthz`` on the metrics port answers 200 when the node is ready."""
        import urllib.request
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/healthz",
                                            timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.2)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[MadeNode]:
    made = MadeNode(tmp_path / "data")
    try:
        made.wait_healthy()
        wait_amqp("127.0.0.1", made.amqp, 30)
        yield made
    finally:
        stop_group(made.proc, timeout=15)


def test_single_node_walkthrough(node: MadeNode, tmp_path: Path) -> None:
    readme = README.read_text()
    shell = Shell(tmp_path, {**clean_env(), "RAFTMQ_ADMIN_URL": f"http://127.0.0.1:{node.mgmt}"},
                  {"127.0.0.1:5672": f"127.0.0.1:{node.amqp}",
                   "127.0.0.1:15672": f"127.0.0.1:{node.mgmt}"})

    # the pika example, in `python` from the activated shell
    example = block(readme, "RaftMQ", 0, "python").text.replace(
        "127.0.0.1:5672", f"127.0.0.1:{node.amqp}")
    ran = subprocess.run([str(VENV_BIN / "python")], input=example, capture_output=True,
                         text=True, timeout=60, cwd=tmp_path, env=clean_env())
    assert ran.returncode == 0 and "b'hi'" in ran.stdout, ran.stdout + ran.stderr

    # Alarms and backpressure: the run-time settings
    out = shell.run_block(block(readme, "Alarms and backpressure", 0, "sh").text)
    assert "0.6" in out, out

    # Security: the CLI block, whose output is shown under it; then the same through curl
    out = shell.run_block(block(readme, "Security", 0, "sh").text)
    problems = mismatches(block(readme, "Security", 0, "").text, out)
    assert not problems, "\n".join(problems) + "\n--- printed:\n" + out
    curl = Shell(tmp_path, clean_env(), {"admin:pw": f"guest:{NEW_PASSWORD}",
                                         "node:15672": f"127.0.0.1:{node.mgmt}"})
    curl.run_block(block(readme, "Security", 1, "sh").text)
    api = Api(node.mgmt, user="guest", password=NEW_PASSWORD)
    assert api("GET", "/api/permissions/shop/app")[1]["write"] == "^(app\\.|amq\\.(default|topic)$)"

    # Managing a cluster: the CLI block, with a client connected for `close connection`
    conn = pika.BlockingConnection(pika.URLParameters(
        f"amqp://guest:{NEW_PASSWORD}@127.0.0.1:{node.amqp}/"))
    try:
        names = [c["name"] for c in api("GET", "/api/connections")[1]]
        assert len(names) == 1, names
        shell.subs["n1:90232692670466"] = names[0]
        out = shell.run_block(block(readme, "Managing a cluster", 0, "sh").text)
        assert "exported" in out and "imported" in out and "leader:" in out, out
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            for _ in range(100):
                conn.process_data_events(0.05)
        assert closed.value.reply_code == 320 and "maintenance" in closed.value.reply_text
    finally:
        if conn.is_open:
            conn.close()
    assert api("GET", "/api/queues/%2F/hello")[0] == 404  # deleted by `delete queue hello`

    # "Stop it with SIGTERM or Ctrl-C": make passes the signal to the node, which exits
    os.killpg(node.proc.pid, signal.SIGTERM)
    node.proc.wait(timeout=20)
    assert "Traceback" not in node.log.read_text()
