"""The replicated broker state: plain dataclasses, compared by value.

Design notes:

* Objects reference each other without cycles so that dataclass ``==`` (used by
  the replica/snapshot tests) terminates: a channel's unacked entries point at
  the :class:`Queue` and :class:`Consumer` objects, a queue points at its
  consumers, but consumers and queues never point back (they hold keys/ids).
  Pickle keeps the shared identities, so a restored snapshot behaves the same.
* Everything iterated is a ``dict`` (insertion ordered) or a ``deque``: never a
  ``set`` of strings, whose order depends on the process' hash seed.
* Derived data (routing indexes, topic tries, route caches) lives in fields
  with ``compare=False`` and is dropped on pickling; it is rebuilt on demand.
"""

from __future__ import annotations

from collections import deque
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from cluster.commands import ChKey, ConnKey
from cluster.machine.fifo import IdFifo

# A binding destination: (is_exchange, name).
Dest = tuple[bool, str]
# A binding, as the source exchange stores it: (destination, routing key, frozen args).
BindKey = tuple[Dest, str, Any]

# Format of the state pickled in snapshots. 1: release 0.1.0 (not numbered then);
# 2: State.format, level, levels and NodeInfo.draining. Older formats are migrated when
# read (the __setstate__ methods fill what they lack); a newer one is refused at start-up.
SNAPSHOT_FORMAT = 2

DEFAULT_EXCHANGES: tuple[tuple[str, str], ...] = (
    ("", "direct"),
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)


def _set_slots(obj: Any, state: Any) -> None:
    """Restore a slotted dataclass from pickle's default state, ``(None, {slot:
    value})``; fields added since the snapshot was taken get their default."""
    values = state[1] if isinstance(state, tuple) else state
    for f in fields(obj):
        if f.name in values:
            v = values[f.name]
        elif f.default_factory is not MISSING:
            v = f.default_factory()
        else:
            v = f.default
        object.__setattr__(obj, f.name, v)


@dataclass(slots=True, eq=True)
class Msg:
    """One message's index entry in one queue: what the queue's rules need. Its bytes
    (exchange, routing key, properties, body) are not the machine's: they are kept under
    ``id`` by the node's store, once however many queues it was routed to
    (cluster/machine/messages.py, docs/storage.md)."""

    id: int
    size: int  # body bytes (x-max-length-bytes)
    priority: int = 0  # the priority property, for priority queues
    redelivered: bool = False
    delivery_count: int = 0
    # now_ms at which the message expires (queue or per-message TTL), None: never.
    expires_at: int | None = None

    def __setstate__(self, state: Any) -> None:
        # (a snapshot from before the store, whose entries held the bytes, is read by
        # cluster/store.py's load_snapshot, which takes them out first)
        _set_slots(self, state)


# A queue entry: a Msg, or in a plain queue's ``ready`` just the id of a message never
# delivered (docs/storage.md).
Entry = Msg | int


def entry_id(m: Entry) -> int:
    return m if type(m) is int else m.id  # type: ignore[union-attr]


@dataclass(slots=True, eq=True)
class Consumer:
    ch: ChKey
    tag: str
    qid: int
    no_ack: bool
    exclusive: bool
    prefetch: int  # 0 = unlimited (per-consumer basic.qos global=false)
    arguments: dict[str, Any]
    unacked: int = 0
    # in its queue's service deque; a removed consumer may still sit there, with this
    # False, until the deque reaches it (Queue.service_stale)
    in_service: bool = False
    active: bool = True  # False once cancelled (unacked entries may still point here)
    priority: int = 0  # x-priority consume argument: higher is served first
    # no-ack deliveries the node has not yet reported written (Sent); at most NOACK_WINDOW
    sent: int = 0

    def __setstate__(self, state: Any) -> None:
        _set_slots(self, state)


@dataclass(eq=True)
class Queue:
    qid: int  # unique for the life of the cluster: a re-declared name gets a new id
    vhost: str
    name: str
    durable: bool
    exclusive_owner: ConnKey | None
    auto_delete: bool
    arguments: dict[str, Any]
    home: tuple[str, int]  # (node, incarnation) of the declaring connection
    # Never-delivered messages in FIFO order: ids (plain queues, 8 bytes each) or Msg
    # (slow queues; features.make_slow). A deque of a snapshot from before IdFifo may
    # hold both, which every path reads.
    ready: deque[Entry] | IdFifo = field(default_factory=IdFifo)
    # Messages returned by consumers (nack/requeue, channel closed, ...): a heap of
    # (msg id, msg); served before ``ready`` so they go back to the queue head in
    # their original order.
    returned: list[tuple[int, Msg]] = field(default_factory=list)
    consumers: dict[tuple[ChKey, str], Consumer] = field(default_factory=dict)
    # Round-robin service order of consumers that (probably) have credit; entries
    # without credit are dropped lazily when reached, and so are consumers removed
    # meanwhile (``in_service`` False): removing one is O(1), not a rebuild of the deque.
    service: deque[Consumer] = field(default_factory=deque)
    # entries of ``service`` whose consumer was removed; compacted once they outnumber
    # the others (queues.remove_consumer)
    service_stale: int = 0
    unacked: int = 0  # checked out to a channel, not settled
    had_consumer: bool = False  # auto-delete only fires after a first consumer
    exclusive_consumer: bool = False
    # Bindings pointing at this queue: (source exchange, bind key) -> None.
    bindings: dict[tuple[str, BindKey], None] = field(default_factory=dict)
    deleted: bool = False
    # --- optional features, from the queue arguments (see features.py) ---------------
    message_ttl: int | None = None  # x-message-ttl (ms)
    dlx: str | None = None  # x-dead-letter-exchange
    dlrk: str | None = None  # x-dead-letter-routing-key
    max_length: int | None = None  # x-max-length (ready messages)
    max_length_bytes: int | None = None  # x-max-length-bytes (ready body bytes)
    overflow: str = "drop-head"  # x-overflow
    expires: int | None = None  # x-expires (ms unused before the queue is deleted)
    max_priority: int = 0  # x-max-priority; 0: not a priority queue
    single_active: bool = False  # x-single-active-consumer
    active_consumer: tuple[ChKey, str] | None = None  # the single active one: (ch, tag)
    # x-delivery-limit (level 4, queues.return_msg): returns a message may have
    # before it is dead-lettered (reason delivery_limit) or dropped; None: no limit
    delivery_limit: int | None = None
    # x-message-deduplication (level 4, cluster/machine/dedup.py): the deduplication header
    # value of each message the queue holds (ready or unacked), both ways; None: off
    dedup_ids: dict[int, bytes] | None = None
    dedup_keys: dict[bytes, int] | None = None
    # The queue needs the feature-aware (slower) paths: TTL, length limits, priorities,
    # consumer priorities, or it holds messages with a per-message TTL.
    slow: bool = False
    consumer_priorities: bool = False  # some consumer has a non-zero x-priority
    ready_bytes: int = 0  # body bytes of ready messages (kept when max_length_bytes is set)
    last_used: int = 0  # now_ms of the last declare / get / consumer leaving (x-expires)
    # Counters for the management API's message rates (RabbitMQ's message_stats).
    n_published: int = 0  # messages that entered the queue
    n_delivered: int = 0  # deliveries and basic.get-oks, redeliveries included
    n_redelivered: int = 0
    n_acked: int = 0
    # The policy and operator policy applied (cluster/machine/policies.py), by name.
    policy: str | None = None
    operator_policy: str | None = None
    # Derived: single active consumer's succession order (features.next_active), rebuilt
    # from ``consumers`` on demand; not pickled.
    sac: Any = field(default=None, compare=False, repr=False)

    def ready_count(self) -> int:
        return len(self.ready) + len(self.returned)

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["sac"] = None
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)  # fields added since: their class default (service_stale)


@dataclass(eq=True)
class Exchange:
    name: str
    type: str
    durable: bool
    auto_delete: bool
    internal: bool
    arguments: dict[str, Any]
    # Bindings where this exchange is the source: bind key -> original arguments.
    bindings: dict[BindKey, dict[str, Any]] = field(default_factory=dict)
    # Bindings where this exchange is the destination: (source, bind key) -> None.
    dest_bindings: dict[tuple[str, BindKey], None] = field(default_factory=dict)
    # (node, incarnation) of the declaring connection: a transient exchange
    # goes when that node's life ends, as a transient queue does.
    home: tuple[str, int] = ("", 0)
    # An x-message-deduplication exchange's cache (cluster/machine/dedup.py, level 4):
    # header value -> expiry ms (-1: none), oldest first
    dedup: dict[bytes, int] | None = None
    # The policy applied (cluster/machine/policies.py), and its alternate-exchange where
    # the exchange's own arguments have none.
    policy: str | None = None
    policy_ae: str | None = None
    # Derived indexes, rebuilt from ``bindings`` on demand.
    index: Any = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["index"] = None
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)


def _fill_defaults(cls: Any, d: dict[str, Any]) -> None:
    """A snapshot taken before a field existed: give the field its default."""
    for f in fields(cls):
        if f.name not in d:
            d[f.name] = f.default_factory() if f.default_factory is not MISSING else f.default


@dataclass(eq=True)
class Policy:
    """A policy or operator policy, as RabbitMQ's set_policy takes it."""

    name: str
    pattern: str  # a regular expression (RE2) searched in queue / exchange names
    apply_to: str  # queues / exchanges / all
    priority: Any  # a JSON number
    definition: dict[str, Any]


@dataclass(eq=True)
class VHost:
    name: str
    exchanges: dict[str, Exchange] = field(default_factory=dict)
    queues: dict[str, Queue] = field(default_factory=dict)
    description: str = ""
    tags: tuple[str, ...] = ()
    # RabbitMQ's vhost limits: max-connections, max-queues (absent: no limit)
    limits: dict[str, int] = field(default_factory=dict)
    # Policies and operator policies by name (cluster/machine/policies.py)
    policies: dict[str, Policy] = field(default_factory=dict)
    operator_policies: dict[str, Policy] = field(default_factory=dict)

    def __setstate__(self, d: dict[str, Any]) -> None:
        _fill_defaults(VHost, d)
        self.__dict__.update(d)


@dataclass(eq=True)
class User:
    name: str
    # RabbitMQ's stored form: base64(salt + hash(salt + password)); "" = no password
    # (the user can only log in with EXTERNAL, a client certificate)
    password_hash: str
    hashing: str  # rabbit_password_hashing_sha256 / _sha512 / _md5
    tags: tuple[str, ...] = ()
    # RabbitMQ's user limits: max-connections, max-channels (absent: no limit)
    limits: dict[str, int] = field(default_factory=dict)


@dataclass(eq=True, frozen=True)
class Permission:
    """Regular expressions (matched anywhere in the name, as RabbitMQ's re:run)."""

    configure: str
    write: str
    read: str


# One unacked delivery on a channel: the queue it came from, the message, and the
# consumer it was delivered to (None for basic.get).
Unacked = tuple[Queue, Entry, Consumer | None]


@dataclass(eq=True)
class Channel:
    key: ChKey
    vhost: str
    last_tag: int = 0
    unacked: dict[int, Unacked] = field(default_factory=dict)
    consumers: dict[str, Consumer] = field(default_factory=dict)
    consumer_prefetch: int = 0  # basic.qos global=false: for consumers created later
    global_prefetch: int = 0  # basic.qos global=true: shared by the channel's consumers
    global_unacked: int = 0  # unacked deliveries made to consumers (not basic.get)
    flow: bool = True
    last_queue: str = ""  # most recently declared queue (AMQP "" shortcut)
    paused: bool = False  # its connection's socket takes no more writes (ConnectionFlow)
    user: str = ""  # the connection's user, for permission checks
    system: bool = False  # of a system connection: no permission checks
    # direct reply-to (cluster/machine/reply_to.py): the reply consumer's tag and the
    # SHA-256 of its token's key
    reply: tuple[str, bytes] | None = None
    # Permission decisions already taken, valid while State.acl_version is acl_version.
    acl: dict[tuple[str, str, str], bool] = field(default_factory=dict, compare=False,
                                                 repr=False)
    acl_version: int = field(default=-1, compare=False, repr=False)

    def __setstate__(self, d: dict[str, Any]) -> None:
        _fill_defaults(Channel, d)
        self.__dict__.update(d)

@dataclass(eq=True)
class Connection:
    key: ConnKey
    vhost: str
    user: str
    incarnation: int
    channels: dict[int, None] = field(default_factory=dict)
    exclusive_queues: dict[int, None] = field(default_factory=dict)  # qid -> None
    paused: bool = False  # ConnectionFlow: its socket takes no more writes
    system: bool = False  # ConnectionOpen.system: permissions are not checked


@dataclass(eq=True)
class NodeInfo:
    incarnation: int
    down: bool = False
    raft_address: str = ""
    http_address: str = ""
    draining: bool = False  # NodeDraining in this incarnation


@dataclass(eq=True)
class DedupeWindow:
    """Batch seqs applied for one (node, incarnation): ``seen`` holds those in
    ``(high - WINDOW, high]``; anything older counts as applied."""

    high: int = -1
    seen: set[int] = field(default_factory=set)


@dataclass(eq=True)
class State:
    now_ms: int = 0
    vhosts: dict[str, VHost] = field(default_factory=dict)
    queues: dict[int, Queue] = field(default_factory=dict)  # qid -> queue
    conns: dict[ConnKey, Connection] = field(default_factory=dict)
    channels: dict[ChKey, Channel] = field(default_factory=dict)
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    dedupe: dict[tuple[str, int], DedupeWindow] = field(default_factory=dict)
    next_msg_id: int = 1
    next_qid: int = 1
    name_counter: int = 0
    # (node, incarnation) of the batch being applied, to stamp new connections.
    origin: tuple[str, int] | None = None
    # Queues that may have a deadline (a TTL'd message at their head, or x-expires):
    # qid -> the order it entered (None: entered before orders were kept). ``next_due`` is
    # a lower bound of their earliest deadline.
    timed: dict[int, int | None] = field(default_factory=dict)
    next_due: int | None = None
    timed_seq: int = 0
    # From level 3 (cluster/machine/expiry.py): a heap of (deadline, qid), at least one
    # entry no later than each timed queue's deadline, so that expiry visits only the
    # queues that are due instead of every timed queue of every tenant. ``pushed``: the
    # earliest deadline pushed for each queue. An index: rebuilt from ``timed`` when
    # ``deadlines_built`` is False (a snapshot of an earlier release, or level < 3).
    deadlines: list[tuple[int, int]] = field(default_factory=list, compare=False, repr=False)
    pushed: dict[int, int] = field(default_factory=dict, compare=False, repr=False)
    deadlines_built: bool = field(default=False, compare=False, repr=False)
    # Messages held by x-delayed-message exchanges (cluster/machine/delayed.py, level 4):
    # a heap of (due ms, message id, vhost, exchange, routing key, properties, body size)
    delayed: list[Any] = field(default_factory=list)
    # Dead-lettered messages waiting to be republished within the current command
    # (always empty between commands).
    dl_pending: list[Any] = field(default_factory=list)
    # --- access control (cluster/machine/access.py) ------------------------------------
    users: dict[str, User] = field(default_factory=dict)
    permissions: dict[tuple[str, str], Permission] = field(default_factory=dict)  # (user, vhost)
    # (user, vhost, exchange) -> (write, read) regexes on routing keys, topic exchanges only
    topic_permissions: dict[tuple[str, str, str], tuple[str, str]] = field(default_factory=dict)
    bootstrapped: bool = False  # the default user was created (once, on a new cluster)
    # (node, resource) of every memory/disk alarm in force (node/services/alarms.py)
    alarms: dict[tuple[str, str], None] = field(default_factory=dict)
    acl_version: int = 0  # bumped by every change to users or permissions (caches key on it)
    # Counters for the management API's overview rates (RabbitMQ's message_stats).
    n_published: int = 0  # basic.publish applied
    n_unroutable: int = 0  # of which routed to no queue
    n_confirmed: int = 0  # publisher confirms (acks and nacks)
    # Dynamic shovels (cluster/machine/shovels.py Shovel), by (vhost, name); from level 4
    shovels: dict[tuple[str, str], Any] = field(default_factory=dict)
    # --- upgrades (cluster/commands.py LEVEL) --------------------------------------------
    # Snapshot format: 1 for snapshots of releases before formats were numbered (read
    # through the defaults of __setstate__); a snapshot of a higher format than
    # SNAPSHOT_FORMAT is refused at start-up (written by a newer release).
    format: int = 1
    level: int = 1  # the cluster's enabled command level (EnableLevel)
    levels: dict[str, int] = field(default_factory=dict)  # Raft address -> level announced
    # --- message bytes (cluster/machine/messages.py) ---------------------------------------
    # What applying decided about message records, in order (cluster/records.py): taken
    # and carried out by whoever keeps the bytes (the replica) after each entry. Never
    # pickled; empty between entries for a caller that takes them.
    writes: list[Any] = field(default_factory=list, compare=False, repr=False)
    # Exchange, routing key, properties and body size of each message held by a queue
    # with a dead-letter exchange, and how many such queues (or their unacked deliveries)
    # hold it: [exchange, routing key, properties, size, holders]. Equal on every replica
    # that built it; ``headers_built`` False: read from the store (a snapshot that does
    # not carry it), which messages.rebuild_headers does before any entry is applied.
    headers: dict[int, list[Any]] = field(default_factory=dict, compare=False, repr=False)
    headers_built: bool = field(default=True, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("writes", None)
        # headers are those of this next_msg_id: a release that carried them along without
        # keeping them up to date (its snapshot) has moved next_msg_id since, or has no
        # messages to keep them for
        d["headers_at"] = self.next_msg_id
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        stamp = d.pop("headers_at", None)
        _fill_defaults(State, d)  # snapshots taken before a field existed
        if d["format"] <= SNAPSHOT_FORMAT:
            d["format"] = SNAPSHOT_FORMAT  # migrated (a newer one stays, for the loader)
        d["headers_built"] = stamp is not None and stamp == d["next_msg_id"]
        if not d["headers_built"]:
            d["headers"] = {}
        self.__dict__.update(d)


def new_exchange(name: str, type_: str, durable: bool = True) -> Exchange:
    return Exchange(name, type_, durable, False, False, {})


def new_vhost(name: str) -> VHost:
    vh = VHost(name)
    for ex, type_ in DEFAULT_EXCHANGES:
        vh.exchanges[ex] = new_exchange(ex, type_)
    return vh


def new_state() -> State:
    state = State(format=SNAPSHOT_FORMAT)
    state.vhosts["/"] = new_vhost("/")
    return state
