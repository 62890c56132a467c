"""The retrain baseline: FedAvg from a fresh initialisation on the remaining data only (the
gold standard FUSED is measured against, at the cost of training again)."""

from __future__ import annotations

import torch

from fused.common.domain.records import Phase
from fused.common.domain.specs import UnlearningSpec
from fused.common.ml.workloads import workload_for
from fused.coordinator.methods.base import Base
from fused.coordinator.methods.full_model import FullModelMethod


class Retrain(FullModelMethod):
    name = "retrain"
    phase = Phase.RETRAIN

    def initial_weights(self, spec: UnlearningSpec, base: Base) -> dict[str, torch.Tensor]:
        workload = workload_for(base.model.name, base.model.num_classes)
        return workload.build_model(spec.seed).state_dict()
