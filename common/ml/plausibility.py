"""Plausibility of what participants declare and send, judged against the round as a whole:
a cap on one participant's share of the round's weight, and update norms against the round's
median and an absolute bound. Pure functions over numbers and tensors; the coordinator's job
engine applies them once a round's results are in."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

import torch

from fused.common.domain.aggregation_policy import MIN_CAPPED_ROUND, MIN_MEDIAN_ROUND


class RefusalReason(StrEnum):
    """Why an update was refused once the round's results were in (a metrics label)."""

    NOT_FINITE = "not_finite"
    NORM_BOUND = "norm_bound"
    NORM_RATIO = "norm_ratio"


@dataclass(frozen=True)
class Refusal:
    reason: RefusalReason
    message: str


def capped_weights(
    counts: Sequence[int], max_share: float, min_round: int = MIN_CAPPED_ROUND
) -> list[int]:
    """The counts with no participant above `max_share` of their total: the largest ones are
    lowered to a common weight c with c / total = max_share (rounded down), the others kept.
    Unchanged with fewer than `min_round` positive counts or when nobody is above it; equal
    weights when the share cannot be met (max_share x count < 1). Exact (rational) arithmetic,
    so the result depends on the counts alone."""
    n = len(counts)
    if sum(1 for c in counts if c > 0) < min_round or max_share >= 1:
        return list(counts)
    share = Fraction(max_share)
    if share * n < 1:
        return [min(counts)] * n
    order = sorted(range(n), key=lambda i: (-counts[i], i))
    rest = sum(counts)
    for m in range(n):  # m: how many of the largest are capped
        cap = share * rest / (1 - m * share)
        if counts[order[m]] <= cap:
            break
        rest -= counts[order[m]]
    if m == 0:
        return list(counts)
    weight = max(1, math.floor(cap))
    capped = set(order[:m])
    return [weight if i in capped else c for i, c in enumerate(counts)]


def update_norm(update: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> float:
    """The L2 norm of update - reference over the floating tensors, in float64 (so finite
    float32 values near their maximum give a finite norm)."""
    total = 0.0
    for name, tensor in update.items():
        if not tensor.is_floating_point():
            continue  # integer buffers (BatchNorm's num_batches_tracked) are not trained
        diff = tensor.detach().to(torch.float64) - reference[name].detach().to(torch.float64)
        total += float(torch.sum(diff * diff))
    return math.sqrt(total)


def l1_distance(tensor: torch.Tensor, reference: torch.Tensor) -> float:
    """sum |tensor - reference|, summed in float64: how far training moved one tensor (the
    measure a participant's sensitivity task reports)."""
    return float((tensor.detach() - reference.detach()).abs().sum(dtype=torch.float64))


def norm_refusals(
    norms: Mapping[str, float],
    factor: float,
    bound: float,
    min_round: int = MIN_MEDIAN_ROUND,
) -> dict[str, Refusal]:
    """The updates to refuse, by participant: a norm that is not finite, above `bound` (0: no
    bound), or above `factor` times the median of the round's norms (0: off; only with at
    least `min_round` updates, since with two the median cannot tell which one is off)."""
    refused: dict[str, Refusal] = {}
    for pid, norm in sorted(norms.items()):
        if not math.isfinite(norm):
            refused[pid] = Refusal(RefusalReason.NOT_FINITE, "update norm is not finite")
        elif bound > 0 and norm > bound:
            refused[pid] = Refusal(
                RefusalReason.NORM_BOUND,
                f"update L2 norm {norm:.4g} is above the job's bound of {bound:.4g}",
            )
    finite = [n for n in norms.values() if math.isfinite(n)]
    if factor <= 0 or len(finite) < min_round:
        return refused
    median = statistics.median(finite)
    for pid, norm in sorted(norms.items()):
        if pid not in refused and norm > factor * median:
            ratio = f"{norm / median:.3g}x" if median > 0 else "more than"
            refused[pid] = Refusal(
                RefusalReason.NORM_RATIO,
                f"update L2 norm {norm:.4g} is {ratio} the round's median {median:.4g} "
                f"(limit {factor:g}x)",
            )
    return refused
