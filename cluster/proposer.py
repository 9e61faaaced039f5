"""From a node's commands to Raft entries, and from applied entries to the effects the node runs.

The rules that keep clients' guarantees across leader changes live here, apart
from sockets and from pysyncobj, so they can be tested against an in-memory log
(tests/cluster/test_proposer.py):

* **Group commit**: every command proposed during one event-loop turn goes into
  one :class:`~cluster.commands.Batch`, one Raft entry.
* **Idempotency**: a batch carries ``(node, incarnation, seq)``; the machine
  applies each key once, so proposing a batch again is always safe.
* **Order**: batches are handed to Raft in sequence order. With no leader known
  they wait (pysyncobj would forward them to the next leader ahead of the ones
  lost with the old one); when the leader changes, everything in flight is
  proposed again, oldest first, before anything new. One publisher's messages
  thus reach a queue in the order it sent them.
* **Lost entries**: a batch not applied ``resubmit_after`` seconds after it was
  proposed is proposed again (pysyncobj may drop a forwarded command across a
  leader change without ever calling back).
* **Gaps**: pysyncobj also drops a command forwarded while its connection to the
  leader is down, and sends the next one once it is back: each batch names its
  predecessor (``Batch.after``), the machine refuses a batch whose predecessor it
  has not applied, and the proposer, told so, proposes everything in flight again,
  oldest first (chaos seed 916505: a publisher's messages reordered in a queue).
* **Catch-up gate**: while this replica applies entries the leader committed
  long ago (it was cut off, paused, restarted), a later entry of the same
  catch-up may take back what an earlier one gave its clients (its own
  NodeDown, a channel closed): effects wait until it has applied everything the
  leader says is committed, and then go out against that state (chaos seed
  908683).
* **Durability**: a leader ticks (and so counts its own copy toward a commit)
  only when everything in its log is durable: an entry appended by a proposal or
  in a tick is synced (fdatasync) before the next tick, so nothing an entry
  causes leaves the node before it is on disk. (A proposal is appended at once,
  outside any tick: until issue 22 the next tick committed it, and the confirm
  went out, before the fdatasync.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cluster.commands import LEVEL, Batch, Command, encode_batch
from cluster.effects import Effect
from cluster.replica import RaftLog

log = logging.getLogger(__name__)

# A batch not applied this long after it was proposed is proposed again. Long, so a
# slow but healthy cluster is not flooded with copies (measured: 1 s turned a
# backlog into a resubmission storm); a leader change resubmits at once anyway.
RESUBMIT_AFTER_S = 5.0
# After a gap is reported, what is in flight is proposed again at most this often
# (every batch behind the gap is refused and reported; one resend covers them all).
RESEND_GAP_S = 0.1


def target(ef: Effect) -> tuple[str, int] | tuple[str, int, int]:
    """The channel key (node, connection, channel) an effect is addressed to, the
    connection key (node, connection) for a connection-level effect, or (node, 0)
    for a Fault (logged by the node that proposed the command)."""
    key = getattr(ef, "ch", None) or getattr(ef, "conn", None)
    return key if key is not None else (ef.node, 0)  # type: ignore[attr-defined]


class Proposer:
    def __init__(
        self,
        raft: RaftLog,
        node_id: str,
        incarnation: int,
        dispatch: Callable[[list[Effect]], None],
        *,
        unencodable: Callable[[Command], None] = lambda cmd: None,
        level: Callable[[], int] = lambda: LEVEL,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        resubmit_after: float = RESUBMIT_AFTER_S,
    ) -> None:
        """``dispatch`` runs effects for this node's clients. ``unencodable`` is told of
        a command left out of its batch because it does not encode (a bug)."""
        self.raft = raft
        self.node_id = node_id
        self.incarnation = incarnation
        self._dispatch = dispatch
        self._unencodable = unencodable
        self._level = level  # the cluster's enabled command level (State.level)
        self._clock = clock
        self._wall_ms = wall_ms
        self.resubmit_after = resubmit_after
        raft.set_incarnation(incarnation)
        self._batch: list[Command] = []
        self._seq = 0  # of the last batch sealed
        self._after_apply: dict[int, list[Callable[[], None]]] = {}
        # seq -> commands left out of that batch (they did not encode), until its hooks ran
        self._dropped: dict[int, list[Command]] = {}
        # seq -> (encoded batch, when last proposed; 0.0: not yet handed to Raft)
        self._in_flight: dict[int, tuple[bytes, float]] = {}
        self._unsent: list[int] = []
        self._chained = 0  # seq of the last batch that the next one must follow
        self._gap = False  # the machine refused a batch of ours: its predecessor is lost
        self._resent_at = float("-inf")
        self._known_leader: str | None = None
        # effects (this node's only) and own seqs applied, held during a catch-up
        self._held: list[tuple[list[Effect], list[int]]] = []
        self.batches = 0
        self.resubmitted = 0

    # --- this turn's batch --------------------------------------------------------------

    def propose(self, cmd: Command) -> None:
        """Add a command to this turn's batch (the caller arranges a :meth:`flush`)."""
        if self._enabled(cmd):
            self._batch.append(cmd)

    def _enabled(self, cmd: Command) -> bool:
        if cmd.SINCE == 1 or self._level() >= cmd.SINCE:
            return True
        # a member of an older release would leave it out (cluster/commands.py LEVEL):
        # callers check the level first, so this is a bug
        log.error("dropping %s: command level %d is not enabled in this cluster yet",
                  type(cmd).__name__, cmd.SINCE)
        return False

    def after_apply(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the commands proposed so far in this turn are applied."""
        self._after_apply.setdefault(self._seq + 1, []).append(fn)

    def turn(self) -> int:
        """The sequence number this turn's batch will have."""
        return self._seq + 1

    def dropped(self, turn: int) -> tuple[Command, ...]:
        """The commands of turn ``turn`` left out of its batch because they did not
        encode. For its :meth:`after_apply` hooks, which thus learn that what they wait
        for was not done (an API request answers an error, not 201); forgotten once
        those hooks have run."""
        return tuple(self._dropped.get(turn, ()))

    def settled(self, turn: int) -> bool:
        """Everything proposed up to and including turn ``turn`` has been applied (and
        its effects dispatched)."""
        if turn > self._seq:
            if self._batch:
                return False
            turn = self._seq
        first = next(iter(self._in_flight), None)  # dict order is sequence order
        return first is None or first > turn

    @property
    def holding(self) -> bool:
        """Effects of a catch-up are held back (they may still read released messages)."""
        return bool(self._held)

    @property
    def in_flight(self) -> int:
        """Batches proposed and not yet applied."""
        return len(self._in_flight)

    def flush(self) -> None:
        """Seal this turn's batch and hand every batch Raft may take to it."""
        if self._batch or (self._seq + 1) in self._after_apply:
            self._seq += 1
            batch = Batch(self.node_id, self.incarnation, self._seq, self._wall_ms(),
                          tuple(self._batch), self._chained)
            self._chained = self._seq
            self._batch = []
            self._in_flight[batch.seq] = (self._encode(batch), 0.0)
            self._unsent.append(batch.seq)
            self.batches += 1
        self._send()

    def propose_once(self, cmd: Command) -> None:
        """Propose ``cmd`` in a batch of its own that is never resubmitted: for commands
        only valid from the leader that proposed them (NodeDown; a deposed leader's
        copy must not reach the next leader)."""
        if not self._enabled(cmd):
            return
        self.flush()  # what is pending keeps its sequence number (and after_apply hooks)
        self._seq += 1
        self.raft.propose(encode_batch(Batch(self.node_id, self.incarnation, self._seq,
                                             self._wall_ms(), (cmd,))))

    def _encode(self, batch: Batch) -> bytes:
        """The entry for ``batch``. A command that cannot be encoded (the edge lets
        nothing through that could not, so: a bug) is left out and reported; everyone
        else's commands of the turn go on."""
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
                log.error("dropping %s: it does not encode", type(cmd).__name__)
                self._dropped.setdefault(batch.seq, []).append(cmd)
                self._unencodable(cmd)
                continue
            kept.append(cmd)
        return encode_batch(Batch(batch.node, batch.incarnation, batch.seq,
                                  batch.timestamp_ms, tuple(kept)))

    def _send(self) -> None:
        """Hand batches to Raft in sequence order (see the module docstring)."""
        leader = self.raft.leader
        if leader is None:
            return
        now = self._clock()
        if leader != self._known_leader or (self._gap and now - self._resent_at >= RESEND_GAP_S):
            self._known_leader = leader
            self._gap = False
            self._resent_at = now
            for seq, (data, sent) in self._in_flight.items():
                if sent:
                    self.raft.propose(data)
                    self._in_flight[seq] = (data, now)
                    self.resubmitted += 1
        for seq in self._unsent:
            entry = self._in_flight.get(seq)
            if entry is not None:
                self.raft.propose(entry[0])
                self._in_flight[seq] = (entry[0], now)
        self._unsent.clear()

    def resubmit_late(self) -> None:
        """Propose again what was not applied in time (lost on the way)."""
        self._send()
        if not self._in_flight or self._known_leader is None:
            return
        now = self._clock()
        late = [seq for seq, (_, sent) in self._in_flight.items()
                if sent and now - sent > self.resubmit_after]
        for seq in late:  # oldest first: dict order is sequence order
            data = self._in_flight[seq][0]
            self._in_flight[seq] = (data, now)
            self.raft.propose(data)
            self.resubmitted += 1

    # --- applied entries -----------------------------------------------------------------

    def run(self) -> bool:
        """Tick Raft until nothing new is appended, making each tick's appends durable
        before the next; dispatch what the applied entries ask of this node. True if
        anything was applied."""
        applied_any = False
        raft = self.raft
        while True:
            # A leader counts its own copy toward a commit: what it appended (a proposal
            # goes into its log at once) must be durable before it ticks. A large append
            # is synced in the background: the tick waits for it (wake comes then).
            if raft.must_wait and not raft.make_durable():
                return applied_any
            effects = raft.tick()
            applied = raft.take_applied()
            for seq in applied:
                self._in_flight.pop(seq, None)
            if raft.take_out_of_order():
                self._gap = True
            if not self._held and not raft.catching_up:
                if effects:
                    self._dispatch(effects)
                self._run_hooks(applied)
            elif effects or applied or not raft.catching_up:
                self._held.append((self._mine(effects), applied))
                if not raft.catching_up:
                    held, self._held = self._held, []
                    for mine, seqs in held:
                        if mine:
                            self._dispatch(mine)
                        self._run_hooks(seqs)
            applied_any = applied_any or bool(effects or applied)
            if not raft.dirty:
                return applied_any
            if not raft.must_wait:  # a leader's appends: make_durable, above
                raft.flush()

    def _mine(self, effects: list[Effect]) -> list[Effect]:
        node = self.node_id
        return [ef for ef in effects if target(ef)[0] == node]

    def _run_hooks(self, seqs: list[int]) -> None:
        for seq in seqs:
            for fn in self._after_apply.pop(seq, ()):
                try:
                    fn()
                except Exception:
                    log.exception("after-apply callback %r failed", fn)
            self._dropped.pop(seq, None)

    # --- lives -------------------------------------------------------------------------

    def new_life(self, incarnation: int) -> None:
        """The cluster recorded this node's life as over: drop everything in flight."""
        self.incarnation = incarnation
        self.raft.set_incarnation(incarnation)
        self._in_flight.clear()
        self._unsent.clear()
        self._chained = 0
        self._gap = False
        self._after_apply.clear()
        self._dropped.clear()
        self._held.clear()
        self._batch = []

    def leader_seen(self) -> None:
        """Batches proposed from now on go to the current leader (start-up)."""
        self._known_leader = self.raft.leader
