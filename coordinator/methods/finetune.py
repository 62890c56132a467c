"""The finetune baseline: FedAvg of the full model from the base weights, on the remaining
data only (irreversible: the result replaces every weight)."""

from __future__ import annotations

import torch

from fused.common.domain.records import Phase
from fused.coordinator.engine.context import JobContext
from fused.coordinator.methods.base import Base
from fused.coordinator.methods.full_model import FullModelMethod


class Finetune(FullModelMethod):
    name = "finetune"
    phase = Phase.FINETUNE

    async def initial_weights(self, ctx: JobContext, base: Base) -> dict[str, torch.Tensor]:
        return dict(base.weights)
