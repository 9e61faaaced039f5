"""Linear-time buffers for pysyncobj's TCP connections.

pysyncobj 0.3.17 keeps each connection's read and write buffers as ``bytes``
and rebuilds them on every partial ``recv``/``send`` (``buf += incoming``,
``buf = buf[n:]``): quadratic in the size of what is queued. A multi-MB
message, or a follower catching up, then kept a node's loop busy for seconds
(measured: 90 % of a follower's CPU in ``__processSend``/``send``, heartbeats
missed, elections every few seconds). These replacements keep the same
behaviour with ``bytearray`` buffers consumed in place.

Sending also compresses only what compresses: pysyncobj deflates every frame at
level 3, which costs 20 ms per MiB of incompressible bytes (a 20 MiB random
body: 0.4 s per hop, in one loop turn, on every node it crosses) for nothing.
A large frame whose sample does not shrink is stored (level 0: same format,
the receiver is unchanged). Receiving, a frame's token is authenticated once, not twice. Imported only by cluster/raft.py.
"""

from __future__ import annotations

import base64
import socket
import struct
import zlib
from typing import Any

import pysyncobj.pickle as _pickle
from pysyncobj.monotonic import monotonic as _monotonic
from pysyncobj.tcp_connection import TcpConnection

_P = "_TcpConnection__"

# Frames from this size on are sampled before they are deflated (a heartbeat is
# ~100 bytes, a transmission chunk of a large entry 64 KiB).
SAMPLE_FROM = 16 << 10
SAMPLE = 4 << 10
# A sample that deflates to more than this fraction of its size: the frame is stored.
INCOMPRESSIBLE = 0.9
LEVEL = 3  # pysyncobj's


def compress(data: bytes) -> bytes:
    """zlib of ``data``: deflated at pysyncobj's level, or stored when a sample from its
    middle does not compress (random or already compressed bodies)."""
    if len(data) >= SAMPLE_FROM:
        mid = len(data) // 2
        sample = data[mid:mid + SAMPLE]
        if len(zlib.compress(sample, 1)) > INCOMPRESSIBLE * len(sample):
            return zlib.compress(data, 0)
    return zlib.compress(data, LEVEL)


def _send(self: Any, message: Any) -> None:
    """TcpConnection.send, with :func:`compress` and the frame appended in place."""
    if self.sendRandKey:
        message = (self.sendRandKey, message)
    data = compress(_pickle.dumps(message))
    if self.encryptor:
        data = self.encryptor.encrypt_at_time(data, int(_monotonic()))
    buf = getattr(self, _P + "writeBuffer")
    if not isinstance(buf, bytearray):
        buf = bytearray(buf)
        setattr(self, _P + "writeBuffer", buf)
    buf += struct.pack("i", len(data))
    buf += data
    getattr(self, _P + "trySendBuffer")()


def _process_send(self: Any) -> bool:
    buf = getattr(self, _P + "writeBuffer")
    if not buf:
        return False
    try:
        res = getattr(self, _P + "socket").send(buf)
    except OSError as e:
        if e.errno not in (socket.errno.EAGAIN, socket.errno.EWOULDBLOCK):  # type: ignore[attr-defined]
            self.disconnect()
        return False
    if res < 0:
        self.disconnect()
        return False
    if res == 0:
        return False
    if not isinstance(buf, bytearray):
        buf = bytearray(buf)
    del buf[:res]
    setattr(self, _P + "writeBuffer", buf)
    return True


def _process_read(self: Any) -> bool:
    sock = getattr(self, _P + "socket")
    try:
        incoming = sock.recv(getattr(self, _P + "recvBufferSize"))
    except OSError as e:
        if e.errno not in (socket.errno.EAGAIN, socket.errno.EWOULDBLOCK):  # type: ignore[attr-defined]
            self.disconnect()
        return False
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or not incoming:
        self.disconnect()
        return False
    buf = getattr(self, _P + "readBuffer")
    if not isinstance(buf, bytearray):
        buf = bytearray(buf)
        setattr(self, _P + "readBuffer", buf)
    buf += incoming
    return True


def _process_parse_message(self: Any) -> Any:
    buf = getattr(self, _P + "readBuffer")
    if len(buf) < 4:
        return None
    (size,) = struct.unpack_from("i", buf, 0)
    if len(buf) - 4 < size:
        return None
    data = bytes(buf[4:4 + size])
    try:
        if self.encryptor:
            data = self.encryptor.decrypt(data)  # verifies the whole token, stamp included
            stamp = token_timestamp(buf[4:4 + _STAMP_CHARS])
            assert stamp >= self.recvLastTimestamp
            self.recvLastTimestamp = stamp
        message = _pickle.loads(zlib.decompress(data))
        if self.recvRandKey:
            rand_key, message = message
            assert rand_key == self.recvRandKey
    except Exception:  # as pysyncobj: a frame that does not check out drops the peer
        self.disconnect()
        return None
    if isinstance(buf, bytearray):
        del buf[:4 + size]
    else:
        setattr(self, _P + "readBuffer", buf[4 + size:])
    return message


# A Fernet token is base64url(0x80, 8-byte timestamp, IV, ciphertext, HMAC): its first 12
# characters hold the version and the timestamp.
_STAMP_CHARS = 12


def token_timestamp(head: bytes | bytearray) -> int:
    """The timestamp of a Fernet token from its first characters. pysyncobj used
    ``extract_timestamp``, which decodes and authenticates the whole token (68 ms for a
    20 MiB frame) only for ``decrypt`` to do it all again; read here after ``decrypt`` has
    authenticated it."""
    raw = base64.urlsafe_b64decode(bytes(head))
    if len(raw) < 9 or raw[0] != 0x80:
        raise ValueError("not a Fernet token")
    (stamp,) = struct.unpack_from(">Q", raw, 1)
    return int(stamp)


def _process_connection_timeout(self: Any) -> None:
    """pysyncobj drops a connection it has read nothing from for ``connectionTimeout``
    (checked when it sends). After this node's own loop was busy that long, the peer's
    bytes are waiting unread in the socket: the peer was not silent, so the connection
    stays."""
    if _monotonic() - getattr(self, _P + "lastReadTime") <= getattr(self, _P + "timeout"):
        return
    if not _bytes_waiting(getattr(self, _P + "socket")):
        self.disconnect()


def _bytes_waiting(sock: socket.socket | None) -> bool:
    if sock is None:
        return False
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:
        return False


def install() -> None:
    TcpConnection.send = _send
    setattr(TcpConnection, _P + "processConnectionTimeout", _process_connection_timeout)
    setattr(TcpConnection, _P + "processSend", _process_send)
    setattr(TcpConnection, _P + "processRead", _process_read)
    setattr(TcpConnection, _P + "processParseMessage", _process_parse_message)
