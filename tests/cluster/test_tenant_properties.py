"""Two tenants in one command log: a hostile one never costs a well-behaved one a message.

Tenant A (vhost "a", node "na") publishes confirmed persistent messages to ``src``,
whose messages expire (x-message-ttl) or are rejected into ``dlq`` through the fanout
``dlx``; its consumer acks, rejects and gets. Tenant B (vhost "b", node "nb") does what a
hostile client can: dead-letter arguments at and over the 255-byte limit (the machine
must refuse those over it, on the queue.declare), routing keys over it, queues that
expire and dead-letter into each other or themselves, dozens of consumers that come and
go (single active consumer too), purges, deletes, channel and connection closes, its
node going down and up. And what no client can do any more but an old state may hold:
a queue whose dead-letter routing key is too long for the store (``poison``).

Checked after every step:

* every message of A that was confirmed has been delivered to A, or is in A's queues
  (ready, or unacked on A's channels): none lost;
* A never gets a channel or connection error, and no Fault names A's channels or vhost;
  while nothing is poisoned, there is no Fault at all (the edge refused everything else);
* two replicas fed the same log, and a third restored from a snapshot taken mid-log,
  emit the same effects and end equal; the store holds exactly one reference per copy.

``make test`` runs the default profile (3-7 s); ``TENANT_PROFILE=fuzz`` (or
``FUZZ_EXAMPLES``, set by ``python -m tests.fuzz machine``) runs the long one.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from cluster import commands as C
from cluster import effects as E
from cluster.machine import apply_batch, next_deadline
from cluster.machine.state import State
from protocol.properties import encode_properties
from tests.cluster import helpers
from tests.cluster.helpers import guest_state, stored

A_PUB, A_CON = ("na", 1, 1), ("na", 1, 2)
A_CONN = ("na", 1)
B_CHS = [("nb", 1, 1), ("nb", 1, 2)]
B_CONN = ("nb", 1)
SRC, DLQ, DLX = "src", "dlq", "dlx"
A_TTL = 4
B_QUEUES = ["b0", "b1", "b2"]
SINK = "bsink"  # bound to BX: B's dead-letters through BX land there
BX = "bx"  # B's fanout exchange
LONG = "r" * 300

PERSISTENT = encode_properties(delivery_mode=2)

dl_exchanges = st.sampled_from([None, "", BX, "nosuch", "x" * 255, "é" * 127, LONG, "é" * 128,
                                b"\xff" * 100])
dl_keys = st.sampled_from([None, "b0", "b1", "k" * 255, LONG, "é" * 128])
b_chs = st.sampled_from(B_CHS)
b_queues = st.sampled_from(B_QUEUES)


def over_limit(v: Any) -> bool:
    s = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
    return isinstance(s, str) and len(s.encode()) > 255


class TenantLog(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.main = guest_state()
        self.replica = guest_state()
        self.restored: State | None = None
        self.inc = {"na": 1, "nb": 1}
        self.seqs: Counter[tuple[str, int]] = Counter()
        self.clock = 0
        self.n = 0
        self.step_effects: list[E.Effect] = []
        self.poisoned = False
        # tenant A
        self.confirmed: set[bytes] = set()
        self.delivered: set[bytes] = set()
        self.a_unacked: list[int] = []  # delivery tags on A_CON
        self.a_tags: set[str] = set()
        # tenant B
        self.b_open: set[C.ChKey] = set()
        self.b_tags: dict[C.ChKey, list[str]] = {}
        for node in ("na", "nb"):
            self.send(node, C.NodeUp(node, 1))
        for vhost in ("a", "b"):
            self.send("na", C.VHostPut(vhost))
            self.send("na", C.PermissionSet("guest", vhost, ".*", ".*", ".*"))
        self.send("na", C.ConnectionOpen(A_CONN, "a", "guest"))
        for ch in (A_PUB, A_CON):
            self.send("na", C.ChannelOpen(ch))
        self.send("na", C.ExchangeDeclare(A_PUB, DLX, "fanout", False, True, False, False,
                                          False, {}))
        for q, args in ((DLQ, {}), (SRC, {"x-message-ttl": A_TTL,
                                          "x-dead-letter-exchange": DLX})):
            self.send("na", C.QueueDeclare(A_PUB, q, False, True, False, False, False, args))
        self.send("na", C.QueueBind(A_PUB, DLQ, DLX, "", False, {}))
        self.b_connect()
        self.b_setup()
        assert not self.a_errors()

    # --- plumbing -------------------------------------------------------------------

    def send(self, node: str, *cmds: C.Command) -> list[E.Effect]:
        inc = self.inc[node]
        self.seqs[(node, inc)] += 1
        batch = C.Batch(node, inc, self.seqs[(node, inc)], self.clock, cmds)
        eff = apply_batch(self.main, batch)
        assert apply_batch(self.replica, batch) == eff
        if self.restored is not None:
            assert apply_batch(self.restored, batch) == eff
        self.step_effects = eff
        self.follow(eff)
        return eff

    def follow(self, eff: list[E.Effect]) -> None:
        for e in eff:
            ch = getattr(e, "ch", None)
            if isinstance(e, E.Deliver | E.GetOk) and ch in (A_PUB, A_CON):
                self.delivered.add(stored(self.main, e)[3])
                if not getattr(e, "no_ack", False):
                    self.a_unacked.append(e.delivery_tag)
            elif isinstance(e, E.Confirm) and ch == A_PUB:
                assert e.ack, "A's publish nacked"
            elif isinstance(e, E.ChannelError) and ch in self.b_open:
                self.b_open.discard(ch)
                self.b_tags.pop(ch, None)
            elif isinstance(e, E.ConnectionError) and e.conn == B_CONN:
                self.b_closed()
            elif isinstance(e, E.ConsumerCancelled) and ch in self.b_tags:
                tags = self.b_tags[ch]
                if e.consumer_tag in tags:
                    tags.remove(e.consumer_tag)
            elif isinstance(e, E.ConsumerCancelled) and ch == A_CON:
                self.a_tags.discard(e.consumer_tag)

    def b_closed(self) -> None:
        self.b_open.clear()
        self.b_tags.clear()

    def b_connect(self) -> None:
        if B_CONN not in self.main.conns:
            self.send("nb", C.ConnectionOpen(B_CONN, "b", "guest"))
        for ch in B_CHS:
            if ch not in self.b_open:
                self.send("nb", C.ChannelOpen(ch))
                self.b_open.add(ch)
                self.b_tags[ch] = []

    def b_setup(self) -> None:
        """B's fanout exchange and the queue it feeds (transient: gone when nb goes)."""
        ch = B_CHS[0]
        self.b_send(ch, C.ExchangeDeclare(ch, BX, "fanout", False, True, False, False, False,
                                          {}),
                    C.QueueDeclare(ch, SINK, False, False, False, False, False, {}),
                    C.QueueBind(ch, SINK, BX, "", False, {}))

    def b_send(self, ch: C.ChKey, *cmds: C.Command) -> list[E.Effect]:
        return self.send("nb", *cmds)

    def later(self, dt: int = 1) -> None:
        """Time passes; what is due by then expires in a Tick (proposed by either node,
        as the leader may be either)."""
        self.clock += dt
        nd = next_deadline(self.main)
        if nd is not None and nd <= self.clock:
            self.send("na" if self.clock % 2 else "nb", C.Tick())

    def a_errors(self) -> list[E.Effect]:
        return [e for e in self.step_effects
                if (isinstance(e, E.ChannelError) and e.ch[:2] == A_CONN)
                or (isinstance(e, E.ConnectionError) and e.conn == A_CONN)]

    def bodies_in_a(self) -> set[bytes]:
        s = self.main
        found: set[bytes] = set()
        for q in s.vhosts["a"].queues.values():
            found.update(stored(s, m)[3] for m in q.ready)
            found.update(stored(s, m)[3] for _k, m in q.returned)
        for key in (A_PUB, A_CON):
            ch = s.channels[key]
            found.update(stored(s, m)[3] for q, m, _c in ch.unacked.values() if not q.deleted)
        return found

    # --- tenant A: well-behaved ---------------------------------------------------------

    @rule(n=st.integers(1, 6))
    def a_publish(self, n: int) -> None:
        self.later()
        cmds = []
        for _ in range(n):
            self.n += 1
            cmds.append(C.Publish(A_PUB, "", SRC, False, PERSISTENT, b"A%d" % self.n, self.n))
        eff = self.send("na", *cmds)
        acks = {e.seq for e in eff if isinstance(e, E.Confirm) and e.ch == A_PUB and e.ack}
        assert acks == {c.confirm_seq for c in cmds}
        self.confirmed.update(c.body for c in cmds)

    @rule(q=st.sampled_from([SRC, DLQ, DLQ]), prefetch=st.integers(0, 3))
    def a_consume(self, q: str, prefetch: int) -> None:
        self.later()
        self.n += 1
        tag = f"a{self.n}"
        self.send("na", C.Qos(A_CON, prefetch, False),
                  C.Consume(A_CON, q, tag, False, False, False, {}))
        self.a_tags.add(tag)

    @rule()
    def a_cancel(self) -> None:
        self.later()
        if self.a_tags:
            tag = sorted(self.a_tags)[0]
            self.a_tags.discard(tag)
            self.send("na", C.Cancel(A_CON, tag, False))

    @rule()
    def a_ack_all(self) -> None:
        self.later()
        self.send("na", C.Ack(A_CON, 0, True))
        self.a_unacked.clear()

    @rule(requeue=st.booleans())
    def a_reject_oldest(self, requeue: bool) -> None:
        """Rejected from src: dead-lettered into dlq; from dlq: dropped (delivered)."""
        self.later()
        if self.a_unacked:
            self.send("na", C.Nack(A_CON, self.a_unacked.pop(0), False, requeue, reject=True))

    @rule(q=st.sampled_from([SRC, DLQ]))
    def a_get(self, q: str) -> None:
        self.later()
        self.send("na", C.Get(A_CON, q, False))

    # --- tenant B: hostile --------------------------------------------------------------

    @rule(ch=b_chs, q=st.one_of(b_queues, st.just("q" * 256)), dlx=dl_exchanges, dlrk=dl_keys,
          ttl=st.sampled_from([None, 0, 1, 3]), max_len=st.sampled_from([None, 0, 1, 2]),
          sac=st.booleans(), expires=st.sampled_from([None, None, 5]), fresh=st.booleans())
    def b_declare(self, ch: C.ChKey, q: str, dlx: Any, dlrk: Any, ttl: int | None,
                  max_len: int | None, sac: bool, expires: int | None, fresh: bool) -> None:
        self.later()
        args: dict[str, Any] = {}
        for key, v in (("x-dead-letter-exchange", dlx), ("x-dead-letter-routing-key", dlrk),
                       ("x-message-ttl", ttl), ("x-max-length", max_len),
                       ("x-expires", expires)):
            if v is not None:
                args[key] = v
        if sac:
            args["x-single-active-consumer"] = True
        if dlrk is not None and dlx is None:
            args.pop("x-dead-letter-routing-key")
        if fresh and q in self.main.vhosts["b"].queues:  # else redeclared: 406 if it differs
            self.b_send(ch, C.QueueDelete(ch, q, False, False, False))
            self.b_connect()
        new = q not in self.main.vhosts["b"].queues
        was_open = ch in self.b_open
        eff = self.b_send(ch, C.QueueDeclare(ch, q, False, False, False, False, False, args))
        if was_open and new and (len(q) > 255 or any(over_limit(v) for v in args.values())):
            assert [e.reply_code for e in eff if isinstance(e, E.ChannelError)] == [406]
            assert q not in self.main.vhosts["b"].queues
        self.b_connect()

    @rule(q=b_queues)
    def b_bind(self, q: str) -> None:
        self.later()
        self.b_send(B_CHS[0], C.QueueBind(B_CHS[0], q, BX, "", False, {}))
        self.b_connect()

    @rule(ch=b_chs, dest=st.sampled_from([*B_QUEUES, BX]), n=st.integers(1, 5),
          expiration=st.sampled_from([None, "0", "2", "7"]), long_key=st.booleans())
    def b_publish(self, ch: C.ChKey, dest: str, n: int, expiration: str | None,
                  long_key: bool) -> None:
        self.later()
        exchange, key = (BX, "k") if dest == BX else ("", dest)
        if long_key:
            key = LONG  # as the management API could send it: refused, nothing stored
        props = encode_properties(**({"expiration": expiration} if expiration else {}))
        cmds = []
        for _ in range(n):
            self.n += 1
            cmds.append(C.Publish(ch, exchange, key, False, props, b"B%d" % self.n, self.n))
        ids = self.main.next_msg_id
        eff = self.b_send(ch, *cmds)
        if long_key and ch in self.b_open:
            assert [e.reply_code for e in eff if isinstance(e, E.ChannelError)] == [406]
            assert self.main.next_msg_id == ids
        self.b_connect()

    @rule(ch=b_chs, q=b_queues, k=st.integers(1, 40), no_ack=st.booleans(),
          prefetch=st.integers(0, 2))
    def b_consume_many(self, ch: C.ChKey, q: str, k: int, no_ack: bool, prefetch: int) -> None:
        self.later()
        tags = []
        for _ in range(k):
            self.n += 1
            tags.append(f"b{self.n}")
        eff = self.b_send(ch, C.Qos(ch, prefetch, False), *[
            C.Consume(ch, q, t, no_ack, False, False, {"x-priority": i % 3})
            for i, t in enumerate(tags)])
        if ch in self.b_open:
            self.b_tags.setdefault(ch, []).extend(
                e.consumer_tag for e in eff if isinstance(e, E.ConsumeOk))
        self.b_connect()

    @rule(ch=b_chs, data=st.data())
    def b_cancel_some(self, ch: C.ChKey, data: Any) -> None:
        self.later()
        tags = self.b_tags.get(ch, [])
        if tags:
            gone = data.draw(st.lists(st.sampled_from(tags), max_size=len(tags), unique=True))
            for t in gone:
                tags.remove(t)
            self.b_send(ch, *[C.Cancel(ch, t, False) for t in gone])

    @rule(ch=b_chs, requeue=st.booleans())
    def b_settle_all(self, ch: C.ChKey, requeue: bool) -> None:
        """Everything B holds: rejected (dead-lettered where it has a DLX) or requeued."""
        self.later()
        self.b_send(ch, C.Nack(ch, 0, True, requeue))
        self.b_connect()

    @rule(q=b_queues, delete=st.booleans())
    def b_purge_or_delete(self, q: str, delete: bool) -> None:
        self.later()
        ch = B_CHS[1]
        self.b_send(ch, C.QueueDelete(ch, q, False, False, False) if delete
                    else C.QueuePurge(ch, q, False))
        self.b_connect()

    @rule(ch=b_chs)
    def b_close_channel(self, ch: C.ChKey) -> None:
        self.later()
        self.b_send(ch, C.ChannelClose(ch))
        self.b_open.discard(ch)
        self.b_tags.pop(ch, None)
        self.b_connect()

    @rule()
    def b_close_connection(self) -> None:
        self.later()
        self.b_send(B_CHS[0], C.ConnectionClose(B_CONN))
        self.b_closed()
        self.b_connect()

    @rule()
    def b_node_restarts(self) -> None:
        """The leader (na) sees nb go; nb comes back in a new life and reconnects."""
        self.later()
        self.send("na", C.NodeDown("nb", self.inc["nb"]))
        self.inc["nb"] += 1
        self.send("nb", C.NodeUp("nb", self.inc["nb"]))
        self.b_closed()
        self.b_connect()
        self.b_setup()

    @rule(q=b_queues)
    def poison(self, q: str) -> None:
        """What an old state may hold: a dead-letter routing key the store cannot record
        (declared before the limit). Set on every replica alike, outside the log; then
        messages that will die there."""
        states = [s for s in (self.main, self.replica, self.restored) if s is not None]
        if q not in self.main.vhosts["b"].queues:
            ch = B_CHS[0]
            self.b_send(ch, C.QueueDeclare(ch, q, False, False, False, False, False, {}))
            self.b_connect()
        if q not in self.main.vhosts["b"].queues:
            return  # B's channel was closed: nothing declared
        for s in states:
            bq = s.vhosts["b"].queues[q]
            bq.dlx, bq.dlrk = BX, LONG
        self.poisoned = True
        for ttl in range(1, 25):  # to die there, one every millisecond for a while
            self.b_publish(B_CHS[0], q, 1, str(ttl), False)

    # --- time, snapshots -------------------------------------------------------------

    @rule(dt=st.integers(1, 6))
    def tick(self, dt: int) -> None:
        self.later(dt)
        self.send("nb" if dt % 2 else "na", C.Tick())

    @rule()
    def snapshot_and_restore(self) -> None:
        self.restored = helpers.clone(self.main)
        assert self.restored == self.main

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def a_loses_nothing(self) -> None:
        missing = self.confirmed - self.delivered - self.bodies_in_a()
        assert not missing, f"A's confirmed messages lost: {sorted(missing)[:5]}"

    @invariant()
    def a_is_never_faulted(self) -> None:
        assert not self.a_errors()
        for f in self.step_effects:
            if isinstance(f, E.Fault):
                assert self.poisoned, f"a Fault with nothing poisoned: {f}"
                assert "'na'" not in f.command and "vhost 'a'" not in f.command, f

    @invariant()
    def replicas_equal(self) -> None:
        assert self.main == self.replica
        if self.restored is not None:
            assert self.restored == self.main

    @invariant()
    def store_holds_one_reference_per_copy(self) -> None:
        for s in (self.main, self.restored):
            if s is None:
                continue
            held, live = helpers.held_references(s)
            assert held == live
            assert s.headers == helpers.expected_headers(s)  # as rebuilt from the store
        assert self.replica.headers == self.main.headers

    @invariant()
    def service_deques_are_sound(self) -> None:
        """Removed consumers left in a service deque are counted (compaction relies on
        it); every consumer in service is there exactly once, and is a live one."""
        for q in self.main.queues.values():
            stale = sum(1 for c in q.service if not c.in_service)
            assert stale == q.service_stale
            live = [id(c) for c in q.service if c.in_service]
            assert sorted(live) == sorted(id(c) for c in q.consumers.values() if c.in_service)
            assert all(c.active for c in q.service if c.in_service)


settings.register_profile("tenants", max_examples=40, stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.filter_too_much])
settings.register_profile("tenants-fuzz", settings.get_profile("tenants"),
                          max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20000")) // 40,
                          stateful_step_count=80)
_PROFILE = "tenants-fuzz" if (os.environ.get("TENANT_PROFILE") == "fuzz"
                              or "FUZZ_EXAMPLES" in os.environ) else "tenants"
TenantLog.TestCase.settings = settings.get_profile(_PROFILE)
TestTenantLog = TenantLog.TestCase
