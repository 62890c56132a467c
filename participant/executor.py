"""Task execution on local data, apart from any RPC: weights in, weights or counts out."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from common.data.shards import Shard
from common.models import build_model
from common.tensor_codec import TensorSchema, schema_of
from common.train_config import TrainConfig
from participant.training import EvalCounts, TrainStats, evaluate, train_local


def model_schema(model_name: str, num_classes: int) -> TensorSchema:
    """The exact tensors a model of this kind must arrive with."""
    return schema_of(build_model(model_name, num_classes).state_dict())


def load_model(
    model_name: str, num_classes: int, weights: Mapping[str, torch.Tensor]
) -> torch.nn.Module:
    model = build_model(model_name, num_classes)
    model.load_state_dict(weights, strict=True)
    return model


def local_update(
    model_name: str,
    num_classes: int,
    weights: Mapping[str, torch.Tensor],
    shard: Shard,
    cfg: TrainConfig,
) -> tuple[dict[str, torch.Tensor], TrainStats]:
    """One participant's FedAvg step: train from the global weights, return the new ones."""
    model = load_model(model_name, num_classes, weights)
    stats = train_local(model, shard.train, cfg)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, stats


def local_evaluate(
    model_name: str, num_classes: int, weights: Mapping[str, torch.Tensor], shard: Shard
) -> EvalCounts:
    return evaluate(load_model(model_name, num_classes, weights), shard.test, num_classes)
