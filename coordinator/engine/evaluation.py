"""Federated evaluation: every online participant reports per-class counts on its test split
(and on its part of the forgotten set); the coordinator sums them into RA and FA."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fused.common.domain.records import Phase
from fused.common.domain.round_metrics import EvalSummary, RoundMetrics
from fused.common.domain.tasks import AdapterRef, EvalOutcome, ForgetSpec, TaskKind, TaskOutcome
from fused.common.domain.train_config import TrainConfig
from fused.coordinator.engine.context import JobContext
from fused.coordinator.engine.participants import registered_test
from fused.coordinator.engine.rounds import (
    RoundPlan,
    RoundResult,
    check_quorum,
    finish_round,
    run_round,
    seeded,
)
from fused.coordinator.fleet import ResultCheck


@dataclass(frozen=True)
class ModelInfo:
    name: str  # registry name
    num_classes: int
    dataset: str


def eval_check(ctx: JobContext, num_classes: int) -> ResultCheck[EvalOutcome]:
    """Checks an evaluation report: counts consistent, and no more test samples than the
    participant registered (so one participant cannot outweigh the others)."""

    async def check(outcome: TaskOutcome) -> EvalOutcome:
        ev = outcome.eval
        if ev is None:
            raise ValueError("expected an evaluation result for an evaluation task")
        if len(ev.total) != num_classes:
            raise ValueError(
                f"evaluation counts have {len(ev.total)} classes, expected {num_classes}"
            )
        if any(c > t for c, t in zip(ev.correct, ev.total, strict=True)):
            raise ValueError("evaluation counts: correct exceeds total for some class")
        if ev.forget_correct > ev.forget_total:
            raise ValueError("evaluation counts: forget_correct exceeds forget_total")
        if not (math.isfinite(ev.loss_sum) and ev.loss_sum >= 0):
            raise ValueError(f"loss_sum {ev.loss_sum} is not a finite, non-negative number")
        registered = registered_test(ctx, outcome.participant_id)
        if sum(ev.total) > registered:
            raise ValueError(
                f"evaluation counts cover {sum(ev.total)} test samples; this participant "
                f"registered {registered}"
            )
        return ev

    return check


def merge_eval(result: RoundResult[EvalOutcome], num_classes: int) -> EvalSummary:
    """Sum the per-class counts of every participant."""
    correct = [0] * num_classes
    total = [0] * num_classes
    forget_correct = forget_total = 0
    loss_sum = 0.0
    per_participant: dict[str, float] = {}
    for accepted in result.in_order():
        ev = accepted.payload
        for c in range(num_classes):
            correct[c] += ev.correct[c]
            total[c] += ev.total[c]
        loss_sum += ev.loss_sum
        forget_correct += ev.forget_correct
        forget_total += ev.forget_total
        n = ev.num_examples
        per_participant[accepted.outcome.participant_id] = sum(ev.correct) / n if n else 0.0
    n_all = sum(total)
    return EvalSummary(
        accuracy=sum(correct) / n_all if n_all else 0.0,
        fa=forget_correct / forget_total if forget_total else None,
        forget_total=forget_total,
        loss=loss_sum / n_all if n_all else 0.0,
        num_examples=n_all,
        correct=correct,
        total=total,
        per_participant=per_participant,
    )


async def evaluate_model(
    ctx: JobContext,
    model: ModelInfo,
    r: int,
    model_blob: str,
    deadline_s: float,
    forget: ForgetSpec | None = None,
    adapter: AdapterRef | None = None,
) -> EvalSummary:
    """Federated evaluation by every online participant: RA and, with a forget spec, FA."""
    started = ctx.clock()
    ctx.progress(Phase.EVALUATE, r)
    plan = RoundPlan(
        Phase.EVALUATE,
        r,
        TaskKind.EVALUATE,
        ctx.fleet.online_ids(),
        model_blob,
        model.name,
        model.num_classes,
        deadline_s,
        seeded(TrainConfig(), 0, r),
        forget,
        adapter,
    )
    result = await run_round(ctx, plan, eval_check(ctx, model.num_classes))
    check_quorum(result, 1, Phase.EVALUATE, r)
    summary = merge_eval(result, model.num_classes)
    ctx.metrics.job_accuracy.labels(ctx.job_id).set(summary.accuracy)
    if summary.fa is not None:
        ctx.metrics.job_forget_accuracy.labels(ctx.job_id).set(summary.fa)
    finish_round(ctx, Phase.EVALUATE, r, started, result, RoundMetrics(evaluation=summary))
    return summary
