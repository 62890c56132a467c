"""Index-free max pooling for a frozen prefix (participant/prefix_pool.py): the same values
as max_pool2d to the bit, and only the pools it can stand in for are rewritten."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from fused.participant.prefix_pool import index_free, strided_max


@pytest.mark.parametrize(
    ("shape", "kernel"), [((4, 3, 24, 24), (2, 2)), ((2, 5, 9, 7), (3, 2)), ((3, 8, 8), (1, 1))]
)
def test_strided_max_is_max_pool2d_exactly(shape: tuple[int, ...], kernel: tuple[int, int]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    x.view(-1)[::7] = -math.inf
    assert torch.equal(strided_max(x, *kernel), F.max_pool2d(x, kernel))


def test_strided_max_propagates_nan_as_max_pool2d_does() -> None:
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1] = math.nan
    assert torch.equal(strided_max(x, 2, 2).isnan(), F.max_pool2d(x, 2).isnan())


class Pools(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.padded = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.max_pool2d(x, 2)
        b = F.max_pool2d(x, kernel_size=(2, 2), stride=2)
        c = F.max_pool2d(x, 2, ceil_mode=True)  # floor mode only
        d = F.max_pool2d(x, 3, stride=1)  # overlapping windows
        pooled: torch.Tensor = self.pool(x)
        padded: torch.Tensor = self.padded(x)
        return pooled.sum() + a.sum() + b.sum() + c.sum() + d.sum() + padded.sum()


def test_only_plain_pools_are_rewritten_and_the_outputs_stay_exact() -> None:
    model = Pools()
    traced = fx.symbolic_trace(model)
    x = torch.randn(2, 3, 11, 12)
    expected = traced(x)
    assert index_free(traced)
    rewritten = [n for n in traced.graph.nodes if n.target is strided_max]
    assert len(rewritten) == 3  # self.pool, a and b; not c, d or the padded pool
    assert torch.equal(traced(x), expected)


def test_a_graph_without_pools_is_left_as_it_was() -> None:
    traced = fx.symbolic_trace(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    code = traced.code
    assert not index_free(traced) and traced.code == code
