"""cluster/raft/patches.py: the patch table, the version pin, loud failures."""

from __future__ import annotations

import errno
import os
import socket
import time
import zlib
from pathlib import Path
from typing import Any

import pysyncobj.pickle as sync_pickle
import pytest
from pysyncobj.encryptor import getEncryptor
from pysyncobj.journal import FileJournal
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection

from cluster.raft import patches as P
from cluster.raft import tcp as tcp_patch


def test_every_patch_says_what_why_and_who_found_it() -> None:
    assert len(P.PATCHES) >= 10
    for patch in P.PATCHES:
        assert patch.name and patch.replaces and len(patch.why) > 20 and patch.found_by


def test_every_patch_names_its_installer() -> None:
    """Each row carries what puts it in place; install() runs exactly the ``once`` rows'
    installers, and no installer of this package is missing from the table."""
    import inspect

    from cluster.raft import node

    named = set()
    for patch in P.PATCHES:
        fn = P.installer_of(patch)
        assert callable(fn) or isinstance(fn, property), patch.name
        named.add(patch.installer)
        if patch.once:  # module-level: a function of patches.py or tcp.py taking nothing
            assert patch.installer.startswith(("cluster.raft.patches:install_",
                                               "cluster.raft.tcp:install_")), patch.name
            assert not inspect.signature(fn).parameters, patch.name
    for module, prefix in ((P, "cluster.raft.patches"), (tcp_patch, "cluster.raft.tcp")):
        for name, obj in vars(module).items():
            if name.startswith(("install_", "hook_")) and inspect.isfunction(obj):
                assert f"{prefix}:{name}" in named, f"{name} installs a patch PATCHES lacks"
    assert "cluster.raft.node:_Replica._SyncObj__loadDumpFile" in named
    assert node._Replica._SyncObj__loadDumpFile is not None
    P.install()
    assert tcp_patch._send is tcp_patch.TcpConnection.send  # (a once row's installer ran)


def test_install_checks_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    P.check_version()  # the pinned one is installed
    monkeypatch.setattr(P.importlib.metadata, "version", lambda name: "0.3.18")
    with pytest.raises(P.PatchError, match="0.3.18"):
        P.check_version()


def test_a_missing_attribute_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "_MODULE_ATTRS", (*P._MODULE_ATTRS, (P.SyncObj, "_SyncObj__gone")))
    with pytest.raises(P.PatchError, match="_SyncObj__gone"):
        P.check_version()


def test_a_private_attribute_pysyncobj_no_longer_uses_fails_loudly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The replacements read pysyncobj's private instance attributes (its write buffer, the
    journal's mmap...): a release whose code no longer names one is refused."""
    P.check_version()
    used = dict(P._NAMES_USED)
    used[P.TcpConnection] = used[P.TcpConnection] - {"_TcpConnection__writeBuffer"}
    monkeypatch.setattr(P, "_NAMES_USED", used)
    with pytest.raises(P.PatchError, match="TcpConnection.__writeBuffer"):
        P.check_version()


def test_internals_refuse_an_object_without_the_private_state() -> None:
    class NotSyncObj:
        pass

    with pytest.raises(P.PatchError, match="raftLog"):
        P.Internals(NotSyncObj())


def test_membership_results_are_this_projects_own() -> None:
    from cluster.replica import MembershipResult as R

    assert P.membership_result(0) is R.OK
    assert P.membership_result(6) is R.DENIED
    assert P.membership_result(99) is R.UNKNOWN


def test_journal_blocks_are_reserved_and_a_full_disk_stops_the_node(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    P.install()
    journal = FileJournal(str(tmp_path / "j"))
    for i in range(200):  # grows the file several times, blocks reserved each time
        journal.add(b"x" * 100, i + 1, 1)
    journal.flush()
    assert [journal[i][1] for i in (0, 199)] == [1, 200]
    assert os.stat(tmp_path / "j").st_blocks * 512 >= os.stat(tmp_path / "j").st_size
    stopped: list[int] = []

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(P.os, "posix_fallocate", full)
    monkeypatch.setattr(P.os, "_exit", stopped.append)
    monkeypatch.setattr(P.logging, "shutdown", lambda: None)
    with pytest.raises(IndexError):  # (a real stop never returns to write)
        for i in range(200, 2000):
            journal.add(b"x" * 100, i + 1, 1)
    assert stopped and stopped[0] == P.EXIT_DISK_ERROR
    journal._destroy()


# --- large entries (issue 19, item 9) ----------------------------------------------------


def _pair(timeout: float = 10.0) -> tuple[Any, Any, list[Any], Any]:
    """Two pysyncobj TcpConnections over a socketpair, encrypted as a cluster's are (the
    second times out after ``timeout``); the messages the second receives; the poller
    serving both (select, no loop)."""
    from cluster.raft.node import _LoopPoller

    P.install()
    poller = _LoopPoller()
    got: list[Any] = []
    a_sock, b_sock = socket.socketpair()
    for s in (a_sock, b_sock):
        s.setblocking(False)
    a = TcpConnection(poller, socket=a_sock, timeout=10.0, sendBufferSize=1 << 22,
                      recvBufferSize=1 << 18)
    b = TcpConnection(poller, onMessageReceived=got.append, socket=b_sock, timeout=timeout,
                      recvBufferSize=1 << 18)
    a.encryptor = b.encryptor = getEncryptor("test-secret")
    return a, b, got, poller


def _pump(poller: Any, got: list[Any], n: int) -> None:
    deadline = time.monotonic() + 10
    while len(got) < n and time.monotonic() < deadline:
        poller.poll(0.05)
    assert len(got) >= n


def test_incompressible_frames_are_stored_and_the_rest_deflated(
        monkeypatch: pytest.MonkeyPatch) -> None:
    noise = os.urandom(1 << 20)
    text = b"the quick brown fox jumps over the lazy dog " * 30000
    small = b"heartbeat" * 100
    stored = tcp_patch.compress(noise)
    assert zlib.decompress(stored) == noise
    assert len(noise) <= len(stored) < len(noise) + 1024  # stored blocks, nothing deflated
    assert len(tcp_patch.compress(text)) < len(text) // 20
    assert tcp_patch.compress(small) == zlib.compress(small, tcp_patch.LEVEL)  # as pysyncobj
    # 20 MiB of noise: only a 4 KiB sample is deflated (deflating it all took 0.4 s)
    calls: list[tuple[int, int]] = []

    def recording(data: bytes, level: int = -1) -> bytes:
        calls.append((len(data), level))
        return zlib.compress(data, level)

    monkeypatch.setattr(tcp_patch, "zlib", type("Z", (), {"compress": staticmethod(recording)}))
    tcp_patch.compress(os.urandom(20 << 20))
    assert calls == [(tcp_patch.SAMPLE, 1), (20 << 20, 0)]


def test_a_frame_is_authenticated_once_and_its_stamp_still_checked() -> None:
    fernet = getEncryptor("test-secret")
    token = fernet.encrypt_at_time(b"x" * 1000, 1_234_567)
    assert tcp_patch.token_timestamp(token[:12]) == fernet.extract_timestamp(token) == 1_234_567
    a, b, got, poller = _pair()
    body = os.urandom(3 << 20)
    a.send({"type": "apply_command", "command": body})
    a.send({"type": "next"})
    _pump(poller, got, 2)
    assert got[0]["command"] == body and got[1] == {"type": "next"}
    # a frame stamped earlier than the last one received drops the peer, as in pysyncobj
    b.recvLastTimestamp = 2 ** 40
    a.send({"type": "late"})
    deadline = time.monotonic() + 5
    while b.state != CONNECTION_STATE.DISCONNECTED and time.monotonic() < deadline:
        poller.poll(0.05)
    assert b.state == CONNECTION_STATE.DISCONNECTED and len(got) == 2
    a.disconnect()


def test_a_peer_whose_bytes_wait_unread_is_not_timed_out() -> None:
    a, b, got, poller = _pair(timeout=0.2)
    a.send({"type": "heartbeat"})  # b has not read it: its loop was busy
    for _ in range(6):  # b sends all along (a leader's heartbeats)
        b._TcpConnection__processConnectionTimeout()
        time.sleep(0.05)
    b._TcpConnection__processConnectionTimeout()
    assert b.state == CONNECTION_STATE.CONNECTED
    _pump(poller, got, 1)
    for _ in range(6):  # and now truly nothing read while b sends, for longer than the timeout
        b._TcpConnection__processConnectionTimeout()
        time.sleep(0.05)
    b._TcpConnection__processConnectionTimeout()
    assert b.state == CONNECTION_STATE.DISCONNECTED
    a.disconnect()


def test_an_idle_link_survives_its_first_send_and_a_silent_peer_is_dropped_later() -> None:
    """Followers of a stable leader exchange nothing: the first vote request of an election
    must not find the link "timed out" and drop it (split votes after a leader kill)."""
    a, b, got, poller = _pair(timeout=0.2)
    a.send({"type": "heartbeat"})
    _pump(poller, got, 1)
    time.sleep(0.3)  # idle both ways for longer than the timeout
    b._TcpConnection__processConnectionTimeout()  # b sends (a vote request)
    assert b.state == CONNECTION_STATE.CONNECTED
    deadline = time.monotonic() + 5
    while b.state == CONNECTION_STATE.CONNECTED and time.monotonic() < deadline:
        time.sleep(0.05)  # b keeps sending, a never answers
        b._TcpConnection__processConnectionTimeout()
    assert b.state == CONNECTION_STATE.DISCONNECTED
    a.disconnect()


def test_a_large_entrys_pieces_are_joined_in_place_and_a_premature_finish_waits() -> None:
    """pysyncobj's follower side of a transmission (start/process/finish), as it reads:
    ``recv = data``, ``recv += data``, ``loads(recv)`` on finish."""
    P.install()
    entry = (os.urandom(1 << 20), 7, 3)
    pickled = P.dumps(entry)
    pieces = [pickled[i:i + (1 << 16)] for i in range(0, len(pickled), 1 << 16)]
    kinds = ["start", *["process"] * (len(pieces) - 3), "finish", "finish"]  # one too early
    state: dict[str, Any] = {}
    applied: list[Any] = []
    buffers: set[int] = set()

    def follower(node: Any, message: dict[str, Any]) -> None:
        if message["transmission"] == "start":
            state["recv"] = message["data"]
        else:
            state["recv"] += message["data"]
        buffers.add(id(state["recv"]))
        if message["transmission"] == "finish":
            applied.append(sync_pickle.loads(state["recv"]))
            state["recv"] = ""

    for kind, piece in zip(kinds, pieces, strict=True):
        P._on_transmission_chunk(follower, "leader", {"type": "append_entries",
                                                      "transmission": kind, "data": piece})
    assert applied == [entry]
    assert len(buffers) == 1  # one buffer, extended in place: linear, not quadratic


def test_what_the_socket_cannot_take_is_encoded_on_write_events_in_order() -> None:
    """A large entry's pieces for a follower that is not reading are queued, not all
    encrypted in the loop turn that sent them; write events move them on (pysyncobj
    waited for its next send), in order, at most ENCODE_PER_EVENT per event."""
    a, b, got, poller = _pair()
    pieces = [os.urandom(1 << 16) for _ in range(160)]  # 10 MiB, more than the socket holds
    for i, piece in enumerate(pieces):
        a.send({"type": "append_entries", "i": i, "data": piece})
    out = a._TcpConnection__writeBuffer
    assert len(out.pending) > len(pieces) // 2  # the rest waits, pickled, not encrypted
    assert poller._subs[a.fileno()][1] & POLL_EVENT_TYPE.WRITE  # and the socket's readiness is asked for
    _pump(poller, got, len(pieces))
    assert [m["i"] for m in got] == list(range(len(pieces)))
    assert all(m["data"] == piece for m, piece in zip(got, pieces, strict=True))
    a.disconnect()


def test_journal_records_written_in_pieces_read_back_as_pysyncobj_writes_them(
    tmp_path: Path,
) -> None:
    """The patched FileJournal.add (three writes, the large one a pwrite) leaves the
    record format as it was: a journal opened again (pysyncobj's own reader, through the
    mapping) holds the same entries, and compaction and truncation still work."""
    P.install()
    path = str(tmp_path / "raft.journal")
    j = FileJournal(path)
    entries = [(b"small", 1, 1), (os.urandom(3 << 20), 2, 1), (b"x" * (P.PWRITE_FROM - 1), 3, 2),
               (b"", 4, 2), (os.urandom(P.PWRITE_FROM), 5, 3)]
    for cmd, idx, term in entries:
        j.add(cmd, idx, term)
    j.flush()
    again = FileJournal(path)
    assert [again[i] for i in range(len(again))] == entries
    again.deleteEntriesTo(2)  # compaction rewrites the rest at the start
    again.deleteEntriesFrom(2)
    third = FileJournal(path)
    assert [third[i] for i in range(len(third))] == entries[2:4]


def test_only_cluster_raft_imports_pysyncobj() -> None:
    """One door: in the product (cluster/, node/, protocol/), every import of pysyncobj,
    function-level ones included, is in a module of cluster/raft/."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    importers = set()
    for pkg in ("cluster", "node", "protocol"):
        for path in (root / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) and not
                         node.level else [])
                if any(n == "pysyncobj" or n.startswith("pysyncobj.") for n in names):
                    importers.add(path.relative_to(root).as_posix())
    assert importers, "the scan found nothing: it is broken"
    assert {p for p in importers if not p.startswith("cluster/raft/")} == set()
    assert importers == {"cluster/raft/node.py", "cluster/raft/patches.py",
                         "cluster/raft/probe.py", "cluster/raft/recovery.py",
                         "cluster/raft/snapshots.py",
                         "cluster/raft/tcp.py"}


def test_a_candidate_that_split_the_vote_retries_within_a_fraction_of_the_timeout() -> None:
    class Raft:  # the Internals attributes retry_split_vote_soon reads and writes
        conf = type("Conf", (), {"raftMinTimeout": 0.5})()
        term, is_candidate = 7, True
        election_deadline = time.monotonic() + 1.25  # pysyncobj's: up to 2.5 timeouts

    raft: Any = Raft()
    P.retry_split_vote_soon(raft, term_before=7)  # did not stand in this tick: unchanged
    assert raft.election_deadline > time.monotonic() + 1.0
    P.retry_split_vote_soon(raft, term_before=6)  # stood: retries within 0.1-0.4 s
    assert raft.election_deadline <= time.monotonic() + 0.4
    raft.is_candidate, raft.election_deadline = False, time.monotonic() + 1.25
    P.retry_split_vote_soon(raft, term_before=5)  # it won (or stepped down): unchanged
    assert raft.election_deadline > time.monotonic() + 1.0
