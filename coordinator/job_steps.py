"""Steps shared by the coordinator's jobs: waiting for participants, FedAvg rounds,
federated evaluation, round bookkeeping."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fused.common.codecs.tensor_codec import TensorSchema, decode_tensors
from fused.common.domain.tasks import AdapterRef, ForgetSpec, TaskKind, TaskOutcome
from fused.common.domain.train_config import TrainConfig, task_seed
from fused.common.ml.fedavg import fedavg, weighted_mean
from fused.coordinator.fleet import Validator
from fused.coordinator.jobs import JobContext, JobFailed
from fused.coordinator.rounds import RoundPlan, RoundResult, eval_validator, merge_eval, run_round
from fused.coordinator.state import RoundRecord
from fused.coordinator.versions import save_weights


@dataclass(frozen=True)
class ModelInfo:
    name: str  # registry name
    num_classes: int
    dataset: str


@dataclass(frozen=True)
class FedAvgPlan:
    rounds: int
    train: TrainConfig
    seed: int
    participants_per_round: int
    min_participants: int
    deadline_s: float
    evaluate_each_round: bool
    forget: ForgetSpec | None = None
    phase: str = "train"


async def wait_for_participants(
    ctx: JobContext, needed: int, timeout_s: float, forget: ForgetSpec | None = None
) -> list[str]:
    """Wait until `needed` participants that hold remaining data are online (after a
    restart they reconnect one by one); returns every online participant."""
    deadline = ctx.clock() + timeout_s
    while True:
        usable = len(eligible(ctx, forget))
        if usable >= needed:
            return ctx.fleet.online_ids()
        if ctx.clock() >= deadline:
            raise JobFailed(
                f"only {usable} of the {needed} required participants were online "
                f"after waiting {timeout_s:g} s"
            )
        await asyncio.sleep(0.2)


def federation_data(ctx: JobContext, pids: list[str]) -> tuple[str, int]:
    """The data set and class count the participants share."""
    kinds = set()
    for pid in pids:
        record = ctx.store.get_participant(pid)
        if record is not None:
            kinds.add((record.info.get("dataset", ""), len(record.class_counts)))
    if len(kinds) != 1:
        raise JobFailed(f"participants disagree on data set / class count: {sorted(kinds)}")
    return kinds.pop()


def select_participants(online: list[str], k: int, seed: int, r: int) -> list[str]:
    """k of the online participants, drawn from (seed, round) alone so a resumed job draws
    the same ones."""
    rng = random.Random(task_seed(seed, r, "select"))
    return sorted(rng.sample(online, k)) if 0 < k < len(online) else list(online)


def eligible(ctx: JobContext, forget: ForgetSpec | None) -> list[str]:
    """Online participants that hold remaining data."""
    return [p for p in ctx.fleet.online_ids() if forget is None or not forget.excludes(p)]


def registered_test(ctx: JobContext) -> Callable[[str], int]:
    def num_test(pid: str) -> int:
        record = ctx.store.get_participant(pid)
        return record.num_test if record else 0

    return num_test


def check_examples(ctx: JobContext, outcome: TaskOutcome, n: int) -> None:
    record = ctx.store.get_participant(outcome.participant_id)
    registered = record.num_train if record else 0
    if not 0 < n <= registered:
        raise ValueError(
            f"num_examples {n} is not within the {registered} training samples this "
            "participant registered"
        )


Decoder = Callable[[bytes], dict[str, torch.Tensor]]


def upload_validator(
    ctx: JobContext, decode: Decoder, decoded: dict[str, dict[str, torch.Tensor]]
) -> Validator:
    """Checks a training result's uploaded tensors with `decode` (which raises ValueError on
    anything off-schema); keeps the decoded tensors for aggregation."""

    async def validate(outcome: TaskOutcome) -> None:
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
        data = await asyncio.to_thread(ctx.artifacts.get_bytes, t.update_blob_id)
        decoded[outcome.task_id] = await asyncio.to_thread(decode, data)

    return validate


def model_decoder(schema: TensorSchema) -> Decoder:
    return lambda data: decode_tensors(data, schema=schema)[0]


def check_quorum(result: RoundResult, needed: int, phase: str, round_number: int) -> None:
    if len(result.outcomes) < needed:
        reasons = "; ".join(f"{p}: {why}" for p, why in sorted(result.failures.items()))
        raise JobFailed(
            f"{phase} round {round_number}: {len(result.outcomes)} results, "
            f"{needed} required ({reasons or 'no participant available'})"
        )


def finish_round(
    ctx: JobContext,
    phase: str,
    r: int,
    started: float,
    result: RoundResult,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    seconds = ctx.clock() - started
    full = {
        **metrics,
        "seconds": seconds,
        "failures": result.failures,
        "bytes": ctx.round_bytes(phase, r).summary(),
    }
    ctx.store.save_round(
        RoundRecord(ctx.job_id, phase, r, started, ctx.clock(), sorted(result.outcomes), full)
    )
    ctx.metrics.rounds.labels(phase).inc()
    ctx.metrics.last_round_bytes.labels(phase).set(full["bytes"]["total"])
    ctx.metrics.round_seconds.labels(phase).observe(seconds)
    ctx.emit("round_completed", phase, r, f"{phase} round {r} done", full)
    return full


def seeded(train: TrainConfig, seed: int, r: int) -> Any:
    return lambda pid: dataclasses.replace(train, seed=task_seed(seed, r, pid))


async def evaluate_model(
    ctx: JobContext,
    model: ModelInfo,
    r: int,
    model_blob: str,
    deadline_s: float,
    forget: ForgetSpec | None = None,
    adapter: AdapterRef | None = None,
) -> dict[str, Any]:
    """Federated evaluation by every online participant: RA and, with a forget spec, FA."""
    started = ctx.clock()
    ctx.progress("evaluate", r)
    plan = RoundPlan(
        "evaluate",
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
    result = await run_round(ctx, plan, eval_validator(model.num_classes, registered_test(ctx)))
    check_quorum(result, 1, "evaluate", r)
    metrics = merge_eval(result.outcomes, model.num_classes)
    ctx.metrics.job_accuracy.labels(ctx.job_id).set(metrics["accuracy"])
    if isinstance(metrics["fa"], float):
        ctx.metrics.job_forget_accuracy.labels(ctx.job_id).set(metrics["fa"])
    finish_round(ctx, "evaluate", r, started, result, metrics)
    return metrics


HISTORY_KEYS = ("train_loss", "num_examples")


@dataclass(frozen=True)
class Checkpoint:
    """The last committed round of a phase: its aggregate model and the history so far."""

    round: int
    blob: str
    history: list[dict[str, Any]]


def committed_round(ctx: JobContext, phase: str, r: int) -> dict[str, Any] | None:
    """The stored metrics of a finished round, if the job already committed it."""
    for record in ctx.store.list_rounds(ctx.job_id):
        if record.phase == phase and record.round == r:
            return record.metrics
    return None


def last_checkpoint(ctx: JobContext, phase: str, key: str = "model") -> Checkpoint | None:
    """A round is committed once its record (naming its aggregate's blob under `key`) is
    stored; returns the latest, with the history of the rounds up to it."""
    records = ctx.store.list_rounds(ctx.job_id)
    committed = sorted(
        (r for r in records if r.phase == phase and key in r.metrics), key=lambda r: r.round
    )
    if not committed:
        return None
    evals = {r.round: r.metrics for r in records if r.phase == "evaluate"}
    history = []
    for record in committed:
        entry = {"round": record.round}
        entry.update({k: record.metrics[k] for k in HISTORY_KEYS if k in record.metrics})
        if record.round in evals:
            entry.update(accuracy=evals[record.round]["accuracy"], fa=evals[record.round]["fa"])
        history.append(entry)
    return Checkpoint(committed[-1].round, str(committed[-1].metrics[key]), history)


async def fedavg_rounds(
    ctx: JobContext,
    model: ModelInfo,
    plan: FedAvgPlan,
    weights: dict[str, torch.Tensor],
    schema: TensorSchema,
    start: Checkpoint | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """FedAvg weighted by sample counts, from round 1 or after a checkpoint; returns the final
    weights' blob and per-round metrics."""
    if start is None:
        blob, history, first = await save_weights(ctx.artifacts, weights, model.name), [], 1
    else:
        blob, history, first = start.blob, list(start.history), start.round + 1
    for r in range(first, plan.rounds + 1):
        started = ctx.clock()
        ctx.progress(plan.phase, r)
        eligible_now = eligible(ctx, plan.forget)
        chosen = select_participants(eligible_now, plan.participants_per_round, plan.seed, r)
        ctx.emit("round_started", plan.phase, r, f"round {r}: {len(chosen)} participants")
        decoded: dict[str, dict[str, torch.Tensor]] = {}
        round_plan = RoundPlan(
            plan.phase,
            r,
            TaskKind.TRAIN,
            chosen,
            blob,
            model.name,
            model.num_classes,
            plan.deadline_s,
            seeded(plan.train, plan.seed, r),
            plan.forget,
        )
        result = await run_round(
            ctx, round_plan, upload_validator(ctx, model_decoder(schema), decoded)
        )
        check_quorum(result, plan.min_participants, plan.phase, r)
        outcomes = [o for _, o in sorted(result.outcomes.items()) if o.train is not None]
        updates = [(decoded[o.task_id], o.train.num_examples) for o in outcomes if o.train]
        weights = await asyncio.to_thread(fedavg, updates)
        blob = await save_weights(ctx.artifacts, weights, model.name)
        loss = weighted_mean(
            [(o.train.mean_loss, o.train.num_examples) for o in outcomes if o.train]
        )
        metrics: dict[str, Any] = {"train_loss": loss, "num_examples": sum(n for _, n in updates)}
        finish_round(ctx, plan.phase, r, started, result, {**metrics, "model": blob})
        history.append({"round": r, **metrics})
        if plan.evaluate_each_round or r == plan.rounds:
            await _evaluate_into(ctx, model, plan, r, blob, history[-1])
    if history and "accuracy" not in history[-1]:  # resumed after the last aggregate
        await _evaluate_into(ctx, model, plan, plan.rounds, blob, history[-1])
    return blob, history


async def _evaluate_into(
    ctx: JobContext, model: ModelInfo, plan: FedAvgPlan, r: int, blob: str, entry: dict[str, Any]
) -> None:
    ev = await evaluate_model(ctx, model, r, blob, plan.deadline_s, plan.forget)
    entry.update({"accuracy": ev["accuracy"], "fa": ev["fa"]})
