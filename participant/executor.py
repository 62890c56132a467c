"""Task execution on local data, apart from any RPC: weights in, weights or counts out."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fused.common.codecs.tensor_codec import TensorSchema, schema_of
from fused.common.domain.tasks import AdapterRef, EvalOutcome, ForgetSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.ml.adapters import (
    AdapterLayout,
    adapter_values,
    attach_adapter,
    build_layout,
)
from fused.common.ml.data.shards import Shard
from fused.common.ml.workloads import workload_for
from fused.participant.forgetting import forgotten_set, remaining_test, remaining_train
from fused.participant.training import TrainStats, evaluate, train_local


def _fresh_model(model_name: str, num_classes: int) -> torch.nn.Module:
    """The task's workload's model; its initial values are overwritten or unused, so unseeded."""
    return workload_for(model_name, num_classes).make_model()


def model_schema(model_name: str, num_classes: int) -> TensorSchema:
    """The exact tensors a model of this kind must arrive with."""
    return schema_of(_fresh_model(model_name, num_classes).state_dict())


def load_model(
    model_name: str, num_classes: int, weights: Mapping[str, torch.Tensor]
) -> torch.nn.Module:
    model = _fresh_model(model_name, num_classes)
    model.load_state_dict(weights, strict=True)
    return model


def local_update(
    model_name: str,
    num_classes: int,
    weights: Mapping[str, torch.Tensor],
    shard: Shard,
    cfg: TrainConfig,
    forget: ForgetSpec | None = None,
) -> tuple[dict[str, torch.Tensor], TrainStats]:
    """One participant's FedAvg step: train from the global weights, return the new ones."""
    model = load_model(model_name, num_classes, weights)
    stats = train_local(model, remaining_train(shard, forget, cfg.seed), cfg)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, stats


def local_sensitivity(
    model_name: str,
    num_classes: int,
    weights: Mapping[str, torch.Tensor],
    shard: Shard,
    cfg: TrainConfig,
) -> tuple[dict[str, float], int]:
    """Critical layer identification: train one round, report sum |p_after - p_before| per
    parameter tensor (plain L1, no size normalisation), never the model itself."""
    model = load_model(model_name, num_classes, weights)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    stats = train_local(model, shard.train, cfg)
    distances = {
        name: float((p.detach() - before[name]).abs().sum(dtype=torch.float64))
        for name, p in model.named_parameters()
    }
    return distances, stats.num_examples


def adapter_layout(model_name: str, num_classes: int, ref: AdapterRef) -> AdapterLayout:
    """Derive the mask locally from the seed and check it is the coordinator's."""
    model = _fresh_model(model_name, num_classes)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    unknown = [name for name in ref.layers if name not in shapes]
    if unknown:
        raise ValueError(f"adapter names tensors the model lacks: {', '.join(unknown)}")
    layout = build_layout({name: shapes[name] for name in ref.layers}, ref.density, ref.mask_seed)
    if layout.digest != ref.mask_digest:
        raise ValueError(
            f"mask digest {layout.digest} differs from the coordinator's {ref.mask_digest}"
        )
    return layout


def local_adapter_update(
    model_name: str,
    num_classes: int,
    base: Mapping[str, torch.Tensor],
    layout: AdapterLayout,
    values: Mapping[str, torch.Tensor],
    shard: Shard,
    cfg: TrainConfig,
    forget: ForgetSpec | None,
) -> tuple[dict[str, torch.Tensor], TrainStats]:
    """Train only the adapter values on the remaining data; the base stays frozen, norm
    statistics included."""
    model = load_model(model_name, num_classes, base)
    trainable = attach_adapter(model, layout, dict(values))
    data = remaining_train(shard, forget, cfg.seed)
    stats = train_local(model, data, cfg, params=trainable.values(), freeze_norm_stats=True)
    return adapter_values(model), stats


def local_evaluate(
    model_name: str,
    num_classes: int,
    weights: Mapping[str, torch.Tensor],
    shard: Shard,
    forget: ForgetSpec | None = None,
) -> EvalOutcome:
    """Counts on the remaining test data and on this participant's part of the forgotten set."""
    model = load_model(model_name, num_classes, weights)
    kept = evaluate(model, remaining_test(shard, forget), num_classes)
    forgotten, labels = forgotten_set(shard, forget)
    hit = evaluate(model, forgotten, num_classes, labels=labels)
    return EvalOutcome(
        correct=tuple(kept.correct),
        total=tuple(kept.total),
        loss_sum=kept.loss_sum,
        forget_correct=sum(hit.correct),
        forget_total=hit.num_examples,
    )
