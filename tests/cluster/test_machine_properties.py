"""Generated command logs checked against invariants after every step.

A small model tracks where every routed message copy must be (ready in its
queue, or unacked under one delivery tag on one channel); after each step the
real state must hold exactly those copies: none lost, none duplicated. Two
replicas fed the same batches (one of them restored from a mid-log snapshot)
must stay equal and emit identical effects.

Time advances 1 ms per step. ``qt`` is a priority queue with a message TTL, a
length limit and a dead-letter exchange feeding ``dlq``; some publishes carry a per-message TTL. A
copy may only leave its queue without being settled if it expired (never
before its deadline), was dropped for length, or was rejected: then a ``qt``
copy must turn up in ``dlq`` with an x-death for ``qt``. No expired message is
ever delivered, and the deadline index never misses a queue.

Delivery limits (level 4): ``ql`` (published to directly) has x-delivery-limit 1 and
dead-letters to ``dlx``; ``q1`` has x-delivery-limit 2 and no dead-letter exchange. The
model counts every return of a copy (nack/reject with requeue, recover, its channel or
connection closed, its node lost, a channel closed by an error); a copy returned past
its queue's limit must be gone: into ``dlq`` with an x-death of reason delivery_limit
(``ql``), or dropped (``q1``). Every redelivery of a copy in such a queue carries
x-delivery-count = its returns so far; a first delivery carries none.

Delayed messages (level 4): ``dx`` is an x-delayed-message exchange (routing as fanout)
bound to ``q0``; a message published to it with an x-delay is held until due, then
reaches ``q0`` if ``q0`` exists then (released by the Tick that catches up), else it is
dropped; without one it reaches ``q0`` at once.

Deduplication (level 4): ``ddx`` is an x-message-deduplication exchange (cache size 2,
TTL 4 ms) bound to ``q0``; a model cache (oldest out when full, entries expiring at their
TTL) says which publishes with an x-deduplication-header are duplicates: routed nowhere.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from cluster import commands as C
from cluster import effects as E
from cluster.machine import apply_batch, next_deadline
from cluster.machine.features import queue_deadline
from cluster.machine.queues import has_credit
from cluster.machine.state import State
from protocol.properties import decode_properties, encode_properties
from tests.cluster import helpers
from tests.cluster.helpers import guest_state, stored

QT, DLQ, DLX, QL = "qt", "dlq", "dlx", "ql"
QUEUES = ["q0", "q1", QT, DLQ, QL]
CHANNELS = [("n1", 1, 1), ("n1", 1, 2), ("n2", 1, 1), ("n2", 1, 2)]
CONNS = [("n1", 1), ("n2", 1)]
FANOUT = "fan"
DX = "dx"  # x-delayed-message, x-delayed-type fanout, bound to q0
DDX, DD_SIZE, DD_TTL = "ddx", 2, 4  # x-message-deduplication, bound to q0
QT_TTL, QT_MAX, MSG_TTL = 3, 3, 2
ARGS: dict[str, dict[str, Any]] = {
    QT: {"x-message-ttl": QT_TTL, "x-max-length": QT_MAX, "x-dead-letter-exchange": DLX,
         "x-max-priority": 2},
    QL: {"x-delivery-limit": 1, "x-dead-letter-exchange": DLX},
    "q1": {"x-delivery-limit": 2},
}
LIMITS = {QL: 1, "q1": 2}


def message_props(expiring: bool, priority: int | None) -> bytes:
    kw: dict[str, Any] = {}
    if expiring:
        kw["expiration"] = str(MSG_TTL)
    if priority is not None:
        kw["priority"] = priority
    return encode_properties(**kw)

channels = st.sampled_from(CHANNELS)
queues = st.sampled_from(QUEUES)


class MachineLog(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.main = guest_state()
        self.replica = guest_state()
        self.restored: State | None = None
        self.incarnation = {"n1": 1, "n2": 1}
        self.seqs: dict[tuple[str, int], int] = {}
        self.clock = 0
        self.log: list[C.Batch] = []
        self.body_n = 0
        self.tag_n = 0
        # the model
        self.open_chs: set[C.ChKey] = set()
        self.open_conns: set[C.ConnKey] = set()
        self.model_queues: set[str] = set()
        self.bound: set[str] = set()
        self.ledger: Counter[tuple[bytes, str]] = Counter()
        self.tags: dict[C.ChKey, dict[int, tuple[bytes, str, bool]]] = {}  # tag -> body, q, ghost
        self.consumers: dict[C.ChKey, dict[str, tuple[str, bool]]] = {}  # tag -> queue, no_ack
        self.step_effects: list[E.Effect] = []
        self.pub_time: dict[bytes, int] = {}  # body -> now_ms when published
        self.msg_ttl: dict[bytes, int] = {}  # bodies published with an expiration
        self.allow_drop: set[str] = set()  # queues whose copies may vanish in this step
        self.dead: set[bytes] = set()  # bodies dead-lettered from qt to dlq
        self.returns: Counter[tuple[bytes, str]] = Counter()  # returns of each copy
        self.limit_dead: set[bytes] = set()  # bodies dead-lettered from ql (delivery_limit)
        self.pending: dict[bytes, int] = {}  # bodies held by dx -> due now_ms
        self.dd_cache: dict[str, int] = {}  # ddx's values -> expiry now_ms, oldest first
        for node in ("n1", "n2"):
            self.send(node, C.NodeUp(node, 1))
        admin = CHANNELS[0]
        self.open_channel(admin)
        for x in (FANOUT, DLX):
            self.send("n1", C.ExchangeDeclare(admin, x, "fanout", False, True, False, False,
                                              False, {}))
        self.send("n1", C.ExchangeDeclare(admin, DX, "x-delayed-message", False, True, False,
                                          False, False, {"x-delayed-type": "fanout"}))
        self.send("n1", C.ExchangeDeclare(admin, DDX, "x-message-deduplication", False, True,
                                          False, False, False,
                                          {"x-cache-size": DD_SIZE, "x-cache-ttl": DD_TTL}))
        for q in QUEUES:
            self.declare(admin, q)
        for ch in CHANNELS[1:]:
            self.open_channel(ch)

    # --- plumbing -------------------------------------------------------------------

    def catch_up(self) -> None:
        """Each step happens 1 ms after the previous one. When something is due by
        then, a Tick goes first (as the leader would propose one), so that the model
        sees the expiry's effects apart from the step's commands (which then find
        nothing overdue)."""
        self.clock += 1
        nd = next_deadline(self.main)
        if nd is not None and nd <= self.clock:
            for body in [b for b, due in self.pending.items() if due <= self.clock]:
                del self.pending[body]  # released by this Tick: to q0, if it is there
                if "q0" in self.model_queues:
                    self.ledger[(body, "q0")] += 1
            self.process(self.send("n1", C.Tick()))

    def send(self, node: str, cmd: C.Command) -> list[E.Effect]:
        inc = self.incarnation[node]
        seq = self.seqs.get((node, inc), 0) + 1
        self.seqs[(node, inc)] = seq
        batch = C.Batch(node, inc, seq, self.clock, (cmd,))
        self.log.append(batch)
        eff = apply_batch(self.main, batch)
        assert apply_batch(self.replica, batch) == eff
        if self.restored is not None:
            assert apply_batch(self.restored, batch) == eff
        self.step_effects = eff
        return eff

    def ch_cmd(self, ch: C.ChKey, cmd: C.Command) -> list[E.Effect]:
        """Send a channel command; closed channels must ignore it silently."""
        eff = self.send(ch[0], cmd)
        if ch not in self.open_chs:
            assert eff == []
        return eff

    def open_channel(self, ch: C.ChKey) -> None:
        if ch[:2] not in self.open_conns:
            eff = self.send(ch[0], C.ConnectionOpen(ch[:2], "/", "guest"))
            self.open_conns.add(ch[:2])
            self.process(eff)
        if ch not in self.open_chs:
            eff = self.send(ch[0], C.ChannelOpen(ch))
            self.open_chs.add(ch)
            self.tags[ch] = {}
            self.consumers[ch] = {}
            self.process(eff)

    def declare(self, ch: C.ChKey, q: str) -> None:
        was_open = ch in self.open_chs
        eff = self.ch_cmd(ch, C.QueueDeclare(ch, q, False, True, False, False, False,
                                             ARGS.get(q, {})))
        self.process(eff)
        if not was_open:
            return
        self.model_queues.add(q)
        if q == QL:
            return  # published to directly: its bodies are its own
        if q != DLQ:
            self.bound.add(q)
        eff = self.ch_cmd(ch, C.QueueBind(ch, q, DLX if q == DLQ else FANOUT, "", False, {}))
        self.process(eff)
        if q == "q0":
            self.process(self.ch_cmd(ch, C.QueueBind(ch, q, DX, "", False, {})))
            self.process(self.ch_cmd(ch, C.QueueBind(ch, q, DDX, "", False, {})))

    def duplicate(self, key: str | None) -> bool:
        """The model of ddx's cache: whether a value is a duplicate (else remembered)."""
        if key is None:
            return False
        cache = self.dd_cache
        if key in cache:
            if cache[key] > self.clock:
                return True
            del cache[key]
        while len(cache) >= DD_SIZE:
            del cache[next(iter(cache))]
        cache[key] = self.clock + DD_TTL
        return False

    def count_return(self, body: bytes, q: str) -> None:
        """A copy went back to its queue: past the queue's delivery limit it is gone, to
        dlq (from ql, reason delivery_limit) or dropped."""
        self.returns[(body, q)] += 1
        limit = LIMITS.get(q)
        if limit is None or self.main.level < 4 or self.returns[(body, q)] <= limit:
            return
        del self.ledger[(body, q)]
        if q == QL and DLQ in self.model_queues:
            self.ledger[(body, DLQ)] += 1
            self.dead.add(body)
            self.limit_dead.add(body)

    def return_unacked(self, chs: list[C.ChKey]) -> None:
        """The channels close: their unacked copies go back (counted), before the close's
        effects are followed (which may deliver them, or their dead-lettered copies)."""
        for ch in chs:
            for body, q, ghost in self.tags.get(ch, {}).values():
                if not ghost:
                    self.count_return(body, q)
            if ch in self.tags:
                self.tags[ch] = {}

    def close_model_channel(self, ch: C.ChKey) -> None:
        self.return_unacked([ch])  # (closed by an error: its effect comes first)
        self.open_chs.discard(ch)
        self.tags.pop(ch, None)  # unacked copies go back to their queues: still in the ledger
        self.consumers.pop(ch, None)

    def close_model_conn(self, conn: C.ConnKey) -> None:
        self.open_conns.discard(conn)
        for ch in [c for c in self.open_chs if c[:2] == conn]:
            self.close_model_channel(ch)

    def process(self, eff: list[E.Effect], get_cmd: C.Get | None = None) -> None:
        """Follow the effects: deliveries move copies to a channel (or settle them);
        then account for copies that expired or were dead-lettered."""
        self.follow(eff, get_cmd)
        self.reconcile()

    def follow(self, eff: list[E.Effect], get_cmd: C.Get | None) -> None:
        for e in eff:
            if isinstance(e, E.Deliver):
                q, no_ack = self.consumers[e.ch][e.consumer_tag]
                self.take(e.ch, e.delivery_tag, stored(self.main, e)[3], q, no_ack, e)
            elif isinstance(e, E.GetOk):
                assert get_cmd is not None
                self.take(e.ch, e.delivery_tag, stored(self.main, e)[3], get_cmd.queue,
                          get_cmd.no_ack, e)
            elif isinstance(e, E.ConsumerCancelled):
                del self.consumers[e.ch][e.consumer_tag]
            elif isinstance(e, E.ChannelError):
                self.close_model_channel(e.ch)
            elif isinstance(e, E.ConnectionError):
                self.close_model_conn(e.conn)

    def take(self, ch: C.ChKey, tag: int, body: bytes, q: str, no_ack: bool,
             ef: E.Deliver | E.GetOk) -> None:
        if q == DLQ and self.ledger[(body, DLQ)] == 0:
            self.dead_lettered(body)  # dead-lettered and delivered in the same step
        assert self.ledger[(body, q)] == 1
        assert tag not in self.tags[ch]
        deadline = self.deadline(body, q)
        assert deadline is None or self.main.now_ms < deadline, "an expired message delivered"
        if q in LIMITS and self.main.level >= 4:
            h = decode_properties(stored(self.main, ef)[2]).get("headers") or {}
            n = self.returns[(body, q)]
            assert h.get("x-delivery-count") == (n if n else None), (body, q, n, h)
        if no_ack:
            del self.ledger[(body, q)]
        else:
            self.tags[ch][tag] = (body, q, False)

    def ready_in_model(self, q: str) -> list[tuple[bytes, str]]:
        held = {(b, qq) for t in self.tags.values() for b, qq, ghost in t.values() if not ghost}
        return [k for k in self.ledger if k[1] == q and k not in held]

    def settle(self, ch: C.ChKey, tags: list[int], requeue: bool, reject: bool = False) -> None:
        for tag in tags:
            body, q, ghost = self.tags[ch].pop(tag)
            if requeue and not ghost:
                self.count_return(body, q)
            elif not requeue and not ghost:
                del self.ledger[(body, q)]
                if reject and q in (QT, QL) and DLQ in self.model_queues:
                    self.ledger[(body, DLQ)] += 1  # rejected: dead-lettered to dlq
                    self.dead.add(body)

    # --- time and dead letters ---------------------------------------------------------

    def deadline(self, body: bytes, q: str) -> int | None:
        if q == DLQ and body in self.dead:
            return None  # dead-lettering removes the expiration; dlq has no TTL
        ttls = [self.msg_ttl[body]] if body in self.msg_ttl else []
        if q == QT:
            ttls.append(QT_TTL)
        return self.pub_time[body] + min(ttls) if ttls else None

    def held(self) -> set[tuple[bytes, str]]:
        return {(b, q) for t in self.tags.values() for b, q, ghost in t.values() if not ghost}

    def actual(self) -> Counter[tuple[bytes, str]]:
        s = self.main
        actual: Counter[tuple[bytes, str]] = Counter()
        body = self.body
        for q in s.vhosts["/"].queues.values():
            for m in q.ready:
                actual[(body(m), q.name)] += 1
            for _, m in q.returned:
                actual[(body(m), q.name)] += 1
        for ch in s.channels.values():
            for q, m, _c in ch.unacked.values():
                if not q.deleted:
                    actual[(body(m), q.name)] += 1
        return actual

    def body(self, m: Any) -> bytes:
        return bytes(stored(self.main, m)[3])

    def death(self, body: bytes) -> dict[str, Any]:
        """The latest x-death entry of the dlq copy of ``body``."""
        s = self.main
        dlq = s.vhosts["/"].queues[DLQ]
        msgs = [m for m in dlq.ready] + [m for _, m in dlq.returned] + [
            m for ch in s.channels.values() for q, m, _c in ch.unacked.values() if q is dlq]
        (m,) = [m for m in msgs if self.body(m) == body]
        return dict(decode_properties(stored(s, m)[2])["headers"]["x-death"][0])

    def dead_lettered(self, body: bytes) -> None:
        """The qt copy of ``body`` left automatically and reached dlq."""
        assert DLQ in self.model_queues
        assert self.ledger[(body, QT)] == 1 and (body, QT) not in self.held()
        del self.ledger[(body, QT)]
        self.ledger[(body, DLQ)] = 1
        self.dead.add(body)

    def reconcile(self) -> None:
        now = self.main.now_ms
        actual = self.actual()
        for key in [k for k in self.ledger if k not in actual]:
            body, q = key
            deadline = self.deadline(body, q)
            if q == QT and (body, DLQ) in actual and self.ledger[(body, DLQ)] == 0:
                death = self.death(body)
                assert death["queue"] == QT and death["reason"] in ("expired", "maxlen")
                if death["reason"] == "expired":
                    assert deadline is not None and now >= deadline, "expired too early"
                self.dead_lettered(body)
            elif q in self.allow_drop or (q == QT and (DLQ not in self.model_queues
                                                       or DLQ in self.allow_drop)):
                # deleted / purged (a qt copy: possibly dead-lettered, then purged from dlq)
                del self.ledger[key]
            else:
                assert key not in self.held(), "an unacked copy vanished"
                assert deadline is not None and now >= deadline, f"copy lost: {key}"
                assert q != QT  # expired in qt: must have been dead-lettered
                del self.ledger[key]

    def errors(self) -> list[E.ChannelError | E.ConnectionError]:
        return [e for e in self.step_effects if isinstance(e, E.ChannelError | E.ConnectionError)]

    # --- rules ----------------------------------------------------------------------

    @rule(ch=channels,
          dest=st.sampled_from(["q0", "q0", "q1", QT, QT, DLQ, QL, QL, FANOUT, DX, DX,
                                DDX, DDX, "nosuch"]),
          mandatory=st.booleans(), confirm=st.booleans(), n=st.integers(1, 4),
          expiring=st.booleans(), priority=st.sampled_from([None, 0, 1, 2, 5]),
          delay=st.sampled_from([None, 0, 1, 2, 5, 12]))
    def publish_some(self, ch: C.ChKey, dest: str, mandatory: bool, confirm: bool,
                     n: int, expiring: bool, priority: int | None, delay: int | None) -> None:
        self.catch_up()
        for _ in range(n):
            self.publish(ch, dest, mandatory, confirm, expiring, priority, delay)

    def publish(self, ch: C.ChKey, target: str, mandatory: bool, confirm: bool,
                expiring: bool = False, priority: int | None = None,
                delay: int | None = None) -> None:
        self.body_n += 1
        body = b"m%d" % self.body_n
        exchange, key = (target, "") if target in (FANOUT, DX, DDX) else ("", target)
        self.pub_time[body] = self.clock
        # (ql's copies leave by their limit only; dx's are published without a TTL)
        expiring = expiring and target not in (QL, DX, DDX)
        if expiring:
            self.msg_ttl[body] = MSG_TTL
        props = message_props(expiring, priority)
        if target == DX:
            props = encode_properties(headers={} if delay is None else {"x-delay": delay})
        # a value for ddx: the three in turn (a burst of four evicts and finds duplicates)
        dd_key = None if priority is None else "abc"[(self.body_n + priority) % 3]
        if target == DDX:
            props = encode_properties(
                headers={} if dd_key is None else {"x-deduplication-header": dd_key})
        if ch in self.open_chs:
            if target == DX:
                held = delay is not None and delay > 0
                if held:
                    self.pending[body] = self.clock + delay  # type: ignore[operator]
                dests = ["q0"] if "q0" in self.model_queues and not held else []
            elif target == DDX:
                dup = self.duplicate(dd_key)  # (remembered whether or not q0 is bound)
                dests = ["q0"] if "q0" in self.model_queues and not dup else []
            else:
                dests = sorted(self.bound) if target == FANOUT else (
                    [target] if target in self.model_queues else [])
            for q in dests:
                self.ledger[(body, q)] += 1
        eff = self.ch_cmd(ch, C.Publish(ch, exchange, key, mandatory, props, body,
                                        self.body_n if confirm else 0))
        self.process(eff)
        if ch in self.open_chs:
            kinds = [type(e) for e in eff if not isinstance(e, E.Deliver)]
            assert self.main.vhosts["/"].queues[QT].ready_count() <= QT_MAX if (
                QT in self.model_queues) else True
            expect: list[type] = []
            if mandatory and not dests:
                expect.append(E.Return)
            if confirm:
                expect.append(E.Confirm)
            assert kinds == expect

    @rule(ch=channels, q=queues, no_ack=st.booleans(),
          priority=st.sampled_from([None, None, 0, 3, -1]))
    def consume(self, ch: C.ChKey, q: str, no_ack: bool, priority: int | None) -> None:
        self.catch_up()
        self.tag_n += 1
        tag = f"t{self.tag_n}"
        was_open = ch in self.open_chs
        if was_open and q in self.model_queues:
            self.consumers[ch][tag] = (q, no_ack)
        args = {} if priority is None else {"x-priority": priority}
        eff = self.ch_cmd(ch, C.Consume(ch, q, tag, no_ack, False, False, args))
        if was_open:
            if q in self.model_queues:
                assert E.ConsumeOk(ch, tag) in eff
            else:
                assert [e.reply_code for e in self.errors()] == [404]
        self.process(eff)

    @rule(ch=channels, data=st.data())
    def cancel(self, ch: C.ChKey, data: Any) -> None:
        self.catch_up()
        tags = sorted(self.consumers.get(ch, {}))
        tag = data.draw(st.sampled_from(tags)) if tags else "unknown"
        self.consumers.get(ch, {}).pop(tag, None)
        eff = self.ch_cmd(ch, C.Cancel(ch, tag, False))
        self.process(eff)

    def pick_tag(self, ch: C.ChKey, data: Any) -> int:
        known = sorted(self.tags.get(ch, {}))
        if known and data.draw(st.booleans()):
            return int(data.draw(st.sampled_from(known)))
        return int(data.draw(st.integers(0, 12)))

    def covered(self, ch: C.ChKey, tag: int, multiple: bool) -> list[int] | None:
        """The tags an ack/nack settles, or None when it must fail (406)."""
        known = self.tags[ch]
        if multiple and tag == 0:
            return sorted(known)
        if tag not in known:
            return None
        return sorted(t for t in known if t <= tag) if multiple else [tag]

    @rule(ch=channels, multiple=st.booleans(), data=st.data())
    def ack(self, ch: C.ChKey, multiple: bool, data: Any) -> None:
        self.catch_up()
        tag = self.pick_tag(ch, data)
        self.settle_rule(ch, C.Ack(ch, tag, multiple), tag, multiple, False)

    @rule(ch=channels, multiple=st.booleans(), requeue=st.booleans(), data=st.data())
    def nack(self, ch: C.ChKey, multiple: bool, requeue: bool, data: Any) -> None:
        self.catch_up()
        tag = self.pick_tag(ch, data)
        self.settle_rule(ch, C.Nack(ch, tag, multiple, requeue), tag, multiple, requeue,
                         reject=not requeue)

    def settle_rule(self, ch: C.ChKey, cmd: C.Command, tag: int, multiple: bool,
                    requeue: bool, reject: bool = False) -> None:
        tags = self.covered(ch, tag, multiple) if ch in self.open_chs else []
        eff = self.ch_cmd(ch, cmd)
        if tags is None:
            assert [e for e in eff if isinstance(e, E.ChannelError)][0].reply_code == 406
        else:
            assert not self.errors()
            self.settle(ch, tags, requeue, reject)
        self.process(eff)

    @rule(ch=channels, q=queues, no_ack=st.booleans())
    def get(self, ch: C.ChKey, q: str, no_ack: bool) -> None:
        self.catch_up()
        cmd = C.Get(ch, q, no_ack)
        expected_ready = len(self.ready_in_model(q)) if ch in self.open_chs else 0
        eff = self.ch_cmd(ch, cmd)
        if ch in self.open_chs and q in self.model_queues and self.predictable(q):
            (e,) = [e for e in eff if isinstance(e, E.GetOk | E.GetEmpty)]
            if expected_ready:
                assert isinstance(e, E.GetOk) and e.message_count == expected_ready - 1
            else:
                assert isinstance(e, E.GetEmpty)
        self.process(eff, get_cmd=cmd)

    @rule(ch=channels, q=st.sampled_from([QL, QL, "q1"]), n=st.integers(1, 3),
          how=st.sampled_from(["nack", "reject", "recover"]))
    def bounce(self, ch: C.ChKey, q: str, n: int, how: str) -> None:
        """Take a copy from a queue with a delivery limit and give it back, n times."""
        for _ in range(n):
            before = set(self.tags.get(ch, {}))
            self.get(ch, q, False)
            new = sorted(set(self.tags.get(ch, {})) - before)
            if not new:
                return
            if how == "recover":
                self.recover(ch)
            else:
                self.catch_up()
                self.settle_rule(ch, C.Nack(ch, new[0], False, True, reject=how == "reject"),
                                 new[0], False, True)

    @rule(ch=channels, keys=st.lists(st.sampled_from([None, 0, 1, 2]), min_size=1, max_size=6),
          mandatory=st.booleans())
    def dedup_burst(self, ch: C.ChKey, keys: list[int | None], mandatory: bool) -> None:
        """Publishes to ddx in one step, with values drawn from three (or none)."""
        self.catch_up()
        for k in keys:  # (publish's value for ddx is "abc"[(body_n + priority) % 3])
            self.publish(ch, DDX, mandatory, True, False,
                         None if k is None else (k - self.body_n - 1) % 3)

    def predictable(self, q: str) -> bool:
        """Whether the model knows q's ready count exactly (nothing in it can expire,
        nothing can be dead-lettered into it)."""
        return q not in (QT, DLQ) and not any(b in self.msg_ttl for b, _ in self.ready_in_model(q))

    @rule(ch=channels, n=st.integers(0, 3), global_=st.booleans())
    def qos(self, ch: C.ChKey, n: int, global_: bool) -> None:
        self.catch_up()
        self.process(self.ch_cmd(ch, C.Qos(ch, n, global_)))

    @rule(ch=channels, active=st.booleans())
    def flow(self, ch: C.ChKey, active: bool) -> None:
        self.catch_up()
        self.process(self.ch_cmd(ch, C.Flow(ch, active)))

    @rule(ch=channels)
    def recover(self, ch: C.ChKey) -> None:
        self.catch_up()
        eff = self.ch_cmd(ch, C.Recover(ch))
        if ch in self.open_chs:
            self.settle(ch, sorted(self.tags[ch]), True)
        self.process(eff)

    @rule(ch=channels, q=queues)
    def purge(self, ch: C.ChKey, q: str) -> None:
        self.catch_up()
        ready = self.ready_in_model(q)
        predictable = self.predictable(q)
        eff = self.ch_cmd(ch, C.QueuePurge(ch, q, False))
        if ch in self.open_chs and q in self.model_queues:
            if predictable:
                assert [e for e in eff if not isinstance(e, E.Deliver)] == [
                    E.QueuePurgeOk(ch, len(ready))]
                for k in ready:
                    del self.ledger[k]
            else:
                assert isinstance(eff[-1], E.QueuePurgeOk)
                self.allow_drop.add(q)
        self.process(eff)
        self.allow_drop.clear()

    @rule(ch=channels, q=queues)
    def delete_queue(self, ch: C.ChKey, q: str) -> None:
        self.catch_up()
        ready = self.ready_in_model(q)
        was_open = ch in self.open_chs
        eff = self.ch_cmd(ch, C.QueueDelete(ch, q, False, False, False))
        if was_open:
            # delete-ok, then only the cancels of the queue's consumers (RabbitMQ's order)
            (i_ok,) = [i for i, e in enumerate(eff) if isinstance(e, E.QueueDeleteOk)]
            assert all(isinstance(e, E.ConsumerCancelled) for e in eff[i_ok + 1:])
            if self.predictable(q) or q not in self.model_queues:
                assert eff[i_ok] == E.QueueDeleteOk(ch, len(ready) if q in self.model_queues
                                                    else 0)
            if q in self.model_queues:
                self.follow(eff, None)  # deliveries made before the deletion (expiry)
                eff = []
                if q == QT:
                    self.allow_drop.add(QT)
                    self.reconcile()  # what expired before the deletion went to dlq
                    self.allow_drop.clear()
                self.model_queues.discard(q)
                self.bound.discard(q)
                for k in [k for k in self.ledger if k[1] == q]:
                    del self.ledger[k]
                for t in self.tags.values():
                    for tag, (body, qq, _ghost) in list(t.items()):
                        if qq == q:
                            t[tag] = (body, qq, True)
        self.process(eff)
        if was_open:
            for cons in self.consumers.values():
                assert all(qq != q for qq, _ in cons.values())

    @rule(ch=channels, q=queues)
    def redeclare(self, ch: C.ChKey, q: str) -> None:
        self.catch_up()
        if ch in self.open_chs:
            self.declare(ch, q)

    @rule(ch=channels)
    def close_channel(self, ch: C.ChKey) -> None:
        self.catch_up()
        self.return_unacked([ch])
        eff = self.send(ch[0], C.ChannelClose(ch))
        # effects come in order: anything expiring before the close (which may deliver
        # to this channel) first, then redeliveries of what the close returned
        self.follow(eff, None)
        self.close_model_channel(ch)
        self.reconcile()

    @rule(ch=channels)
    def open_ch(self, ch: C.ChKey) -> None:
        self.catch_up()
        self.open_channel(ch)

    @rule(conn=st.sampled_from(CONNS))
    def close_connection(self, conn: C.ConnKey) -> None:
        self.catch_up()
        self.return_unacked([c for c in self.open_chs if c[:2] == conn])
        eff = self.send(conn[0], C.ConnectionClose(conn))
        self.follow(eff, None)
        self.close_model_conn(conn)
        self.reconcile()

    @rule(down_first=st.booleans())
    def restart_n2(self, down_first: bool) -> None:
        self.catch_up()
        self.return_unacked([c for c in self.open_chs if c[:2] == ("n2", 1)])
        if down_first:  # the leader (n1) notices n2 went away
            eff = self.send("n1", C.NodeDown("n2", self.incarnation["n2"]))
            self.follow(eff, None)
            self.close_model_conn(("n2", 1))
            self.reconcile()
        self.incarnation["n2"] += 1
        eff = self.send("n2", C.NodeUp("n2", self.incarnation["n2"]))
        self.follow(eff, None)
        self.close_model_conn(("n2", 1))
        self.reconcile()

    @rule(dt=st.integers(0, 4))
    def tick(self, dt: int) -> None:
        self.clock += dt
        self.catch_up()
        self.process(self.send("n1", C.Tick()))

    @rule()
    def snapshot_and_restore(self) -> None:
        self.restored = helpers.clone(self.main)
        assert self.restored == self.main

    @rule(data=st.data())
    def resubmit_old_batch(self, data: Any) -> None:
        live = [b for b in self.log if b.incarnation == self.incarnation[b.node]]
        batch = data.draw(st.sampled_from(live))
        assert apply_batch(self.main, batch) == []
        self.step_effects = []

    # --- invariants ---------------------------------------------------------------------

    @invariant()
    def replicas_equal(self) -> None:
        assert self.main == self.replica
        if self.restored is not None:
            assert self.restored == self.main

    @invariant()
    def every_copy_in_exactly_one_place(self) -> None:
        actual = self.actual()
        assert actual == self.ledger
        assert all(n == 1 for n in actual.values())

    @invariant()
    def nothing_overdue_and_deadlines_indexed(self) -> None:
        s = self.main
        now = s.now_ms
        nd = next_deadline(s)
        assert nd is None or nd > now
        for q in s.queues.values():
            if q.ready or q.returned:
                head = q.returned[0][1] if q.returned else q.ready[0]
                # a bare id (plain queue) has no expiry
                assert isinstance(head, int) or head.expires_at is None or head.expires_at > now
            d = queue_deadline(q)
            if d is not None:
                assert q.qid in s.timed and nd is not None and d >= nd
                if s.deadlines_built:  # level 3: the heap has an entry no later than d
                    assert s.pushed.get(q.qid, d + 1) <= d
                    assert (s.pushed[q.qid], q.qid) in s.deadlines
            if q.name == QT:
                assert q.ready_count() <= QT_MAX

    @invariant()
    def store_references_match_what_queues_and_channels_hold(self) -> None:
        """Every queue entry and unacked delivery holds one reference to its message's
        bytes, and nothing else does: no message leaks, none is let go too early (the
        MemoryStore raises on a release too many)."""
        for s in (self.main, self.restored):
            if s is None:
                continue
            held, live = helpers.held_references(s)
            assert held == live
            # the dead-letter headers kept while applying are those the store gives
            assert s.headers == helpers.expected_headers(s)

    @invariant()
    def delivery_limit_deaths(self) -> None:
        """A copy dead-lettered from ql for its delivery limit says so in x-death, and
        carries no x-delivery-count (a quorum queue adds it to deliveries only)."""
        s = self.main
        if DLQ not in s.vhosts["/"].queues:
            return
        for body, q in self.ledger:
            if q == DLQ and body in self.limit_dead:
                death = self.death(body)
                assert (death["queue"], death["reason"]) == (QL, "delivery_limit")

    @invariant()
    def channels_and_tags_match_model(self) -> None:
        s = self.main
        assert set(s.channels) == self.open_chs
        assert set(s.conns) == self.open_conns
        for key, ch in s.channels.items():
            assert {t: self.body(m) for t, (_q, m, _c) in ch.unacked.items()} == {
                t: b for t, (b, _q, _g) in self.tags[key].items()}
            assert set(ch.consumers) == set(self.consumers[key])

    @invariant()
    def credit_respected_and_no_stuck_messages(self) -> None:
        s = self.main
        delivered_to = {e.ch for e in self.step_effects if isinstance(e, E.Deliver)
                        and e.ch in s.channels and e.delivery_tag in s.channels[e.ch].unacked}
        for ch in s.channels.values():
            per_consumer: Counter[str] = Counter()
            for _q, _m, c in ch.unacked.values():
                if c is not None:
                    per_consumer[c.tag] += 1
            for c in ch.consumers.values():
                assert c.unacked == per_consumer[c.tag]
                if c.prefetch and not c.no_ack:
                    assert c.unacked <= c.prefetch
            assert ch.global_unacked == sum(per_consumer.values())
            if ch.global_prefetch and ch.key in delivered_to:
                assert ch.global_unacked <= ch.global_prefetch
        for q in s.vhosts["/"].queues.values():
            assert q.unacked == sum(1 for ch in s.channels.values()
                                    for qq, _m, _c in ch.unacked.values() if qq is q)
            if q.ready_count():
                for c in q.consumers.values():
                    assert not has_credit(c, s.channels[c.ch]), "a ready message is stuck"
            if q.consumer_priorities:  # highest x-priority served first
                prios = [c.priority for c in q.service]
                assert prios == sorted(prios, reverse=True)


MachineLog.TestCase.settings = settings(
    max_examples=200, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestMachineLog = MachineLog.TestCase


class MachineLogLevel2(MachineLog):
    """The same logs at command level 2: expiry visits every timed queue (as release
    0.2.0 does) instead of the deadline heap (level 3)."""

    def __init__(self) -> None:
        level, helpers.LEVEL_UNDER_TEST = helpers.LEVEL_UNDER_TEST, 2
        try:
            super().__init__()
        finally:
            helpers.LEVEL_UNDER_TEST = level


MachineLogLevel2.TestCase.settings = settings(
    max_examples=60, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestMachineLogLevel2 = MachineLogLevel2.TestCase


# --- batching does not change the outcome ---------------------------------------------------


def _simple_log() -> list[C.Command]:
    ch = ("n1", 1, 1)
    return [
        C.ConnectionOpen(ch[:2], "/", "guest"), C.ChannelOpen(ch),
        C.QueueDeclare(ch, "q", False, False, False, False, False, {}),
        C.Qos(ch, 2, False), C.Consume(ch, "q", "c", False, False, False, {}),
        *[C.Publish(ch, "", "q", False, b"\x00\x00", b"%d" % i, i + 1) for i in range(5)],
        C.Ack(ch, 1, False), C.Nack(ch, 2, False, True), C.Ack(ch, 4, True),
        C.ChannelClose(ch),
    ]


@st.composite
def _splits(draw: Any) -> list[int]:
    n = len(_simple_log())
    return sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1)))


def test_batch_boundaries_do_not_matter() -> None:
    from hypothesis import given

    cmds = _simple_log()
    ref = guest_state()
    ref_eff: list[E.Effect] = []
    for i, cmd in enumerate(cmds):  # one command per batch
        ref_eff += apply_batch(ref, C.Batch("n1", 1, 1000 + i, 0, (cmd,)))
    ref.dedupe.clear()

    @settings(max_examples=50, deadline=None)
    @given(_splits())
    def check(cuts: list[int]) -> None:
        s = guest_state()
        eff: list[E.Effect] = []
        bounds = [0, *cuts, len(cmds)]
        for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
            eff += apply_batch(s, C.Batch("n1", 1, i + 1, 0, tuple(cmds[a:b])))
        assert eff == ref_eff
        s.dedupe.clear()
        assert s == ref

    check()
