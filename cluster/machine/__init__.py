"""The pure, deterministic broker state machine (modelled on rabbit_fifo).

Every replica applies the same batches of :mod:`cluster.commands` to a
:class:`State` and gets the same state and the same :mod:`cluster.effects`.
Message bytes are not the machine's: it keeps ids and references, and says what it
decided about records in ``State.writes`` (cluster/machine/messages.py). No module here
reaches an I/O or clock module (tests/cluster/test_machine_purity.py).
"""

from cluster.machine.apply import (
    apply,
    apply_batch,
    channel_open,
    nodes,
    queue_stats,
    restore,
    snapshot,
    vhost_exists,
)
from cluster.machine.expiry import next_deadline
from cluster.machine.messages import rebuild_headers, take_writes
from cluster.machine.names import MAX_NAME_BYTES, check_name, name_problem
from cluster.machine.state import SNAPSHOT_FORMAT, NodeInfo, State, new_state

__all__ = [
    "MAX_NAME_BYTES",
    "SNAPSHOT_FORMAT",
    "NodeInfo",
    "State",
    "apply",
    "apply_batch",
    "channel_open",
    "check_name",
    "name_problem",
    "new_state",
    "next_deadline",
    "nodes",
    "queue_stats",
    "rebuild_headers",
    "restore",
    "snapshot",
    "take_writes",
    "vhost_exists",
]
