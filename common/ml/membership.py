"""Federated membership inference: does the model still tell the forgotten training samples
from data it never saw?

Each participant reports a histogram of per-example losses (fixed log-spaced bins) on its
part of the forgotten set and on its remaining test split; counts only leave it, as for
accuracy. The coordinator sums them and computes the AUC of the loss-threshold attack
(a lower loss says "member"): the probability that a forgotten sample's loss is below a test
sample's, ties (the same bin) counting half. 0.5: the forgotten samples look unseen.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

BINS = 64  # over log10(loss) in [LOW, HIGH]; below and above fold into the end bins
LOW, HIGH = -6.0, 2.0


def loss_histogram(losses: torch.Tensor) -> list[int]:
    """Counts of per-example `losses` (shape (N,)) in the BINS bins."""
    if losses.numel() == 0:
        return [0] * BINS
    logs = torch.log10(losses.detach().float().cpu().clamp_min(10**LOW))
    index = ((logs - LOW) / (HIGH - LOW) * BINS).floor().clamp(0, BINS - 1).long()
    return [int(c) for c in torch.bincount(index, minlength=BINS)]


def attack_auc(members: Sequence[int], others: Sequence[int]) -> float | None:
    """AUC of "lower loss = member" on two histograms; None if either is empty."""
    m, o = sum(members), sum(others)
    if len(members) != BINS or len(others) != BINS or m == 0 or o == 0:
        return None
    wins = 0.0
    above = 0  # test samples in higher-loss bins than b: the attack ranks members below them
    for b in range(BINS - 1, -1, -1):
        wins += members[b] * (above + 0.5 * others[b])
        above += others[b]
    return wins / (m * o)
