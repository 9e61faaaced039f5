"""The README reader itself: blocks by section, commands of a shell block, sample matching."""

from __future__ import annotations

from tests.readme.readme import README, block, blocks, commands, mismatches, substitute

DOC = """# Title
```sh
make run
```
## Part
text
```sh
# a comment
raftmq add vhost shop   # trailing comment stays
raftmq cluster force-members --data-dir /d \\
    --keep n1:25672
```
It prints:
```
leader: 127.0.0.1:27672   term: 1
-----------
```
"""


def test_blocks_know_their_section_language_and_line() -> None:
    found = blocks(DOC)
    assert [(b.section, b.lang, b.line) for b in found] == [
        ("Title", "sh", 3), ("Part", "sh", 8), ("Part", "", 15)]
    assert block(DOC, "Part", 0, "").text.startswith("leader")


def test_a_missing_block_is_named() -> None:
    try:
        block(DOC, "Part", 1, "sh")
    except LookupError as e:
        assert "'Part' has 1 sh block(s)" in str(e)
    else:
        raise AssertionError("no LookupError")


def test_commands_join_continuations_and_drop_comment_lines() -> None:
    assert commands(block(DOC, "Part", 0, "sh").text) == [
        "raftmq add vhost shop   # trailing comment stays",
        "raftmq cluster force-members --data-dir /d      --keep n1:25672"]


def test_substitution_prefers_the_longest_placeholder() -> None:
    assert substitute("--node n1:15672 --keep n1", {"n1": "X", "n1:15672": "127.0.0.1:9"}) == (
        "--node 127.0.0.1:9 --keep X")


def test_samples_match_numbers_spaces_and_variants_only() -> None:
    sample = "leader: 127.0.0.1:27672   term: 1\n-----------\nrow  leader  …"
    assert mismatches(sample, "leader: 127.0.0.1:10002 term: 12\n---\nrow follower x y",
                      {"leader": "(leader|follower)"}) == []
    assert mismatches(sample, "leader: 127.0.0.1:10002 term: 12\n---\nrow  leader") == []
    bad = mismatches(sample, "leader: host:1 term: 1\n---")
    assert bad[0] == "2 lines of output, the README shows 3" and "line 1" in bad[1]


def test_the_readme_parses() -> None:
    assert any(b.section == "Security" for b in blocks(README.read_text()))
