"""Layer selection rules: what each scores, which tensors win, and the round's averages."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fused.common.domain.specs import FusedConfig
from fused.common.domain.tasks import SensitivityOutcome, TaskOutcome
from fused.coordinator.engine.rounds import RoundResult
from fused.coordinator.fleet import Accepted
from fused.coordinator.methods.selection import (
    SELECTION_RULES,
    Sensitivity,
    concentration,
)
from fused.coordinator.methods.sensitivity import measured, rank

# A LeNet-like model: two convolutions, a big fc layer, a classifier head and a tiny bias.
SIZES = {"conv.weight": 2400, "fc1.weight": 30720, "fc1.bias": 120, "head.weight": 840, "b": 6}
# The federation's round moves fc1 most (CLI's choice); the forgotten data concentrates on
# the head and the convolution, and on the 6-entry bias most of all.
RETAINED = {"conv.weight": 5.0, "fc1.weight": 50.0, "fc1.bias": 0.1, "head.weight": 3.0, "b": 0.01}
FORGOTTEN = {"conv.weight": 4.0, "fc1.weight": 20.0, "fc1.bias": 0.05, "head.weight": 6.0, "b": 0.1}


def top(rule: str, forgotten: dict[str, float] | None = FORGOTTEN, k: int = 3) -> list[str]:
    scores = SELECTION_RULES[rule].scores(Sensitivity(RETAINED, forgotten, SIZES)).values
    return sorted(scores, key=lambda n: (-scores[n], n))[:k]


@dataclass(frozen=True)
class Case:
    rule: str
    expected: list[str]  # the top three


CASES = [
    Case("cli", ["fc1.weight", "conv.weight", "head.weight"]),
    # head: (6/30.15)/(3/58.11) = 3.85; conv: 1.93; fc1.bias 1.45; fc1 0.77; "b" too small
    Case("forget", ["head.weight", "conv.weight", "fc1.bias"]),
    # interleaved, forget-aware first: head, fc1 (CLI's first), conv
    Case("combined", ["head.weight", "fc1.weight", "conv.weight"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.rule for c in CASES])
def test_each_rule_picks_its_tensors(case: Case) -> None:
    assert top(case.rule) == case.expected


def test_concentration_compares_shares_not_distances() -> None:
    """The forgotten set's round moves everything less (fewer steps): scaling its distances
    changes nothing."""
    scaled = {n: d * 0.01 for n, d in FORGOTTEN.items()}
    same = concentration(Sensitivity(RETAINED, scaled, SIZES))
    assert same == pytest.approx(concentration(Sensitivity(RETAINED, FORGOTTEN, SIZES)))
    assert same["b"] > same["head.weight"]  # the bias concentrates most ...
    assert "b" not in top("forget", k=4)  # ... but is too small to carry an adapter


@pytest.mark.parametrize("rule", ["forget", "combined"])
def test_without_a_holder_the_rule_falls_back_to_cli_and_says_so(rule: str) -> None:
    scores = SELECTION_RULES[rule].scores(Sensitivity(RETAINED, None, SIZES))
    assert top(rule, forgotten=None) == top("cli")
    assert "no participant holding the forgotten data reported" in scores.note


def test_only_forget_aware_rules_ask_for_the_forgotten_data() -> None:
    assert {n: r.needs_forget for n, r in SELECTION_RULES.items()} == {
        "cli": False,
        "forget": True,
        "combined": True,
    }


def report(pid: str, n: int, scale: float, m: int = 0) -> Accepted[SensitivityOutcome]:
    forget = {k: v * scale for k, v in FORGOTTEN.items()} if m else {}
    sens = SensitivityOutcome({k: v * scale for k, v in RETAINED.items()}, n, forget, m)
    return Accepted(TaskOutcome(pid, "t-" + pid, sensitivity=sens), sens)


def test_the_round_averages_by_samples_and_holders_by_forgotten_samples() -> None:
    result: RoundResult[SensitivityOutcome] = RoundResult()
    result.accepted = {
        "p0": report("p0", 100, 1.0, m=30),
        "p1": report("p1", 300, 2.0),  # holds nothing forgotten
        "p2": report("p2", 100, 3.0, m=10),
    }
    sens = measured(result, SIZES)
    assert sens.retained["fc1.weight"] == pytest.approx((100 * 50 + 300 * 100 + 100 * 150) / 500)
    assert sens.forgotten is not None
    assert sens.forgotten["head.weight"] == pytest.approx((30 * 6 + 10 * 18) / 40)
    ranking = rank(sens, SIZES, FusedConfig(top_k=2, selection="combined"))
    assert ranking.rule == "combined" and ranking.note == ""
    chosen = [s.name for s in ranking.layers if s.selected]
    assert chosen == ["head.weight", "fc1.weight"]
    by_name = {s.name: s for s in ranking.layers}
    assert by_name["fc1.weight"].distance == pytest.approx(sens.retained["fc1.weight"])
    assert by_name["b"].forget_distance == pytest.approx(sens.forgotten["b"])


def test_without_holders_the_ranking_records_no_forget_distance() -> None:
    result: RoundResult[SensitivityOutcome] = RoundResult()
    result.accepted = {"p0": report("p0", 100, 1.0)}
    ranking = rank(measured(result, SIZES), SIZES, FusedConfig(top_k=1, selection="forget"))
    assert all(s.forget_distance is None for s in ranking.layers)
    assert [s.name for s in ranking.layers if s.selected] == ["fc1.weight"]
    assert "ranked by CLI" in ranking.note
