"""Split a source data set among participants (non-IID Dirichlet), with optional attackers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fused.common.ml.data.partition_config import PartitionConfig
from fused.common.ml.data.shards import Shard, ShardMeta, partition_summary, write_partition
from fused.common.ml.data.sources import SourceData, load_source
from fused.common.ml.data.tensors import TensorData

# Resampling budget for the Dirichlet split before declaring the min-size constraint hopeless.
MAX_PARTITION_TRIES = 1000


def participant_id(index: int) -> str:
    return f"p{index}"


def local_test_size(total: int, fraction: float) -> int:
    """Local test samples for a participant with `total` samples (at least 1 when fraction > 0)."""
    if fraction <= 0 or total < 2:
        return 0
    return min(total - 1, max(1, round(total * fraction)))


def min_total_size(min_train: int, fraction: float) -> int:
    """Fewest samples a participant needs so its train split keeps `min_train` of them."""
    total = min_train
    while total - local_test_size(total, fraction) < min_train:
        total += 1
    return total


def _class_proportions(
    rng: np.random.Generator, num_parts: int, alpha: float, sizes: np.ndarray, cap: float
) -> np.ndarray:
    props = rng.dirichlet(np.full(num_parts, alpha))
    # Parts already holding their fair share get nothing more (keeps sizes from running away).
    props = props * (sizes < cap)
    total = props.sum()
    if total <= 0:  # tiny alpha can underflow every open share to 0
        props = (sizes < cap).astype(np.float64)
        total = props.sum()
    return np.asarray(props / total, dtype=np.float64)


def _dirichlet_once(
    labels: np.ndarray, num_parts: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    chunks: list[list[np.ndarray]] = [[] for _ in range(num_parts)]
    sizes = np.zeros(num_parts, dtype=np.int64)
    cap = labels.shape[0] / num_parts
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        props = _class_proportions(rng, num_parts, alpha, sizes, cap)
        cuts = (np.cumsum(props)[:-1] * members.size).astype(np.int64)
        for part, chunk in enumerate(np.split(members, cuts)):
            chunks[part].append(chunk)
            sizes[part] += chunk.size
    return [np.sort(np.concatenate(parts)) for parts in chunks]


def dirichlet_partition(
    labels: np.ndarray, num_parts: int, alpha: float, rng: np.random.Generator, min_size: int
) -> list[np.ndarray]:
    """Per-class Dirichlet split of sample indices into `num_parts` sorted index arrays.

    Each class is divided among parts by proportions drawn from Dir(alpha); the whole draw is
    repeated until every part has at least `min_size` samples.
    """
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if num_parts < 1 or alpha <= 0:
        raise ValueError(f"need num_parts >= 1 and alpha > 0, got {num_parts}, {alpha}")
    if labels.shape[0] < num_parts * min_size:
        raise ValueError(
            f"{labels.shape[0]} samples cannot give {num_parts} parts >= {min_size} each"
        )
    for _ in range(MAX_PARTITION_TRIES):
        parts = _dirichlet_once(labels, num_parts, alpha, rng)
        if min(part.size for part in parts) >= min_size:
            return parts
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) split into {num_parts} parts gave every part "
        f">= {min_size} samples in {MAX_PARTITION_TRIES} tries; raise alpha or lower the minimum"
    )


def apply_trigger(x: torch.Tensor, size: int, value: int) -> torch.Tensor:
    """Copy of `x` (..., C, H, W) with a size x size square of `value` in the bottom-right."""
    if not 1 <= size <= min(x.shape[-2], x.shape[-1]):
        raise ValueError(f"trigger size {size} does not fit images of shape {tuple(x.shape)}")
    out = x.clone()
    out[..., -size:, -size:] = value
    return out


def _flip_labels(data: TensorData, num_classes: int) -> TensorData:
    return TensorData(
        x=data.x,
        y=(data.y_true + 1) % num_classes,
        y_true=data.y_true,
        ids=data.ids,
        scale=data.scale,
    )


def _plant_backdoor(
    data: TensorData, config: PartitionConfig, pixel_max: int, rng: np.random.Generator
) -> tuple[TensorData, tuple[int, ...]]:
    """Trigger-stamp `backdoor_count` non-target samples and relabel them to the target."""
    candidates = np.flatnonzero(data.y_true.numpy() != config.backdoor_target)
    if config.backdoor_count > candidates.size:
        raise ValueError(
            f"backdoor_count {config.backdoor_count} exceeds the {candidates.size} train "
            f"samples of the backdoor participant outside class {config.backdoor_target}"
        )
    chosen = torch.from_numpy(np.sort(rng.choice(candidates, config.backdoor_count, False)))
    x, y = data.x.clone(), data.y.clone()
    x[chosen] = apply_trigger(x[chosen], config.trigger_size, pixel_max)
    y[chosen] = config.backdoor_target
    planted = TensorData(x=x, y=y, y_true=data.y_true, ids=data.ids, scale=data.scale)
    return planted, tuple(sorted(int(i) for i in data.ids[chosen]))


def _split_local(
    source: SourceData, indices: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[TensorData, TensorData]:
    order = rng.permutation(indices)
    n_test = local_test_size(order.size, fraction)
    test_index = torch.from_numpy(np.sort(order[:n_test]))
    train_index = torch.from_numpy(np.sort(order[n_test:]))
    return source.train.subset(train_index), source.train.subset(test_index)


def _make_shard(
    source: SourceData,
    config: PartitionConfig,
    index: int,
    splits: tuple[TensorData, TensorData],
    backdoor_rng: np.random.Generator,
) -> Shard:
    train, test = splits
    attacker = config.attacker == index
    if attacker:
        train, test = (
            _flip_labels(train, source.num_classes),
            _flip_labels(test, source.num_classes),
        )
    backdoor_ids: tuple[int, ...] = ()
    if config.backdoor_participant == index and config.backdoor_count > 0:
        train, backdoor_ids = _plant_backdoor(train, config, source.pixel_max, backdoor_rng)
    meta = ShardMeta(
        participant_id=participant_id(index),
        dataset=source.name,
        num_classes=source.num_classes,
        input_shape=source.input_shape,
        scale=1.0 / source.pixel_max,
        pixel_max=source.pixel_max,
        attacker=attacker,
        backdoor_ids=backdoor_ids,
        backdoor_target=config.backdoor_target,
        trigger_size=config.trigger_size,
        seed=config.seed,
        alpha=config.alpha,
    )
    return Shard(meta=meta, train=train, test=test)


def partition_source(source: SourceData, config: PartitionConfig) -> list[Shard]:
    """Deal `source.train` out to `config.num_participants` shards, deterministically."""
    _, height, width = source.input_shape
    config.validate(source.num_classes, height, width)
    # Independent streams so attack settings never change which samples go where.
    part_seq, split_seq, backdoor_seq = np.random.SeedSequence(config.seed).spawn(3)
    part_rng = np.random.Generator(np.random.PCG64(part_seq))
    split_rng = np.random.Generator(np.random.PCG64(split_seq))
    backdoor_rng = np.random.Generator(np.random.PCG64(backdoor_seq))
    min_size = min_total_size(config.min_train_size, config.test_fraction)
    parts = dirichlet_partition(
        source.train.y_true.numpy(), config.num_participants, config.alpha, part_rng, min_size
    )
    return [
        _make_shard(
            source,
            config,
            index,
            _split_local(source, part, config.test_fraction, split_rng),
            backdoor_rng,
        )
        for index, part in enumerate(parts)
    ]


def partition_to_directory(
    dataset: str, data_dir: Path | None, out_dir: Path, config: PartitionConfig
) -> dict[str, Any]:
    """Load `dataset`, partition it per `config`, write it to `out_dir`; return the summary."""
    source = load_source(dataset, data_dir)
    shards = partition_source(source, config)
    write_partition(out_dir, source, shards, config)
    return partition_summary(source, shards, config)
