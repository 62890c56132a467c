"""Fixtures the unit tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fused.coordinator.state import InMemoryStateStore, SqliteStateStore, StateStore


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    """Each StateStore implementation in turn: the contract suites run against both."""
    s: StateStore = (
        InMemoryStateStore()
        if request.param == "memory"
        else SqliteStateStore(tmp_path / "state.db")
    )
    yield s
    s.close()
