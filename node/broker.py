"""The node process's core: the Raft replica, the AMQP connections, and the
loop that joins them.

Everything the connections produce during one event-loop turn is proposed as
one Raft entry (group commit). After each tick the journal is flushed to disk
and the effects addressed to this node are handed to their connections.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cluster import machine
from cluster.commands import Batch, Command, NodeUp, Tick, encode_batch
from cluster.effects import Deliver, Effect, Fault
from cluster.raft import RaftNode
from node.auth import LoginThrottle, RateLimitedLog
from node.config import Config
from node.membership import MembershipWatch
from node.metrics import Metrics

if TYPE_CHECKING:
    from node.connection import AMQPConnection

log = logging.getLogger(__name__)

# Housekeeping tick (elections, heartbeats to peers, log compaction) when idle.
IDLE_TICK_S = 0.02
# A batch not applied this long after it was proposed is proposed again (its
# idempotency key makes that safe): pysyncobj may drop a forwarded command
# across a leader change without ever calling back. Everything in flight is
# resubmitted at once when the leader changes; this timeout only catches the
# rest, and is long so that a slow but healthy cluster is not flooded with
# copies (measured: 1 s turned a backlog into a resubmission storm).
RESUBMIT_AFTER_S = 5.0
# A housekeeping tick this late means the loop itself was stalled.
STALL_S = 0.2
# At most one Tick command per this many ms (expiry is checked on every batch
# anyway; the Tick only matters when nothing else is happening).
TICK_MIN_INTERVAL_MS = 20
# How often connections are checked for handshake and frame timeouts.
SWEEP_EVERY_S = 0.5


def _target(ef: Effect) -> Any:
    """The channel key (node, connection, channel) an effect is addressed to, the
    connection key (node, connection) for a connection-level effect, or (node, 0)
    for a Fault (logged by the node that proposed the command)."""
    key = getattr(ef, "ch", None) or getattr(ef, "conn", None)
    return key if key is not None else (ef.node, 0)  # type: ignore[attr-defined]


class Broker:
    def __init__(self, cfg: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.loop = loop
        self.node_id = cfg.node_id
        # Each process life gets a new incarnation; NodeUp with it clears the
        # previous life's connections, consumers and transient queues.
        self.incarnation = time.time_ns() // 1_000_000
        self.raft = RaftNode(
            cfg.node_id,
            cfg.raft_address,
            list(cfg.peers),
            cfg.data_path,
            secret=cfg.cluster_secret,
            fsync=cfg.fsync,
            election_timeout=cfg.election_timeout,
            snapshot_entries=cfg.snapshot_entries,
            snapshot_bytes=cfg.snapshot_mib << 20,
            bind_address=cfg.raft_bind or None, dns_cache_s=cfg.raft_dns_cache,
        )
        self.raft.set_incarnation(self.incarnation)
        self.connections: dict[int, AMQPConnection] = {}
        # Connection numbers are unique across this node's lives, so a stale
        # effect from an old life can never reach a new connection.
        self._next_conn = (self.incarnation % (1 << 31)) << 16
        self._batch: list[Command] = []
        self._batch_seq = 0
        self._flush_scheduled = False
        self._after_apply: dict[int, list[Callable[[], None]]] = {}
        # What applied entries caused for this node's clients, held while the
        # replica catches up (see _tick): (effects, own batch seqs applied)
        self._catch_up: list[tuple[list[Effect], list[int]]] = []
        # seq -> (encoded batch, when last proposed): proposed, not yet applied
        self._in_flight: dict[int, tuple[bytes, float]] = {}
        self._unsent: list[int] = []  # seqs in _in_flight not yet handed to Raft
        self._known_leader: str | None = None
        self._tick_scheduled = False
        self._last_tick_ms = 0
        self._last_idle_tick = time.monotonic()
        self._tick_handle: asyncio.TimerHandle | None = None
        self._server: asyncio.AbstractServer | None = None
        self.metrics = Metrics(self)
        self.membership = MembershipWatch(self)
        self.ready = False
        self.isolated = False  # cut off from the majority: clients are refused
        self._flow_paused: list[AMQPConnection] = []
        self._flow_checked = 0.0
        self.last_ack = 0.0
        self.login_throttle = LoginThrottle()
        self.auth_log = RateLimitedLog(logging.getLogger("raftmq.auth"))
        self._swept = 0.0

    # --- proposing ----------------------------------------------------------------

    def new_conn_no(self) -> int:
        self._next_conn += 1
        return self._next_conn

    def propose(self, cmd: Command) -> None:
        """Queue a command for the Raft entry of this loop turn."""
        self._batch.append(cmd)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def after_apply(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the commands proposed so far in this turn are applied."""
        self._after_apply.setdefault(self._batch_seq + 1, []).append(fn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._batch or (self._batch_seq + 1) in self._after_apply:
            self._batch_seq += 1
            batch = Batch(self.node_id, self.incarnation, self._batch_seq,
                          time.time_ns() // 1_000_000, tuple(self._batch))
            self._batch = []
            self._in_flight[batch.seq] = (self._encode(batch), 0.0)
            self._unsent.append(batch.seq)
            self.metrics.batches += 1
        self._send_batches()
        # An entry is appended in a tick, synced to disk, and then (a lone
        # node) committed and applied in the next.
        self._tick()

    def _encode(self, batch: Batch) -> bytes:
        """The entry for ``batch``. A command that cannot be encoded (the edge lets
        nothing through that could not, so: a bug) is left out, and its client's
        connection closed with 541; everyone else's commands of the turn go on."""
        try:
            return encode_batch(batch)
        except Exception:
            log.exception("a batch of %d commands did not encode; encoding them one by one",
                          len(batch.commands))
        kept: list[Command] = []
        for cmd in batch.commands:
            try:
                encode_batch(Batch(batch.node, batch.incarnation, 0, 0, (cmd,)))
            except Exception:
                self.metrics.faults += 1
                key = getattr(cmd, "ch", None) or getattr(cmd, "conn", None)
                conn = self.connections.get(key[1]) if key and key[0] == self.node_id else None
                log.error("dropping %s: it does not encode", type(cmd).__name__)
                if conn is not None:
                    conn.force_close(541, "INTERNAL_ERROR - see the broker log")
                continue
            kept.append(cmd)
        return encode_batch(Batch(batch.node, batch.incarnation, batch.seq,
                                  batch.timestamp_ms, tuple(kept)))

    def _send_batches(self) -> None:
        """Hand batches to Raft in sequence order.

        Per-publisher order depends on it: with no leader known, batches wait
        here (pysyncobj would forward them to the next leader ahead of the
        ones lost with the old one); when the leader changes, everything in
        flight is proposed again, oldest first, before anything new."""
        leader = self.raft.leader
        if leader is None:
            return
        now = time.monotonic()
        if leader != self._known_leader:
            self._known_leader = leader
            for seq, (data, sent) in self._in_flight.items():
                if sent:
                    self.raft.propose(data)
                    self._in_flight[seq] = (data, now)
                    self.metrics.resubmitted += 1
        for seq in self._unsent:
            entry = self._in_flight.get(seq)
            if entry is not None:
                self.raft.propose(entry[0])
                self._in_flight[seq] = (entry[0], now)
        self._unsent.clear()

    def propose_once(self, cmd: Command) -> None:
        """Propose ``cmd`` in a batch of its own that is never resubmitted:
        for commands only valid from the leader that proposed them (NodeDown;
        a deposed leader's copy must not reach the next leader)."""
        self._flush()  # what is pending keeps its sequence number (and after_apply hooks)
        self._batch_seq += 1
        batch = Batch(self.node_id, self.incarnation, self._batch_seq,
                      time.time_ns() // 1_000_000, (cmd,))
        self.raft.propose(encode_batch(batch))
        self.wake()

    def wake(self) -> None:
        """A Raft socket had an event: tick soon (once per loop turn)."""
        if not self._tick_scheduled:
            self._tick_scheduled = True
            self.loop.call_soon(self._woken)

    def _woken(self) -> None:
        self._tick_scheduled = False
        self._tick()

    def _propose_tick(self) -> None:
        """Leader only: when something in the state falls due (a message TTL,
        a queue's x-expires), propose a Tick so time passes in the machine
        even with no other traffic."""
        due = machine.next_deadline(self.raft.state)
        if due is None or not self.raft.is_leader:
            return
        now_ms = time.time_ns() // 1_000_000
        if due <= now_ms and now_ms - self._last_tick_ms >= TICK_MIN_INTERVAL_MS:
            self._last_tick_ms = now_ms
            self.propose(Tick())

    def _resubmit(self) -> None:
        """Propose again what was not applied in time (lost on the way)."""
        self._send_batches()
        if not self._in_flight or self._known_leader is None:
            return
        now = time.monotonic()
        late = [seq for seq, (_, sent) in self._in_flight.items()
                if sent and now - sent > RESUBMIT_AFTER_S]
        for seq in late:  # oldest first: dict order is sequence order
            data = self._in_flight[seq][0]
            self._in_flight[seq] = (data, now)
            self.raft.propose(data)
            self.metrics.resubmitted += 1

    def _tick(self) -> None:
        """One Raft tick; then make what it appended durable and tick again.

        The journal is fdatasync'ed right after the tick that appended to it
        and before the next tick, in which a leader counts its own copy
        towards a commit: so nothing (confirm, delivery) leaves before its
        entry is on disk here, and on a majority (followers sync before they
        acknowledge: see cluster/raft.py). Syncing inline, one sync per loop
        turn for everything that turn appended, measured 10-25 % more
        throughput than syncing in a worker thread while the loop went on
        (the thread hand-off cost more than the overlap gained)."""
        effects = self.raft.tick()
        applied = self.raft.take_applied()
        for seq in applied:
            self._in_flight.pop(seq, None)
        if not self._catch_up and not self.raft.catching_up:
            if effects:
                self.dispatch(effects)
            self._run_after_apply(applied)
        elif effects or applied or not self.raft.catching_up:
            # While this replica applies entries the leader committed long ago
            # (it was cut off, paused, restarted), a later entry of the same
            # catch-up may take back what an earlier one gave its consumers
            # (its own NodeDown, a channel closed): its effects wait until it
            # has applied everything the leader says is committed, and then
            # go out against that state (chaos seed 908683: one catch-up over
            # several ticks delivered messages already given to others).
            self._catch_up.append((self._mine(effects), applied))
            if not self.raft.catching_up:
                held, self._catch_up = self._catch_up, []
                for mine, seqs in held:
                    if mine:
                        self.dispatch(mine)
                    self._run_after_apply(seqs)
        if self.raft.dirty:
            self.raft.flush()
            # A lone node commits and applies what it just synced right away.
            self._tick()
        elif effects or applied:
            self._check_flow()

    def _run_after_apply(self, seqs: list[int]) -> None:
        for seq in seqs:
            for fn in self._after_apply.pop(seq, ()):
                try:
                    fn()
                except Exception:
                    log.exception("after-apply callback %r failed", fn)

    def _check_flow(self) -> None:
        """Pause reading from publishers while a consumed queue backs up.

        Without this, publishing outruns delivery on one core and end-to-end
        latency grows without bound (measured: seconds). Queues without
        consumers may grow freely, as in RabbitMQ, and so may queues whose
        consumers stopped acknowledging: pausing only helps while acks flow."""
        high = self.cfg.flow_high_water
        now = time.monotonic()
        if not high or now - self._flow_checked < 0.005:
            return
        self._flow_checked = now
        worst = max((ready for _, _, ready, _, consumers in machine.queue_stats(self.raft.state)
                     if consumers), default=0)
        if now - self.last_ack > 0.25:
            worst = 0  # consumers are stuck or gone: never block publishers on them
        if not self._flow_paused and worst > high:
            recent = now - 1.0
            self._flow_paused = [c for c in self.connections.values() if c.last_publish > recent]
            for conn in self._flow_paused:
                conn.pause_reading()
        elif self._flow_paused and worst <= high // 2:
            for conn in self._flow_paused:
                conn.resume_reading()
            self._flow_paused = []

    def _idle_tick(self) -> None:
        now = time.monotonic()
        if now - self._last_idle_tick > STALL_S:
            self.raft.postpone_election()
        self._last_idle_tick = now
        try:
            self._tick()
            self._resubmit()
            self._check_flow()
            if now - self._swept >= SWEEP_EVERY_S:
                self._swept = now
                for conn in list(self.connections.values()):
                    conn.check_timeouts(now)
            if self.ready:
                self.membership.check()
                self._propose_tick()
        finally:
            self._tick_handle = self.loop.call_later(IDLE_TICK_S, self._idle_tick)

    # --- effects -------------------------------------------------------------------

    def _mine(self, effects: list[Effect]) -> list[Effect]:
        """The effects addressed to this node's clients."""
        node = self.node_id
        return [ef for ef in effects if _target(ef)[0] == node]

    def dispatch(self, effects: list[Effect]) -> None:
        """Run effects addressed to this node's clients (others are skipped)."""
        state = self.raft.state
        me = machine.nodes(state).get(self.node_id)
        if me is not None and me.down and me.incarnation == self.incarnation:
            # A catch-up that ends with this node's own NodeDown: what earlier
            # entries delivered here now belongs to other consumers (chaos
            # seed 8). The membership watch starts a new life.
            return
        node = self.node_id
        conns = self.connections
        touched: dict[int, AMQPConnection] = {}
        for ef in effects:
            key = _target(ef)
            if key[0] != node:
                continue
            conn = conns.get(key[1])
            if conn is None:
                if type(ef) is Fault:
                    self.metrics.faults += 1
                    log.error("a command of this node failed in the state machine (its "
                              "connection is closed with 541): %s: %s", ef.command, ef.error)
                continue
            if type(ef) is Deliver and not machine.channel_open(state, key):
                continue  # closed later in the same catch-up: already requeued
            try:
                conn.run_effect(ef)
            except Exception:
                # One connection's failure (an effect it cannot encode, ...) is its own:
                # it is closed, the others get their effects, flushes and confirms.
                self._connection_failed(conn, f"running {type(ef).__name__}")
                touched.pop(key[1], None)
                continue
            touched[key[1]] = conn
        for conn in touched.values():
            try:
                conn.effects_done()
            except Exception:
                self._connection_failed(conn, "flushing effects")

    def _connection_failed(self, conn: AMQPConnection, doing: str) -> None:
        log.exception("internal error on connection %s (%s) while %s; closing it with 541",
                      conn.peer, conn.key, doing)
        self.metrics.faults += 1
        try:
            conn.force_close(541, "INTERNAL_ERROR - see the broker log")
        except Exception:
            log.exception("closing connection %s failed; dropping it", conn.key)
            conn.abort()

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, timeout: float | None = None) -> None:
        self.raft.attach(self.loop, self.wake)
        self._tick_handle = self.loop.call_later(0, self._idle_tick)
        deadline = None if timeout is None else time.monotonic() + timeout
        log.info("node %s waiting for a Raft leader", self.node_id)
        while not self.raft.is_ready:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("no Raft leader elected")
            await asyncio.sleep(0.01)
        done: asyncio.Future[None] = self.loop.create_future()

        def up() -> None:
            if not done.done():
                done.set_result(None)

        self._propose_node_up()
        self.after_apply(up)
        await asyncio.wait_for(done, timeout=None if deadline is None else max(1.0, deadline - time.monotonic()))
        self.ready = True
        self._known_leader = self.raft.leader
        log.info("node %s up (incarnation %d); state has %d queues", self.node_id, self.incarnation,
                 sum(1 for _ in machine.queue_stats(self.raft.state)))

    def _propose_node_up(self) -> None:
        http = f"{self.cfg.metrics_host}:{self.cfg.metrics_port}" if self.cfg.metrics_port else ""
        self.propose(NodeUp(self.node_id, self.incarnation, self.cfg.raft_address, http))

    def close_clients(self, reason: str) -> None:
        for conn in list(self.connections.values()):
            conn.force_close(320, reason)

    def new_life(self) -> None:
        """The cluster recorded this node's life as over (NodeDown): drop its
        clients and everything in flight, and come back as a new incarnation."""
        self.close_clients("CONNECTION_FORCED - node was declared down by the cluster")
        self.incarnation = max(time.time_ns() // 1_000_000, self.incarnation + 1)
        self.raft.set_incarnation(self.incarnation)
        self._in_flight.clear()
        self._unsent.clear()
        self._after_apply.clear()
        self._catch_up.clear()
        self._batch = []
        self._propose_node_up()

    async def serve(self) -> None:
        from node.connection import AMQPConnection

        self._server = await self.loop.create_server(
            lambda: AMQPConnection(self), self.cfg.amqp_host, self.cfg.amqp_port,
            reuse_address=True, backlog=1024,
        )
        log.info("AMQP listening on %s:%d", self.cfg.amqp_host, self.cfg.amqp_port)

    async def stop(self) -> None:
        """Close the listener and every connection (320), flush, and stop Raft."""
        if self._server is not None:
            self._server.close()
        self.close_clients("CONNECTION_FORCED - broker shutdown")
        # Let the ConnectionClose commands reach the log.
        self._flush()
        await asyncio.sleep(0.05)
        self._tick()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self.raft.flush()
        self.raft.close()
