"""The federated training job: FedAvg rounds weighted by sample counts, then evaluation."""

from __future__ import annotations

from typing import Any

from fused.common.codecs.tensor_codec import schema_of
from fused.common.domain.specs import TrainingSpec
from fused.common.ml.models import count_parameters, default_model_for, init_model
from fused.coordinator.job_steps import (
    FedAvgPlan,
    ModelInfo,
    fedavg_rounds,
    federation_data,
    last_checkpoint,
    wait_for_participants,
)
from fused.coordinator.jobs import JobContext
from fused.coordinator.state import ModelVersion
from fused.coordinator.versions import load_weights, new_id, set_active


async def run_training(ctx: JobContext, spec: TrainingSpec, resume: bool = False) -> dict[str, Any]:
    """Train from init (or, resuming, from the last committed round)."""
    online = await wait_for_participants(ctx, spec.min_participants, spec.wait_for_participants_s)
    dataset, num_classes = federation_data(ctx, online)
    model = ModelInfo(spec.model or default_model_for(dataset), num_classes, dataset)
    if spec.init_version:
        parent = ctx.store.get_model_version(spec.init_version)
        assert parent is not None  # checked when the job was created
        weights = await load_weights(ctx.artifacts, parent.digest)
    else:
        weights = init_model(model.name, num_classes, spec.seed).state_dict()
    plan = FedAvgPlan(
        spec.rounds,
        spec.train,
        spec.seed,
        spec.participants_per_round,
        spec.min_participants,
        spec.round_deadline_s,
        spec.evaluate_each_round,
    )
    start = last_checkpoint(ctx, plan.phase)  # None for a fresh job
    if resume and start is not None:
        ctx.emit("job_resumed", plan.phase, start.round, f"resuming after round {start.round}")
    blob, history = await fedavg_rounds(ctx, model, plan, weights, schema_of(weights), start)
    accuracy = history[-1]["accuracy"]
    version = ModelVersion(
        version_id=new_id("m"),
        job_id=ctx.job_id,
        parent_id=spec.init_version or None,
        kind="base",
        digest=blob,
        model=model.name,
        num_params=count_parameters(init_model(model.name, num_classes, 0)),
        created_at=ctx.clock(),
        meta={"dataset": dataset, "num_classes": num_classes, "accuracy": accuracy},
    )
    ctx.store.add_model_version(version)
    set_active(ctx.store, version.version_id)
    return {
        "summary": f"trained {spec.rounds} rounds; test accuracy {accuracy:.4f}",
        "version_id": version.version_id,
        "model": model.name,
        "accuracy": accuracy,
        "history": history,
    }
