"""Committed rounds: a round counts once its record is stored, so a resumed job continues
after its last committed round with the same aggregate and history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fused.common.domain.records import Phase
from fused.common.domain.round_metrics import EvalSummary, PayloadKind, RoundMetrics
from fused.coordinator.engine.context import JobContext


@dataclass
class HistoryEntry:
    """One FedAvg round as a job's result lists it."""

    round: int
    train_loss: float | None = None
    num_examples: int | None = None
    evaluation: EvalSummary | None = None  # when the round was evaluated

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"round": self.round}
        if self.train_loss is not None:
            out["train_loss"] = self.train_loss
        if self.num_examples is not None:
            out["num_examples"] = self.num_examples
        if self.evaluation is not None:
            out.update(accuracy=self.evaluation.accuracy, fa=self.evaluation.fa)
        return out


@dataclass(frozen=True)
class Checkpoint:
    """The last committed round of a phase: its aggregate and the history so far."""

    round: int
    blob: str
    history: list[HistoryEntry]


def committed_round(ctx: JobContext, phase: Phase, r: int) -> RoundMetrics | None:
    """The stored metrics of a finished round, if the job already committed it."""
    for record in ctx.store.list_rounds(ctx.job_id):
        if record.phase == phase and record.round == r:
            return record.metrics
    return None


def _aggregates(metrics: RoundMetrics, payload: PayloadKind) -> bool:
    return metrics.aggregate is not None and metrics.aggregate.payload is payload


def last_checkpoint(ctx: JobContext, phase: Phase, payload: PayloadKind) -> Checkpoint | None:
    """The latest committed aggregate of `phase`, with the history of the rounds up to it."""
    records = ctx.store.list_rounds(ctx.job_id)
    committed = sorted(
        (
            (r.round, r.metrics)
            for r in records
            if r.phase == phase and _aggregates(r.metrics, payload)
        ),
        key=lambda item: item[0],
    )
    if not committed:
        return None
    evals = {r.round: r.metrics.evaluation for r in records if r.phase == Phase.EVALUATE}
    history = []
    for number, metrics in committed:
        aggregate = metrics.aggregate
        assert aggregate is not None
        entry = HistoryEntry(number, aggregate.train_loss, aggregate.num_examples)
        entry.evaluation = evals.get(number)
        history.append(entry)
    last = committed[-1][1].aggregate
    assert last is not None
    return Checkpoint(committed[-1][0], last.blob, history)
