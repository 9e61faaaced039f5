"""Commands: the only way broker state changes.

Every command is a small frozen dataclass with a stable numeric ``TAG``. A node
groups everything it produces in one event-loop turn into a :class:`Batch`,
which travels through the Raft log as one msgpack ``bytes`` object. Tags and
field order are part of the on-disk format: append new commands and new
trailing fields, never renumber or reorder.

Identifiers used throughout:

* ``NodeId`` – a node's configured id (``str``).
* ``ConnKey`` – ``(node_id, connection_number)``; unique within one incarnation
  of a node (a ``NodeUp`` for a new incarnation clears everything of the old).
* ``ChKey`` – ``(node_id, connection_number, channel_number)``.
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, TypeVar, dataclass_transform

import msgpack

NodeId = str
ConnKey = tuple[str, int]
ChKey = tuple[str, int, int]

FORMAT_VERSION = 1  # of the batch envelope (encode_batch); never changed so far

# Command levels, for upgrades with members of two releases running together. A command
# class has the level of the release that introduced it (``SINCE``); a member of an older
# release leaves a command it does not know out of the batch (an unknown tag), so its
# replica would differ. A node therefore proposes a command above level 1 only once the
# cluster's enabled level (``State.level``) reaches it: every member announced (Supports)
# that it understands that level, and the leader recorded it (EnableLevel).
#   1: every command of release 0.1.0 (git 7acbfcb, before levels existed)
#   2: Supports, EnableLevel (both proposable at any level: a member that skips them only
#      misses level bookkeeping that it does not use), NodeDraining
#   3: no new command; expiry visits only the queues that are due, through a deadline
#      heap (cluster/machine/expiry.py): release 0.2.0 visits every timed queue, and the
#      order can differ, so the heap waits until every member applies it
#   4: the features of issue 23; each new command has SINCE = 4 and each new behaviour of
#      an existing command applies only from ``State.level >= 4``: ReplyConsume (45),
#      ReplyCancel (46), SetPolicy (48), ClearPolicy (49), ShovelSet / ShovelClear /
#      ShovelStatus (70-72). Tags 41-44, 47 and 63-69 are free (50-62: Bootstrap...).
LEVEL = 4

Arguments = dict[str, Any]


class Command:
    """Base of all commands; subclasses are frozen slotted dataclasses."""

    TAG: ClassVar[int]
    SINCE: ClassVar[int] = 1  # the command level that introduced it (see LEVEL)
    __slots__ = ()


_REGISTRY: dict[int, type[Command]] = {}


_C = TypeVar("_C", bound=Command)


@dataclass_transform(frozen_default=True)
def _command(tag: int) -> Callable[[type[_C]], type[_C]]:
    def wrap(cls: type[_C]) -> type[_C]:
        cls = dataclass(frozen=True, slots=True)(cls)
        cls.TAG = tag
        assert tag not in _REGISTRY, tag
        _REGISTRY[tag] = cls
        cls._FIELDS = tuple(f.name for f in fields(cls))  # type: ignore[attr-defined,arg-type]
        _fast_init(cls)
        cls._ENCODE = staticmethod(_encoder(cls))  # type: ignore[attr-defined]
        return cls

    return wrap


def _fast_init(cls: type) -> None:
    """Replace the frozen dataclass ``__init__`` (``object.__setattr__`` per field, ~0.8 µs
    for six) by one that stores through the slots' own descriptors (~0.45 µs): same
    signature and defaults, instances still frozen, equal and hashed as before. Two to
    four commands are built per message (the session's, each replica's decoded one)."""
    params, body, env = [], [], {}
    for f in fields(cls):
        env[f"_set_{f.name}"] = getattr(cls, f.name).__set__  # (the slot's member)
        if f.default is not MISSING:
            env[f"_dflt_{f.name}"] = f.default
            params.append(f"{f.name}=_dflt_{f.name}")
        else:
            assert f.default_factory is MISSING, (cls, f.name)
            params.append(f.name)
        body.append(f"    _set_{f.name}(self, {f.name})\n")
    if not body:
        return
    exec(f"def __init__(self, {', '.join(params)}):\n{''.join(body)}", env)  # noqa: S102
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[misc]


def _encoder(cls: type[Command]) -> Callable[[Any], list[Any]]:
    """``lambda cmd: [TAG, cmd.field, ...]``: encode_command's list, without a generator
    and a getattr per field."""
    names = "".join(f", c.{name}" for name in cls._FIELDS)  # type: ignore[attr-defined]
    code: Callable[[Any], list[Any]] = eval(f"lambda c: [{cls.TAG}{names}]")  # noqa: S307
    return code


# --- node and connection lifecycle -------------------------------------------------


@_command(1)
class NodeUp(Command):
    """A node (re)started with a new incarnation: forget its previous life.
    ``raft_address`` lets the leader match Raft peers to node ids;
    ``http_address`` is where the node serves /metrics and /api (for
    ``raftmq cluster status``)."""

    node: str
    incarnation: int
    raft_address: str = ""
    http_address: str = ""


@_command(2)
class NodeDown(Command):
    """The leader saw ``node`` (in ``incarnation``) go away."""

    node: str
    incarnation: int


@_command(3)
class ConnectionOpen(Command):
    conn: ConnKey
    vhost: str
    user: str
    # The management API's own connection for a definitions import, which RabbitMQ does
    # regardless of the importing user's permissions (only the node proposes this).
    system: bool = False


@_command(4)
class ConnectionClose(Command):
    conn: ConnKey


@_command(5)
class ChannelOpen(Command):
    ch: ChKey


@_command(6)
class ChannelClose(Command):
    ch: ChKey


@_command(7)
class ConnectionFlow(Command):
    """The node's socket to this client stopped (``active`` False) or resumed taking
    what is written to it: deliveries to the connection's channels wait meanwhile,
    the messages staying in their queues (node/amqp/flow.py)."""

    conn: ConnKey
    active: bool


@_command(8)
class AlarmSet(Command):
    """A node's memory or disk alarm (``resource``) went on or off (node/services/alarms.py).
    While any node has one, publishers are blocked cluster-wide. Ignored unless it is
    about the node's current life; a node recorded down or up again has none."""

    node: str
    incarnation: int
    resource: str
    active: bool


# --- topology ------------------------------------------------------------------------


@_command(10)
class ExchangeDeclare(Command):
    ch: ChKey
    exchange: str
    type: str
    passive: bool
    durable: bool
    auto_delete: bool
    internal: bool
    nowait: bool
    arguments: Arguments


@_command(11)
class ExchangeDelete(Command):
    ch: ChKey
    exchange: str
    if_unused: bool
    nowait: bool


@_command(12)
class ExchangeBind(Command):
    ch: ChKey
    destination: str
    source: str
    routing_key: str
    nowait: bool
    arguments: Arguments


@_command(13)
class ExchangeUnbind(Command):
    ch: ChKey
    destination: str
    source: str
    routing_key: str
    nowait: bool
    arguments: Arguments


@_command(20)
class QueueDeclare(Command):
    ch: ChKey
    queue: str  # "" asks the server for a name
    passive: bool
    durable: bool
    exclusive: bool
    auto_delete: bool
    nowait: bool
    arguments: Arguments


@_command(21)
class QueueBind(Command):
    ch: ChKey
    queue: str
    exchange: str
    routing_key: str
    nowait: bool
    arguments: Arguments


@_command(22)
class QueueUnbind(Command):
    ch: ChKey
    queue: str
    exchange: str
    routing_key: str
    arguments: Arguments


@_command(23)
class QueuePurge(Command):
    ch: ChKey
    queue: str
    nowait: bool


@_command(24)
class QueueDelete(Command):
    ch: ChKey
    queue: str
    if_unused: bool
    if_empty: bool
    nowait: bool


# --- messages ------------------------------------------------------------------------


@_command(30)
class Publish(Command):
    """basic.publish with its content. ``properties`` is the content header's
    property flags + property list exactly as received (wire form)."""

    ch: ChKey
    exchange: str
    routing_key: str
    mandatory: bool
    properties: bytes
    body: bytes
    confirm_seq: int  # 0: channel not in confirm mode


@_command(31)
class Consume(Command):
    ch: ChKey
    queue: str
    consumer_tag: str  # "" asks the server for a tag
    no_ack: bool
    exclusive: bool
    nowait: bool
    arguments: Arguments
    max_consumers: int = 0  # the node's --max-consumers-per-channel (0: no limit)


@_command(32)
class Cancel(Command):
    ch: ChKey
    consumer_tag: str
    nowait: bool


@_command(33)
class Get(Command):
    ch: ChKey
    queue: str
    no_ack: bool


@_command(34)
class Ack(Command):
    ch: ChKey
    delivery_tag: int
    multiple: bool


@_command(35)
class Nack(Command):
    """basic.nack, and basic.reject (``multiple=False, reject=True``)."""

    ch: ChKey
    delivery_tag: int
    multiple: bool
    requeue: bool
    reject: bool = False  # only names the method (60,90 vs 60,120) in an error reply


@_command(36)
class Recover(Command):
    """basic.recover(requeue=True): every unacked message of the channel goes back.
    ``nowait``: basic.recover-async, which gets no reply."""

    ch: ChKey
    nowait: bool = False


@_command(37)
class Qos(Command):
    ch: ChKey
    prefetch_count: int
    global_: bool


@_command(38)
class Flow(Command):
    ch: ChKey
    active: bool


@_command(39)
class Sent(Command):
    """The node wrote ``count`` more deliveries of the no-ack consumer ``consumer_tag`` to
    its client's socket: that much of the consumer's window is free again."""

    ch: ChKey
    consumer_tag: str
    count: int


# --- users, virtual hosts, permissions, limits (the management API proposes these) ----


@_command(50)
class Bootstrap(Command):
    """First start of a new cluster: create the default user (administrator, every
    permission on "/"). Applied once: every node proposes it, the first one wins."""

    user: str
    password_hash: str
    hashing: str


@_command(51)
class UserPut(Command):
    """Create or replace a user; ``password_hash`` as RabbitMQ stores it, "" for none."""

    name: str
    password_hash: str
    hashing: str
    tags: tuple[str, ...]


@_command(52)
class UserDelete(Command):
    name: str


@_command(53)
class VHostPut(Command):
    name: str
    description: str = ""
    tags: tuple[str, ...] = ()


@_command(54)
class VHostDelete(Command):
    """Delete a virtual host with its queues and exchanges; its connections are
    closed with 320."""

    name: str


@_command(55)
class PermissionSet(Command):
    user: str
    vhost: str
    configure: str
    write: str
    read: str


@_command(56)
class PermissionClear(Command):
    user: str
    vhost: str


@_command(57)
class TopicPermissionSet(Command):
    user: str
    vhost: str
    exchange: str
    write: str
    read: str


@_command(58)
class TopicPermissionClear(Command):
    user: str
    vhost: str
    exchange: str


@_command(59)
class LimitsSet(Command):
    """RabbitMQ's vhost limits (``kind`` "vhost": max-connections, max-queues) or user
    limits ("user": max-connections, max-channels); a negative value removes one."""

    kind: str
    name: str
    limits: Arguments


# --- upgrades (command levels) --------------------------------------------------------


@_command(60)
class Supports(Command):
    """The member at ``raft_address`` (node ``node``) understands commands up to ``level``:
    proposed with every NodeUp, and again if a snapshot from an older leader lost it."""

    node: str
    raft_address: str
    level: int


@_command(61)
class EnableLevel(Command):
    """The leader saw every member announce ``level``: commands up to it may be proposed."""

    level: int


@_command(62)
class NodeDraining(Command):
    """``node`` (in ``incarnation``) is being drained (raftmq node drain): every member's
    API shows it until its next life."""

    SINCE = 2
    node: str
    incarnation: int


# --- policies (cluster/machine/policies.py) ---------------------------------------------


@_command(48)
class SetPolicy(Command):
    """Create or replace the policy (``operator``: operator policy) ``name`` of ``vhost``,
    as RabbitMQ's set_policy: queues / exchanges whose name ``pattern`` matches, of the kind
    ``apply_to`` names (queues, exchanges, all), take the highest-``priority`` one's
    ``definition``. Checked by cluster.machine.policies.problem at the edge and again when
    applied (a command that does not pass is ignored)."""

    SINCE = 4
    vhost: str
    name: str
    pattern: str
    apply_to: str
    priority: Any
    definition: Arguments
    operator: bool = False


@_command(49)
class ClearPolicy(Command):
    SINCE = 4
    vhost: str
    name: str
    operator: bool = False


# --- shovels (cluster/machine/shovels.py) ----------------------------------------------


@_command(70)
class ShovelSet(Command):
    """Create or replace the dynamic shovel ``name`` of ``vhost``: ``value`` is RabbitMQ's
    shovel parameter value (src-uri, src-queue, dest-uri, ...), checked by
    cluster.machine.shovels.definition."""

    SINCE = 4
    vhost: str
    name: str
    value: Arguments


@_command(71)
class ShovelClear(Command):
    SINCE = 4
    vhost: str
    name: str


@_command(72)
class ShovelStatus(Command):
    """The node running shovel ``name`` reports it: ``state`` starting / running /
    terminated (``reason``), ``moved`` messages so far; ``state`` "restart" asks the
    runner to restart it (DELETE /api/shovels/vhost/{vhost}/{name}/restart)."""

    SINCE = 4
    vhost: str
    name: str
    node: str
    state: str
    reason: str = ""
    moved: int = 0


# --- direct reply-to (cluster/machine/reply_to.py) -----------------------------------


@_command(45)
class ReplyConsume(Command):
    """basic.consume of ``amq.rabbitmq.reply-to`` on ``ch``: its reply consumer, known to
    the machine by ``digest``, the SHA-256 of the random key in its token (the key itself
    never leaves the channel's node)."""

    SINCE = 4
    ch: ChKey
    consumer_tag: str
    digest: bytes
    no_ack: bool = True
    nowait: bool = False


@_command(46)
class ReplyCancel(Command):
    """basic.cancel of the reply consumer ``consumer_tag`` on ``ch``."""

    SINCE = 4
    ch: ChKey
    consumer_tag: str
    nowait: bool = False


# --- time ----------------------------------------------------------------------------


@_command(40)
class Tick(Command):
    """Nothing but the passing of time: the batch's timestamp advances the machine's
    clock, and whatever is due by then expires (message TTLs at queue heads, queues
    unused for their x-expires). The leader proposes one at
    ``cluster.machine.next_deadline(state)``."""


# --- batches -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Batch:
    """One Raft entry: everything one node proposed in one event-loop turn.

    ``(node, incarnation, seq)`` is the idempotency key: the machine applies a
    given key once, however often it is resubmitted. ``timestamp_ms`` is the
    proposer's wall clock; the machine only ever moves its clock forward.
    ``after`` is the seq of the node's previous batch, which must have been applied
    before this one (0: none): a forwarded batch can be lost while a later one
    arrives, and the machine refuses the later one rather than reorder a channel.
    """

    node: str
    incarnation: int
    seq: int
    timestamp_ms: int
    commands: tuple[Command, ...]
    after: int = 0
    # Commands of the entry that could not be decoded (an unknown tag, wrong fields)
    # and were left out; the same on every replica.
    skipped: int = 0


# Field tables may carry values msgpack cannot encode natively.
_EXT_DECIMAL = 1
_EXT_DATETIME = 2


def _default(obj: Any) -> Any:
    if isinstance(obj, decimal.Decimal):
        return msgpack.ExtType(_EXT_DECIMAL, str(obj).encode())
    if isinstance(obj, datetime.datetime):
        return msgpack.ExtType(_EXT_DATETIME, str(int(obj.timestamp())).encode())
    raise TypeError(f"cannot encode {type(obj).__name__} in a command")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_DECIMAL:
        return decimal.Decimal(data.decode())
    if code == _EXT_DATETIME:
        return datetime.datetime.fromtimestamp(int(data), tz=datetime.UTC)
    return msgpack.ExtType(code, data)


def encode_command(cmd: Command) -> list[Any]:
    return cmd._ENCODE(cmd)  # type: ignore[attr-defined]


class Unencodable(ValueError):
    """A command that cannot be written into a Raft entry (an integer beyond 64 bits, a
    lone surrogate in a string, a type msgpack does not know)."""


def check_encodable(cmd: Command) -> None:
    """Raise :class:`Unencodable` (with the reason) if ``cmd`` cannot be encoded: for the
    edges, to refuse it before proposing rather than have the proposer leave it out."""
    try:
        msgpack.packb(encode_command(cmd), use_bin_type=True, default=_default)
    except (TypeError, ValueError, OverflowError) as e:  # UnicodeEncodeError: ValueError
        raise Unencodable(f"{type(cmd).__name__} cannot be encoded: {e}") from None


def decode_command(raw: Any) -> Command:
    """Raises ValueError for anything that is not a known command with its fields."""
    try:
        cls = _REGISTRY[raw[0]]
        return cls(*raw[1:])
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"undecodable command: {exc}") from None


def encode_batch(batch: Batch) -> bytes:
    payload = [
        FORMAT_VERSION,
        batch.node,
        batch.incarnation,
        batch.seq,
        batch.timestamp_ms,
        [c._ENCODE(c) for c in batch.commands],  # type: ignore[attr-defined]
    ]
    if batch.after:  # (entries without it decode as after=0: older nodes' format)
        payload.append(batch.after)
    return msgpack.packb(payload, use_bin_type=True, default=_default)


def decode_batch(data: bytes) -> Batch:
    """Raises ValueError when the entry is not a batch at all; commands in it that do
    not decode are left out and counted in ``Batch.skipped``."""
    try:
        raw = msgpack.unpackb(data, raw=False, use_list=False, ext_hook=_ext_hook,
                              strict_map_key=False)
        version = raw[0]
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported command format version {version}")
        _, node, incarnation, seq, ts, cmds, *rest = raw
        after = rest[0] if rest else 0
        if not (isinstance(node, str) and isinstance(incarnation, int)
                and isinstance(seq, int) and isinstance(ts, int) and isinstance(after, int)):
            raise ValueError("malformed batch header")
    except Exception as exc:  # msgpack, ext types: any failure means "not a batch"
        raise ValueError(f"undecodable batch: {exc}") from None
    decoded: list[Command] = []
    for c in cmds:  # (a try per command: contextlib.suppress costs ~1 us each, measured)
        try:
            decoded.append(decode_command(c))
        except ValueError:
            continue
    return Batch(node, incarnation, seq, ts, tuple(decoded), after, len(cmds) - len(decoded))
