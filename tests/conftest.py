"""Fixtures shared by the tests. Plain helper functions are in tests/helpers.py (import
them from there, not from this file)."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from helpers import FakeClock


class Clocks(NamedTuple):
    mono: FakeClock
    wall: FakeClock


@pytest.fixture
def clocks() -> Clocks:
    """(monotonic, wall) fake clocks, standing still until a test moves them (advance them
    together): monotonic at 1000 s, wall at 1_733_390_000 (unix seconds)."""
    return Clocks(FakeClock(1000.0), FakeClock(1_733_390_000.0))
