"""Operator tools, run from the ``raftmq`` command line rather than inside a node: the commands
that talk to a node's management API (``admin``) and quorum-loss recovery on a stopped node's
data directory (``force_members``)."""
