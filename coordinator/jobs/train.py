"""The federated training job: FedAvg rounds of full weights weighted by sample counts, from
uploaded initial weights or a stored version, then evaluation; the result is a new base
version. The workload's code runs on the participants and in `fusedctl`, never here."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from fused.common.domain.records import JobKind, Phase, VersionKind
from fused.common.domain.round_metrics import PayloadKind
from fused.common.domain.specs import TrainingSpec
from fused.common.domain.version_meta import VersionMeta
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
from fused.coordinator.engine.participants import (
    federation_source,
    join_federation,
    version_federation,
)
from fused.coordinator.engine.schemas import (
    adaptable_sizes,
    check_weights,
    load_schema,
    num_parameters,
)
from fused.coordinator.engine.weights import WeightsPayload
from fused.coordinator.state import StateStore
from fused.coordinator.versions import load_weights, save_weights


class TrainingJob(JobKindHandler):
    """Resumes from the last committed aggregate; the trained version becomes the active one."""

    kind = JobKind.TRAIN
    resumable = True

    def prepare(self, store: StateStore, request: Any) -> dict[str, Any]:
        assert isinstance(request, TrainingSpec)
        stored = checked_spec(store, request, "init_version")
        request.check_start()
        return stored

    async def run(self, ctx: JobContext, spec_dict: dict[str, Any], resume: bool) -> JobResult:
        spec = TrainingSpec.from_dict(spec_dict)
        ctx.policy = spec.policy
        init = ctx.store.get_model_version(spec.init_version) if spec.init_version else None
        fed = await join_federation(
            ctx,
            spec.min_participants,
            spec.wait_for_participants_s,
            reference=version_federation(init),
            workload=spec.model,
        )
        num_classes = fed.num_classes
        dataset = federation_source(ctx)
        model = ModelInfo(fed.workload, num_classes, dataset, fed.schema_digest)
        schema = await load_schema(ctx.artifacts, fed.schema_digest)
        weights = await _initial_weights(ctx, spec)
        check_weights(schema, weights, "the initial weights")
        # the last round records how far each update moved each adaptable tensor: a FUSED job
        # unlearning this model ranks its layers from that, with no round on everyone
        plan = dataclasses.replace(_plan(spec), record_distances=tuple(adaptable_sizes(schema)))
        if resume:
            _announce_resume(ctx, plan.phase)
        first = await save_weights(ctx.artifacts, weights, model.name)
        blob, history = await fedavg_rounds(
            ctx, model, plan, WeightsPayload(model.name, weights), first
        )
        evaluation = history[-1].evaluation
        assert evaluation is not None  # the last round is always evaluated
        init_digest = spec.init_weights or (init.meta.init_digest if init else "")
        # Continued training keeps what its start forgets; from initial weights, the model
        # never saw the data the ledger left out.
        forgotten = init.meta.forgets if init else tuple(sorted(ctx.excluded_entries))
        meta = VersionMeta(
            dataset,
            num_classes,
            fed.schema_digest,
            init_digest,
            accuracy=evaluation.accuracy,
            forgets=forgotten,
        )
        parent = spec.init_version or None
        new = NewVersion(VersionKind.BASE, blob, model, parent, meta, num_parameters(schema))
        version = publish_version(ctx, new)
        return JobResult(
            f"trained {spec.rounds} rounds; test accuracy {evaluation.accuracy:.4f}",
            {
                "version_id": version.version_id,
                "model": model.name,
                "accuracy": evaluation.accuracy,
                "history": [entry.to_dict() for entry in history],
            },
        )


async def _initial_weights(ctx: JobContext, spec: TrainingSpec) -> dict[str, torch.Tensor]:
    """The uploaded initial weights, or the version training continues from."""
    if not spec.init_version:
        return await load_weights(ctx.artifacts, spec.init_weights)
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
