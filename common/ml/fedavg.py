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

    Floating tensors are accumulated in float64 (complex in complex128) and cast back to their
    dtype; integer and bool tensors (e.g. BatchNorm `num_batches_tracked`) get the weighted mean
    rounded to the nearest integer. The result holds fresh tensors only (no aliasing of inputs),
    on the device of the first update, with the first update's key order.
    """
    check_updates(updates)
    total = sum(n for _, n in updates)
    out: dict[str, torch.Tensor] = {}
    for k, t0 in updates[0][0].items():
        acc_dtype = torch.complex128 if t0.is_complex() else torch.float64
        device = t0.device
        acc = torch.zeros(t0.shape, dtype=acc_dtype, device=device)
        for state, n in updates:
            acc.add_(state[k].detach().to(device=device, dtype=acc_dtype), alpha=n)
        acc.div_(total)
        if not (t0.is_floating_point() or t0.is_complex()):
            acc = torch.round(acc)  # integer / bool buffers: nearest integer (ties to even)
        out[k] = acc.to(t0.dtype)  # `acc` is fresh, so even a no-op cast shares no input memory
    return out


def weighted_mean(values: Sequence[tuple[float, int]]) -> float:
    """sum_k n_k * v_k / sum_k n_k, e.g. for a loss or accuracy reported by several clients."""
    if len(values) == 0:
        raise ValueError("weighted_mean needs at least one value, got none")
    for i, (_, n) in enumerate(values):
        _check_count(i, n)
    total = sum(n for _, n in values)
    return sum(float(v) * n for v, n in values) / total
