"""Full model weights as the FedAvg payload (training and the full-model baselines)."""

from __future__ import annotations

import torch

from fused.common.codecs.tensor_codec import TensorSchema, decode_tensors, schema_of
from fused.common.domain.round_metrics import PayloadKind
from fused.common.domain.tasks import AdapterRef, TaskKind
from fused.coordinator.engine.context import JobContext
from fused.coordinator.engine.fedavg_loop import Payload, Tensors
from fused.coordinator.versions import load_weights, save_weights


class WeightsPayload(Payload):
    kind = PayloadKind.WEIGHTS
    task_kind = TaskKind.TRAIN
    label = "round"

    def __init__(self, model_name: str, like: dict[str, torch.Tensor]) -> None:
        self._model_name = model_name
        self._schema: TensorSchema = schema_of(like)  # uploads must match it exactly

    def decode(self, data: bytes) -> Tensors:
        return decode_tensors(data, schema=self._schema)[0]

    async def store(self, ctx: JobContext, tensors: Tensors) -> str:
        return await save_weights(ctx.artifacts, tensors, self._model_name)

    async def reference(self, ctx: JobContext, aggregate_blob: str) -> Tensors:
        return await load_weights(ctx.artifacts, aggregate_blob, self._schema)

    def model_blob(self, aggregate_blob: str) -> str:
        return aggregate_blob

    def adapter(self, aggregate_blob: str, for_training: bool) -> AdapterRef | None:
        return None
