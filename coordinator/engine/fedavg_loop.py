"""The FedAvg loop, written once over what it averages: full model weights (training, the
retrain and finetune baselines) or the values of a sparse adapter on a frozen base (FUSED)."""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from fused.common.domain.records import Phase
from fused.common.domain.round_metrics import (
    AggregateSummary,
    EvalSummary,
    LayerDistances,
    PayloadKind,
    RoundMetrics,
)
from fused.common.domain.tasks import AdapterRef, ForgetSpec, TaskKind, TaskOutcome
from fused.common.domain.train_config import TrainConfig
from fused.common.ml.fedavg import weighted_mean
from fused.common.ml.plausibility import l1_distance, update_norm
from fused.coordinator.engine.checkpoints import Checkpoint, HistoryEntry, last_checkpoint
from fused.coordinator.engine.context import JobContext
from fused.coordinator.engine.evaluation import ModelInfo, evaluate_model
from fused.coordinator.engine.participants import check_examples, eligible, select_participants
from fused.coordinator.engine.round_sum import Contribution, Load, Received, RoundSum, round_sum
from fused.coordinator.engine.rounds import (
    RoundPlan,
    RoundResult,
    check_quorum,
    finish_round,
    run_round,
    seeded,
)
from fused.coordinator.engine.screening import measures_norms, round_weights, screen_updates
from fused.coordinator.engine.stopping import Plateau
from fused.coordinator.fleet import ResultCheck

Tensors = dict[str, torch.Tensor]


class Payload(ABC):
    """What participants train and upload, and how the coordinator stores its average."""

    kind: PayloadKind
    task_kind: TaskKind
    label: str  # how round-started events name a round

    @abstractmethod
    def decode(self, data: bytes) -> Tensors:
        """An upload's tensors; raises ValueError on anything off-schema."""

    @abstractmethod
    async def store(self, ctx: JobContext, tensors: Tensors) -> str:
        """Store an aggregate; returns its blob id."""

    @abstractmethod
    async def reference(self, ctx: JobContext, aggregate_blob: str) -> Tensors:
        """The tensors a round starting from `aggregate_blob` trains from, as uploads hold
        them: an update's norm is measured from these."""

    @abstractmethod
    def model_blob(self, aggregate_blob: str) -> str:
        """The weights a task starts from, given the current aggregate."""

    @abstractmethod
    def adapter(self, aggregate_blob: str, for_training: bool) -> AdapterRef | None:
        """The adapter a task applies on those weights (None: plain weights)."""

    def expected_round_bytes(self, r: int, participants: int) -> int | None:
        """What a round should move, for the expected-bytes gauge (None: no estimate)."""
        return None


@dataclass(frozen=True)
class FedAvgPlan:
    phase: Phase
    rounds: int
    train: TrainConfig
    seed: int
    participants_per_round: int  # 0 = every participant holding remaining data
    min_participants: int
    deadline_s: float
    evaluate_each_round: bool
    forget: ForgetSpec | None = None
    stop: Plateau | None = None  # stop once the forgotten set's FA stops falling
    # tensors whose per-participant L1 movement the last round records for a later layer
    # ranking (a training job's adaptable tensors; () records nothing)
    record_distances: tuple[str, ...] = ()


def update_check(
    ctx: JobContext,
    payload: Payload,
    into: RoundSum,
    reference: Tensors | None,
    measured: tuple[str, ...] = (),
) -> ResultCheck[Received]:
    """Checks a training result, decodes its upload and folds it into the round's sum; the
    round's result keeps only the upload's blob id and norm (from `reference`, if given)."""

    async def check(outcome: TaskOutcome) -> Received:
        t = outcome.train
        if t is None:
            raise ValueError("expected a training result (uploaded tensors) for this task")
        check_examples(ctx, outcome, t.num_examples)
        for field, value in (("mean_loss", t.mean_loss), ("seconds", t.seconds)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{field} {value} is not a finite, non-negative number")
        if not ctx.fleet.uploaded(outcome.participant_id, t.update_blob_id):
            raise ValueError(
                f"{outcome.participant_id} has not uploaded {t.update_blob_id}: upload before "
                "pushing"
            )
        share = Contribution(outcome.participant_id, t.update_blob_id, t.num_examples)
        return await asyncio.to_thread(_receive, ctx, payload, into, reference, share, measured)

    return check


def _receive(
    ctx: JobContext,
    payload: Payload,
    into: RoundSum,
    reference: Tensors | None,
    share: Contribution,
    measured: tuple[str, ...] = (),
) -> Received:
    """Where each arriving update is decoded: measured, folded in, then dropped. `measured`
    names the tensors whose L1 distance from `reference` is kept (needs `reference`)."""
    tensors = payload.decode(ctx.artifacts.get_bytes(share.blob_id))
    norm = None if reference is None else update_norm(tensors, reference)
    distances = None
    if measured and reference is not None:
        distances = {n: l1_distance(tensors[n], reference[n]) for n in measured}
    into.fold(share, tensors)
    return Received(share.blob_id, norm, distances)


def _loader(ctx: JobContext, payload: Payload) -> Load:
    return lambda blob_id: payload.decode(ctx.artifacts.get_bytes(blob_id))


async def fedavg_rounds(
    ctx: JobContext,
    model: ModelInfo,
    plan: FedAvgPlan,
    payload: Payload,
    first_blob: str,
) -> tuple[str, list[HistoryEntry]]:
    """FedAvg weighted by sample counts from `first_blob` ("" = a zero adapter), or after the
    last committed round; returns the final aggregate's blob and the per-round history."""
    start = last_checkpoint(ctx, plan.phase, payload.kind)
    blob, history, first = _starting_point(start, first_blob)
    if history and history[-1].evaluation is None and plan.evaluate_each_round:
        # resumed between a round's aggregate and its evaluation: the stop rule needs it
        history[-1].evaluation = await _evaluate(ctx, model, plan, payload, first - 1, blob)
    for r in range(first, plan.rounds + 1):
        if plan.stop is not None and plan.stop.reason(history) is not None:
            break  # also where a resumed job had stopped
        blob, entry = await _one_round(ctx, model, plan, payload, blob, r)
        history.append(entry)
        if plan.evaluate_each_round or r == plan.rounds:
            entry.evaluation = await _evaluate(ctx, model, plan, payload, r, blob)
    if history and history[-1].evaluation is None:  # resumed after the last aggregate
        last = history[-1].round
        history[-1].evaluation = await _evaluate(ctx, model, plan, payload, last, blob)
    return blob, history


def _starting_point(
    start: Checkpoint | None, first_blob: str
) -> tuple[str, list[HistoryEntry], int]:
    if start is None:
        return first_blob, [], 1
    return start.blob, list(start.history), start.round + 1


async def _one_round(
    ctx: JobContext, model: ModelInfo, plan: FedAvgPlan, payload: Payload, blob: str, r: int
) -> tuple[str, HistoryEntry]:
    started = ctx.clock()
    ctx.progress(plan.phase, r)
    chosen = select_participants(
        eligible(ctx, plan.forget), plan.participants_per_round, plan.seed, r
    )
    ctx.emit(
        "round_started", plan.phase.value, r, f"{payload.label} {r}: {len(chosen)} participants"
    )
    expected = payload.expected_round_bytes(r, len(chosen))
    if expected is not None:
        ctx.metrics.expected_round_bytes.labels(plan.phase.value).set(expected)
    round_plan = RoundPlan(
        plan.phase,
        r,
        payload.task_kind,
        chosen,
        payload.model_blob(blob),
        model.name,
        model.num_classes,
        plan.deadline_s,
        seeded(plan.train, plan.seed, r),
        plan.forget,
        payload.adapter(blob, for_training=True),
    )
    # the round's starting point, for update norms and recorded distances: the only
    # model-sized copy the round keeps beside its sum (and the uploads being decoded)
    measured = plan.record_distances if r == plan.rounds else ()
    needs_reference = measures_norms(ctx.policy) or bool(measured)
    reference = await payload.reference(ctx, blob) if needs_reference else None
    into = round_sum(ctx.policy, _loader(ctx, payload))
    check = update_check(ctx, payload, into, reference, measured)
    result = await run_round(ctx, round_plan, check)
    del reference
    for pid in _gone_offline(ctx, plan.phase, r, chosen):  # so a lost quorum names them
        result.failures.setdefault(pid, "offline since the previous round")
    screen_updates(ctx, result, plan.phase, r)
    check_quorum(result, plan.min_participants, plan.phase, r)
    aggregate = await _aggregate(ctx, payload, into, result, plan.phase, r)
    recorded = _layer_distances(result) if measured else None
    metrics = RoundMetrics(aggregate=aggregate, layer_distances=recorded)
    finish_round(ctx, plan.phase, r, started, result, metrics)
    return aggregate.blob, HistoryEntry(r, aggregate.train_loss, aggregate.num_examples)


def _layer_distances(result: RoundResult[Received]) -> LayerDistances:
    """The accepted updates' distances and sample counts (those screened out are left out)."""
    distances: dict[str, dict[str, float]] = {}
    examples: dict[str, int] = {}
    for accepted in result.in_order():
        train, got = accepted.outcome.train, accepted.payload.distances
        if train is not None and got is not None:
            distances[accepted.outcome.participant_id] = got
            examples[accepted.outcome.participant_id] = train.num_examples
    return LayerDistances(distances, examples)


def _gone_offline(ctx: JobContext, phase: Phase, r: int, chosen: list[str]) -> list[str]:
    """Participants of the previous round of this phase that are offline and not chosen now."""
    previous = next(
        (
            rec
            for rec in ctx.store.list_rounds(ctx.job_id)
            if rec.phase == phase and rec.round == r - 1
        ),
        None,
    )
    if previous is None:
        return []
    return [
        p for p in sorted(set(previous.participants) - set(chosen)) if not ctx.fleet.is_online(p)
    ]


async def _aggregate(
    ctx: JobContext,
    payload: Payload,
    into: RoundSum,
    result: RoundResult[Received],
    phase: Phase,
    r: int,
) -> AggregateSummary:
    """The accepted uploads combined by the job's aggregator (FedAvg: the sample-weighted
    mean), with each weight capped to the job's max share; independent of arrival order."""
    weights = round_weights(ctx, result, phase, r)
    final = []
    losses = []
    for accepted, weight in zip(result.in_order(), weights, strict=True):
        train = accepted.outcome.train
        assert train is not None  # update_check accepted it
        final.append(
            Contribution(accepted.outcome.participant_id, accepted.payload.blob_id, weight)
        )
        losses.append((train.mean_loss, weight))
    averaged = await asyncio.to_thread(into.finish, final)
    blob = await payload.store(ctx, averaged)
    return AggregateSummary(payload.kind, blob, weighted_mean(losses), sum(weights))


async def _evaluate(
    ctx: JobContext, model: ModelInfo, plan: FedAvgPlan, payload: Payload, r: int, blob: str
) -> EvalSummary:
    return await evaluate_model(
        ctx,
        model,
        r,
        payload.model_blob(blob),
        plan.deadline_s,
        plan.forget,
        payload.adapter(blob, for_training=False),
    )
