"""Fixtures for the multi-node suite: real RaftMQ clusters (``harness.cluster``) on
loopback.

* ``make_cluster(n=3, **env)``: a fresh cluster for this test, free to be killed; every node it
  started is stopped at teardown (by process group), and on failure the nodes' statuses and log
  tails are printed.
* ``cluster``: a fresh 3-node cluster with the test tunables below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.cluster import RaftMQCluster

# Tunables for tests (each is also a node option, RAFTMQ_<NAME>); a test may override them.
TEST_ENV = {
    "RAFTMQ_LOG_LEVEL": "info",
}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def make_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., RaftMQCluster]]:
    made: list[RaftMQCluster] = []

    def make(n: int = 3, start: bool = True, **env: str) -> RaftMQCluster:
        extra = dict(TEST_ENV)
        extra.update({k if k.startswith("RAFTMQ_") else f"RAFTMQ_{k.upper()}": str(v)
                      for k, v in env.items()})
        c = RaftMQCluster(tmp_path / f"cluster{len(made)}", n=n, extra_env=extra)
        made.append(c)
        if start:
            c.start(timeout=45)
        return c

    yield make
    failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False)
                 for w in ("setup", "call"))
    for c in made:
        if failed:
            print(c.describe(log_lines=60))
        c.stop()


@pytest.fixture
def cluster(make_cluster: Callable[..., RaftMQCluster]) -> RaftMQCluster:
    return make_cluster(3)
