"""The frozen prefix (participant/prefix.py): where the cut goes, that training through it
updates exactly as the whole model does, when it is refused, and when kept activations are
reused."""

from __future__ import annotations

from collections.abc import Hashable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fused.common.domain.train_config import TrainConfig
from fused.common.ml.adapters import adapter_values, attach_adapter, layout_for
from fused.common.ml.data.tensors import TensorData
from fused.common.ml.models.lenet import LeNet5
from fused.participant.prefix import CachedPrefix, Rows, cut_prefix, drop_kept
from fused.participant.training import train_local

FC = ["fc1.weight", "fc2.weight"]


def identity(t: torch.Tensor) -> torch.Tensor:
    return t


def rows(x: torch.Tensor, tag: Hashable = "rows") -> Rows:
    return Rows(x, identity, lambda: (tag, tuple(x.shape)))


def adapted(layers: list[str], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = LeNet5()
    attach_adapter(model, layout_for(model, layers, 0.05, 7))
    return model


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_lenet_is_cut_before_fc1_and_the_rest_gives_the_model_outputs() -> None:
    drop_kept()
    model, x = adapted(FC), images(300)
    cached = cut_prefix(model, rows(x))
    assert cached is not None
    assert [tuple(a.shape) for a in cached.activations] == [(300, 256)]
    idx = torch.tensor([5, 299, 0, 17])
    assert torch.allclose(cached(idx), model(x[idx]), rtol=1e-6, atol=1e-6)
    assert "conv" not in cached.suffix.code  # the rest never runs the convolutions


def _reference(model: nn.Module, data: TensorData, cfg: TrainConfig) -> None:
    """The whole-model loop train_local ran before the cut: the same seeds and steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = data.features()
    for _ in range(cfg.local_epochs):
        perm = torch.randperm(len(data), generator=gen)
        for start in range(0, len(data), cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[idx]), data.y[idx])
            torch.autograd.backward(loss)
            opt.step()


@pytest.mark.parametrize("layers", [FC, ["conv2.weight", "fc1.weight"], ["fc3.bias"]])
def test_adapter_training_through_the_cut_equals_the_whole_model(layers: list[str]) -> None:
    drop_kept()
    y = torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(2))
    data = TensorData.labelled(images(200), y, torch.arange(200))
    cfg = TrainConfig(local_epochs=2, lr=0.05, batch_size=32, seed=3)
    ours, theirs = adapted(layers), adapted(layers)
    trainable = [p for p in ours.parameters() if p.requires_grad]
    train_local(ours, data, cfg, params=trainable, freeze_norm_stats=True)
    _reference(theirs, data, cfg)
    mine, reference = adapter_values(ours), adapter_values(theirs)
    assert all(torch.equal(mine[name], reference[name]) for name in reference)


def test_kept_activations_are_reused_only_for_the_same_base_and_rows() -> None:
    drop_kept()
    x = images(100)
    first = cut_prefix(adapted(FC), rows(x))
    again = cut_prefix(adapted(FC), rows(x))  # a new task: same base, same rows
    other_base = cut_prefix(adapted(FC, seed=5), rows(x))
    other_rows = cut_prefix(adapted(FC), rows(images(100, seed=9), tag="other"))
    assert first is not None and again is not None
    assert again.activations[0] is first.activations[0]
    assert other_base is not None and not torch.equal(
        other_base.activations[0], first.activations[0]
    )
    assert other_rows is not None and other_rows.activations[0] is not first.activations[0]


def test_no_cut_where_the_first_layer_or_everything_trains() -> None:
    x = images(50)
    assert cut_prefix(adapted(["conv1.weight", "fc1.weight"]), rows(x)) is None
    whole = LeNet5()
    assert cut_prefix(whole, rows(x)) is None


def test_no_cut_over_the_size_bound() -> None:
    drop_kept()
    assert cut_prefix(adapted(FC), rows(images(50)), max_bytes=50 * 256 * 4 - 1) is None
    assert cut_prefix(adapted(FC), rows(images(50)), max_bytes=50 * 256 * 4) is not None


class Prefixed(nn.Module):
    """A frozen stem (whose kind the test chooses), then a trainable head."""

    def __init__(self, stem: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.stem(x))
        return out


def _frozen_stem(stem: nn.Module, training: bool) -> nn.Module:
    model = Prefixed(stem)
    for p in model.stem.parameters():
        p.requires_grad_(False)
    model.train(training)
    return model


def test_no_cut_through_dropout_or_batch_statistics() -> None:
    x = torch.randn(64, 8)
    dropout = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5))
    batch_norm = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
    assert cut_prefix(_frozen_stem(dropout, training=True), rows(x, "d")) is None
    assert cut_prefix(_frozen_stem(batch_norm, training=True), rows(x, "bn")) is None
    # in eval mode both are fixed per sample, so the cut is exact
    assert cut_prefix(_frozen_stem(batch_norm, training=False), rows(x, "bn-eval")) is not None


class Branchy(nn.Module):
    """Two frozen branches read by the trainable part (a residual block with a projection),
    and data-dependent control flow behind a flag (which fx cannot trace)."""

    def __init__(self, branching: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)
        self.branching = branching

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branching and bool(x.sum() > 0):
            x = -x
        h = self.a(x)
        out: torch.Tensor = self.head(torch.relu(self.b(h)) + self.c(h))
        return out


def _frozen(model: nn.Module, trainable: str) -> nn.Module:
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(trainable))
    return model


def test_a_cut_with_two_frontier_tensors_gives_the_model_outputs() -> None:
    model, x = _frozen(Branchy(), "b."), torch.randn(40, 6)
    cached = cut_prefix(model, rows(x, "branchy"))
    assert isinstance(cached, CachedPrefix)
    assert len(cached.activations) == 2  # a's output feeds b, c's the sum
    idx = torch.arange(40)
    assert torch.allclose(cached(idx), model(x), atol=1e-6)


def test_an_untraceable_model_is_run_whole() -> None:
    assert cut_prefix(_frozen(Branchy(branching=True), "b."), rows(torch.randn(8, 6))) is None


def test_a_prefix_working_in_place_leaves_the_stored_rows_alone() -> None:
    stem = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(8, 8))
    x = torch.randn(40, 8)
    stored = x.clone()
    cached = cut_prefix(_frozen_stem(stem, training=True), rows(x, "in-place"))
    assert cached is not None and torch.equal(x, stored)
