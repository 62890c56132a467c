"""How a participant applies a forget spec to its own shard: what it trains on, what it
reports as remaining test data, and what the forgotten set is."""

from __future__ import annotations

import torch

from fused.common.domain.tasks import ForgetSpec
from fused.common.ml.data.partition import apply_trigger
from fused.common.ml.data.shards import Shard
from fused.common.ml.data.tensors import TensorData


def _empty(data: TensorData) -> TensorData:
    return data.subset(torch.zeros(len(data), dtype=torch.bool))


def _holds(data: TensorData, ids: tuple[int, ...]) -> torch.Tensor:
    return torch.isin(data.ids, torch.tensor(ids, dtype=torch.int64))


def remaining_train(shard: Shard, forget: ForgetSpec | None, seed: int) -> TensorData:
    """D_r on this participant: its training data without the forgotten samples, or, with
    `relabel` (the research code's variant), with them relabelled to random other classes."""
    data = shard.train
    if forget is None:
        return data
    me = shard.meta.participant_id
    if forget.paradigm == "participant":
        return _empty(data) if forget.participant_id == me else data
    if forget.paradigm == "samples":
        if forget.participant_id != me:
            return data
        hit = _holds(data, forget.sample_ids)
    else:
        hit = data.y == forget.class_label
    if not forget.relabel:
        return data.subset(~hit)
    gen = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, shard.meta.num_classes, (len(data),), generator=gen)
    y = torch.where(hit, (data.y + shift) % shard.meta.num_classes, data.y)
    return TensorData(x=data.x, y=y, y_true=data.y_true, ids=data.ids, scale=data.scale)


def remaining_test(shard: Shard, forget: ForgetSpec | None) -> TensorData:
    """The test data RA is measured on."""
    data = shard.test
    if forget is None:
        return data
    if forget.paradigm == "participant" and forget.participant_id == shard.meta.participant_id:
        return _empty(data)
    if forget.paradigm == "class":
        return data.subset(data.y_true != forget.class_label)
    return data


def forgotten_set(shard: Shard, forget: ForgetSpec | None) -> tuple[TensorData, torch.Tensor]:
    """This participant's part of the forgotten set and the labels FA counts as correct.

    participant: the forgotten participant's training data with the labels it holds (for a
    label-flipping attacker, the flipped ones); class: test samples of the class; samples with
    a trigger: triggered test inputs not of the target class, counted as correct when the
    backdoor fires (attack success rate); samples without: the listed samples themselves.
    """
    me = shard.meta.participant_id
    if forget is None:
        return _empty(shard.test), shard.test.y[:0]
    if forget.paradigm == "participant":
        data = shard.train if forget.participant_id == me else _empty(shard.train)
        return data, data.y
    if forget.paradigm == "class":
        data = shard.test.subset(shard.test.y_true == forget.class_label)
        return data, data.y_true
    if forget.trigger_size > 0:
        data = shard.test.subset(shard.test.y_true != forget.trigger_target)
        x = apply_trigger(data.x, forget.trigger_size, shard.meta.pixel_max)
        triggered = TensorData(x=x, y=data.y, y_true=data.y_true, ids=data.ids, scale=data.scale)
        return triggered, torch.full_like(data.y, forget.trigger_target)
    if forget.participant_id != me:
        return _empty(shard.train), shard.train.y[:0]
    data = shard.train.subset(_holds(shard.train, forget.sample_ids))
    return data, data.y
