"""Unlearning jobs: FUSED (critical layers + sparse adapters on a frozen base) and the
retrain / finetune baselines, each from the same base version with the same budget."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from fused.common.codecs.adapter_codec import VALUE_DTYPES, decode_adapter, encode_adapter
from fused.common.codecs.tensor_codec import schema_of
from fused.common.domain.specs import UnlearningSpec
from fused.common.domain.tasks import AdapterRef, TaskKind, TaskOutcome
from fused.common.domain.train_config import task_seed
from fused.common.ml.adapters import AdapterLayout, build_layout, merge_weights, zero_values
from fused.common.ml.fedavg import fedavg, weighted_mean
from fused.common.ml.models import count_parameters, init_model
from fused.coordinator.job_steps import (
    FedAvgPlan,
    ModelInfo,
    check_examples,
    check_quorum,
    committed_round,
    eligible,
    evaluate_model,
    fedavg_rounds,
    federation_data,
    finish_round,
    last_checkpoint,
    seeded,
    upload_validator,
    wait_for_participants,
)
from fused.coordinator.jobs import JobContext, JobFailed
from fused.coordinator.rounds import RoundPlan, run_round
from fused.coordinator.state import ModelVersion
from fused.coordinator.versions import (
    active_version,
    load_weights,
    new_id,
    save_weights,
    set_active,
)


@dataclass(frozen=True)
class Base:
    version: ModelVersion
    model: ModelInfo
    weights: dict[str, torch.Tensor]


async def resolve_base(ctx: JobContext, spec: UnlearningSpec) -> Base:
    version = (
        ctx.store.get_model_version(spec.base_version)
        if spec.base_version
        else active_version(ctx.store)
    )
    if version is None:
        raise JobFailed(f"no model version {spec.base_version or '(active)'} to unlearn from")
    if version.kind != "base":
        raise JobFailed(
            f"unlearn from a full model version; {version.version_id} is {version.kind}"
        )
    online = await wait_for_participants(
        ctx, spec.min_participants, spec.wait_for_participants_s, spec.forget
    )
    dataset, num_classes = federation_data(ctx, online)
    try:
        spec.forget.validate(num_classes)
    except ValueError as exc:
        raise JobFailed(str(exc)) from exc
    weights = await load_weights(ctx.artifacts, version.digest)
    return Base(version, ModelInfo(version.model, num_classes, dataset), weights)


async def critical_layers(
    ctx: JobContext, spec: UnlearningSpec, base: Base
) -> list[dict[str, Any]]:
    """CLI: every online participant trains one round and reports per-tensor L1 distances;
    rank tensors by their sample-weighted mean distance."""
    done = committed_round(ctx, "sensitivity", 1)
    if done is not None:  # a resumed job keeps the ranking it committed
        ranking: list[dict[str, Any]] = done["ranking"]
        return ranking
    started = ctx.clock()
    ctx.progress("sensitivity", 1)
    shapes = {
        n: p.numel()
        for n, p in init_model(base.model.name, base.model.num_classes, 0).named_parameters()
    }

    async def validate(outcome: TaskOutcome) -> None:
        sens = outcome.sensitivity
        if sens is None:
            raise ValueError("expected a sensitivity result for a sensitivity task")
        check_examples(ctx, outcome, sens.num_examples)
        if set(sens.distances) != set(shapes):
            raise ValueError("sensitivity distances must name exactly the model's parameters")
        if not all(v >= 0 and v != float("inf") for v in sens.distances.values()):
            raise ValueError("sensitivity distances must be finite and non-negative")

    plan = RoundPlan(
        "sensitivity",
        1,
        TaskKind.SENSITIVITY,
        ctx.fleet.online_ids(),
        base.version.digest,
        base.model.name,
        base.model.num_classes,
        spec.round_deadline_s,
        seeded(spec.train, spec.seed, 0),
    )
    result = await run_round(ctx, plan, validate)
    check_quorum(result, spec.min_participants, "sensitivity", 1)
    reports = [o.sensitivity for o in result.outcomes.values() if o.sensitivity]
    total = sum(s.num_examples for s in reports)
    scores = {
        name: sum(s.distances[name] * s.num_examples for s in reports) / total for name in shapes
    }
    ranked = sorted(scores, key=lambda n: (-scores[n], n))
    chosen = set(spec.layers) if spec.layers else set(ranked[: spec.top_k])
    unknown = chosen - set(shapes)
    if unknown:
        raise JobFailed(f"layers not in the model: {', '.join(sorted(unknown))}")
    ranking = [
        {"name": n, "distance": scores[n], "numel": shapes[n], "selected": n in chosen}
        for n in ranked
    ]
    finish_round(ctx, "sensitivity", 1, started, result, {"ranking": ranking})
    return ranking


async def adapter_rounds(
    ctx: JobContext, spec: UnlearningSpec, base: Base, layout: AdapterLayout, mask_seed: int
) -> tuple[dict[str, torch.Tensor], str, list[dict[str, Any]]]:
    """Train only the adapter values on the remaining data; FedAvg them for I rounds (after
    the last committed one, when resuming)."""
    start = last_checkpoint(ctx, "adapter", key="values")
    if start is None:
        values, values_blob = zero_values(layout), ""  # round 1 starts from zeros
        history: list[dict[str, Any]] = []
    else:
        values_blob, history = start.blob, list(start.history)
        data = await asyncio.to_thread(ctx.artifacts.get_bytes, values_blob)
        values = decode_adapter(data, layout)
    for r in range(start.round + 1 if start else 1, spec.rounds + 1):
        started = ctx.clock()
        ctx.progress("adapter", r)
        chosen = eligible(ctx, spec.forget)  # every participant with remaining data
        ref = AdapterRef(
            layout.names, layout.density, mask_seed, layout.digest, values_blob, spec.upload_dtype
        )
        ctx.emit("round_started", "adapter", r, f"adapter round {r}: {len(chosen)} participants")
        expected = expected_adapter_round_bytes(
            layout.num_values, spec.upload_dtype, r, len(chosen)
        )
        ctx.metrics.expected_round_bytes.labels("adapter").set(expected)
        decoded: dict[str, dict[str, torch.Tensor]] = {}
        plan = RoundPlan(
            "adapter",
            r,
            TaskKind.ADAPTER_TRAIN,
            chosen,
            base.version.digest,
            base.model.name,
            base.model.num_classes,
            spec.round_deadline_s,
            seeded(spec.train, spec.seed, r),
            spec.forget,
            ref,
        )
        decode = partial(decode_adapter, layout=layout, dtype=spec.upload_dtype)
        result = await run_round(ctx, plan, upload_validator(ctx, decode, decoded))
        check_quorum(result, spec.min_participants, "adapter", r)
        outcomes = [o for _, o in sorted(result.outcomes.items()) if o.train is not None]
        values = fedavg([(decoded[o.task_id], o.train.num_examples) for o in outcomes if o.train])
        values_blob = await asyncio.to_thread(
            ctx.artifacts.put_bytes, encode_adapter(layout, values)
        )
        loss = weighted_mean(
            [(o.train.mean_loss, o.train.num_examples) for o in outcomes if o.train]
        )
        finish_round(
            ctx, "adapter", r, started, result, {"train_loss": loss, "values": values_blob}
        )
        history.append({"round": r, "train_loss": loss})
        if spec.evaluate_each_round or r == spec.rounds:
            await evaluate_adapter(ctx, spec, base, layout, mask_seed, values_blob, history[-1])
    if "accuracy" not in history[-1]:  # resumed after the last aggregate
        await evaluate_adapter(ctx, spec, base, layout, mask_seed, values_blob, history[-1])
    return values, values_blob, history


async def evaluate_adapter(
    ctx: JobContext,
    spec: UnlearningSpec,
    base: Base,
    layout: AdapterLayout,
    mask_seed: int,
    values_blob: str,
    entry: dict[str, Any],
) -> None:
    ref = AdapterRef(layout.names, layout.density, mask_seed, layout.digest, values_blob)
    r = entry["round"]
    ev = await evaluate_model(
        ctx, base.model, r, base.version.digest, spec.round_deadline_s, spec.forget, ref
    )
    entry.update({"accuracy": ev["accuracy"], "fa": ev["fa"]})


CONTROL_ALLOWANCE_BYTES = 4096  # per participant and round: task, result, framing, heartbeats


def expected_adapter_round_bytes(num_values: int, dtype: str, r: int, participants: int) -> int:
    """Values up in `dtype`, float32 values down from round 2, plus the control allowance."""
    up = num_values * VALUE_DTYPES[dtype].itemsize
    down = num_values * 4 if r > 1 else 0
    return participants * (up + down + CONTROL_ALLOWANCE_BYTES)


async def run_fused(
    ctx: JobContext, spec: UnlearningSpec, base: Base
) -> tuple[ModelVersion, dict[str, Any]]:
    ranking = await critical_layers(ctx, spec, base)
    selected = [entry["name"] for entry in ranking if entry["selected"]]
    mask_seed = task_seed(spec.seed, 0, "mask")
    shapes = {n: tuple(base.weights[n].shape) for n in selected}
    layout = build_layout(shapes, spec.density, mask_seed)
    values, values_blob, history = await adapter_rounds(ctx, spec, base, layout, mask_seed)
    merged = merge_weights(base.weights, layout, values)
    digest = await save_weights(ctx.artifacts, merged, base.model.name)
    meta = {
        "adapter_digest": values_blob,
        "base_digest": base.version.digest,
        "layers": list(layout.names),
        "density": layout.density,
        "mask_seed": mask_seed,
        "mask_digest": layout.digest,
        "adapter_params": layout.num_values,
    }
    version = new_version(ctx, base, "adapter", digest, meta)
    return version, {"critical_layers": selected, "ranking": ranking, "history": history, **meta}


async def run_full_model(
    ctx: JobContext, spec: UnlearningSpec, base: Base
) -> tuple[ModelVersion, dict[str, Any]]:
    """retrain: FedAvg from a fresh initialisation; finetune: from the base weights."""
    if spec.method == "retrain":
        weights = init_model(base.model.name, base.model.num_classes, spec.seed).state_dict()
    else:
        weights = dict(base.weights)
    plan = FedAvgPlan(
        spec.rounds,
        spec.train,
        spec.seed,
        0,
        spec.min_participants,
        spec.round_deadline_s,
        spec.evaluate_each_round,
        spec.forget,
        phase=spec.method,
    )
    start = last_checkpoint(ctx, plan.phase)
    blob, history = await fedavg_rounds(ctx, base.model, plan, weights, schema_of(weights), start)
    return new_version(ctx, base, "base", blob, {}), {"history": history}


def new_version(
    ctx: JobContext, base: Base, kind: str, digest: str, meta: dict[str, Any]
) -> ModelVersion:
    return ModelVersion(
        version_id=new_id("m"),
        job_id=ctx.job_id,
        parent_id=base.version.version_id,
        kind=kind,
        digest=digest,
        model=base.model.name,
        num_params=count_parameters(init_model(base.model.name, base.model.num_classes, 0)),
        created_at=ctx.clock(),
        meta={"dataset": base.model.dataset, "num_classes": base.model.num_classes, **meta},
    )


async def run_unlearning(
    ctx: JobContext, spec: UnlearningSpec, resume: bool = False
) -> dict[str, Any]:
    """Unlearn from the base version; resuming, committed rounds are kept, not redone."""
    started = ctx.clock()
    base = await resolve_base(ctx, spec)
    if resume:
        ctx.emit("job_resumed", "", 0, "resuming after the last committed round")
    before = committed_round(ctx, "evaluate", 0) or await evaluate_model(
        ctx, base.model, 0, base.version.digest, spec.round_deadline_s, spec.forget
    )
    if spec.method == "fused":
        version, details = await run_fused(ctx, spec, base)
    else:
        version, details = await run_full_model(ctx, spec, base)
    last = details["history"][-1]
    version.meta.update({"method": spec.method, "ra": last["accuracy"], "fa": last["fa"]})
    ctx.store.add_model_version(version)
    set_active(ctx.store, version.version_id)
    return {
        "summary": f"{spec.method}: RA {before['accuracy']:.4f} -> {last['accuracy']:.4f}, "
        f"FA {fmt(before['fa'])} -> {fmt(last['fa'])}",
        "version_id": version.version_id,
        "base_version": base.version.version_id,
        "method": spec.method,
        "ra_before": before["accuracy"],
        "fa_before": before["fa"],
        "ra_after": last["accuracy"],
        "fa_after": last["fa"],
        "model_params": version.num_params,
        "seconds": ctx.clock() - started,
        **details,
    }


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
