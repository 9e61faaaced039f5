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
the receiver is unchanged). Frames are encoded (deflated, encrypted) as the socket
takes them, a bounded amount per loop turn, so one peer's large entry does not hold
the loop. Receiving, a frame's token is authenticated once, not twice.

Installed through cluster/raft/patches.py: PATCHES lists each change and names
its installer here.
"""

from __future__ import annotations

import base64
import socket
import struct
import zlib
from collections import deque
from typing import Any

import pysyncobj.pickle as _pickle
from pysyncobj.monotonic import monotonic as _monotonic
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection

_P = "_TcpConnection__"

# Frames from this size on are sampled before they are deflated (a heartbeat is
# ~100 bytes, a transmission chunk of a large entry 64 KiB).
SAMPLE_FROM = 16 << 10
SAMPLE = 4 << 10
# A sample that deflates to more than this fraction of its size: the frame is stored.
INCOMPRESSIBLE = 0.9
LEVEL = 3  # pysyncobj's
# Messages deflated and encrypted per socket event, at most (one message may be larger).
ENCODE_PER_EVENT = 1 << 20
# Encoded frames waiting for the socket, at most (the kernel's buffer holds more).
AHEAD = 1 << 20
# Sends this close together are one burst (one loop turn): together they encode at most
# ENCODE_PER_EVENT at once.
BURST_S = 0.005


def compress(data: bytes) -> bytes:
    """zlib of ``data``: deflated at pysyncobj's level, or stored when a sample from its
    middle does not compress (random or already compressed bodies)."""
    if len(data) >= SAMPLE_FROM:
        mid = len(data) // 2
        sample = data[mid:mid + SAMPLE]
        if len(zlib.compress(sample, 1)) > INCOMPRESSIBLE * len(sample):
            return zlib.compress(data, 0)
    return zlib.compress(data, LEVEL)


class _Outgoing(bytearray):
    """A connection's write buffer: encoded frames ready for the socket, and ``pending``
    messages, pickled (at send time, as pysyncobj did) but not yet deflated and encrypted.
    pysyncobj replaces the buffer with ``b""`` when the connection is made or lost: what
    was pending goes with it, as its unsent bytes always did."""

    def __init__(self, data: bytes = b"") -> None:
        super().__init__(data)
        self.pending: deque[bytes] = deque()
        # messages encoded at once by send() since burst_start (monotonic s)
        self.burst_start = 0.0
        self.burst_bytes = 0

    def may_send_now(self, size: int) -> bool:
        """Nothing waits for the socket, and send() has not encoded ``ENCODE_PER_EVENT``
        in this burst (one loop turn, in practice) yet."""
        if self or self.pending:
            return False
        now = _monotonic()
        if now - self.burst_start > BURST_S:
            self.burst_start, self.burst_bytes = now, 0
        self.burst_bytes += size
        return self.burst_bytes <= ENCODE_PER_EVENT


def _outgoing(self: Any) -> _Outgoing:
    buf = getattr(self, _P + "writeBuffer")
    if not isinstance(buf, _Outgoing):
        buf = _Outgoing(buf)
        setattr(self, _P + "writeBuffer", buf)
    return buf


def _encode(self: Any, buf: _Outgoing, budget: int) -> int:
    """Encode pending messages into frames while less than ``AHEAD`` waits for the socket
    and ``budget`` (bytes of messages) lasts; the bytes used."""
    used = 0
    while buf.pending and len(buf) < AHEAD and used < budget:
        data = buf.pending.popleft()
        used += len(data)
        data = compress(data)
        if self.encryptor:
            data = self.encryptor.encrypt_at_time(data, int(_monotonic()))
        buf += struct.pack("i", len(data))
        buf += data
    return used


def _send(self: Any, message: Any) -> None:
    """TcpConnection.send: the message is pickled now, deflated (:func:`compress`) and
    encrypted now if nothing else waits for the socket and this burst of sends has not
    encoded its share yet, else in its turn on the write events that follow
    (:func:`_try_send_buffer`). A leader sending a 20 MiB entry's 320 pieces to each
    follower in one call thus encrypts 1 MiB per follower in that turn, the rest a MiB
    per write event, the loop serving everything else in between."""
    if self.sendRandKey:
        message = (self.sendRandKey, message)
    buf = _outgoing(self)
    data = _pickle.dumps(message)
    now = buf.may_send_now(len(data))
    buf.pending.append(data)
    if now:
        _try_send_buffer(self)
    else:  # pysyncobj checks on every send whether the peer went silent: so does this
        getattr(self, _P + "processConnectionTimeout")()
    buf = getattr(self, _P + "writeBuffer")
    if (buf or getattr(buf, "pending", None)) and self.state == CONNECTION_STATE.CONNECTED:
        # The rest leaves on write events. pysyncobj asks for them only after a write
        # event that left bytes: a send that left some waited for the next send (a
        # heartbeat, 50 ms later) to move on.
        getattr(self, _P + "poller").subscribe(
            self.fileno(), getattr(self, _P + "processConnection"),
            POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR)


def _try_send_buffer(self: Any) -> None:
    """Send what the socket takes, encoding at most ``ENCODE_PER_EVENT`` of pending
    messages: the rest waits for the next write event, and the loop serves everything
    else (the other peers included) in between. pysyncobj encrypted a large entry's
    pieces for one follower, then for the next, in one loop turn (0.3 s for 20 MiB, over
    1 s on a busy machine: long enough for the followers to start an election)."""
    getattr(self, _P + "processConnectionTimeout")()
    budget = ENCODE_PER_EVENT
    while self.state != CONNECTION_STATE.DISCONNECTED:
        budget -= _encode(self, _outgoing(self), budget)
        if not _process_send(self):
            break
    if self.state == CONNECTION_STATE.DISCONNECTED:
        return
    buf = _outgoing(self)
    if not buf and buf.pending:
        # Out of budget with everything encoded sent: one frame waits, so that pysyncobj
        # asks for the next write event (it does while its buffer holds bytes).
        _encode(self, buf, 1)


def _process_send(self: Any) -> bool:
    buf = _outgoing(self)
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
    del buf[:res]
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


# When this node last sent on a connection, and since when its peer counts as silent.
_LAST_SEND = "_raftmq_last_send"
_SILENT_FROM = "_raftmq_silent_from"


def _process_connection_timeout(self: Any) -> None:
    """pysyncobj drops a connection it has read nothing from for ``connectionTimeout``
    (checked when it sends). Two corrections:

    * A link idle both ways (two followers of a stable leader exchange nothing) is not a
      silent peer: silence counts from the first send after the idle stretch. pysyncobj
      dropped the link, and the vote request with it, on the first send of an election:
      the two survivors of a leader kill split the vote and waited another election
      timeout (failover 0.75-1.5 s; with this, 0.2-0.4 s). A black-holed peer is still
      dropped ``connectionTimeout`` after the first unanswered send (heartbeats and vote
      requests keep this node sending).
    * After this node's own loop was busy that long, the peer's bytes are waiting unread
      in the socket: the peer was not silent, so the connection stays."""
    now = _monotonic()
    timeout = getattr(self, _P + "timeout")
    last_read = getattr(self, _P + "lastReadTime")
    if now - max(getattr(self, _LAST_SEND, 0.0), last_read) > timeout:
        setattr(self, _SILENT_FROM, now)
    setattr(self, _LAST_SEND, now)
    if now - max(last_read, getattr(self, _SILENT_FROM, 0.0)) <= timeout:
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


# Installers of PATCHES rows (cluster/raft/patches.py), called by its install().


def install_buffers() -> None:
    """Linear TCP buffers."""
    setattr(TcpConnection, _P + "processSend", _process_send)
    setattr(TcpConnection, _P + "processRead", _process_read)
    setattr(TcpConnection, _P + "processParseMessage", _process_parse_message)


def install_send() -> None:
    """Incompressible frames stored; frames encoded as the socket takes them."""
    TcpConnection.send = _send
    setattr(TcpConnection, _P + "trySendBuffer", _try_send_buffer)


def install_timeout() -> None:
    """A busy loop is not a silent peer."""
    setattr(TcpConnection, _P + "processConnectionTimeout", _process_connection_timeout)
