"""Heartbeat intervals for the fleet's size (coordinator/heartbeat_pace.py)."""

from __future__ import annotations

from pathlib import Path

from fused.coordinator.fleet import Fleet
from fused.coordinator.heartbeat_pace import HeartbeatPace
from fused.coordinator.state import ParticipantRecord, SqliteStateStore


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_large_fleets_beat_less_often_and_are_reaped_later(tmp_path: Path) -> None:
    clock = Clock()
    fleet = Fleet(SqliteStateStore(tmp_path / "state.db"), offline_after_s=15, clock=clock)
    known = {f"old-{i}" for i in range(9_000)}  # records from earlier runs count
    pace = HeartbeatPace(fleet, interval_s=5, offline_after_s=15, per_s=500, known=known)
    assert pace.interval_for("a") == 9_001 / 500
    assert pace.interval_for("a") == 9_001 / 500  # the same agent again: the same fleet
    fleet.register(ParticipantRecord("a", [1], 1, 1, 0.0, 0.0, {"workload": "mlp"}))
    clock.now = 50.0  # silent for 50 s: past 15, within 15 * 18.002 / 5
    assert fleet.is_online("a") and not fleet.reap()
    clock.now = 55.0
    assert not fleet.is_online("a") and list(fleet.reap()) == ["a"]


def test_small_fleets_and_no_budget_keep_the_configured_interval(tmp_path: Path) -> None:
    fleet = Fleet(SqliteStateStore(tmp_path / "state.db"), offline_after_s=15)
    small = HeartbeatPace(fleet, interval_s=5, offline_after_s=15, per_s=500)
    assert [small.interval_for(f"p{i}") for i in range(3)] == [5, 5, 5]
    fixed = HeartbeatPace(fleet, 5, 15, per_s=0, known={f"p{i}" for i in range(100_000)})
    assert fixed.interval_for("p0") == 5
