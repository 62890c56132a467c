"""On-demand federated evaluation of a model version (`fusedctl eval VERSION`)."""

from __future__ import annotations

from typing import Any

from fused.common.domain.tasks import AdapterRef, ForgetSpec
from fused.coordinator.job_steps import (
    ModelInfo,
    evaluate_model,
    federation_data,
    wait_for_participants,
)
from fused.coordinator.jobs import JobContext, JobFailed
from fused.coordinator.state import ModelVersion


def adapter_ref(version: ModelVersion) -> AdapterRef:
    """How participants rebuild an adapter version: base + mask from the seed + values."""
    meta = version.meta
    return AdapterRef(
        tuple(meta["layers"]),
        meta["density"],
        meta["mask_seed"],
        meta["mask_digest"],
        meta["adapter_digest"],
    )


async def run_evaluation(
    ctx: JobContext, version_id: str, forget: ForgetSpec | None, deadline_s: float
) -> dict[str, Any]:
    version = ctx.store.get_model_version(version_id)
    if version is None:
        raise JobFailed(f"no model version {version_id}")
    online = await wait_for_participants(ctx, 1, 60.0)
    dataset, num_classes = federation_data(ctx, online)
    model = ModelInfo(version.model, num_classes, dataset)
    if version.kind == "adapter":
        ev = await evaluate_model(
            ctx, model, 1, version.meta["base_digest"], deadline_s, forget, adapter_ref(version)
        )
    else:
        ev = await evaluate_model(ctx, model, 1, version.digest, deadline_s, forget)
    fa = "n/a" if ev["fa"] is None else f"{ev['fa']:.4f}"
    return {
        "summary": f"{version_id}: RA {ev['accuracy']:.4f}, FA {fa}",
        "version_id": version_id,
        "ra": ev["accuracy"],
        "fa": ev["fa"],
        "per_participant": ev["per_participant"],
    }
