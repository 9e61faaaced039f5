"""The one door to pysyncobj: every module that imports it is here.

* :mod:`cluster.raft.node` — :class:`~cluster.raft.node.RaftNode`, the node's replica of
  the log (pysyncobj driven from the event loop, the journal made durable, each entry
  applied and what it decided about message records carried out).
* :mod:`cluster.raft.patches` — every change made to pysyncobj, in one table, installed
  explicitly and version-checked, and :class:`~cluster.raft.patches.Internals`, the only
  way to its private attributes.
* :mod:`cluster.raft.tcp` — its TCP connection's compression and encryption fixes.
* :mod:`cluster.raft.recovery` — ``raftmq cluster force-members``: reading and rewriting a
  stopped member's journal and snapshot.
* :mod:`cluster.raft.snapshots` — the message store beside the replica, and the snapshot
  hooks that keep it in step with the snapshots pysyncobj writes, sends and installs.
* :mod:`cluster.raft.probe` — does an address answer as a member of this cluster?

Nothing is imported here: importing a submodule (``from cluster.raft.node import
RaftNode``) is what loads pysyncobj, so the CLI and tests that need none of it stay free of
it. Outside this package only the pure rules (cluster/log_rules.py) and the interfaces
(cluster/replica.py) know about Raft.
"""
