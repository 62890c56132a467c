"""The federated training job: FedAvg rounds of full weights weighted by sample counts, from a
fresh initialisation or a stored version, then evaluation; the result is a new base version."""

from __future__ import annotations

from typing import Any

import torch

from fused.common.domain.records import JobKind, Phase, VersionKind
from fused.common.domain.round_metrics import PayloadKind
from fused.common.domain.specs import TrainingSpec
from fused.common.domain.version_meta import VersionMeta
from fused.common.ml.workloads import default_for, workload_for
from fused.coordinator.engine.checkpoints import last_checkpoint
from fused.coordinator.engine.context import JobContext
from fused.coordinator.engine.evaluation import ModelInfo
from fused.coordinator.engine.fedavg_loop import FedAvgPlan, fedavg_rounds
from fused.coordinator.engine.kind import (
    JobKindHandler,
    JobResult,
    NewVersion,
    checked_spec,
    publish_version,
)
from fused.coordinator.engine.participants import join_federation, version_federation
from fused.coordinator.engine.weights import WeightsPayload
from fused.coordinator.state import StateStore
from fused.coordinator.versions import load_weights, save_weights


class TrainingJob(JobKindHandler):
    """Resumes from the last committed aggregate; the trained version becomes the active one."""

    kind = JobKind.TRAIN
    resumable = True

    def prepare(self, store: StateStore, request: Any) -> dict[str, Any]:
        assert isinstance(request, TrainingSpec)
        return checked_spec(store, request, "init_version")

    async def run(self, ctx: JobContext, spec_dict: dict[str, Any], resume: bool) -> JobResult:
        spec = TrainingSpec.from_dict(spec_dict)
        ctx.policy = spec.policy
        init = ctx.store.get_model_version(spec.init_version) if spec.init_version else None
        fed = await join_federation(
            ctx,
            spec.min_participants,
            spec.wait_for_participants_s,
            reference=version_federation(init),
        )
        dataset, num_classes = fed.dataset, fed.num_classes
        # canonical name: an alias (digits-mlp) is stored and sent as the workload's own name
        workload = workload_for(spec.model or default_for(dataset), num_classes)
        model = ModelInfo(workload.name, num_classes, dataset)
        weights = await _initial_weights(ctx, spec, model)
        plan = _plan(spec)
        if resume:
            _announce_resume(ctx, plan.phase)
        first = await save_weights(ctx.artifacts, weights, model.name)
        blob, history = await fedavg_rounds(
            ctx, model, plan, WeightsPayload(model.name, weights), first
        )
        evaluation = history[-1].evaluation
        assert evaluation is not None  # the last round is always evaluated
        meta = VersionMeta(dataset, num_classes, accuracy=evaluation.accuracy)
        parent = spec.init_version or None
        version = publish_version(ctx, NewVersion(VersionKind.BASE, blob, model, parent, meta))
        return JobResult(
            f"trained {spec.rounds} rounds; test accuracy {evaluation.accuracy:.4f}",
            {
                "version_id": version.version_id,
                "model": model.name,
                "accuracy": evaluation.accuracy,
                "history": [entry.to_dict() for entry in history],
            },
        )


async def _initial_weights(
    ctx: JobContext, spec: TrainingSpec, model: ModelInfo
) -> dict[str, torch.Tensor]:
    if not spec.init_version:
        return dict(workload_for(model.name, model.num_classes).build_model(spec.seed).state_dict())
    parent = ctx.store.get_model_version(spec.init_version)
    assert parent is not None  # checked when the job was created
    return await load_weights(ctx.artifacts, parent.digest)


def _plan(spec: TrainingSpec) -> FedAvgPlan:
    return FedAvgPlan(
        Phase.TRAIN,
        spec.rounds,
        spec.train,
        spec.seed,
        spec.participants_per_round,
        spec.min_participants,
        spec.round_deadline_s,
        spec.evaluate_each_round,
    )


def _announce_resume(ctx: JobContext, phase: Phase) -> None:
    start = last_checkpoint(ctx, phase, PayloadKind.WEIGHTS)
    if start is not None:
        ctx.emit("job_resumed", phase.value, start.round, f"resuming after round {start.round}")
