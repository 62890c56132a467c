"""One round of tasks: dispatch to participants, wait until the deadline, sort the outcomes."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fused.common.domain.tasks import (
    AdapterRef,
    EvalOutcome,
    ForgetSpec,
    TaskKind,
    TaskOutcome,
    TaskSpec,
)
from fused.common.domain.train_config import TrainConfig
from fused.coordinator.fleet import Validator
from fused.coordinator.jobs import JobContext
from fused.coordinator.versions import new_id


@dataclass
class RoundResult:
    outcomes: dict[str, TaskOutcome] = field(default_factory=dict)  # successful, by participant
    failures: dict[str, str] = field(default_factory=dict)  # participant -> why not counted


@dataclass(frozen=True)
class RoundPlan:
    phase: str
    round: int
    kind: TaskKind
    participants: list[str]
    model_blob_id: str
    model_name: str
    num_classes: int
    deadline_s: float
    train_config: Callable[[str], TrainConfig]  # per participant (seeds differ)
    forget: ForgetSpec | None = None
    adapter: AdapterRef | None = None


async def run_round(
    ctx: JobContext, plan: RoundPlan, validate: Validator | None = None
) -> RoundResult:
    deadline = ctx.clock() + plan.deadline_s
    futures: dict[asyncio.Future[TaskOutcome], tuple[str, str]] = {}
    for pid in plan.participants:
        spec = TaskSpec(
            task_id=new_id("task"),
            job_id=ctx.job_id,
            phase=plan.phase,
            round=plan.round,
            kind=plan.kind,
            model_blob_id=plan.model_blob_id,
            model_name=plan.model_name,
            num_classes=plan.num_classes,
            train=plan.train_config(pid),
            deadline_unix=deadline,
            forget=plan.forget.for_participant(pid) if plan.forget else None,
            adapter=plan.adapter,
        )
        futures[ctx.fleet.submit(pid, spec, validate)] = (pid, spec.task_id)
    result = RoundResult()
    try:
        done, pending = await asyncio.wait(futures, timeout=plan.deadline_s)
    finally:  # on cancellation too: no task may stay open
        for future, (_, task_id) in futures.items():
            if not future.done():
                ctx.fleet.close(task_id)
    for future in pending:
        result.failures[futures[future][0]] = f"no result within {plan.deadline_s:g} s"
    for future in done:
        pid = futures[future][0]
        if future.cancelled():
            result.failures[pid] = "task closed"
            continue
        outcome = future.result()
        if outcome.error is not None:
            result.failures[pid] = outcome.error
        else:
            result.outcomes[pid] = outcome
    return result


def eval_validator(num_classes: int, registered_test: Callable[[str], int]) -> Validator:
    """Checks an evaluation report: counts consistent, and no more test samples than the
    participant registered (so one participant cannot outweigh the others)."""

    async def validate(outcome: TaskOutcome) -> None:
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
        registered = registered_test(outcome.participant_id)
        if sum(ev.total) > registered:
            raise ValueError(
                f"evaluation counts cover {sum(ev.total)} test samples; this participant "
                f"registered {registered}"
            )

    return validate


def merge_eval(outcomes: dict[str, TaskOutcome], num_classes: int) -> dict[str, Any]:
    """Federated evaluation: sum the per-class counts of every participant."""
    correct = [0] * num_classes
    total = [0] * num_classes
    forget_correct = forget_total = 0
    loss_sum = 0.0
    per_participant: dict[str, float] = {}
    for pid, outcome in sorted(outcomes.items()):
        ev = outcome.eval
        assert isinstance(ev, EvalOutcome)
        for c in range(num_classes):
            correct[c] += ev.correct[c]
            total[c] += ev.total[c]
        loss_sum += ev.loss_sum
        forget_correct += ev.forget_correct
        forget_total += ev.forget_total
        n = ev.num_examples
        per_participant[pid] = sum(ev.correct) / n if n else 0.0
    n_all = sum(total)
    return {
        "accuracy": sum(correct) / n_all if n_all else 0.0,  # RA: on the remaining test data
        "fa": forget_correct / forget_total if forget_total else None,  # on the forgotten set
        "forget_total": forget_total,
        "loss": loss_sum / n_all if n_all else 0.0,
        "num_examples": n_all,
        "correct": correct,
        "total": total,
        "per_participant": per_participant,
    }
