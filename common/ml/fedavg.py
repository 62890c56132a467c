"""Federated averaging of model state dicts, weighted by each participant's sample count."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def _check_count(i: int, n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"update {i} has sample count {n!r}; counts must be positive integers")


def check_updates(updates: Sequence[tuple[Mapping[str, torch.Tensor], int]]) -> None:
    """At least one update; positive integer counts; equal key sets, shapes and dtypes."""
    if len(updates) == 0:
        raise ValueError("aggregation needs at least one update, got none")
    for i, (_, n) in enumerate(updates):
        _check_count(i, n)

    ref, _ = updates[0]
    ref_keys = set(ref)
    for i, (state, _) in enumerate(updates[1:], start=1):
        keys = set(state)
        if keys != ref_keys:
            missing = sorted(ref_keys - keys)
            extra = sorted(keys - ref_keys)
            raise ValueError(
                f"update {i} has a different key set from update 0: "
                f"missing {missing}, extra {extra}"
            )
        for k in ref:
            a, b = ref[k], state[k]
            if a.shape != b.shape:
                raise ValueError(
                    f"tensor {k!r}: shape {tuple(b.shape)} in update {i} "
                    f"!= {tuple(a.shape)} in update 0"
                )
            if a.dtype != b.dtype:
                raise ValueError(
                    f"tensor {k!r}: dtype {b.dtype} in update {i} != {a.dtype} in update 0"
                )


def fedavg(updates: Sequence[tuple[Mapping[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
    """Weighted mean sum_k n_k * w_k / sum_k n_k of every tensor, key by key.

    Floating tensors are accumulated in float64 (complex in complex128), in the order given,
    and cast back to their dtype; integer and bool tensors (e.g. BatchNorm
    `num_batches_tracked`) get the weighted mean rounded to the nearest integer. The result
    holds fresh tensors only (no aliasing of inputs), on the device of the first update, with
    the first update's key order. (`exact_sum.ExactSum` gives an order-free sum.)
    """
    check_updates(updates)
    acc = OrderedSum()
    for state, n in updates:
        acc.add(state, n)
    return acc.mean(sum(n for _, n in updates))


class OrderedSum:
    """What `fedavg` accumulates, one update at a time, so updates read one by one give the
    same bits as `fedavg` over all of them in the same order. The updates must match (as
    `check_updates` checks)."""

    def __init__(self) -> None:
        self._like: dict[str, torch.Tensor] = {}  # empty: dtype, device, key order of the first
        self._acc: dict[str, torch.Tensor] = {}

    def add(self, state: Mapping[str, torch.Tensor], n: int) -> None:
        if not self._like:
            self._start(state)
        for k, t0 in self._like.items():
            acc = self._acc[k]
            acc.add_(state[k].detach().to(device=t0.device, dtype=acc.dtype), alpha=n)

    def _start(self, state: Mapping[str, torch.Tensor]) -> None:
        for k, t0 in state.items():
            acc_dtype = torch.complex128 if t0.is_complex() else torch.float64
            self._like[k] = t0.new_empty(0)
            self._acc[k] = torch.zeros(t0.shape, dtype=acc_dtype, device=t0.device)

    def mean(self, total: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for k, t0 in self._like.items():
            acc = self._acc[k].div_(total)
            if not (t0.is_floating_point() or t0.is_complex()):
                acc = torch.round(acc)  # integer / bool buffers: nearest integer (ties to even)
            out[k] = acc.to(t0.dtype)  # `acc` is fresh: even a no-op cast shares no input memory
        return out


def weighted_mean(values: Sequence[tuple[float, int]]) -> float:
    """sum_k n_k * v_k / sum_k n_k, e.g. for a loss or accuracy reported by several clients."""
    if len(values) == 0:
        raise ValueError("weighted_mean needs at least one value, got none")
    for i, (_, n) in enumerate(values):
        _check_count(i, n)
    total = sum(n for _, n in values)
    return sum(float(v) * n for v, n in values) / total
