"""The fault scenarios and resource floods of `python -m bench.chaos`, run with real processes
(all but the heavy ones, which `python -m bench.chaos` runs)."""

from __future__ import annotations

from pathlib import Path

from bench.chaos import HEAVY, SCENARIOS, run_scenarios


def test_every_fault_scenario_passes(tmp_path: Path) -> None:
    scenarios = [s for s in SCENARIOS if s not in HEAVY]
    outcomes = run_scenarios(tmp_path, scenarios=scenarios)
    assert [o.name for o in outcomes] == [s.__name__ for s in scenarios]
    failed = {o.name: o.detail for o in outcomes if not o.passed}
    assert not failed, failed
