"""A Node.js client (amqplib) that closes while its publishes are still being written.

RabbitMQ reads what a client sent up to connection.close, answers close-ok and waits
for the client to close the socket; a broker that closes first, with the client's frames
unread, resets the connection and the client sees ECONNRESET / EPIPE. amqplib is installed
from tests/integration/js/package.json (package-lock.json) by this module, into that
directory's node_modules.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import Broker
from tests.integration.helpers import connect, queue_depth, unique

JS = Path(__file__).resolve().parent / "js"


@pytest.fixture(scope="module")
def node_js() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("Node.js and npm are needed (Debian: apt install nodejs npm)")
    if not (JS / "node_modules" / "amqplib").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=JS, check=True,
                       timeout=300)
    return node


@pytest.mark.parametrize("size", [100, 64 * 1024])
def test_close_while_publishing_sees_no_error(broker: Broker, node_js: str, size: int) -> None:
    queue, count, rounds = unique("js-close"), 2000, 5
    res = subprocess.run([node_js, str(JS / "close_while_publishing.js"), broker.url, queue,
                          str(count), str(size), str(rounds)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == f"ok {rounds}", res.stderr
    conn = connect(broker.url)
    try:
        ch = conn.channel()
        # amqplib writes connection.close ahead of the publishes its channel still has
        # buffered: those arrive after close and are read and discarded, as the spec says
        # (RabbitMQ 3.10: none of them queued either)
        assert queue_depth(ch, queue) <= count * rounds
        ch.queue_delete(queue)
    finally:
        conn.close()
