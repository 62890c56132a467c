"""The fault scenarios of `python -m bench.chaos`, run with real processes."""

from __future__ import annotations

from pathlib import Path

from bench.chaos import SCENARIOS, run_scenarios


def test_every_fault_scenario_passes(tmp_path: Path) -> None:
    outcomes = run_scenarios(tmp_path)
    assert [o.name for o in outcomes] == [s.__name__ for s in SCENARIOS]
    failed = {o.name: o.detail for o in outcomes if not o.passed}
    assert not failed, failed
