"""``raftmq cluster force-members``: recover from a lost majority (see cluster/raft/recovery.py).

Runs on a survivor whose node is stopped, on its data directory. Without ``--yes`` it only
prints the plan; with it, it rewrites the membership to ``--keep``. It refuses when the
survivors chosen leave out the most advanced member it can see (its own data directory, and
every other member that answers over the Raft port, and any member a running one names), or
when the old cluster still has a working majority. Both checks need the old membership: when
the data directory cannot tell it (no snapshot, no ``members.forced``) and ``--peers`` is not
given, it refuses and asks for ``--peers`` (the journal's membership entries never name the
members the node started with).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from node.config import ConfigError, _address


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep", nargs="+", required=True, metavar="HOST:PORT",
                   help="Raft addresses of the surviving members (this node included)")
    p.add_argument("--data-dir", default=os.environ.get("RAFTMQ_DATA_DIR", "./data"),
                   help="this node's data directory (default: $RAFTMQ_DATA_DIR or ./data)")
    p.add_argument("--raft-address", default=os.environ.get("RAFTMQ_RAFT_ADDRESS"),
                   help="this node's Raft address (default: $RAFTMQ_RAFT_ADDRESS; may be left "
                   "out when --keep names one member)")
    p.add_argument("--peers", default=os.environ.get("RAFTMQ_PEERS"),
                   help="the --peers the node was started with (default: $RAFTMQ_PEERS; '' for "
                   "a node started alone): the membership of a node that never took a snapshot "
                   "starts from them, and without them it refuses")
    p.add_argument("--cluster-secret", default=os.environ.get("RAFTMQ_CLUSTER_SECRET", ""),
                   help="the cluster secret (default: $RAFTMQ_CLUSTER_SECRET), to ask the "
                   "other members that still run where their logs are")
    p.add_argument("--yes", action="store_true",
                   help="rewrite the data directory (without it: print the plan only)")


_MAX_ASKED = 64  # members asked at most (the old membership and those running ones name)


class _Refused(Exception):
    pass


def _addresses(values: list[str], what: str) -> list[str]:
    out: list[str] = []
    for v in values:
        for part in v.split(","):
            if part.strip():
                try:
                    out.append(_address(part.strip()))
                except (ValueError, ConfigError) as e:
                    raise _Refused(f"{what}: {part!r}: {e}") from None
    return out


def _counted(counter: dict[str, int]) -> str:
    return ", ".join(f"{n} {name}" for name, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def run(args: argparse.Namespace) -> int:
    from cluster.raft.recovery import RecoveryError  # (pysyncobj: imported only when used)

    try:
        return _run(args)
    except (RecoveryError, _Refused) as e:
        print(f"force-members: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from cluster.raft import recovery
    from cluster.raft.probe import member_status

    keep = sorted(set(_addresses(args.keep, "--keep")))
    peers = _addresses([args.peers], "--peers") if args.peers is not None else None
    self_addr = args.raft_address
    if not self_addr:
        if len(keep) != 1:
            raise _Refused("--raft-address is needed when --keep names several "
                                         "members: which one is this node?")
        self_addr = keep[0]
    self_addr = _addresses([self_addr], "--raft-address")[0]
    data_dir = Path(args.data_dir)
    with recovery.locked(data_dir):
        info = recovery.read_data_dir(data_dir)
        old = info.members(peers, self_addr)
        print(f"data directory {data_dir} (this node: {self_addr})")
        snap = f", snapshot at {info.snapshot_index}" if info.snapshot_index is not None else ""
        print(f"  log: entries {info.first_index}..{info.last_index} (last term "
              f"{info.last_term}), commit index {info.commit_index}, term "
              f"{info.current_term}{snap}")
        print(f"  membership: {', '.join(old)}")
        print(f"        into: {', '.join(keep)}")
        seen = [recovery.Seen(self_addr, info.commit_index, info.current_term)]
        print("members:")
        print(f"  {self_addr:<28} commit {info.commit_index:>9}  (its data directory)")
        # every member of the old membership, then any other that a running one names
        todo = sorted((set(old) | set(keep)) - {self_addr})
        asked: set[str] = set()
        while todo and len(asked) < _MAX_ASKED:
            addr = todo.pop(0)
            asked.add(addr)
            note = ("  (kept)" if addr in keep else "") + (
                "" if addr in old or addr in keep else "  (named by a running member)")
            status = member_status(addr, args.cluster_secret) if args.cluster_secret else None
            if status is None:
                why = "not answering" if args.cluster_secret else "not asked (no secret)"
                print(f"  {addr:<28} {why}{note}")
                continue
            s = recovery.Seen(addr, int(status.get("commit_idx", 0)),
                              int(status.get("raft_term", 0)),
                              bool(status.get("has_quorum", False)))
            seen.append(s)
            quorum = "has a quorum" if s.has_quorum else "no quorum"
            print(f"  {addr:<28} commit {s.commit_index:>9}  running, {quorum}{note}")
            todo = sorted(set(todo) | (recovery.members_named(status) - asked - {self_addr}))
        old = tuple(sorted(set(old) | (asked - set(keep))))
        lost = sorted(set(old) - set(keep))
        top = max(s.commit_index for s in seen)
        print("what may be lost:")
        print(f"  entries that only {', '.join(lost) or 'the lost members'} hold: whatever "
              f"they committed after index {top} (publishes confirmed in that window), and "
              "entries they held uncommitted")
        tail = info.last_index - info.commit_index
        if tail > 0:
            what = _counted(info.uncommitted) or "no broker commands"
            print(f"  kept, and committed once a leader is elected: entries "
                  f"{info.commit_index + 1}..{info.last_index} of this node's log ({what})")
        refusals = recovery.check_plan(self_addr, keep, seen, old)
        if refusals:
            for r in refusals:
                print(f"refused: {r}", file=sys.stderr)
            return 2
        if not args.yes:
            print("nothing written (a plan only): run again with --yes to rewrite the "
                  "membership")
            return 0
        neutralised = recovery.force_members(info, keep)
        print(f"membership forced to {', '.join(keep)} ({neutralised} journal membership "
              f"entries made no-ops; {recovery.FORCED_FILE} written)")
    others = [k for k in keep if k != self_addr]
    if others:
        print(f"run the same command on {', '.join(others)} (stopped) before starting them; ",
              end="")
    print("start the node, then add new members one at a time: raftmq cluster add HOST:PORT")
    return 0
