"""The node process's core: its replica of the Raft log, its AMQP connections, and
the event-loop housekeeping that joins them.

* Commands from connections go to the :class:`~cluster.proposer.Proposer` (one
  Raft entry per loop turn, resubmission, ordering, the catch-up gate).
* What applied entries address to this node's clients is dispatched to their
  connections; one connection's failure there closes only that connection.
* Housekeeping every 20 ms: Raft ticks when idle, late resubmissions, flow control
  (publishers paused while a consumed queue backs up), handshake and frame
  timeouts, membership duties (node/services/membership.py), Tick commands that let time
  pass in the machine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from cluster import machine
from cluster.commands import LEVEL, Bootstrap, Command, NodeUp, Supports, Tick
from cluster.effects import Deliver, Effect, Fault, ReplyDeliver
from cluster.machine import access
from cluster.proposer import Proposer, target
from cluster.replica import RaftStatus, Replica
from node.amqp.connection import AMQPConnection
from node.amqp.flow import Backlog
from node.amqp.login import Authenticator
from node.amqp.passwords import SHA256, hash_password
from node.config import Config, tls_context
from node.services.alarms import Alarms, Monitor, trim_heap
from node.services.membership import MembershipWatch
from node.services.metrics import Metrics
from node.shovel.runner import Shovels

if TYPE_CHECKING:
    from node.mgmt.framework import ApiSession

log = logging.getLogger(__name__)

# Housekeeping tick (elections, heartbeats to peers, log compaction) when idle.
IDLE_TICK_S = 0.02
# A housekeeping tick this late means the loop itself was stalled.
STALL_S = 0.2
# At most one Tick command per this many ms (expiry is checked on every batch
# anyway; the Tick only matters when nothing else is happening).
TICK_MIN_INTERVAL_MS = 20
# How often connections are checked for handshake and frame timeouts.
SWEEP_EVERY_S = 0.5
# State machine faults logged at most this many times per window (the rest are counted).
FAULT_LOG_MAX = 10
FAULT_LOG_S = 10.0
# How often the node measures its memory and free disk (node/services/alarms.py).
ALARM_CHECK_S = 1.0
# How long a starting node waits for the cluster to enable the level every member announced.
LEVEL_SETTLE_S = 5.0


def _default_raft(cfg: Config) -> Replica:
    from cluster.raft.node import RaftNode  # pysyncobj: only when a real node runs

    return RaftNode(
        cfg.node_id, cfg.raft_address, list(cfg.peers), cfg.data_path,
        secret=cfg.cluster_secret, fsync=cfg.fsync, election_timeout=cfg.election_timeout,
        snapshot_entries=cfg.snapshot_entries, snapshot_bytes=cfg.snapshot_mib << 20,
        bind_address=cfg.raft_bind or None, dns_cache_s=cfg.raft_dns_cache,
    )


class Broker:
    def __init__(self, cfg: Config, loop: asyncio.AbstractEventLoop,
                 raft: Replica | None = None) -> None:
        """``raft``: the replica to use (default: a pysyncobj node from ``cfg``)."""
        self.cfg = cfg
        self.loop = loop
        self.node_id = cfg.node_id
        # Each process life gets a new incarnation; NodeUp with it clears the
        # previous life's connections, consumers and transient queues.
        self.incarnation = time.time_ns() // 1_000_000
        self.raft: Replica = raft if raft is not None else _default_raft(cfg)
        self.connections: dict[int, AMQPConnection] = {}
        # Management API requests' own connections (node/mgmt/framework.py ApiSession), by number.
        self.api_sessions: dict[int, ApiSession] = {}
        # Connection numbers are unique across this node's lives, so a stale
        # effect from an old life can never reach a new connection.
        self._next_conn = (self.incarnation % (1 << 31)) << 16
        self.metrics = Metrics(self)
        self.proposer = Proposer(self.raft, self.node_id, self.incarnation, self.dispatch,
                                 unencodable=self._unencodable,
                                 level=lambda: self.raft.state.level)
        self.metrics.proposer = self.proposer
        self.membership = MembershipWatch(self)
        self.auth = Authenticator(lambda name: self.raft.state.users.get(name),
                                  cfg.loopback_users, self.metrics)
        self.ready = False
        self.isolated = False  # cut off from the majority: clients are refused
        self._flush_scheduled = False
        self._tick_scheduled = False
        self._tick_handle: asyncio.TimerHandle | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self.draining = False  # node/services/maintenance.py: out of service until it restarts
        self.shovels = Shovels(self)  # dynamic shovels, run while this node leads
        self._last_tick_ms = 0
        self._last_idle_tick = time.monotonic()
        self._swept = 0.0
        # publishers paused while a consumed queue backs up (node/amqp/flow.py)
        self.backlog = Backlog(cfg.flow_high_water, lambda: self.metrics.acked,
                               lambda: machine.queue_stats(self.raft.state),
                               self.connections.values)
        self._fault_window = 0.0
        self._faults_logged = 0
        self._faults_hidden = 0
        self.alarms = Alarms(
            Monitor(cfg.vm_memory_high_watermark, cfg.disk_free_limit, cfg.data_dir),
            self.node_id, self.propose, lambda: self.raft.state.alarms, self._alarm_changed)
        self.alarms.incarnation = self.incarnation
        self._alarms_checked = 0.0

    # --- what connections need (node.amqp.connection.Node) --------------------------------

    def new_conn_no(self) -> int:
        self._next_conn += 1
        return self._next_conn

    def register(self, conn: AMQPConnection) -> None:
        self.connections[conn.conn_no] = conn
        self.metrics.connections_opened += 1

    def unregister(self, conn: AMQPConnection) -> None:
        if self.connections.pop(conn.conn_no, None) is not None:
            self.metrics.connections_closed += 1

    def may_open(self, user: str, vhost: str) -> str | None:
        """RabbitMQ's checks at connection.open: the vhost exists and the user has
        permissions on it; neither the vhost's nor the user's connection limit is
        reached (counted cluster-wide, in the replicated state)."""
        state = self.raft.state
        vh = state.vhosts.get(vhost)
        if vh is None or not access.vhost_access(state, user, vhost):
            return f"access to vhost '{vhost}' refused for user '{user}'"
        limit = vh.limits.get("max-connections")
        if limit is not None and sum(1 for c in state.conns.values()
                                     if c.vhost == vhost) >= limit:
            return (f"access to vhost '{vhost}' refused for user '{user}': connection limit "
                    f"({limit}) is reached")
        record = state.users.get(user)
        limit = record.limits.get("max-connections") if record is not None else None
        if limit is not None and sum(1 for c in state.conns.values() if c.user == user) >= limit:
            return (f"access to vhost '{vhost}' refused for user '{user}': user connection "
                    f"limit ({limit}) is reached")
        return None

    def may_open_channel(self, user: str) -> str | None:
        state = self.raft.state
        record = state.users.get(user)
        limit = record.limits.get("max-channels") if record is not None else None
        if limit is None:
            return None
        if sum(len(c.channels) for c in state.conns.values() if c.user == user) >= limit:
            return (f"number of channels opened for user '{user}' has reached the maximum "
                    f"allowed user limit ({limit})")
        return None

    def propose(self, cmd: Command) -> None:
        """Queue a command for the Raft entry of this loop turn."""
        self.proposer.propose(cmd)
        self._schedule_flush()

    def after_apply(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the commands proposed so far in this turn are applied."""
        self.proposer.after_apply(fn)
        self._schedule_flush()

    async def submit(self, *cmds: Command, timeout: float = 10.0) -> None:
        """Propose ``cmds`` in this turn's entry and wait until it is applied here
        (TimeoutError when the cluster does not commit it in time)."""
        done: asyncio.Future[None] = self.loop.create_future()

        def applied() -> None:
            if not done.done():
                done.set_result(None)

        for cmd in cmds:
            self.proposer.propose(cmd)
        self.after_apply(applied)
        await asyncio.wait_for(done, timeout)

    def propose_once(self, cmd: Command) -> None:
        """A batch of its own, never resubmitted (see Proposer.propose_once)."""
        self.proposer.propose_once(cmd)
        self.wake()

    # --- what metrics need (node.services.metrics.Source) -------------------------------------

    def connection_count(self) -> int:
        return len(self.connections)

    @property
    def alarm(self) -> str | None:
        """Why publishers are blocked (an alarm somewhere in the cluster), None if not."""
        return self.alarms.reason

    def _alarm_changed(self, reason: str | None) -> None:
        for conn in list(self.connections.values()):
            conn.alarm(reason)

    def channel_count(self) -> int:
        return sum(len(c.channels) for c in self.connections.values())

    def output_buffered(self) -> list[int]:
        """Bytes written to each connection's socket and not yet taken by the kernel."""
        return [c.flow.buffered for c in self.connections.values() if c.flow is not None]

    def queue_stats(self) -> Iterable[tuple[str, str, int, int, int]]:
        return machine.queue_stats(self.raft.state)

    def raft_status(self) -> RaftStatus:
        return self.raft.status()

    # --- driving the log ---------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self.proposer.flush()
        # An entry is appended in a tick, synced to disk, and then (a lone
        # node) committed and applied in the next.
        self._tick()

    def wake(self) -> None:
        """A Raft socket had an event: tick soon (once per loop turn)."""
        if not self._tick_scheduled:
            self._tick_scheduled = True
            self.loop.call_soon(self._woken)

    def _woken(self) -> None:
        self._tick_scheduled = False
        self._tick()

    def _tick(self) -> None:
        if self.proposer.run():
            self.backlog.check()

    def _unencodable(self, cmd: Command) -> None:
        self.metrics.faults += 1
        key = getattr(cmd, "ch", None) or getattr(cmd, "conn", None)
        conn = self.connections.get(key[1]) if key and key[0] == self.node_id else None
        if conn is not None:
            conn.force_close(541, "INTERNAL_ERROR - see the broker log")

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

    def _idle_tick(self) -> None:
        now = time.monotonic()
        if now - self._last_idle_tick > STALL_S:
            self.raft.postpone_election()
        self._last_idle_tick = now
        try:
            self._tick()
            if not self.proposer.holding:
                self.raft.collect()  # every effect applied so far is written
            self.proposer.resubmit_late()
            self.backlog.check()
            if now - self._swept >= SWEEP_EVERY_S:
                self._swept = now
                for conn in list(self.connections.values()):
                    conn.check_timeouts(now)
            if self.ready:
                self.membership.check()
                self._propose_tick()
                if now - self._alarms_checked >= ALARM_CHECK_S:
                    self._alarms_checked = now
                    # memory no longer needed goes back to the system before it is measured
                    self.raft.release_pages()
                    trim_heap()
                    self.alarms.check()
                else:
                    self.alarms.update()
        finally:
            self._tick_handle = self.loop.call_later(IDLE_TICK_S, self._idle_tick)

    # --- effects -------------------------------------------------------------------

    def dispatch(self, effects: list[Effect]) -> None:
        """Run effects addressed to this node's clients (others are skipped). One
        connection's failure is its own: it is closed, the others get their effects,
        flushes and confirms."""
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
            key = target(ef)
            if key[0] != node:
                continue
            conn = conns.get(key[1])
            if conn is None:
                api = self.api_sessions.get(key[1])
                if api is not None:
                    if type(ef) is not ReplyDeliver:  # (a forged reply-to token's)
                        api.take(ef)
                    continue
                if type(ef) is Fault:
                    self._log_fault(ef)
                continue
            if type(ef) is Deliver and not machine.channel_open(state, ef.ch):
                continue  # closed later in the same catch-up: already requeued
            try:
                conn.run_effect(ef)
            except Exception:
                self._connection_failed(conn, f"running {type(ef).__name__}")
                touched.pop(key[1], None)
                continue
            touched[key[1]] = conn
        for conn in touched.values():
            try:
                conn.effects_done()
            except Exception:
                self._connection_failed(conn, "flushing effects")

    def _log_fault(self, ef: Fault) -> None:
        """A bug contained by the machine to one command or item (a command's connection
        is closed with 541 by the ConnectionError beside it). Logged at most FAULT_LOG_MAX
        times per FAULT_LOG_S: an item that fails on every tick must not flood the log."""
        self.metrics.faults += 1
        now = time.monotonic()
        if now - self._fault_window >= FAULT_LOG_S:
            if self._faults_hidden:
                log.error("%d more state machine faults in the last %.0f s were not logged",
                          self._faults_hidden, FAULT_LOG_S)
            self._fault_window, self._faults_logged, self._faults_hidden = now, 0, 0
        if self._faults_logged >= FAULT_LOG_MAX:
            self._faults_hidden += 1
            return
        self._faults_logged += 1
        log.error("failed in the state machine (contained to it): %s: %s", ef.command, ef.error)

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

        # A new cluster's default user, created once (the first node's proposal wins).
        self.propose(Bootstrap(self.cfg.default_user, hash_password(self.cfg.default_pass),
                               SHA256))
        self._propose_node_up()
        self.after_apply(up)
        await asyncio.wait_for(done, timeout=None if deadline is None
                               else max(1.0, deadline - time.monotonic()))
        self.proposer.leader_seen()
        await self._settle_level()
        self.ready = True  # (status "ready": clients may come, the AMQP listener opens next)
        log.info("node %s up (incarnation %d); state has %d queues", self.node_id,
                 self.incarnation, sum(1 for _ in machine.queue_stats(self.raft.state)))

    async def _settle_level(self) -> None:
        """A new cluster's state starts at command level 1; the leader enables what every
        member announced (cluster/commands.py LEVEL). Wait for that, a bounded while,
        before clients come: a first client found this release's features refused (503)
        in 1 start in 15. A member that has not announced (down, or of an older
        release) keeps the level where it is, and there is nothing to wait for."""
        end = time.monotonic() + LEVEL_SETTLE_S
        while self.raft.state.level < self.membership.common_level():
            if time.monotonic() >= end:
                log.info("command level %d not enabled yet; serving clients at level %d",
                         self.membership.common_level(), self.raft.state.level)
                return
            self.membership.enable_level()  # the leader's part; a follower waits for it
            await asyncio.sleep(0.01)

    def _propose_node_up(self) -> None:
        # where the management API of this node answers (raftmq cluster status, forwarding)
        cfg = self.cfg
        http = f"{cfg.management_host}:{cfg.management_port}" if cfg.management_port else ""
        self.propose(NodeUp(self.node_id, self.incarnation, self.cfg.raft_address, http))
        # what this node understands (upgrades with mixed releases: cluster/commands.py LEVEL)
        self.propose(Supports(self.node_id, self.cfg.raft_address, LEVEL))

    @property
    def servers(self) -> list[asyncio.AbstractServer]:
        return self._servers

    def flush_now(self) -> None:
        """Propose what this turn holds now, and tick."""
        self._flush()

    def close_clients(self, reason: str) -> None:
        for conn in list(self.connections.values()):
            conn.force_close(320, reason)

    def new_life(self) -> None:
        """The cluster recorded this node's life as over (NodeDown): drop its
        clients and everything in flight, and come back as a new incarnation."""
        self.close_clients("CONNECTION_FORCED - node was declared down by the cluster")
        self.incarnation = max(time.time_ns() // 1_000_000, self.incarnation + 1)
        self.alarms.incarnation = self.incarnation
        self.proposer.new_life(self.incarnation)
        self._propose_node_up()

    async def serve(self) -> None:
        cfg = self.cfg
        if cfg.amqp_port:
            self._servers.append(await self.loop.create_server(
                lambda: AMQPConnection(self), cfg.amqp_host, cfg.amqp_port,
                reuse_address=True, backlog=1024))
            log.info("AMQP listening on %s:%d", cfg.amqp_host, cfg.amqp_port)
        ctx = tls_context(cfg)
        if ctx is not None:
            host = cfg.tls_host or cfg.amqp_host
            # a TLS handshake that does not finish in time is cut, as an AMQP one is
            self._servers.append(await self.loop.create_server(
                lambda: AMQPConnection(self), host, cfg.tls_port, ssl=ctx,
                ssl_handshake_timeout=cfg.handshake_timeout, reuse_address=True, backlog=1024))
            log.info("AMQPS listening on %s:%d (client certificates: %s)", host, cfg.tls_port,
                     cfg.tls_verify)
        self.shovels.start()

    async def stop(self) -> None:
        """Close the listener and every connection (320), flush, and stop Raft."""
        for server in self._servers:
            server.close()
        await self.shovels.stop()
        self.close_clients("CONNECTION_FORCED - broker shutdown")
        # Let the ConnectionClose commands reach the log.
        self._flush()
        await asyncio.sleep(0.05)
        self._tick()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self.raft.flush()
        self.raft.close()
