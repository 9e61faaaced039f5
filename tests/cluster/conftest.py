"""Fixtures shared by the machine tests (builders are in tests/cluster/helpers.py)."""

from __future__ import annotations

import pytest

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
