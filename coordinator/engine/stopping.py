"""Stopping an unlearning job by measurement: once the forgotten set's federated FA stops
falling. A fixed round budget cannot fit every federation and request; the request's
`rounds` stays the cap. The decision reads only the evaluated history, so a resumed job
decides exactly as the uninterrupted one would."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fused.coordinator.engine.checkpoints import HistoryEntry


@dataclass(frozen=True)
class Plateau:
    patience: int  # evaluated rounds without a new low before stopping
    min_delta: float  # a new low is below the lowest so far by more than this fraction of it

    def reason(self, history: Sequence[HistoryEntry]) -> str | None:
        """Why to stop after the last round of `history`; None to go on."""
        measured = [
            (h.round, h.evaluation.fa)
            for h in history
            if h.evaluation is not None and h.evaluation.fa is not None
        ]
        if not measured:
            return None
        best_round, best = measured[0]
        for r, fa in measured[1:]:
            if fa < best * (1 - self.min_delta):
                best_round, best = r, fa
        last_round, last = measured[-1]
        if last == 0.0:
            return f"FA reached 0 at round {last_round}"
        if last_round - best_round >= self.patience:
            return (
                f"FA stopped falling: lowest {best:.4f} at round {best_round}, not "
                f"{self.min_delta:.0%} lower in the {self.patience} rounds since"
            )
        return None


def stop_note(rule: Plateau | None, history: Sequence[HistoryEntry], cap: int) -> str:
    """What the job's result says about how many rounds it ran, and why."""
    why = rule.reason(history) if rule is not None else None
    rounds = history[-1].round if history else 0
    if why is not None:
        return f"stopped after round {rounds} of at most {cap}: {why}"
    if rule is not None:
        return f"ran all {cap} rounds: FA was still falling (patience {rule.patience})"
    return f"ran all {cap} rounds (no stopping rule)"
