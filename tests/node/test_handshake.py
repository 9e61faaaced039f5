"""node/amqp/handshake.py without a socket: the client's bytes into the sans-I/O protocol,
its channel-0 events into the handshake, the actions checked (the login, tune, open and
close; throttled logins held and resumed by hand, no timer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from pamqp import commands as spec

from node.amqp import handshake as hs
from node.amqp.auth import LoginThrottle
from node.amqp.handshake import Handshake
from node.amqp.login import Authenticator
from node.amqp.passwords import SHA256, hash_password
from protocol import NEED_DATA, ServerConnection
from protocol.constants import ACCESS_REFUSED, COMMAND_INVALID, NOT_ALLOWED
from protocol.errors import AMQPConnectionError
from tests.protocol.client import HEADER, decode_frames, method


@dataclass
class User:
    password_hash: str
    hashing: str = SHA256
    limits: dict[str, int] = field(default_factory=dict)


def start_ok(user: str = "guest", password: str = "guest", mechanism: str = "PLAIN",
             capabilities: Any = None) -> bytes:
    # (every usual client announces authentication_failure_close, and so is told why a
    # login is refused)
    props: dict[str, Any] = {"product": "test", "capabilities": capabilities if capabilities is not None
             else {"connection.blocked": True, "authentication_failure_close": True}}
    return method(0, spec.Connection.StartOk(client_properties=props, mechanism=mechanism,
                                             response=f"\0{user}\0{password}"))


TUNE_OK = method(0, spec.Connection.TuneOk(2047, 131072, 30))


class Harness:
    def __init__(self, loopback_users: tuple[str, ...] = ()) -> None:
        self.users = {"guest": User(hash_password("guest")), "alice": User(hash_password("pw"))}
        self.vhosts = {"/", "v1"}
        self.proto = ServerConnection(heartbeat=60)
        self.auth = Authenticator(self.users.get, loopback_users,
                                  throttle=LoginThrottle(base=0.1))
        self.h = Handshake(self.proto, self.auth, self.may_open)
        self.h.peer = ("127.0.0.1", 40000)

    def may_open(self, user: str, vhost: str) -> str | None:
        if vhost not in self.vhosts:
            return f"access to vhost '{vhost}' refused for user '{user}'"
        return None

    def send(self, data: bytes) -> list[hs.Action]:
        """The actions for every channel-0 event in ``data``."""
        self.proto.receive_data(data)
        actions: list[hs.Action] = []
        while not self.h.held:
            ev = self.proto.next_event()
            if ev is NEED_DATA:
                break
            actions += self.h.receive(ev)
        return actions

    def login(self, capabilities: Any = None) -> list[hs.Action]:
        return self.send(HEADER + start_ok(capabilities=capabilities))

    def opened(self) -> None:
        self.login()
        self.send(TUNE_OK + method(0, spec.Connection.Open("/")))


def sent(actions: list[hs.Action]) -> list[Any]:
    """The frames in the Send actions."""
    return [f for a in actions if isinstance(a, hs.Send) for _, f in decode_frames(a.data)]


def kinds(actions: list[hs.Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_the_whole_handshake_as_actions() -> None:
    x = Harness()
    [start] = sent(x.send(HEADER))
    assert isinstance(start, spec.Connection.Start)
    assert start.mechanisms == "PLAIN AMQPLAIN" and start.server_properties["product"] == "RaftMQ"
    got = x.send(start_ok())
    assert got[0] == hs.LoggedIn("guest") and isinstance(sent(got)[0], spec.Connection.Tune)
    assert x.h.user == "guest" and x.h.announces("connection.blocked")
    assert not x.h.announces("consumer_cancel_notify")
    assert x.send(TUNE_OK) == [hs.Tuned(30)]  # the client's heartbeat wins
    got = x.send(method(0, spec.Connection.Open("v1")))
    assert got[0] == hs.Opened("v1", "guest") and kinds(got) == ["Opened", "Send"]
    assert isinstance(sent(got)[0], spec.Connection.OpenOk) and x.h.vhost == "v1"


def test_header_and_login_pipelined_in_one_read() -> None:
    x = Harness()
    got = x.send(HEADER + start_ok() + TUNE_OK + method(0, spec.Connection.Open("")))
    assert kinds(got) == ["Send", "LoggedIn", "Send", "Tuned", "Opened", "Send"]
    assert got[4] == hs.Opened("/", "guest")  # an empty vhost is "/"


def test_external_is_offered_and_logs_in_the_certificates_user() -> None:
    x = Harness()
    x.h.certificate_user = "alice"
    [start] = sent(x.send(HEADER))
    assert start.mechanisms == "PLAIN AMQPLAIN EXTERNAL"
    got = x.send(method(0, spec.Connection.StartOk(
        client_properties={}, mechanism="EXTERNAL", response="")))
    assert got[0] == hs.LoggedIn("alice")


def test_a_refused_vhost_closes_with_530_naming_it() -> None:
    x = Harness()
    x.login()
    x.send(TUNE_OK)
    with pytest.raises(AMQPConnectionError) as info:
        x.send(method(0, spec.Connection.Open("nope")))
    err = info.value
    assert (err.reply_code, err.class_id, err.method_id) == (NOT_ALLOWED, 10, 40)
    assert err.reply_text == "NOT_ALLOWED - access to vhost 'nope' refused for user 'guest'"


def test_a_wrong_password_is_refused_after_the_throttles_delay() -> None:
    x = Harness()
    got = x.send(HEADER + start_ok(password="wrong") + TUNE_OK)
    assert kinds(got) == ["Send", "Hold"] and got[1] == hs.Hold(0.1)
    assert x.h.held  # nothing more parsed: the tune-ok waits in the buffer
    got = x.h.resume()
    assert got == [hs.Refuse(ACCESS_REFUSED, "ACCESS_REFUSED - Login was refused using "
                             "authentication mechanism PLAIN. For details see the broker "
                             "logfile.", 10, 11)]
    assert x.h.held  # and never again: the connection is closing


def test_a_client_without_the_capability_is_not_told_why_its_socket_closes() -> None:
    """RabbitMQ sends connection.close 403 only to a client announcing
    authentication_failure_close; any other's socket is closed, nothing said."""
    x = Harness()
    x.send(HEADER)
    got = x.send(start_ok(password="wrong", capabilities={"connection.blocked": True}))
    assert kinds(got) == ["Hold"]
    assert x.h.resume() == [hs.Drop()] and x.h.held
    x = Harness()
    x.send(HEADER)
    got = x.send(method(0, spec.Connection.StartOk(
        client_properties={}, mechanism="CRAM-MD5", response="x")))
    assert got == [hs.Drop()]


@pytest.mark.parametrize(("user", "password"), [("guest", ""), ("", ""), ("", "guest")])
def test_an_empty_password_or_user_is_refused_as_a_wrong_password(user: str,
                                                                   password: str) -> None:
    """An empty password is refused even for a user whose stored hash is of "" (RabbitMQ's
    internal backend: "empty password"), after the throttle's delay as any failure."""
    x = Harness()
    x.users.update({"guest": User(hash_password("")), "": User(hash_password("guest"))})
    got = x.send(HEADER + start_ok(user=user, password=password))
    assert kinds(got) == ["Send", "Hold"]
    assert x.h.resume() == [hs.Refuse(ACCESS_REFUSED, "ACCESS_REFUSED - Login was refused "
                                      "using authentication mechanism PLAIN. For details see "
                                      "the broker logfile.", 10, 11)]


def test_a_second_attempt_waits_for_its_slot_then_is_checked() -> None:
    """After a failure from an address and user, the next attempt (another connection)
    is held until its slot, then checked."""
    failed = Harness()
    failed.send(HEADER + start_ok(password="wrong"))
    again = Harness()
    again.h = Handshake(again.proto, failed.auth, again.may_open)  # the node's one throttle
    again.h.peer = failed.h.peer
    got = again.send(HEADER + start_ok() + TUNE_OK)
    hold = got[-1]
    assert kinds(got) == ["Send", "Hold"] and isinstance(hold, hs.Hold) and 0 < hold.delay <= 0.1
    assert again.h.held
    got = again.h.resume()
    assert got[0] == hs.LoggedIn("guest") and not again.h.held
    assert again.send(b"") == [hs.Tuned(30)]  # what was pipelined behind it


def test_an_unknown_mechanism_is_refused_at_once() -> None:
    x = Harness()
    got = x.send(HEADER + method(0, spec.Connection.StartOk(
        client_properties={"capabilities": {"authentication_failure_close": True}},
        mechanism="CRAM-MD5", response="x")))
    assert got[1] == hs.Refuse(ACCESS_REFUSED, "ACCESS_REFUSED - unsupported mechanism CRAM-MD5")
    assert x.h.held


def test_a_loopback_user_from_elsewhere_is_refused() -> None:
    x = Harness(loopback_users=("guest",))
    x.h.peer = ("10.0.0.7", 5000)
    got = x.login()
    assert got[1] == hs.Refuse(ACCESS_REFUSED,
                               "ACCESS_REFUSED - user 'guest' can only connect via localhost")


def test_a_capabilities_value_that_is_not_a_table_announces_nothing() -> None:
    x = Harness()
    x.login(capabilities=["connection.blocked"])
    assert not x.h.announces("connection.blocked")


def test_close_close_ok_update_secret_and_blocked() -> None:
    x = Harness()
    x.opened()
    got = x.send(method(0, spec.Connection.UpdateSecret("new", "rotated")))
    assert isinstance(sent(got)[0], spec.Connection.UpdateSecretOk)
    assert x.h.receive(_received(spec.Connection.Blocked("client"))) == []  # ignored
    got = x.send(method(0, spec.Connection.Close(200, "bye", 0, 0)))
    assert kinds(got) == ["Send", "Closed"]
    assert isinstance(sent(got)[0], spec.Connection.CloseOk)
    y = Harness()
    y.opened()
    y.proto.close_connection(320, "CONNECTION_FORCED - broker shutdown")
    assert y.send(method(0, spec.Connection.CloseOk())) == [hs.Drop()]


def test_an_unexpected_connection_method_is_503() -> None:
    """(The protocol refuses one first, with its own 503: this is the node's backstop.)"""
    x = Harness()
    x.opened()
    with pytest.raises(AMQPConnectionError) as info:
        x.h.receive(_received(spec.Connection.Secure("challenge")))
    err = info.value
    assert err.reply_code == COMMAND_INVALID
    assert err.reply_text == "COMMAND_INVALID - unexpected Connection.Secure"


def _received(m: Any) -> Any:
    from protocol.events import MethodReceived

    return MethodReceived(0, m)
