"""bench.cpu_budget's attribution of py-spy samples to stages, on synthetic collapsed stacks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bench.cpu_budget import (
    Recorder,
    attribute,
    frame_stage,
    node_budget,
    parse_raw,
    raft_part,
)

ROOT = ("_run_module_as_main (<frozen runpy>:198);run (asyncio/runners.py:190);"
        "Runner.run (asyncio/runners.py:118)")  # fmt: skip
TICK = f"{ROOT};Broker._tick (node/broker.py:243);Proposer.run (cluster/proposer.py:262)"
APPLY = (f"{TICK};RaftNode.tick (cluster/raft/node.py:452);SyncObj.doTick (pysyncobj/syncobj.py:1)"
         ";_Replica.apply_batch (cluster/raft/node.py:220)")  # fmt: skip
READ = f"{ROOT};AMQPConnection.data_received (node/amqp/connection.py:195)"


def one(stack: str) -> str:
    att = attribute(parse_raw(f"{stack} 1\n"))
    (stage,) = att.by_stage
    return stage


def test_the_innermost_frame_with_a_stage_decides() -> None:
    assert one(f"{APPLY};apply_batch (cluster/machine/apply.py:60);"
               "publish (cluster/machine/basic.py:102)") == "apply"  # fmt: skip
    assert one(f"{APPLY};Snapshots.run (cluster/raft/snapshots.py:90);"
               "FileStore.put (cluster/store.py:310)") == "store"  # fmt: skip
    assert one(f"{TICK};RaftNode.tick (cluster/raft/node.py:452)") == "raft"
    assert one(f"{TICK};Proposer._dispatch (cluster/proposer.py:270);"
               "Broker.dispatch (node/broker.py:320);_deliver (node/amqp/session.py:546);"
               "deliver (protocol/frames.py:113)") == "deliver"  # fmt: skip
    assert one(f"{ROOT};Broker._tick (node/broker.py:243)") == "other"


def test_neutral_frames_take_their_callers_stage() -> None:
    # msgpack: encoding under encode_batch, applying under decode_batch
    assert one(f"{ROOT};Broker._flush (node/broker.py:227);Proposer.flush (cluster/proposer.py:165)"
               ";encode_batch (cluster/commands.py:570);packb (msgpack/__init__.py:36)"
               ) == "propose"  # fmt: skip
    assert one(f"{APPLY};decode_batch (cluster/commands.py:582);"
               "unpackb (msgpack/__init__.py:50)") == "apply"  # fmt: skip
    # a command built by the session is proposing; one built by decode_batch is applying
    init = "__init__ (<string>:4)"
    assert one(f"{READ};AMQPConnection._process (node/amqp/connection.py:270);"
               f"Session.on_event (node/amqp/session.py:160);{init}") == "propose"  # fmt: skip
    assert one(f"{APPLY};decode_batch (cluster/commands.py:582);"
               f"decode_command (cluster/commands.py:559);{init}") == "apply"  # fmt: skip
    # effects are built by the machine
    assert one(f"{APPLY};run_fast (cluster/machine/queues.py:95);"
               "Deliver.__init__ (cluster/effects.py:30)") == "apply"  # fmt: skip


def test_one_module_split_by_direction() -> None:
    assert frame_stage("protocol/connection.py", "ServerConnection.next_event") == "parse"
    assert frame_stage("protocol/connection.py", "ServerConnection._on_publish") == "parse"
    assert frame_stage("protocol/connection.py", "ServerConnection.deliver") == "deliver"
    assert frame_stage("node/amqp/connection.py", "AMQPConnection._process") == "parse"
    assert frame_stage("node/amqp/connection.py", "AMQPConnection._flush_writes") == "deliver"
    assert frame_stage("node/amqp/session.py", "Session._on_publish") == "propose"
    assert frame_stage("node/amqp/session.py", "_confirm") == "deliver"
    assert frame_stage("msgpack/__init__.py", "packb") is None


def test_the_raft_stage_in_parts() -> None:
    assert raft_part("cluster/raft/tcp.py:compress") == "transport"
    assert raft_part("cluster/raft/node.py:RaftNode._start_sync") == "fsync call"
    assert raft_part("concurrent/futures/thread.py:_WorkItem.run") == "fsync call"
    assert raft_part("cluster/raft/patches.py:_reserving_write") == "journal append"
    assert raft_part("pysyncobj/pickle.py:loads") == "entry pickling"
    assert raft_part("pysyncobj/syncobj.py:SyncObj._onTick") == "pysyncobj core"


def test_stacks_without_a_stage_frame_are_unattributed() -> None:
    att = attribute(parse_raw("packb (msgpack/__init__.py:36) 3\n 2\nnot a sample line\n"))
    assert att.samples == 5
    assert att.by_stage == {"unattributed": 5}


def test_counts_add_up_over_a_profile() -> None:
    text = "\n".join([
        f"{READ};ServerConnection.next_event (protocol/connection.py:317) 40",
        f"{APPLY};publish (cluster/machine/basic.py:102) 30",
        f"{APPLY};publish (cluster/machine/basic.py:102) 10",  # the same stack again: summed
        f"{TICK};RaftNode.tick (cluster/raft/node.py:452) 20",
    ])  # fmt: skip
    stacks = parse_raw(text)
    assert len(stacks) == 3
    att = attribute(stacks)
    assert (att.samples, att.by_stage) == (100, {"parse": 40, "apply": 40, "raft": 20})
    assert att.share("apply") == pytest.approx(0.4)
    assert att.frames["apply"] == {"cluster/machine/basic.py:publish": 40}


def test_node_budget_scales_shares_by_the_main_threads_cpu(tmp_path: Path) -> None:
    raw = tmp_path / "py-spy-leader.txt"
    raw.write_text(f"{READ};ServerConnection.next_event (protocol/connection.py:317) 150\n"
                   f"{APPLY};publish (cluster/machine/basic.py:102) 30\n"
                   f"{TICK};RaftNode.tick (cluster/raft/node.py:452);TcpConnection.send "
                   "(pysyncobj/tcp_connection.py:1);_send (cluster/raft/tcp.py:120);"
                   "compress (cluster/raft/tcp.py:63) 20\n")  # fmt: skip
    rec = Recorder({"leader": 100}, tmp_path, spy_rate=100)
    rec.before = {"leader": {100: 10.0, 101: 1.0}}
    rec.after = {"leader": {100: 12.0, 101: 1.5}}  # main thread 2 s, the fsync worker 0.5 s
    rec.wall, rec.spy_seconds, rec.raw = 4.0, 4, {"leader": raw}
    rec.state_samples, rec.disk_waits = 200, {"leader": Counter({101: 80})}  # 40 % in fdatasync
    out = node_budget("leader", 100, rec, messages=10_000)
    assert out["us_per_msg"] == pytest.approx(250.0)
    assert (out["main_thread_us"], out["other_threads_us"]) == (200.0, 50.0)
    stages = out["stages"]
    assert stages["parse"]["us_per_msg"] == pytest.approx(150.0)
    assert stages["apply"]["us_per_msg"] == pytest.approx(30.0)
    assert stages["raft"]["us_per_msg"] == pytest.approx(70.0)  # with the other threads' CPU
    assert stages["raft"]["parts"] == {"transport": 20.0, "other threads": 50.0}
    assert sum(s["us_per_msg"] for s in stages.values()) == pytest.approx(out["us_per_msg"])
    # not CPU: 40 % of 4 s in fdatasync over 10,000 messages
    assert (out["disk_wait_share"], out["disk_wait_us"]) == (0.4, 160.0)
    assert out["disk_wait_main_thread_share"] == 0.0
    # 200 samples at 100/s over 4 s = the GIL held 0.5 s/s; the main thread used 0.5 core
    assert out["gil_coverage"] == pytest.approx(1.0)
