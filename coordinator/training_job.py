"""The federated training job: FedAvg rounds weighted by sample counts, then evaluation."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Any

import torch

from common.fedavg import fedavg, weighted_mean
from common.models import count_parameters, default_model_for, init_model
from common.specs import TrainingSpec
from common.tasks import TaskKind, TaskOutcome
from common.tensor_codec import TensorSchema, schema_of
from common.train_config import task_seed
from coordinator.fleet import Validator
from coordinator.jobs import JobContext, JobFailed
from coordinator.rounds import RoundPlan, RoundResult, eval_validator, merge_eval, run_round
from coordinator.state import ModelVersion, RoundRecord
from coordinator.versions import load_weights, new_id, save_weights, set_active


async def wait_for_participants(ctx: JobContext, needed: int, timeout_s: float) -> list[str]:
    deadline = ctx.clock() + timeout_s
    while True:
        online = ctx.fleet.online_ids()
        if len(online) >= needed:
            return online
        if ctx.clock() >= deadline:
            raise JobFailed(
                f"only {len(online)} of the {needed} required participants were online "
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


def select_participants(online: list[str], k: int, rng: random.Random) -> list[str]:
    return sorted(rng.sample(online, k)) if 0 < k < len(online) else list(online)


def update_validator(
    ctx: JobContext, schema: TensorSchema, decoded: dict[str, dict[str, torch.Tensor]]
) -> Validator:
    """Checks an uploaded model against the job's schema; keeps the decoded tensors."""

    async def validate(outcome: TaskOutcome) -> None:
        t = outcome.train
        if t is None:
            raise ValueError("expected a training result for a training task")
        record = ctx.store.get_participant(outcome.participant_id)
        if record is None or t.num_examples != record.num_train:
            registered = record.num_train if record else 0
            raise ValueError(
                f"num_examples {t.num_examples} differs from the {registered} training "
                "samples this participant registered"
            )
        if not ctx.artifacts.exists(t.update_blob_id):
            raise ValueError(f"update {t.update_blob_id} was not uploaded")
        decoded[outcome.task_id] = await load_weights(ctx.artifacts, t.update_blob_id, schema)

    return validate


def check_quorum(result: RoundResult, needed: int, phase: str, round_number: int) -> None:
    if len(result.outcomes) < needed:
        reasons = "; ".join(f"{p}: {why}" for p, why in sorted(result.failures.items()))
        raise JobFailed(
            f"{phase} round {round_number}: {len(result.outcomes)} results, "
            f"{needed} required ({reasons or 'no participant available'})"
        )


async def run_training(ctx: JobContext, spec: TrainingSpec) -> dict[str, Any]:
    online = await wait_for_participants(ctx, spec.min_participants, spec.wait_for_participants_s)
    dataset, num_classes = federation_data(ctx, online)
    model_name = spec.model or default_model_for(dataset)
    if spec.init_version:
        parent = ctx.store.get_model_version(spec.init_version)
        assert parent is not None  # checked when the job was created
        weights = await load_weights(ctx.artifacts, parent.digest)
    else:
        weights = init_model(model_name, num_classes, spec.seed).state_dict()
    schema = schema_of(weights)
    blob = await save_weights(ctx.artifacts, weights, model_name)
    rng = random.Random(spec.seed)
    history: list[dict[str, Any]] = []

    def plan(phase: str, r: int, kind: TaskKind, pids: list[str]) -> RoundPlan:
        return RoundPlan(
            phase,
            r,
            kind,
            pids,
            blob,
            model_name,
            num_classes,
            spec.round_deadline_s,
            lambda pid: dataclasses.replace(spec.train, seed=task_seed(spec.seed, r, pid)),
        )

    async def evaluate(r: int) -> dict[str, Any]:
        started = ctx.clock()
        ctx.progress("evaluate", r)
        result = await run_round(
            ctx,
            plan("evaluate", r, TaskKind.EVALUATE, ctx.fleet.online_ids()),
            eval_validator(num_classes),
        )
        check_quorum(result, 1, "evaluate", r)
        metrics = merge_eval(result.outcomes, num_classes)
        finish_round(ctx, "evaluate", r, started, result, metrics)
        return metrics

    for r in range(1, spec.rounds + 1):
        started = ctx.clock()
        ctx.progress("train", r)
        chosen = select_participants(ctx.fleet.online_ids(), spec.participants_per_round, rng)
        ctx.emit("round_started", "train", r, f"round {r}: {len(chosen)} participants")
        decoded: dict[str, dict[str, torch.Tensor]] = {}
        result = await run_round(
            ctx, plan("train", r, TaskKind.TRAIN, chosen), update_validator(ctx, schema, decoded)
        )
        check_quorum(result, spec.min_participants, "train", r)
        updates = [
            (decoded[o.task_id], o.train.num_examples)
            for _, o in sorted(result.outcomes.items())
            if o.train is not None
        ]
        weights = await asyncio.to_thread(fedavg, updates)
        blob = await save_weights(ctx.artifacts, weights, model_name)
        loss = weighted_mean(
            [(o.train.mean_loss, o.train.num_examples) for o in result.outcomes.values() if o.train]
        )
        metrics: dict[str, Any] = {"train_loss": loss, "num_examples": sum(n for _, n in updates)}
        finish_round(ctx, "train", r, started, result, metrics)
        if spec.evaluate_each_round or r == spec.rounds:
            metrics.update({k: v for k, v in (await evaluate(r)).items() if k == "accuracy"})
        history.append({"round": r, **metrics})

    version = ModelVersion(
        version_id=new_id("m"),
        job_id=ctx.job_id,
        parent_id=spec.init_version or None,
        kind="base",
        digest=blob,
        model=model_name,
        num_params=count_parameters(init_model(model_name, num_classes, 0)),
        created_at=ctx.clock(),
        meta={"dataset": dataset, "num_classes": num_classes, "accuracy": history[-1]["accuracy"]},
    )
    ctx.store.add_model_version(version)
    set_active(ctx.store, version.version_id)
    accuracy = history[-1]["accuracy"]
    return {
        "summary": f"trained {spec.rounds} rounds; test accuracy {accuracy:.4f}",
        "version_id": version.version_id,
        "model": model_name,
        "accuracy": accuracy,
        "history": history,
    }


def finish_round(
    ctx: JobContext,
    phase: str,
    r: int,
    started: float,
    result: RoundResult,
    metrics: dict[str, Any],
) -> None:
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
    ctx.metrics.round_seconds.labels(phase).observe(seconds)
    ctx.emit("round_completed", phase, r, f"{phase} round {r} done", full)
