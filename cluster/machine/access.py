"""Who may do what: users, virtual hosts, permissions and limits, as RabbitMQ has them.

Permissions are checked here, in the machine, when a command is applied: in log
order, on every replica alike, against the permissions as they are at that
point. So a change applies to open channels at their next operation, and no
node can act on permissions older than the command's place in the log.

RabbitMQ's rules (its "access-control" guide), by AMQP method:

=================================  ===================  ====================  ===========
operation                          configure            write                 read
=================================  ===================  ====================  ===========
exchange.declare (passive=false)   exchange
exchange.declare with an AE        exchange             exchange (the AE)     exchange
exchange.delete                    exchange
queue.declare (passive=false)      queue
queue.declare with a DLX           queue                exchange (the DLX)    queue
queue.delete                       queue
exchange.bind / unbind                                  exchange (dest.)      exchange (source)
queue.bind / unbind                                     queue                 exchange
basic.publish                                           exchange
basic.get / consume, queue.purge                                              queue
=================================  ===================  ====================  ===========

Passive declares need nothing. The default exchange is the resource
``amq.default``. Patterns are regular expressions matched anywhere in the name
(Erlang's ``re:run``), so ``.*`` allows everything and ``^$`` nothing but "".
Topic permissions (per user, vhost and topic exchange) further restrict the
routing key of a publish (write) and the binding key of a queue.bind (read); an
exchange with none is unrestricted. Their patterns may use ``{username}`` and
``{vhost}``.
"""

from __future__ import annotations

import re

from cluster import commands as C
from cluster.effects import ConnectionError, Effect
from cluster.machine.contain import Failed, note, report
from cluster.machine.errors import ACCESS_REFUSED, CONNECTION_FORCED, error, rs
from cluster.machine.lifecycle import close_connection
from cluster.machine.names import name_problem
from cluster.machine.queues import delete_queue
from cluster.machine.state import Channel, Exchange, Permission, State, User, new_vhost

CONFIGURE, WRITE, READ = "configure", "write", "read"
ALL = Permission(".*", ".*", ".*")
_CACHE_MAX = 1024  # decisions cached per channel

_patterns: dict[str, re.Pattern[str] | None] = {}


def _compiled(pattern: str) -> re.Pattern[str] | None:
    """The compiled pattern; None (matches nothing) if it does not compile (the API
    refuses such patterns; an older log could still hold one)."""
    rx = _patterns.get(pattern, False)
    if rx is False:
        try:
            rx = re.compile(pattern)
        except (re.error, RecursionError, OverflowError):
            rx = None
        if len(_patterns) >= 4096:
            _patterns.clear()
        _patterns[pattern] = rx
    return rx  # type: ignore[return-value]


def allowed(pattern: str, name: str) -> bool:
    rx = _compiled(pattern)
    return rx is not None and rx.search(name) is not None


def resource(rtype: str, name: str) -> str:
    """The permission resource: the default exchange is ``amq.default``."""
    return "amq.default" if rtype == "exchange" and name == "" else name


def check(state: State, ch: Channel, perm: str, rtype: str, name: str,
          method: tuple[int, int]) -> None:
    """403 ACCESS_REFUSED on the channel unless its user has ``perm`` on the resource."""
    if ch.system:
        return
    if ch.acl_version != state.acl_version:
        ch.acl.clear()
        ch.acl_version = state.acl_version
    name = resource(rtype, name)
    key = (perm, rtype, name)
    ok = ch.acl.get(key)
    if ok is None:
        p = state.permissions.get((ch.user, ch.vhost))
        ok = p is not None and allowed(getattr(p, perm), name)
        if len(ch.acl) >= _CACHE_MAX:
            ch.acl.clear()
        ch.acl[key] = ok
    if not ok:
        raise error(ACCESS_REFUSED, f"access to {rtype} '{name}' in vhost '{ch.vhost}' "
                                    f"refused for user '{ch.user}'", method)


def check_topic(state: State, ch: Channel, perm: str, ex: Exchange, routing_key: str,
                method: tuple[int, int]) -> None:
    """Topic permissions: only for topic exchanges, only where some are set."""
    if ex.type != "topic" or not state.topic_permissions or ch.system:
        return
    tp = state.topic_permissions.get((ch.user, ch.vhost, ex.name))
    if tp is None:
        return
    pattern = (tp[0] if perm == WRITE else tp[1])
    pattern = pattern.replace("{username}", re.escape(ch.user)).replace(
        "{vhost}", re.escape(ch.vhost))
    if not allowed(pattern, routing_key):
        raise error(ACCESS_REFUSED, f"{perm} access to topic '{routing_key}' in exchange "
                                    f"'{ex.name}' in vhost '{ch.vhost}' refused for user "
                                    f"'{ch.user}'", method)


def vhost_access(state: State, user: str, vhost: str) -> bool:
    """May ``user`` open a connection to ``vhost`` (RabbitMQ: any permission entry)?"""
    return vhost in state.vhosts and (user, vhost) in state.permissions


# --- commands: users, vhosts, permissions, limits ----------------------------------------


def _changed(state: State) -> None:
    state.acl_version += 1


def bootstrap(state: State, cmd: C.Bootstrap, out: list[Effect]) -> None:
    if state.bootstrapped:
        return
    state.bootstrapped = True
    if cmd.user not in state.users:
        state.users[cmd.user] = User(cmd.user, cmd.password_hash, cmd.hashing,
                                     ("administrator",))
    if "/" in state.vhosts:
        state.permissions.setdefault((cmd.user, "/"), ALL)
    _changed(state)


def user_put(state: State, cmd: C.UserPut, out: list[Effect]) -> None:
    old = state.users.get(cmd.name)
    state.users[cmd.name] = User(cmd.name, cmd.password_hash, cmd.hashing, tuple(cmd.tags),
                                 dict(old.limits) if old is not None else {})
    _changed(state)


def user_delete(state: State, cmd: C.UserDelete, out: list[Effect]) -> None:
    """The user's connections are closed with 320, as RabbitMQ's connection tracking
    does, then the user and every permission it had go."""
    if state.users.pop(cmd.name, None) is None:
        return
    for conn in [c for c in state.conns.values() if c.user == cmd.name]:
        out.append(ConnectionError(conn.key, CONNECTION_FORCED,
                                   f"CONNECTION_FORCED - user '{cmd.name}' is deleted", 0, 0))
        close_connection(state, conn, out)
    for key in [k for k in state.permissions if k[0] == cmd.name]:
        del state.permissions[key]
    for tkey in [k for k in state.topic_permissions if k[0] == cmd.name]:
        del state.topic_permissions[tkey]
    _changed(state)


def vhost_put(state: State, cmd: C.VHostPut, out: list[Effect]) -> None:
    if name_problem(cmd.name) is not None:
        return  # a vhost name is a short string (connection.open): the API refuses it first
    vh = state.vhosts.get(cmd.name)
    if vh is None:
        vh = state.vhosts[cmd.name] = new_vhost(cmd.name)
    vh.description = cmd.description
    vh.tags = tuple(cmd.tags)


def vhost_delete(state: State, cmd: C.VHostDelete, out: list[Effect]) -> None:
    """Its connections are closed with 320 (as RabbitMQ does), then its queues (their
    consumers cancelled) and exchanges go, and every permission on it."""
    vh = state.vhosts.get(cmd.name)
    if vh is None:
        return
    for conn in [c for c in state.conns.values() if c.vhost == cmd.name]:
        out.append(ConnectionError(conn.key, CONNECTION_FORCED,
                                   f"CONNECTION_FORCED - vhost '{cmd.name}' is deleted", 0, 0))
        close_connection(state, conn, out)
    failed: Failed | None = None
    for q in list(vh.queues.values()):
        try:
            delete_queue(state, q, out)
        except Exception as exc:  # the vhost goes all the same
            failed = note(failed, rs("queue", q.name, q.vhost), exc)
    report(state, failed, "deleting a vhost", out)
    del state.vhosts[cmd.name]
    for key in [k for k in state.permissions if k[1] == cmd.name]:
        del state.permissions[key]
    for tkey in [k for k in state.topic_permissions if k[1] == cmd.name]:
        del state.topic_permissions[tkey]
    _changed(state)


def permission_set(state: State, cmd: C.PermissionSet, out: list[Effect]) -> None:
    if cmd.user in state.users and cmd.vhost in state.vhosts:
        state.permissions[(cmd.user, cmd.vhost)] = Permission(cmd.configure, cmd.write, cmd.read)
        _changed(state)


def permission_clear(state: State, cmd: C.PermissionClear, out: list[Effect]) -> None:
    if state.permissions.pop((cmd.user, cmd.vhost), None) is not None:
        _changed(state)


def topic_permission_set(state: State, cmd: C.TopicPermissionSet, out: list[Effect]) -> None:
    if cmd.user in state.users and cmd.vhost in state.vhosts:
        state.topic_permissions[(cmd.user, cmd.vhost, cmd.exchange)] = (cmd.write, cmd.read)
        _changed(state)


def topic_permission_clear(state: State, cmd: C.TopicPermissionClear,
                           out: list[Effect]) -> None:
    if state.topic_permissions.pop((cmd.user, cmd.vhost, cmd.exchange), None) is not None:
        _changed(state)


def limits_set(state: State, cmd: C.LimitsSet, out: list[Effect]) -> None:
    target = (state.vhosts.get(cmd.name) if cmd.kind == "vhost"
              else state.users.get(cmd.name) if cmd.kind == "user" else None)
    if target is None:
        return
    for key, value in cmd.limits.items():
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        if value < 0:
            target.limits.pop(key, None)
        else:
            target.limits[key] = value
