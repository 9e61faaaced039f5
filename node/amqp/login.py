"""Logins: connection.start-ok's credentials checked against the replicated user
table (salted hashes, node/amqp/passwords.py), through the per-address-and-user
throttle (node/amqp/auth.py), logged and counted. PLAIN and AMQPLAIN check a
password (an empty one, or an empty user name, is refused as RabbitMQ's internal backend
refuses it); EXTERNAL (on a TLS connection whose client certificate was verified) logs in
as the certificate's common name, as RabbitMQ's rabbitmq_auth_mechanism_ssl does.

:class:`Authenticator` decides; the connection only waits when told to and then
sends ``connection.tune`` or the refusal. Two steps because of the throttle: an
attempt may first have to wait for its slot (:attr:`Attempt.wait`), and a
refusal is held back before it is sent (:attr:`Refused.delay`).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node.amqp.auth import LoginThrottle, RateLimitedLog, credentials
from node.amqp.passwords import verify
from protocol.constants import ACCESS_REFUSED


@dataclass(frozen=True)
class Attempt:
    key: str  # throttle key: peer address and user
    user: str
    password: str
    mechanism: str
    wait: float  # seconds before the password may be checked


@dataclass(frozen=True)
class Accepted:
    user: str


@dataclass(frozen=True)
class Refused:
    text: str
    delay: float = 0.0  # hold the refusal back this long
    code: int = ACCESS_REFUSED


class Counter:
    auth_failures = 0


class Authenticator:
    def __init__(self, users: Callable[[str], Any], loopback_users: tuple[str, ...],
                 counters: Any = None, throttle: LoginThrottle | None = None,
                 logger: logging.Logger | None = None) -> None:
        """``users(name)``: the user record (password_hash, hashing) or None."""
        self.users = users
        self.loopback_users = loopback_users
        self.counters = counters if counters is not None else Counter()
        self.throttle = throttle or LoginThrottle()
        self.log = RateLimitedLog(logger or logging.getLogger("raftmq.auth"))

    def start(self, peer: tuple[Any, ...] | None, mechanism: str, response: Any,
              certificate_user: str | None = None) -> Attempt | Refused | Accepted:
        """``certificate_user``: the verified client certificate's common name (TLS)."""
        if mechanism == "EXTERNAL":
            return self._external(peer, certificate_user)
        user, password = credentials(mechanism, response)
        if user is None:
            return Refused(f"ACCESS_REFUSED - unsupported mechanism {mechanism}")
        key = f"{_ip(peer)} {user}"
        wait = self.throttle.wait(key, time.monotonic())
        if wait is None:
            # Too many attempts queued for this address and user: refused unchecked.
            return self._refuse(key, user, peer, mechanism, "too many failed logins; not checked")
        return Attempt(key, user, password, mechanism, wait)

    def check(self, attempt: Attempt, peer: tuple[Any, ...] | None) -> Accepted | Refused:
        if not attempt.password or not attempt.user:
            # RabbitMQ's internal backend refuses an empty password whatever is stored (a
            # user created with "" as its password cannot log in with it), as a failure;
            # and no user has an empty name there (none may log in as one here)
            return self._refuse(attempt.key, attempt.user, peer, attempt.mechanism,
                                "empty password" if attempt.user else "empty user name")
        record = self.users(attempt.user)
        if record is None or not verify(attempt.password, record.password_hash, record.hashing):
            return self._refuse(attempt.key, attempt.user, peer, attempt.mechanism,
                                "unknown user" if record is None else "invalid credentials")
        self.throttle.succeeded(attempt.key)
        if attempt.user in self.loopback_users and not is_loopback(peer):
            return Refused(f"ACCESS_REFUSED - user '{attempt.user}' can only connect via "
                           "localhost")
        return Accepted(attempt.user)

    def _external(self, peer: tuple[Any, ...] | None,
                  certificate_user: str | None) -> Accepted | Refused:
        if certificate_user is None:
            self.counters.auth_failures += 1
            self.log.warning("login refused: EXTERNAL from %s without a verified client "
                             "certificate", _ip(peer))
            return Refused("ACCESS_REFUSED - EXTERNAL login needs a verified TLS client "
                           "certificate")
        if self.users(certificate_user) is None:
            return self._refuse(f"{_ip(peer)} {certificate_user}", certificate_user, peer,
                                "EXTERNAL", "unknown user (certificate common name)")
        return Accepted(certificate_user)

    def _refuse(self, key: str, user: str, peer: tuple[Any, ...] | None, mechanism: str,
                why: str) -> Refused:
        self.counters.auth_failures += 1
        delay = self.throttle.failed(key, time.monotonic())
        self.log.warning("login refused: user %r from %s, mechanism %s: %s (%d in a row)",
                         user, _ip(peer), mechanism, why, self.throttle.failures(key))
        return Refused(f"ACCESS_REFUSED - Login was refused using authentication mechanism "
                       f"{mechanism}. For details see the broker logfile.", delay)


def _ip(peer: tuple[Any, ...] | None) -> str:
    return str(peer[0]) if peer else ""


def is_loopback(peer: tuple[Any, ...] | None) -> bool:
    if not peer:
        return True  # unix socket / unknown: treat as local
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except ValueError:
        return False
