"""On-demand federated evaluation of a model version (`fusedctl eval VERSION`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fused.common.domain.records import JobKind, VersionKind
from fused.common.domain.specs import SpecError
from fused.common.domain.tasks import ForgetSpec
from fused.coordinator.engine.context import JobContext, JobFailed
from fused.coordinator.engine.evaluation import ModelInfo, evaluate_model
from fused.coordinator.engine.kind import JobKindHandler, JobResult
from fused.coordinator.engine.participants import join_federation, version_federation
from fused.coordinator.state import StateStore


@dataclass(frozen=True)
class EvaluationRequest:
    version_id: str
    forget: ForgetSpec | None  # None: that of the unlearning job that made the version
    deadline_s: float


class EvaluationJob(JobKindHandler):
    kind = JobKind.EVALUATE
    resumable = False  # short: start it again

    def prepare(self, store: StateStore, request: Any) -> dict[str, Any]:
        req: EvaluationRequest = request
        version = store.get_model_version(req.version_id)
        if version is None:
            raise SpecError(f"{req.version_id!r} is not a known model version")
        forget = req.forget
        if forget is None and version.job_id:
            job = store.get_job(version.job_id)
            if job is not None and job.kind == JobKind.UNLEARN:
                forget = ForgetSpec.from_dict(job.spec["forget"])
        if forget is not None:
            try:
                forget.validate()
            except ValueError as exc:
                raise SpecError(str(exc)) from exc
        return {
            "version_id": req.version_id,
            "forget": forget and dataclasses.asdict(forget),
            "round_deadline_s": req.deadline_s,
        }

    async def run(self, ctx: JobContext, spec: dict[str, Any], resume: bool) -> JobResult:
        version_id = str(spec["version_id"])
        forget = ForgetSpec.from_dict(spec["forget"]) if spec.get("forget") else None
        version = ctx.store.get_model_version(version_id)
        if version is None:
            raise JobFailed(f"no model version {version_id}")
        fed = await join_federation(ctx, 1, 60.0, reference=version_federation(version))
        model = ModelInfo(version.model, fed.num_classes, version.meta.dataset, fed.schema_digest)
        meta = version.meta
        deadline_s = float(spec["round_deadline_s"])
        if version.kind == VersionKind.ADAPTER and meta.adapter is not None:
            adapter = meta.adapter
            ev = await evaluate_model(
                ctx, model, 1, adapter.base_digest, deadline_s, forget, adapter.ref()
            )
        else:
            ev = await evaluate_model(ctx, model, 1, version.digest, deadline_s, forget)
        fa = "n/a" if ev.fa is None else f"{ev.fa:.4f}"
        return JobResult(
            f"{version_id}: RA {ev.accuracy:.4f}, FA {fa}",
            {
                "version_id": version_id,
                "ra": ev.accuracy,
                "fa": ev.fa,
                "per_participant": ev.per_participant,
            },
        )
