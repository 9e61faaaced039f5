"""The node's process life: signals while it waits for a leader, a Raft port that is
taken, start-up errors that name what is wrong."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from harness.ports import free_port
from harness.raftmq import RaftMQNode

SECRET = {"RAFTMQ_CLUSTER_SECRET": "process-test-secret-0123456789"}


def wait_for_log(node: RaftMQNode, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in node.log_path.read_text(errors="replace"):
            return
        assert node.is_running(), node.log_tail()
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged in {timeout}s:\n{node.log_tail()}")


def exit_code_within(node: RaftMQNode, seconds: float) -> int | None:
    assert node.proc is not None
    try:
        return node.proc.wait(seconds)
    except Exception:
        return None


def test_sigterm_while_waiting_for_a_leader_exits_promptly(tmp_path: Path) -> None:
    """Peers that never answer: no leader, ever. SIGTERM still ends the node."""
    peers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    node = RaftMQNode(tmp_path / "n1", peers=peers, extra_env=SECRET)
    node.start(wait=False)
    try:
        wait_for_log(node, "waiting for a Raft leader")
        time.sleep(0.5)
        started = time.monotonic()
        node.kill(signal.SIGTERM)
        code = exit_code_within(node, 10)
        assert code == 0, f"exit code {code}\n{node.log_tail()}"
        assert time.monotonic() - started < 5
        assert "shutting down before start-up finished" in node.log_tail()
    finally:
        node.stop(timeout=2)


def test_raft_port_in_use_stops_start_up_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = RaftMQNode(tmp_path / "n1", raft_port=port)
        node.start(wait=False)
        try:
            code = exit_code_within(node, 15)
            assert code == 1, node.log_tail()
            assert (f"cannot bind the Raft listener on 127.0.0.1:{port}: Address already in use"
                    in node.log_tail())
        finally:
            node.stop(timeout=2)


@pytest.mark.parametrize("taken_kind", ["amqp", "management"])
def test_other_ports_in_use_stop_start_up(tmp_path: Path, taken_kind: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        kw = {f"{taken_kind}_port": port}
        node = RaftMQNode(tmp_path / "n1", **kw)
        node.start(wait=False)
        try:
            code = exit_code_within(node, 15)
            assert code == 1, node.log_tail()
            assert "cannot start" in node.log_tail() and str(port) in node.log_tail()
        finally:
            node.stop(timeout=2)
