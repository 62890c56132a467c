"""The retrain baseline: FedAvg from the original initialisation on the remaining data only
(the gold standard FUSED is measured against, at the cost of training again)."""

from __future__ import annotations

import torch

from fused.common.domain.records import Phase
from fused.coordinator.engine.context import JobContext, JobFailed
from fused.coordinator.methods.base import Base
from fused.coordinator.methods.full_model import FullModelMethod
from fused.coordinator.versions import load_weights


class Retrain(FullModelMethod):
    name = "retrain"
    phase = Phase.RETRAIN
    stops_early = False  # the gold standard trains its whole budget

    async def initial_weights(self, ctx: JobContext, base: Base) -> dict[str, torch.Tensor]:
        """The initial weights the base's training started from (stored with the job)."""
        digest = base.version.meta.init_digest
        if not digest:
            raise JobFailed(f"{base.version.version_id} records no initial weights to retrain from")
        return await load_weights(ctx.artifacts, digest)
