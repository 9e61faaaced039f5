"""The Raft log rules that correct pysyncobj (cluster/log_rules.py), each against the message
sequence of the chaos seed that found its bug."""

from __future__ import annotations

from cluster import log_rules
from cluster.log_rules import ResetCeiling


def entries(first: int, last: int, term: int) -> list[tuple[bytes, int, int]]:
    return [(b"cmd%d" % i, i, term) for i in range(first, last + 1)]


# --- seed 2005: a deposed leader's diverged tail --------------------------------------------

def test_conflict_is_answered_with_the_entry_after_the_commit_index() -> None:
    # the follower has 1..350, entries 304..350 from its own (lost) term; commit index 303
    assert log_rules.conflict_reply_index(350, last_index=350, first_index=1,
                                          commit_index=303) == 304


def test_conflict_reply_never_points_before_the_log_start() -> None:
    assert log_rules.conflict_reply_index(350, last_index=350, first_index=320,
                                          commit_index=303) == 321


def test_missing_prev_entry_reply_is_kept() -> None:
    # "I lack prevLogIdx": pysyncobj answers with last index + 1, past the log's end
    assert log_rules.conflict_reply_index(351, last_index=350, first_index=1,
                                          commit_index=303) == 351


def test_conflict_at_or_below_the_commit_index_is_kept() -> None:
    assert log_rules.conflict_reply_index(200, last_index=350, first_index=1,
                                          commit_index=303) == 200


def test_pipelined_rejections_do_not_undo_the_walk_back() -> None:
    """The reply sequence of seed 2005: a conflict reply (walk back to 304) followed by
    rejections of appends that were already in flight ("send from my log end", 351)."""
    ceiling = ResetCeiling()
    assert ceiling.on_reset("n1", term=5, reported=351) == 351
    assert ceiling.on_reset("n1", term=5, reported=304) == 304
    assert ceiling.on_reset("n1", term=5, reported=351) == 304
    assert ceiling.on_reset("n1", term=5, reported=351) == 304


def test_success_or_a_new_term_lifts_the_ceiling() -> None:
    ceiling = ResetCeiling()
    ceiling.on_reset("n1", term=5, reported=304)
    ceiling.on_success("n1")
    assert ceiling.on_reset("n1", term=5, reported=400) == 400
    assert ceiling.on_reset("n1", term=6, reported=420) == 420


def test_ceilings_are_per_follower() -> None:
    ceiling = ResetCeiling()
    ceiling.on_reset("n1", term=5, reported=304)
    assert ceiling.on_reset("n2", term=5, reported=351) == 351


# --- seed 1029: a snapshot sent twice -------------------------------------------------------

def test_a_snapshot_not_newer_than_the_applied_state_is_stale() -> None:
    assert log_rules.snapshot_is_stale(500, last_applied=700)
    assert log_rules.snapshot_is_stale(700, last_applied=700)
    assert not log_rules.snapshot_is_stale(701, last_applied=700)


# --- seed 3000 (and installs): the journal after a snapshot ---------------------------------

def test_journal_holding_the_snapshot_keeps_its_tail() -> None:
    journal = entries(1, 400, 2)
    pos = log_rules.journal_trim_position(journal, journal[298], journal[299])  # snapshot at 300
    assert pos == 298
    assert journal[pos:][:2] == [journal[298], journal[299]] and journal[-1][1] == 400


def test_journal_already_starting_at_the_snapshot_needs_no_trim() -> None:
    journal = entries(299, 400, 2)
    assert log_rules.journal_trim_position(journal, journal[0], journal[1]) == 0


def test_journal_without_the_snapshot_entry_is_replaced() -> None:
    journal = entries(1, 250, 2)
    snapshot_last, before = (b"cmd300", 300, 2), (b"cmd299", 299, 2)
    assert log_rules.journal_trim_position(journal, before, snapshot_last) is None
    assert log_rules.journal_trim_position(entries(310, 400, 2), before, snapshot_last) is None
    assert log_rules.journal_trim_position(entries(1, 1, 2), before, snapshot_last) is None


def test_journal_with_a_different_entry_at_the_snapshot_index_is_replaced() -> None:
    journal = entries(1, 400, 3)  # same indexes, another term: not the snapshot's history
    assert log_rules.journal_trim_position(journal, (b"cmd299", 299, 2),
                                           (b"cmd300", 300, 2)) is None


# --- seed 201: commit index on snapshot chunks ----------------------------------------------

def test_a_snapshot_chunk_does_not_commit_an_unmatched_tail() -> None:
    # a deposed leader (own tail up to 500, commit 300) receives a chunk; pysyncobj moved the
    # commit index to min(leader's commit, 500) = 450 without installing anything
    assert log_rules.commit_after_snapshot_message(300, 450, last_applied=300) == 300


def test_an_installed_snapshot_commits_up_to_its_last_entry() -> None:
    assert log_rules.commit_after_snapshot_message(300, 450, last_applied=420) == 420
    assert log_rules.commit_after_snapshot_message(300, 410, last_applied=420) == 410
