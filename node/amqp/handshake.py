"""Channel 0 of one connection, without a socket: the handshake and the close.

    protocol header -> connection.start       (EXTERNAL offered on a verified TLS client)
    start-ok        -> the login (node/amqp/login.py), then connection.tune; refused:
                       connection.close 403 to a client announcing the capability
                       authentication_failure_close, else the socket closed (RabbitMQ's way)
    tune-ok         -> heartbeats start (node/amqp/heartbeat.py)
    open            -> the node's checks (vhost, permissions, limits), then open-ok
    close           -> close-ok; close-ok (to our close) -> the socket may go

:class:`Handshake` turns each channel-0 event of the sans-I/O
:class:`protocol.connection.ServerConnection` into a list of actions (frozen
dataclasses below) that the connection (node/amqp/connection.py) carries out:
it owns the socket and the timers. The frame order and the state checks are the
protocol's; what is decided here is what the node answers. A refused open or an
unexpected method raises :class:`AMQPConnectionError` (the connection closes with
it), as a session does.

The login is two steps because of the throttle: an attempt may first have to
wait for its slot, and a refusal is held back before it is sent. Meanwhile
(``held``) nothing more from the client is parsed; the connection calls
:meth:`Handshake.resume` when the :class:`Hold` is over. Tests:
tests/node/test_handshake.py (no socket, no timer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pamqp import commands as spec

from node.amqp.login import Accepted, Attempt, Authenticator, Refused
from protocol.connection import ServerConnection, server_properties
from protocol.constants import COMMAND_INVALID, NOT_ALLOWED
from protocol.errors import AMQPConnectionError
from protocol.events import MethodReceived, ProtocolHeaderReceived
from protocol.methods import build

PRODUCT = "RaftMQ"
VERSION = "0.1.0"


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class Hold:
    """Parse nothing more (and read nothing) for ``delay`` s, then call ``resume()``."""

    delay: float


@dataclass(frozen=True, slots=True)
class LoggedIn:
    user: str


@dataclass(frozen=True, slots=True)
class Tuned:
    heartbeat: int  # negotiated, in seconds (0: none)


@dataclass(frozen=True, slots=True)
class Opened:
    vhost: str
    user: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """The login is refused: close the connection with this (on connection.start-ok);
    nothing more is parsed. (A client without authentication_failure_close gets a
    :class:`Drop` instead.)"""

    code: int
    text: str
    class_id: int = 10
    method_id: int = 11


@dataclass(frozen=True, slots=True)
class Closed:
    """The client closed: close-ok is sent (flush it); nothing may follow."""


@dataclass(frozen=True, slots=True)
class Drop:
    """close-ok to our close, or a refused login the client is not told about: the socket
    may go."""


Action = Send | Hold | LoggedIn | Tuned | Opened | Refuse | Closed | Drop


class Handshake:
    def __init__(self, proto: ServerConnection, auth: Authenticator,
                 may_open: Callable[[str, str], str | None]) -> None:
        """``may_open(user, vhost)``: why that user may not open a connection to that
        vhost (None: it may)."""
        self.proto = proto
        self.auth = auth
        self.may_open = may_open
        self.peer: tuple[Any, ...] | None = None
        self.certificate_user: str | None = None  # a verified client certificate's CN
        self.client_properties: dict[str, Any] = {}
        self.user = ""
        self.vhost = ""
        self.held = False  # a login answer is pending or refused: parse nothing more
        self._pending: Attempt | Refused | None = None

    def announces(self, capability: str) -> bool:
        """The client announced ``capability`` in start-ok (RabbitMQ ignores a
        capabilities value that is not a table; so do we)."""
        caps = self.client_properties.get("capabilities")
        return isinstance(caps, dict) and caps.get(capability) is True

    def receive(self, ev: object) -> list[Action]:
        """A channel-0 event: what to do."""
        if type(ev) is MethodReceived:
            return self._method(ev.method)
        if type(ev) is ProtocolHeaderReceived:
            mechanisms = "PLAIN AMQPLAIN" + (" EXTERNAL" if self.certificate_user else "")
            return [Send(self.proto.start(server_properties(PRODUCT, VERSION), mechanisms))]
        return []  # a heartbeat: only its arrival counts (node/amqp/heartbeat.py)

    def resume(self) -> list[Action]:
        """The :class:`Hold` is over."""
        step, self._pending = self._pending, None
        self.held = False
        if isinstance(step, Attempt):
            return self._login(self.auth.check(step, self.peer))
        if isinstance(step, Refused):
            return self._refuse(step)
        return []

    def _method(self, m: Any) -> list[Action]:
        if isinstance(m, spec.Connection.StartOk):
            return self._start_ok(m)
        if isinstance(m, spec.Connection.TuneOk):
            return [Tuned(self.proto.heartbeat)]
        if isinstance(m, spec.Connection.Open):
            vhost = m.virtual_host or "/"
            refused = self.may_open(self.user, vhost)
            if refused is not None:
                raise AMQPConnectionError(NOT_ALLOWED, f"NOT_ALLOWED - {refused}", 10, 40)
            self.vhost = vhost
            return [Opened(vhost, self.user), Send(self.proto.open_ok())]
        if isinstance(m, spec.Connection.Close):
            return [Send(self.proto.close_ok()), Closed()]
        if isinstance(m, spec.Connection.CloseOk):
            return [Drop()]
        if isinstance(m, spec.Connection.Blocked | spec.Connection.Unblocked):
            return []
        if isinstance(m, spec.Connection.UpdateSecret):
            # Credentials here do not expire; accept the new secret as RabbitMQ does.
            return [Send(self.proto.send_method(0, build(spec.Connection.UpdateSecretOk)))]
        raise AMQPConnectionError(COMMAND_INVALID, f"COMMAND_INVALID - unexpected {m.name}",
                                  m.frame_id >> 16, m.frame_id & 0xFFFF)

    def _start_ok(self, m: Any) -> list[Action]:
        self.client_properties = m.client_properties or {}
        step = self.auth.start(self.peer, m.mechanism, m.response, self.certificate_user)
        if isinstance(step, Attempt) and step.wait <= 0:
            return self._login(self.auth.check(step, self.peer))
        return self._login(step)

    def _login(self, step: Attempt | Accepted | Refused) -> list[Action]:
        if isinstance(step, Accepted):
            self.user = step.user
            return [LoggedIn(step.user), Send(self.proto.tune())]
        if isinstance(step, Refused) and step.delay <= 0:
            return self._refuse(step)
        self.held = True
        self._pending = step
        return [Hold(step.wait if isinstance(step, Attempt) else step.delay)]

    def _refuse(self, refused: Refused) -> list[Action]:
        self.held = True  # stays held: the connection is closing
        if not self.announces("authentication_failure_close"):
            # RabbitMQ tells only a client that announced the capability why (a
            # connection.close 403); any other sees its socket closed, nothing said
            return [Drop()]
        return [Refuse(refused.code, refused.text)]
