"""Fixtures shared by the machine tests (builders are in tests/cluster/helpers.py)."""

from __future__ import annotations

import pytest

from tests.cluster import helpers
from tests.cluster.helpers import CH, CH2, Machine, bind, q_declare, x_declare


@pytest.fixture
def m() -> Machine:
    """A machine with one open channel, ``CH``."""
    machine = Machine()
    machine.open(CH)
    return machine


@pytest.fixture
def m2(m: Machine) -> Machine:
    """``m`` with a second channel on the same connection, ``CH2``."""
    m.open(CH2)
    return m


@pytest.fixture
def dlx(m: Machine) -> Machine:
    """``m`` with a fanout exchange ``dlx`` feeding the queue ``dlq``."""
    m.run(x_declare(CH, "dlx", "fanout"), q_declare(CH, "dlq"), bind(CH, "dlq", "dlx"))
    return m


# Modules whose behaviour depends on the command level (cluster/machine/expiry.py:
# the deadline heap from level 3) run at this release's level and at level 2.
_BY_LEVEL = {"test_ttl", "test_deadletter", "test_tenant_isolation", "test_deadline_heap"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if "level_under_test" in metafunc.fixturenames and module in _BY_LEVEL:
        metafunc.parametrize("level_under_test", [helpers.LEVEL_UNDER_TEST, 2],
                             indirect=True, ids=["level-now", "level-2"])


@pytest.fixture(autouse=True)
def level_under_test(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    level = getattr(request, "param", helpers.LEVEL_UNDER_TEST)
    monkeypatch.setattr(helpers, "LEVEL_UNDER_TEST", level)
    return int(level)
