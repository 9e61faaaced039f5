"""The ``raftmq`` management commands' rough edges (issue 20, item 10), against canned
API answers (node/ops/admin.py's Api with its requests answered here) and, for the broken
pipe, a real ``python -m node`` against a one-route HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from node import cli
from node.ops import admin

pytestmark = [pytest.mark.timeout(30)]


def _status(members: list[str], nodes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"node": "n1", "raft_address": "127.0.0.1:25001", "isolated": False,
            "ready": True, "levels": {"cluster": 1, "node": 1},
            "raft": {"leader": "127.0.0.1:25001", "term": 3, "members": members,
                     "state": "leader", "commit_index": 10, "last_applied": 10},
            "nodes": nodes}


class FakeApi(admin.Api):
    """Answers ``(method, path)`` from ``answers``; a missing one is unreachable. Other
    nodes (``at``) answer from ``others[http_address]``."""

    def __init__(self, answers: dict[tuple[str, str], Any],
                 others: dict[str, dict[tuple[str, str], Any]] | None = None) -> None:
        super().__init__("http://127.0.0.1:1", "guest", "guest")
        self.answers = answers
        self.others = others or {}
        self.sent: list[tuple[str, str, Any]] = []

    def at(self, http_address: str) -> admin.Api:
        return FakeApi(self.others.get(http_address, {}))

    def request(self, method: str, path: str, body: Any = None, timeout: float = 15.0,
                ok: tuple[int, ...] = (200, 201, 204),
                headers: dict[str, str] | None = None) -> Any:
        self.sent.append((method, path, body))
        if (method, path) not in self.answers:
            raise admin.AdminError(f"raftmq: cannot reach {self.url}")
        return self.answers[(method, path)]


def test_cluster_add_refusal_names_the_commands_flag(capsys):
    api = FakeApi({
        ("GET", "/api/status"): _status(["127.0.0.1:25001"], {}),
        ("POST", "/api/members?address=10.0.0.9%3A25672"): {
            "ok": False, "error": "10.0.0.9:25672 does not answer as a RaftMQ node with "
                                  "this cluster's secret (timeout); force=true adds it anyway"}})
    assert admin.cluster_change(api, "POST", "10.0.0.9:25672") == 1
    out = capsys.readouterr().out
    assert "--force adds it anyway" in out and "force=true" not in out


def test_confirmations_print_regexes_as_typed(capsys):
    api = FakeApi({("PUT", "/api/permissions/%2F/app"): None,
                   ("PUT", "/api/topic-permissions/%2F/app"): None})
    admin.set_permissions(api, "app", "/", "", r"^(?!amq\.topic).*", r"^app\..*")
    admin.set_topic_permissions(api, "app", "/", "amq.topic", r"^app\.", r"^app\.")
    out = capsys.readouterr().out
    assert r"write '^(?!amq\.topic).*' read '^app\..*'" in out
    assert r"topic permissions of app on amq.topic in vhost /: write '^app\.' read '^app\.'" \
        in out
    assert "\\\\" not in out and "configure ''" in out
    assert api.sent[0][2]["write"] == r"^(?!amq\.topic).*"  # (sent as typed, too)


def test_set_user_tags_has_help(capsys):
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["set", "--help"])
    listing = capsys.readouterr().out
    line = next(ln for ln in listing.splitlines() if ln.strip().startswith("user-tags"))
    assert "tags" in line.split(None, 1)[1]
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["set", "user-tags", "--help"])
    assert "administrator, monitoring" in capsys.readouterr().out


def test_watermark_output_is_in_one_unit(capsys):
    api = FakeApi({("GET", "/api/status"): {"node": "n1"},
                   ("PUT", "/api/nodes/n1/limits"): {
                       "mem_used": 120 << 20, "mem_limit": 1600 << 20, "mem_alarm": False,
                       "disk_free": 9000 << 20, "disk_free_limit": 50_000_000,
                       "disk_free_alarm": True}})
    admin.set_node_limit(api, "disk-free-limit", "50MB")
    admin.set_node_limit(api, "vm-memory-high-watermark", "0.4")  # (a fraction, as typed)
    admin.set_node_limit(api, "vm-memory-high-watermark", "1600MiB")
    assert capsys.readouterr().out.splitlines() == [
        f"node n1: {setting}: memory 120.0 MiB used of 1600.0 MiB, disk 9000.0 MiB free, "
        "limit 47.7 MiB (ALARM)" for setting in (
            "disk-free-limit 47.7 MiB", "vm-memory-high-watermark 0.4",
            "vm-memory-high-watermark 1600.0 MiB")]


def test_status_names_former_members_once_not_as_rows(capsys):
    """After force-members (or a removal) the node table still has the old members: they
    are one line under the table, not rows; a removed node that still answers keeps its
    row, marked "not a member"."""
    me = "127.0.0.1:25001"
    nodes: dict[str, dict[str, Any]] = {
        "n1": {"raft_address": me, "http_address": "127.0.0.1:15001"},
        "n2": {"raft_address": "127.0.0.1:25002", "http_address": "127.0.0.1:15002",
               "down": True},
        "n3": {"raft_address": "127.0.0.1:25003", "http_address": "", "down": True},
        "n4": {"raft_address": "127.0.0.1:25004", "http_address": "127.0.0.1:15004",
               "down": True}}
    status = _status([me], nodes)
    n4 = {**_status(["127.0.0.1:25004"], {}), "node": "n4", "raft_address": "127.0.0.1:25004"}
    n4["raft"] = {**n4["raft"], "state": "candidate", "leader": None}
    api = FakeApi({("GET", "/api/status"): status},
                  {"127.0.0.1:15004": {("GET", "/api/status"): n4}})
    assert admin.cluster_status(api) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("127.0.0.1:")]
    assert [r.split()[:3] for r in rows] == [[me, "n1", "leader"],
                                             ["127.0.0.1:25004", "n4", "candidate"]]
    assert rows[1].endswith("not a member")
    assert out.splitlines()[-1] == ("not members and not answering (removed or left out): "
                                    "n2 (127.0.0.1:25002), n3 (127.0.0.1:25003)")


# --- a reader that goes away -------------------------------------------------------------


class _Status(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = json.dumps(_status(["127.0.0.1:25001"], {})).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def status_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_closed_pipe_ends_the_command_quietly(status_server):
    """``raftmq cluster status | head -2``: the reader is gone before the first line (its
    end of the pipe closed before the command starts, so the write fails every time)."""
    read, write = os.pipe()
    os.close(read)
    try:
        r = subprocess.run([sys.executable, "-m", "node", "cluster", "status", "--node",
                            status_server], stdout=write, stderr=subprocess.PIPE,
                           timeout=20, check=False)
    finally:
        os.close(write)
    assert r.stderr == b"" and r.returncode == 141


def test_status_through_a_pipe_still_prints_everything(status_server):
    r = subprocess.run([sys.executable, "-m", "node", "cluster", "status", "--node",
                        status_server], capture_output=True, timeout=20, check=False)
    assert r.returncode == 0 and r.stderr == b""
    assert r.stdout.decode().startswith("leader: 127.0.0.1:25001")
