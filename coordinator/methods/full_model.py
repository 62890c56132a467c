"""What the retrain and finetune baselines share: FedAvg of full weights on the remaining
data, from a starting point each chooses."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch

from fused.common.domain.records import Phase, VersionKind
from fused.common.domain.specs import UnlearningSpec
from fused.coordinator.engine.context import JobContext
from fused.coordinator.engine.fedavg_loop import fedavg_rounds
from fused.coordinator.engine.weights import WeightsPayload
from fused.coordinator.methods.base import Base, Unlearned, UnlearningMethod, fedavg_plan
from fused.coordinator.versions import save_weights


class FullModelMethod(UnlearningMethod):
    phase: ClassVar[Phase]

    @abstractmethod
    async def initial_weights(self, ctx: JobContext, base: Base) -> dict[str, torch.Tensor]:
        """The weights round 1 starts from."""

    async def run(self, ctx: JobContext, spec: UnlearningSpec, base: Base) -> Unlearned:
        weights = await self.initial_weights(ctx, base)
        first = await save_weights(ctx.artifacts, weights, base.model.name)
        payload = WeightsPayload(base.model.name, weights)
        plan = fedavg_plan(spec, self.phase, self.stop_rule(spec))
        blob, history = await fedavg_rounds(ctx, base.model, plan, payload, first)
        return Unlearned(VersionKind.BASE, blob, history)
