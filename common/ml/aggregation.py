"""Aggregation rules, by the name a job's policy gives: FedAvg (the sample-weighted mean, the
default) and two robust rules that ignore the declared sample counts, the coordinate-wise
median and the coordinate-wise trimmed mean. Each takes (state dict, sample count) pairs,
checked alike, and returns fresh tensors with the first update's keys, dtypes and device."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch

from fused.common.ml.fedavg import check_updates, fedavg

Update = tuple[Mapping[str, torch.Tensor], int]
Aggregator = Callable[[Sequence[Update]], dict[str, torch.Tensor]]


def _stacked(updates: Sequence[Update], key: str) -> torch.Tensor:
    """Every update's tensor `key`, stacked along a new first axis, in float64."""
    device = updates[0][0][key].device
    return torch.stack([s[key].detach().to(device=device, dtype=torch.float64) for s, _ in updates])


def _cast(acc: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if not like.is_floating_point():
        acc = torch.round(acc)  # integer / bool buffers: nearest integer (ties to even)
    return acc.to(like.dtype)


def _coordinatewise(
    updates: Sequence[Update], reduce: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, torch.Tensor]:
    check_updates(updates)
    if any(t.is_complex() for t in updates[0][0].values()):
        raise ValueError("robust aggregation needs real tensors")
    return {k: _cast(reduce(_stacked(updates, k)), t) for k, t in updates[0][0].items()}


def _median(stack: torch.Tensor) -> torch.Tensor:
    """The middle value of every coordinate; the mean of the two middle ones for an even
    count (torch.median would return the lower)."""
    ordered = stack.sort(dim=0).values
    n = ordered.shape[0]
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def trimmed_count(n: int, fraction: float) -> int:
    """Values cut at each end: floor(fraction * n), leaving at least one value."""
    return min(math.floor(fraction * n), (n - 1) // 2)


def _trimmed(stack: torch.Tensor, fraction: float) -> torch.Tensor:
    ordered = stack.sort(dim=0).values
    k = trimmed_count(ordered.shape[0], fraction)
    return ordered[k : ordered.shape[0] - k].mean(dim=0)


def median(updates: Sequence[Update]) -> dict[str, torch.Tensor]:
    """Coordinate-wise median; sample counts are ignored (they are the sender's claim)."""
    return _coordinatewise(updates, _median)


def trimmed_mean(updates: Sequence[Update], fraction: float = 0.2) -> dict[str, torch.Tensor]:
    """Coordinate-wise mean after cutting the `fraction` lowest and highest values of each
    coordinate; sample counts are ignored."""
    return _coordinatewise(updates, partial(_trimmed, fraction=fraction))


def aggregator(name: str, trim_fraction: float = 0.2) -> Aggregator:
    """The rule a policy names; ValueError for an unknown name."""
    rules: dict[str, Aggregator] = {
        "fedavg": fedavg,
        "median": median,
        "trimmed-mean": partial(trimmed_mean, fraction=trim_fraction),
    }
    if name not in rules:
        raise ValueError(f"aggregator must be one of {', '.join(rules)}, got {name!r}")
    return rules[name]
