from __future__ import annotations

import pytest
import torch
from torch import nn

from fused.common.ml.data.tensors import TensorData
from fused.common.ml.models import init_model
from fused.participant.training import EvalCounts, TrainConfig, evaluate, train_local


def _data(x: torch.Tensor, y: torch.Tensor, scale: float = 1.0 / 255) -> TensorData:
    n = int(y.shape[0])
    return TensorData(x=x, y=y, y_true=y.clone(), ids=torch.arange(n), scale=scale)


def _random_data(n: int, shape: tuple[int, int, int], classes: int, seed: int) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    y = torch.randint(0, classes, (n,), generator=g)
    return _data(x, y)


def _separable_digits(n_per_class: int = 20) -> TensorData:
    """8x8 images: class c lights up row c (with noise), so it is linearly separable."""
    g = torch.Generator().manual_seed(0)
    xs, ys = [], []
    for c in range(4):
        x = torch.randint(0, 4, (n_per_class, 1, 8, 8), generator=g, dtype=torch.uint8)
        x[:, 0, c, :] = 16
        xs.append(x)
        ys.append(torch.full((n_per_class,), c))
    return _data(torch.cat(xs), torch.cat(ys), scale=1.0 / 16)


def test_train_local_is_deterministic_and_leaves_global_rng() -> None:
    data = _random_data(50, (1, 28, 28), 10, seed=1)
    cfg = TrainConfig(local_epochs=2, batch_size=16, seed=7)
    a = init_model("lenet", 10, seed=0)
    b = init_model("lenet", 10, seed=0)
    torch.manual_seed(99)
    before = torch.get_rng_state()
    sa = train_local(a, data, cfg)
    sb = train_local(b, data, cfg)
    assert torch.equal(torch.get_rng_state(), before)
    assert sa == sb
    assert sa.num_examples == 50 and sa.steps == 2 * 4
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
    c = init_model("lenet", 10, seed=0)
    train_local(c, data, TrainConfig(local_epochs=2, batch_size=16, seed=8))
    assert not all(
        torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True)
    )


def test_loss_decreases_on_separable_data() -> None:
    data = _separable_digits()
    model = init_model("mlp", 4, seed=0)
    before = evaluate(model, data, num_classes=4)
    stats = train_local(model, data, TrainConfig(local_epochs=15, lr=0.05, batch_size=16))
    after = evaluate(model, data, num_classes=4)
    assert stats.num_examples == 80 and stats.steps == 15 * 5
    assert after.loss_sum < 0.5 * before.loss_sum
    assert stats.mean_loss < before.loss_sum / before.num_examples
    assert after.accuracy == 1.0


def test_params_restriction_trains_only_given_params() -> None:
    data = _separable_digits(5)
    model = init_model("mlp", 4, seed=0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    last = model.get_submodule("net.4")
    assert isinstance(last, nn.Linear)
    train_local(model, data, TrainConfig(local_epochs=2, batch_size=8), params=last.parameters())
    end = model.state_dict()
    changed = {k for k in start if not torch.equal(start[k], end[k])}
    assert changed == {"net.4.weight", "net.4.bias"}
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_params_restriction_rejects_foreign_params() -> None:
    model = init_model("mlp", 4, seed=0)
    other = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="parameters of the model"):
        train_local(model, _separable_digits(2), TrainConfig(), params=other.parameters())


def test_train_restores_mode_and_rejects_empty() -> None:
    model = init_model("mlp", 4, seed=0)
    model.eval()
    train_local(model, _separable_digits(2), TrainConfig())
    assert not model.training
    empty = _separable_digits(1).subset(torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty"):
        train_local(model, empty, TrainConfig())


class _Fixed(nn.Module):
    """Logits = x flattened @ W^T: with one-hot-ish inputs the prediction is chosen by x."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lin(x.flatten(1))
        return out


def test_evaluate_counts_exact() -> None:
    # prediction = position of the bright pixel
    pred = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    y = torch.tensor([0, 1, 2, 1, 1, 2, 0])  # correct: 0,1,2,4,6 -> 5 of 7
    x = torch.zeros(7, 1, 1, 3, dtype=torch.uint8)
    x[torch.arange(7), 0, 0, pred] = 1
    data = _data(x, y, scale=1.0)
    model = _Fixed()
    model.train()
    counts = evaluate(model, data, num_classes=4, batch_size=3)
    assert counts.correct == [2, 2, 1, 0]
    assert counts.total == [2, 3, 2, 0]
    assert counts.total == torch.bincount(y, minlength=4).tolist()
    assert counts.num_examples == 7
    assert counts.accuracy == pytest.approx(5 / 7)
    logits = torch.eye(3)[pred]
    expected = nn.functional.cross_entropy(logits, y, reduction="sum").item()
    assert counts.loss_sum == pytest.approx(expected, rel=1e-6)
    assert model.training  # previous mode restored

    # compared against other labels (e.g. the true ones, or a backdoor target)
    y_true = torch.tensor([0, 0, 0, 0, 0, 0, 0])
    counts = evaluate(model, data, num_classes=3, labels=y_true)
    assert counts.total == [7, 0, 0]
    assert counts.correct == [3, 0, 0]

    model.eval()
    evaluate(model, data, num_classes=3)
    assert not model.training


def test_evaluate_empty_and_bad_labels() -> None:
    data = _separable_digits(1).subset(torch.zeros(4, dtype=torch.bool))
    model = init_model("mlp", 4, seed=0)
    counts = evaluate(model, data, num_classes=4)
    assert counts == EvalCounts(correct=[0] * 4, total=[0] * 4, loss_sum=0.0)
    assert counts.accuracy == 0.0 and counts.num_examples == 0
    with pytest.raises(ValueError):
        evaluate(model, _separable_digits(2), num_classes=3)  # label 3 out of range
