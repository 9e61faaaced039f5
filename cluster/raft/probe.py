"""Is that address a member of this cluster? The probe used before a membership change
(``raftmq cluster add``, node/mgmt/members.py) and by ``raftmq cluster force-members``
(node/ops/force_members.py), apart from the running node (cluster/raft/node.py): it opens its
own connection and speaks just enough of pysyncobj's protocol.
"""

from __future__ import annotations

import os
import socket
import struct
import time
import zlib
from typing import Any

from pysyncobj.encryptor import getEncryptor
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.utility import TcpUtility, UtilityException

from cluster.raft import patches


def probe_member(address: str, secret: str, timeout: float = 3.0,
                 patience: float = 8.0) -> tuple[bool, str]:
    """Does ``address`` answer as a pysyncobj node encrypting with ``secret``?

    Plays the start of pysyncobj's handshake on an encrypted connection: send a random
    key, encrypted; a node with the same secret decrypts it and answers with its own key,
    stamped with ours. Anything else (nothing listening, another secret, another
    protocol) is a no, with the reason. A refused or unresolvable address is tried again
    for ``patience`` seconds: a node being added has often only just been started."""
    deadline = monotonic_time() + patience
    while True:
        ok, why = _probe_once(address, secret, timeout)
        if ok or not why.startswith("cannot reach") or monotonic_time() >= deadline:
            return ok, why
        time.sleep(0.5)


def _probe_once(address: str, secret: str, timeout: float) -> tuple[bool, str]:
    host, _, port = address.rpartition(":")
    fernet = getEncryptor(secret)
    key = os.urandom(32)
    data = fernet.encrypt_at_time(zlib.compress(patches.dumps(key), 3),
                                  int(monotonic_time()))
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack("i", len(data)) + data)
            head = _recv_exactly(sock, 4)
            (size,) = struct.unpack("i", head)
            if not 0 < size < 1 << 20:
                return False, "not a pysyncobj frame"
            reply = _recv_exactly(sock, size)
    except (OSError, ValueError) as e:
        return False, f"cannot reach it: {e}"
    try:
        message = patches.loads(zlib.decompress(fernet.decrypt(reply)))
    except Exception:
        return False, "it answers, but not with this cluster's secret"
    if isinstance(message, tuple) and len(message) == 2 and message[0] == key:
        return True, "ok"
    return False, "unexpected handshake"


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf


def member_status(address: str, secret: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """pysyncobj's status of the running member at ``address`` (its ``status`` utility
    message, encrypted with ``secret``), or None when it does not answer so."""
    try:
        answer = TcpUtility(password=secret or None, timeout=timeout).executeCommand(
            address, ["status"])
    except (UtilityException, OSError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None
