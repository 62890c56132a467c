"""One round of tasks: dispatch to participants, wait until the deadline, sort the checked
results from the failures, and commit the round's record."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from fused.common.domain.records import Phase, RoundRecord
from fused.common.domain.round_metrics import RoundMetrics, task_timings
from fused.common.domain.tasks import AdapterRef, ForgetSpec, TaskKind, TaskSpec
from fused.common.domain.train_config import TrainConfig, task_seed
from fused.coordinator.engine.context import JobContext, JobFailed
from fused.coordinator.fleet import Accepted, Refused, ResultCheck, Settled
from fused.coordinator.ids import new_id

P = TypeVar("P")


@dataclass
class RoundResult(Generic[P]):
    accepted: dict[str, Accepted[P]] = field(default_factory=dict)  # by participant
    failures: dict[str, str] = field(default_factory=dict)  # participant -> why not counted

    def in_order(self) -> list[Accepted[P]]:
        """Accepted results sorted by participant: aggregation must not depend on arrival."""
        return [self.accepted[pid] for pid in sorted(self.accepted)]


@dataclass(frozen=True)
class RoundPlan:
    phase: Phase
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
    forget_only: bool = False  # sensitivity: measure on the forgotten data alone


def seeded(train: TrainConfig, seed: int, r: int) -> Callable[[str], TrainConfig]:
    """Each participant's local settings: the job's, with a seed of its own for this round."""
    return lambda pid: dataclasses.replace(train, seed=task_seed(seed, r, pid))


def _task(ctx: JobContext, plan: RoundPlan, pid: str, deadline: float) -> TaskSpec:
    return TaskSpec(
        task_id=new_id("task"),
        job_id=ctx.job_id,
        phase=plan.phase.value,
        round=plan.round,
        kind=plan.kind,
        model_blob_id=plan.model_blob_id,
        model_name=plan.model_name,
        num_classes=plan.num_classes,
        train=plan.train_config(pid),
        deadline_unix=deadline,
        forget=plan.forget.for_participant(pid) if plan.forget else None,
        adapter=plan.adapter,
        excluded=ctx.excluded.for_participant(pid),
        forget_only=plan.forget_only,
    )


async def run_round(ctx: JobContext, plan: RoundPlan, check: ResultCheck[P]) -> RoundResult[P]:
    """Each outcome is checked by `check` as it arrives (inside its PushResult call); the
    result holds what the checks returned."""
    deadline = ctx.clock() + plan.deadline_s
    futures: dict[asyncio.Future[Settled[P]], tuple[str, str]] = {}
    for pid in plan.participants:
        spec = _task(ctx, plan, pid, deadline)
        futures[ctx.fleet.submit(pid, spec, check)] = (pid, spec.task_id)
    result: RoundResult[P] = RoundResult()
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
        settled = None if future.cancelled() else future.result()
        if isinstance(settled, Accepted):
            result.accepted[pid] = settled
        else:
            result.failures[pid] = settled.reason if isinstance(settled, Refused) else "task closed"
    return result


QUOTED_FAILURES = 8  # a failed job's reason quotes this many; the round record keeps all


def check_quorum(result: RoundResult[P], needed: int, phase: Phase, round_number: int) -> None:
    if len(result.accepted) < needed:
        failures = sorted(result.failures.items())
        reasons = "; ".join(f"{p}: {why}" for p, why in failures[:QUOTED_FAILURES])
        if len(failures) > QUOTED_FAILURES:
            reasons += f"; and {len(failures) - QUOTED_FAILURES} more (see the round's failures)"
        raise JobFailed(
            f"{phase.value} round {round_number}: {len(result.accepted)} results, "
            f"{needed} required ({reasons or 'no participant available'})"
        )


def finish_round(
    ctx: JobContext,
    phase: Phase,
    r: int,
    started: float,
    result: RoundResult[P],
    metrics: RoundMetrics,
) -> RoundMetrics:
    """Commit the round: its record (with time, failures and bytes), metrics and an event."""
    full = dataclasses.replace(
        metrics,
        seconds=ctx.clock() - started,
        failures=result.failures,
        bytes=ctx.round_bytes(phase.value, r).summary(),
        timings=task_timings({pid: a.outcome for pid, a in result.accepted.items()}),
    )
    participants = sorted(result.accepted)
    record = RoundRecord(ctx.job_id, phase, r, started, ctx.clock(), participants, full)
    ctx.store.save_round(record)
    ctx.metrics.rounds.labels(phase.value).inc()
    assert full.bytes is not None
    ctx.metrics.last_round_bytes.labels(phase.value).set(full.bytes.total)
    ctx.metrics.round_seconds.labels(phase.value).observe(full.seconds)
    ctx.emit("round_completed", phase.value, r, f"{phase.value} round {r} done", full.to_dict())
    return full
