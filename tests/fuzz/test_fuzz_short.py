"""The short version of the fuzzing that ``make test`` runs (``make fuzz`` is the long one).
Seeds vary from run to run and are printed, so a failure can be replayed with
``python -m tests.fuzz protocol --seed N`` / ``node --seed N``."""

from __future__ import annotations

import random

import pytest

from tests.fuzz import node_fuzz, protocol_fuzz


def test_protocol_layer() -> None:
    seed = random.randrange(1 << 30)
    stats = protocol_fuzz.fuzz(30_000, seed, jobs=1)
    print(protocol_fuzz.report(stats, 0.0), f"(seed {seed})")
    assert not stats.crashes, f"seed {seed}:\n" + "\n".join(stats.crashes[:3])
    assert len(stats.codes) >= 5  # the inputs reach many different errors


@pytest.mark.timeout(180)
def test_node_layer() -> None:
    seed = random.randrange(1 << 30)
    report = node_fuzz.fuzz(400, 100, seed)
    print(report.text(0.0), f"(seed {seed})")
    assert report.ok(), f"seed {seed}: {report.problems}"
    assert report.confirmed > 0 and report.conversations == 400
