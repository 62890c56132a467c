"""FUSED: rank parameter tensors by how much local training moves them (critical-layer
identification), attach sparse adapters with seeded masks to the top ones, and FedAvg only the
adapter values on the remaining data while the base stays frozen."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from functools import partial

import torch

from fused.common.codecs.adapter_codec import VALUE_DTYPES, decode_adapter, encode_adapter
from fused.common.domain.records import Phase, VersionKind
from fused.common.domain.round_metrics import PayloadKind
from fused.common.domain.specs import FusedConfig, UnlearningSpec
from fused.common.domain.tasks import AdapterRef, TaskKind
from fused.common.domain.train_config import task_seed
from fused.common.domain.version_meta import AdapterMeta
from fused.common.ml.adapters import AdapterLayout, build_layout, merge_weights
from fused.coordinator.engine.context import JobContext
from fused.coordinator.engine.fedavg_loop import Payload, Tensors, fedavg_rounds
from fused.coordinator.methods.base import Base, Unlearned, UnlearningMethod, fedavg_plan
from fused.coordinator.methods.sensitivity import critical_layers
from fused.coordinator.versions import save_weights

CONTROL_ALLOWANCE_BYTES = 4096  # per participant and round: task, result, framing, heartbeats


class AdapterPayload(Payload):
    """Adapter values on the frozen base: tasks start from the base and apply the adapter
    whose mask comes from the seed and whose values come from the last aggregate."""

    kind = PayloadKind.ADAPTER
    task_kind = TaskKind.ADAPTER_TRAIN
    label = "adapter round"

    def __init__(self, layout: AdapterLayout, mask_seed: int, base_digest: str, dtype: str):
        self.layout = layout
        self._mask_seed = mask_seed
        self._base_digest = base_digest
        self._dtype = dtype  # participants upload values in this dtype

    def decode(self, data: bytes) -> Tensors:
        return decode_adapter(data, layout=self.layout, dtype=self._dtype)

    async def store(self, ctx: JobContext, tensors: Tensors) -> str:
        data = encode_adapter(self.layout, tensors)
        return await asyncio.to_thread(ctx.artifacts.put_bytes, data)

    async def reference(self, ctx: JobContext, aggregate_blob: str) -> Tensors:
        """The adapter values the round starts from (zeros before the first aggregate)."""
        if not aggregate_blob:
            return {n: torch.zeros(int(i.numel())) for n, i in self.layout.indices.items()}
        data = await asyncio.to_thread(ctx.artifacts.get_bytes, aggregate_blob)
        return await asyncio.to_thread(decode_adapter, data, self.layout)

    def model_blob(self, aggregate_blob: str) -> str:
        return self._base_digest

    def adapter(self, aggregate_blob: str, for_training: bool) -> AdapterRef:
        layout = self.layout
        ref = partial(AdapterRef, layout.names, layout.density, self._mask_seed, layout.digest)
        return ref(aggregate_blob, self._dtype) if for_training else ref(aggregate_blob)

    def expected_round_bytes(self, r: int, participants: int) -> int:
        """Values up in the upload dtype, float32 values down from round 2, plus control."""
        up = self.layout.num_values * VALUE_DTYPES[self._dtype].itemsize
        down = self.layout.num_values * 4 if r > 1 else 0
        return participants * (up + down + CONTROL_ALLOWANCE_BYTES)


class Fused(UnlearningMethod):
    name = "fused"

    async def run(self, ctx: JobContext, spec: UnlearningSpec, base: Base) -> Unlearned:
        config = spec.config
        assert isinstance(config, FusedConfig)  # the registry pairs the name with the config
        ranking = await critical_layers(ctx, spec, config, base)
        selected = [score.name for score in ranking.layers if score.selected]
        mask_seed = task_seed(spec.seed, 0, "mask")
        shapes = {n: tuple(base.weights[n].shape) for n in selected}
        layout = build_layout(shapes, config.density, mask_seed)
        payload = AdapterPayload(layout, mask_seed, base.version.digest, config.upload_dtype)
        plan = fedavg_plan(spec, Phase.ADAPTER, self.stop_rule(spec))
        values_blob, history = await fedavg_rounds(ctx, base.model, plan, payload, "")
        data = await asyncio.to_thread(ctx.artifacts.get_bytes, values_blob)
        values = decode_adapter(data, layout)
        merged = merge_weights(base.weights, layout, values)
        digest = await save_weights(ctx.artifacts, merged, base.model.name)
        meta = AdapterMeta(
            adapter_digest=values_blob,
            base_digest=base.version.digest,
            layers=tuple(layout.names),
            density=layout.density,
            mask_seed=mask_seed,
            mask_digest=layout.digest,
            adapter_params=layout.num_values,
        )
        details = {
            "critical_layers": selected,
            "selection": ranking.rule,
            "ranking": [asdict(s) for s in ranking.layers],
        }
        return Unlearned(VersionKind.ADAPTER, digest, history, meta, details)
