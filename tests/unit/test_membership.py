"""The federated membership-inference attack: histograms of per-example losses, and the AUC
of telling the forgotten samples (members) from test samples by a lower loss."""

from __future__ import annotations

import torch

from fused.common.ml.membership import BINS, attack_auc, loss_histogram


def test_histograms_count_every_example_in_fixed_bins() -> None:
    losses = torch.tensor([0.0, 1e-9, 1e-6, 0.01, 1.0, 99.0, 1e6])
    hist = loss_histogram(losses)
    assert len(hist) == BINS and sum(hist) == 7
    assert hist[0] == 3 and hist[-1] == 2  # below and above the range fold into the ends
    assert loss_histogram(torch.tensor([])) == [0] * BINS


def test_the_auc_of_separable_equal_and_inverted_losses() -> None:
    low = loss_histogram(torch.full((50,), 1e-4))
    high = loss_histogram(torch.full((30,), 3.0))
    assert attack_auc(low, high) == 1.0  # members all lower: perfectly told apart
    assert attack_auc(high, low) == 0.0
    assert attack_auc(low, low) == 0.5  # same bins: a coin toss
    assert attack_auc(low, [0] * BINS) is None and attack_auc([1], [1]) is None


def test_the_auc_is_the_probability_a_member_ranks_below_a_test_sample() -> None:
    generator = torch.Generator().manual_seed(0)
    members = torch.rand(400, generator=generator) * 0.5  # losses in [0, 0.5)
    others = torch.rand(300, generator=generator) * 2.0  # losses in [0, 2)
    exact = (members[:, None] < others[None, :]).float().mean().item()
    auc = attack_auc(loss_histogram(members), loss_histogram(others))
    assert auc is not None and abs(auc - exact) < 0.02  # the bins' resolution
