"""Linear-time buffers for pysyncobj's TCP connections.

pysyncobj 0.3.17 keeps each connection's read and write buffers as ``bytes``
and rebuilds them on every partial ``recv``/``send`` (``buf += incoming``,
``buf = buf[n:]``): quadratic in the size of what is queued. A multi-MB
message, or a follower catching up, then kept a node's loop busy for seconds
(measured: 90 % of a follower's CPU in ``__processSend``/``send``, heartbeats
missed, elections every few seconds). These replacements keep the same
behaviour with ``bytearray`` buffers consumed in place. Imported only by
cluster/raft.py.
"""

from __future__ import annotations

import socket
import struct
import zlib
from typing import Any

import pysyncobj.pickle as _pickle
from pysyncobj.tcp_connection import TcpConnection

_P = "_TcpConnection__"


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
            stamp = self.encryptor.extract_timestamp(data)
            assert stamp >= self.recvLastTimestamp
            self.recvLastTimestamp = stamp
            data = self.encryptor.decrypt(data)
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


def install() -> None:
    setattr(TcpConnection, _P + "processSend", _process_send)
    setattr(TcpConnection, _P + "processRead", _process_read)
    setattr(TcpConnection, _P + "processParseMessage", _process_parse_message)
