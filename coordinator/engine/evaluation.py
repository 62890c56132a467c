"""Federated evaluation: every online participant reports per-class counts on its test split
(and on its part of the forgotten set); the coordinator sums them into RA and FA."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from fused.common.domain.records import Phase
from fused.common.domain.round_metrics import EvalSummary, RoundMetrics
from fused.common.domain.tasks import AdapterRef, EvalOutcome, ForgetSpec, TaskKind, TaskOutcome
from fused.common.domain.train_config import TrainConfig
from fused.common.ml.membership import BINS, attack_auc
from fused.common.ml.plausibility import capped_weights
from fused.coordinator.engine.context import JobContext
from fused.coordinator.engine.participants import members, registered_samples, registered_test
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
    name: str  # the workload's name
    num_classes: int  # evaluation buckets: classes, or 1 for a workload without classes
    dataset: str  # what the data is, for listings
    schema_digest: str  # the model's tensor schema (engine.schemas)


def eval_check(ctx: JobContext, num_classes: int) -> ResultCheck[EvalOutcome]:
    """Checks an evaluation report: counts consistent, no more test samples than the
    participant registered, and a forgotten set no larger than all it registered (the round's
    shares are capped once every report is in: `merge_eval`)."""

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
        _check_histograms(ev)
        if not (math.isfinite(ev.loss_sum) and ev.loss_sum >= 0):
            raise ValueError(f"loss_sum {ev.loss_sum} is not a finite, non-negative number")
        registered = registered_test(ctx, outcome.participant_id)
        if sum(ev.total) > registered:
            raise ValueError(
                f"evaluation counts cover {sum(ev.total)} test samples; this participant "
                f"registered {registered}"
            )
        if ev.forget_total > registered_samples(ctx, outcome.participant_id):
            raise ValueError(
                f"forget counts cover {ev.forget_total} samples; this participant registered "
                f"{registered_samples(ctx, outcome.participant_id)} in all"
            )
        return ev

    return check


def _check_histograms(ev: EvalOutcome) -> None:
    """Loss histograms, when sent, have membership.BINS bins and count the examples the
    counts do (a report cannot skew the attack with samples it did not evaluate)."""
    for name, hist, n in (
        ("test_losses", ev.test_losses, sum(ev.total)),
        ("forget_losses", ev.forget_losses, ev.forget_total),
    ):
        if hist and (len(hist) != BINS or sum(hist) != n):
            raise ValueError(f"{name}: want {BINS} bins counting {n} examples")


def scaled(ev: EvalOutcome, weight: int) -> EvalOutcome:
    """A report's test counts scaled to `weight` test samples (rounded down): what is left of
    it when its share of the round is capped."""
    n = sum(ev.total)
    if weight >= n:
        return ev
    return dataclasses.replace(
        ev,
        correct=tuple(c * weight // n for c in ev.correct),
        total=tuple(t * weight // n for t in ev.total),
        loss_sum=ev.loss_sum * weight / n,
        test_losses=tuple(h * weight // n for h in ev.test_losses),
    )


def capped_reports(result: RoundResult[EvalOutcome], max_share: float) -> list[EvalOutcome]:
    """The reports in participant order, none above `max_share` of the round's test samples
    (`capped_weights`); the forgotten set is not capped (one participant may hold all of it)."""
    reports = [accepted.payload for accepted in result.in_order()]
    weights = capped_weights([sum(ev.total) for ev in reports], max_share)
    return [scaled(ev, w) for ev, w in zip(reports, weights, strict=True)]


def merge_eval(
    result: RoundResult[EvalOutcome], num_classes: int, max_share: float = 1.0
) -> EvalSummary:
    """Sum the per-class counts of every participant, each capped to `max_share`."""
    correct = [0] * num_classes
    total = [0] * num_classes
    forget_correct = forget_total = 0
    loss_sum = 0.0
    test_losses, forget_losses = [0] * BINS, [0] * BINS
    per_participant: dict[str, float] = {}
    capped = capped_reports(result, max_share)
    for accepted, ev in zip(result.in_order(), capped, strict=True):
        for c in range(num_classes):
            correct[c] += ev.correct[c]
            total[c] += ev.total[c]
        loss_sum += ev.loss_sum
        forget_correct += ev.forget_correct
        forget_total += ev.forget_total
        for summed, hist in ((test_losses, ev.test_losses), (forget_losses, ev.forget_losses)):
            for b, count in enumerate(hist):
                summed[b] += count
        own = accepted.payload  # its own accuracy, from its report as sent
        n = own.num_examples
        per_participant[accepted.outcome.participant_id] = sum(own.correct) / n if n else 0.0
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
        mia_auc=attack_auc(forget_losses, test_losses),
    )


async def evaluate_model(
    ctx: JobContext,
    model: ModelInfo,
    r: int,
    model_blob: str,
    deadline_s: float,
    forget: ForgetSpec | None = None,
    adapter: AdapterRef | None = None,
    phase: Phase = Phase.EVALUATE,
) -> EvalSummary:
    """Federated evaluation by every online participant: RA and, with a forget spec, FA."""
    started = ctx.clock()
    ctx.progress(phase, r)
    plan = RoundPlan(
        phase,
        r,
        TaskKind.EVALUATE,
        members(ctx),
        model_blob,
        model.name,
        model.num_classes,
        deadline_s,
        seeded(TrainConfig(), 0, r),
        forget,
        adapter,
    )
    result = await run_round(ctx, plan, eval_check(ctx, model.num_classes))
    check_quorum(result, 1, phase, r)
    summary = merge_eval(result, model.num_classes, ctx.policy.max_weight_share)
    ctx.metrics.job_accuracy.labels(ctx.job_id).set(summary.accuracy)
    if summary.fa is not None:
        ctx.metrics.job_forget_accuracy.labels(ctx.job_id).set(summary.fa)
    finish_round(ctx, phase, r, started, result, RoundMetrics(evaluation=summary))
    return summary
