"""Stopping an unlearning job once the forgotten set's FA stops falling."""

from __future__ import annotations

import pytest

from fused.common.domain.round_metrics import EvalSummary
from fused.coordinator.engine.checkpoints import HistoryEntry
from fused.coordinator.engine.stopping import Plateau, stop_note


def history(*fas: float | None) -> list[HistoryEntry]:
    """Rounds 1.. with these FAs (None: a round not evaluated)."""
    out = []
    for r, fa in enumerate(fas, start=1):
        ev = None if fa is None else EvalSummary(0.9, fa, 10, 0.1, 100, [], [], {})
        out.append(HistoryEntry(r, 0.5, 100, ev))
    return out


@pytest.mark.parametrize(
    ("fas", "stops"),
    [
        ((), False),  # nothing measured yet
        ((0.5,), False),
        ((0.5, 0.4, 0.3, 0.2), False),  # still falling
        ((0.5, 0.3, 0.3, 0.3), True),  # two rounds without a new low (patience 2)
        ((0.5, 0.3, 0.28, 0.275), True),  # falling by less than 10% counts as flat
        ((0.5, 0.3, 0.3, 0.26), False),  # a new low by more than 10% resets the count
        ((0.5, 0.3, None, 0.3), True),  # unevaluated rounds do not count as measurements
        ((0.5, 0.0), True),  # FA 0 cannot fall further
        ((0.5, 0.3, 0.4), False),  # one round past the low: patience not used up
    ],
)
def test_plateau_stops_when_fa_stops_falling(fas: tuple[float | None, ...], stops: bool) -> None:
    rule = Plateau(patience=2, min_delta=0.1)
    assert (rule.reason(history(*fas)) is not None) is stops


def test_stop_note_says_why_and_how_many_rounds() -> None:
    rule = Plateau(patience=2, min_delta=0.1)
    flat = history(0.5, 0.3, 0.3, 0.3)
    assert stop_note(rule, flat, 20).startswith("stopped after round 4 of at most 20: FA stopped")
    assert "lowest 0.3000 at round 2" in stop_note(rule, flat, 20)
    falling = history(0.5, 0.4, 0.3)
    assert stop_note(rule, falling, 3) == "ran all 3 rounds: FA was still falling (patience 2)"
    assert stop_note(None, falling, 3) == "ran all 3 rounds (no stopping rule)"
