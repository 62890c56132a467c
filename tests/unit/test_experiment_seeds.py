"""Several seeds as one result: means, standard deviations, flags that held on every seed, and
a report that shows mean ± standard deviation."""

from __future__ import annotations

from typing import Any

import pytest

from experiments.report import table
from experiments.seeds import combine

METRICS = {
    "ra": 0.8,
    "fa": 0.1,
    "mia_auc": 0.5,
    "rea": 0.2,
    "bytes_per_round": 1000.0,
    "bytes_total": 5000.0,
    "seconds": 10.0,
    "rounds": 5,
    "revert_exact": True,
    "critical_layers": ["fc1.weight"],
}


def run(seed: int, shift: float, exact: bool = True) -> dict[str, Any]:
    metrics = {**METRICS, "ra": 0.8 + shift, "revert_exact": exact}
    return {
        "config": {"seed": seed, "paradigm": "client", "dataset": "digits"},
        "original": {"ra": 0.9 + shift, "fa": 0.3, "mia_auc": 0.6, "seconds": 20.0},
        "methods": {"fused": metrics, "retrain": {**metrics, "ra": 0.79}},
    }


def test_means_spreads_and_flags() -> None:
    combined = combine([run(0, 0.0), run(1, 0.02, exact=False), run(2, 0.04)])
    fused = combined["methods"]["fused"]
    assert fused["ra"] == pytest.approx(0.82)
    assert combined["spread"]["fused"]["ra"] == pytest.approx(0.02)
    assert fused["revert_exact"] is False  # held on every seed, or not at all
    assert fused["critical_layers"] == ["fc1.weight"] and fused["rounds"] == 5
    assert "revert_exact" not in combined["spread"]["fused"]
    assert combined["spread"]["retrain"]["ra"] == 0.0
    assert combined["config"]["seeds"] == [0, 1, 2] and len(combined["seeds"]) == 3
    assert combined["original"]["ra"] == pytest.approx(0.92)


def test_one_seed_is_the_run_itself() -> None:
    single = run(0, 0.0)
    assert combine([single]) is single


def test_the_report_shows_the_spread() -> None:
    text = table(combine([run(0, 0.0), run(1, 0.02)]))
    assert "| RA | 0.8100 ± 0.0141 | 0.7900 ± 0.0000 |" in text
    assert "| revert exact | True | True |" in text
