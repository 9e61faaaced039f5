"""Access control in the machine: RabbitMQ's permission table, topic permissions,
users, vhosts and limits, checked where commands are applied."""

from __future__ import annotations

import re

import pytest

from cluster import commands as C
from cluster.effects import ChannelError, ConnectionError, Effect, QueueDeclareOk
from cluster.machine import vhost_exists
from cluster.machine.access import vhost_access
from cluster.machine.state import Permission
from tests.cluster.helpers import (
    CH,
    SHA256,
    Machine,
    bind,
    consume,
    enq,
    of_type,
    pub,
    q_declare,
    unbind,
    x_declare,
)

U = ("n1", 7, 1)  # the channel of the user "u"
CONF, WRITE, READ = "configure", "write", "read"
QUEUES = {"q", "newq", "newq2"}


def add_user(m: Machine, name: str, vhost: str = "/", perm: Permission | None = None,
             conn: tuple[str, int] = U[:2]) -> C.ChKey:
    """A user with ``perm`` on ``vhost`` and one open channel on a connection of its own."""
    m.run(C.UserPut(name, "hash", SHA256, ()))
    if perm is not None:
        m.run(C.PermissionSet(name, vhost, perm.configure, perm.write, perm.read))
    ch = (*conn, 1)
    m.run(C.ConnectionOpen(conn, vhost, name), C.ChannelOpen(ch))
    return ch


def refusal(effects: list[Effect]) -> str | None:
    """The 403's text, None if the commands were allowed; any other error fails."""
    errors = of_type(effects, ChannelError)
    if not errors:
        return None
    (e,) = errors
    assert e.reply_code == 403, e
    return e.reply_text


def only(needs: set[tuple[str, str]], minus: tuple[str, str] | None = None) -> Permission:
    """Exactly the permissions ``needs`` lists (less ``minus``), as anchored patterns."""
    def pattern(perm: str) -> str:
        names = sorted(n for p, n in needs if p == perm and (p, n) != minus)
        return "^(" + "|".join(map(re.escape, names)) + ")$" if names else "^$"
    return Permission(pattern(CONF), pattern(WRITE), pattern(READ))


@pytest.fixture
def world() -> Machine:
    """Exchanges src, dst, ae, dlx and queue q (bound to src with "k"), made by guest."""
    m = Machine()
    m.open(CH)
    m.run(x_declare(CH, "src"), x_declare(CH, "dst"), x_declare(CH, "ae", "fanout"),
          x_declare(CH, "dlx", "fanout"), q_declare(CH, "q"), bind(CH, "q", "src", "k"),
          C.ExchangeBind(CH, "dst", "src", "e", False, {}))
    return m


# (operation, command of the user's channel, the permissions it needs) — RabbitMQ's table
TABLE: list[tuple[str, C.Command, set[tuple[str, str]]]] = [
    ("exchange.declare", x_declare(U, "newx"), {(CONF, "newx")}),
    ("exchange.declare+AE", x_declare(U, "newx", arguments={"alternate-exchange": "ae"}),
     {(CONF, "newx"), (READ, "newx"), (WRITE, "ae")}),
    ("exchange.delete", C.ExchangeDelete(U, "dst", False, False), {(CONF, "dst")}),
    ("queue.declare", q_declare(U, "newq"), {(CONF, "newq")}),
    ("queue.declare+DLX", q_declare(U, "newq2", arguments={"x-dead-letter-exchange": "dlx"}),
     {(CONF, "newq2"), (READ, "newq2"), (WRITE, "dlx")}),
    ("queue.delete", C.QueueDelete(U, "q", False, False, False), {(CONF, "q")}),
    ("exchange.bind", C.ExchangeBind(U, "dst", "src", "k2", False, {}),
     {(WRITE, "dst"), (READ, "src")}),
    ("exchange.unbind", C.ExchangeUnbind(U, "dst", "src", "e", False, {}),
     {(WRITE, "dst"), (READ, "src")}),
    ("queue.bind", bind(U, "q", "src", "k2"), {(WRITE, "q"), (READ, "src")}),
    ("queue.unbind", unbind(U, "q", "src", "k"), {(WRITE, "q"), (READ, "src")}),
    ("basic.publish", pub(U, "src", "k"), {(WRITE, "src")}),
    ("basic.publish default", enq(U, "q"), {(WRITE, "amq.default")}),
    ("basic.get", C.Get(U, "q", False), {(READ, "q")}),
    ("basic.consume", consume(U, "q"), {(READ, "q")}),
    ("queue.purge", C.QueuePurge(U, "q", False), {(READ, "q")}),
    ("queue.declare passive", q_declare(U, "q", passive=True), set()),
    ("exchange.declare passive", x_declare(U, "src", passive=True), set()),
]


@pytest.mark.parametrize(("op", "cmd", "needs"), TABLE, ids=[t[0] for t in TABLE])
def test_operation_allowed_with_exactly_what_it_needs(world: Machine, op: str,
                                                      cmd: C.Command,
                                                      needs: set[tuple[str, str]]) -> None:
    add_user(world, "u", perm=only(needs))
    assert refusal(world.run(cmd)) is None


@pytest.mark.parametrize(
    ("op", "cmd", "needs", "missing"),
    [(op, cmd, needs, miss) for op, cmd, needs in TABLE for miss in sorted(needs)],
    ids=[f"{op}-no-{p}-{n}" for op, _, needs in TABLE for p, n in sorted(needs)])
def test_operation_refused_without_each_permission(world: Machine, op: str, cmd: C.Command,
                                                   needs: set[tuple[str, str]],
                                                   missing: tuple[str, str]) -> None:
    add_user(world, "u", perm=only(needs, minus=missing))
    rtype = "queue" if missing[1] in QUEUES else "exchange"
    assert refusal(world.run(cmd)) == (f"ACCESS_REFUSED - access to {rtype} '{missing[1]}' "
                                       "in vhost '/' refused for user 'u'")


def test_no_permission_entry_refuses_everything_but_passive(world: Machine) -> None:
    add_user(world, "u")  # a user without permissions on "/" (the node refuses its login)
    assert refusal(world.run(q_declare(U, "q", passive=True))) is None
    assert refusal(world.run(enq(U, "q"))) is not None


def test_patterns_match_anywhere_and_a_bad_one_matches_nothing(world: Machine) -> None:
    add_user(world, "u", perm=Permission("ew", "", "("))  # "(" does not compile
    assert refusal(world.run(q_declare(U, "newq"))) is None  # "ew" inside "newq"
    assert refusal(world.run(C.ChannelOpen((*U[:2], 2)), consume((*U[:2], 2), "q"))) \
        is not None  # read "(": refused, no exception
    assert refusal(world.run(C.ChannelOpen((*U[:2], 3)), enq((*U[:2], 3), "q"))) is None


def test_permission_change_applies_at_the_next_operation(world: Machine) -> None:
    add_user(world, "u", perm=Permission(".*", ".*", ".*"))
    assert refusal(world.run(enq(U, "q"))) is None  # allowed, and cached on the channel
    world.run(C.PermissionSet("u", "/", ".*", "^$", ".*"))
    assert refusal(world.run(enq(U, "q"))) is not None
    u2 = (*U[:2], 2)
    world.run(C.ChannelOpen(u2), C.PermissionClear("u", "/"))
    assert refusal(world.run(C.Get(u2, "q", True))) is not None


def test_topic_permissions_restrict_routing_and_binding_keys(world: Machine) -> None:
    world.run(x_declare(CH, "t", "topic"))
    user = "a.b"  # {username} is escaped: its dot is no wildcard
    ch = add_user(world, user, perm=Permission(".*", ".*", ".*"))
    world.run(C.TopicPermissionSet(user, "/", "t", "^{username}\\.", "^{vhost}$"))
    assert refusal(world.run(pub(ch, "t", "a.b.x"))) is None
    assert refusal(world.run(pub(ch, "t", "axb.x"))) == (
        "ACCESS_REFUSED - write access to topic 'axb.x' in exchange 't' in vhost '/' "
        "refused for user 'a.b'")
    ch2 = (*ch[:2], 2)
    world.run(C.ChannelOpen(ch2))
    assert refusal(world.run(bind(ch2, "q", "t", "/"))) is None
    assert refusal(world.run(bind(ch2, "q", "t", "other"))) is not None
    ch3 = (*ch[:2], 3)
    world.run(C.ChannelOpen(ch3))
    assert refusal(world.run(pub(ch3, "src", "anything"))) is None  # not a topic exchange
    world.run(C.TopicPermissionClear(user, "/", "t"))
    assert refusal(world.run(pub(ch3, "t", "anything"))) is None


def test_vhosts_keep_names_apart(world: Machine) -> None:
    world.run(C.VHostPut("shop"))
    ch = add_user(world, "u", "shop", Permission(".*", ".*", ".*"))
    ok = of_type(world.run(q_declare(ch, "q")), QueueDeclareOk)
    assert ok and ok[0].message_count == 0  # not guest's "q" in "/", which is untouched
    world.run(enq(ch, "q", b"shop"))
    assert [e.message_count for e in of_type(world.run(q_declare(CH, "q", passive=True)),
                                             QueueDeclareOk)] == [0]
    assert vhost_access(world.state, "u", "shop") and not vhost_access(world.state, "u", "/")


def test_deleting_a_vhost_closes_its_connections_and_drops_its_contents(
        world: Machine) -> None:
    world.run(C.VHostPut("shop"))
    ch = add_user(world, "u", "shop", Permission(".*", ".*", ".*"))
    world.run(q_declare(ch, "orders"))
    out = world.run(C.VHostDelete("shop"))
    (closed,) = of_type(out, ConnectionError)
    assert (closed.conn, closed.reply_code, closed.reply_text) == (
        U[:2], 320, "CONNECTION_FORCED - vhost 'shop' is deleted")
    assert not vhost_exists(world.state, "shop") and U[:2] not in world.state.conns
    assert ("u", "shop") not in world.state.permissions
    assert CH[:2] in world.state.conns  # guest's connection on "/" stays
    world.run(C.VHostPut("shop"))  # a new vhost of that name starts empty, no permissions
    assert not vhost_access(world.state, "u", "shop")


def test_deleting_a_user_closes_its_connections(world: Machine) -> None:
    add_user(world, "u", perm=Permission(".*", ".*", ".*"))
    world.run(C.TopicPermissionSet("u", "/", "t", ".*", ".*"))
    (closed,) = of_type(world.run(C.UserDelete("u")), ConnectionError)
    assert (closed.conn, closed.reply_code, closed.reply_text) == (
        U[:2], 320, "CONNECTION_FORCED - user 'u' is deleted")
    assert "u" not in world.state.users and U[:2] not in world.state.conns
    assert not any(k[0] == "u" for k in world.state.permissions)
    assert not any(k[0] == "u" for k in world.state.topic_permissions)
    assert CH[:2] in world.state.conns
    assert world.run(C.UserDelete("u")) == []  # deleting again changes nothing


def test_permissions_need_an_existing_user_and_vhost(world: Machine) -> None:
    world.run(C.PermissionSet("nobody", "/", ".*", ".*", ".*"),
              C.PermissionSet("guest", "nowhere", ".*", ".*", ".*"))
    assert ("nobody", "/") not in world.state.permissions
    assert ("guest", "nowhere") not in world.state.permissions


def test_connection_to_an_unknown_vhost_is_not_recorded() -> None:
    m = Machine()
    m.run(C.ConnectionOpen(("n1", 9), "nowhere", "guest"))
    assert ("n1", 9) not in m.state.conns


def test_bootstrap_applies_once() -> None:
    m = Machine()  # guest_state: Bootstrap("guest") applied
    m.run(C.Bootstrap("admin", "hash", SHA256))
    assert set(m.state.users) == {"guest"}
    assert m.state.users["guest"].tags == ("administrator",)
    assert m.state.permissions[("guest", "/")] == Permission(".*", ".*", ".*")


def test_max_queues_limit(world: Machine) -> None:
    world.run(C.VHostPut("small"), C.LimitsSet("vhost", "small", {"max-queues": 1}))
    ch = add_user(world, "u", "small", Permission(".*", ".*", ".*"))
    assert of_type(world.run(q_declare(ch, "one")), QueueDeclareOk)
    (e,) = of_type(world.run(q_declare(ch, "two")), ChannelError)
    assert (e.reply_code, e.reply_text) == (
        406, "PRECONDITION_FAILED - cannot declare queue 'two': queue limit in vhost "
             "'small' (1) is reached")
    world.run(C.LimitsSet("vhost", "small", {"max-queues": -1}))  # negative: removed
    ch2 = (*ch[:2], 2)
    world.run(C.ChannelOpen(ch2))
    assert of_type(world.run(q_declare(ch2, "two")), QueueDeclareOk)


def test_limits_ignore_values_that_are_not_integers(world: Machine) -> None:
    world.run(C.LimitsSet("user", "guest", {"max-connections": "10", "max-channels": True,
                                            "x": 3}))
    assert world.state.users["guest"].limits == {"x": 3}
