from __future__ import annotations

import dataclasses
import hashlib
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fused.common.ml.adapters import (
    AdapterLayout,
    SparseDelta,
    adapter_values,
    attach_adapter,
    build_layout,
    frozen_norm_stats,
    layout_for,
    mask_indices,
    merge_adapter,
    merge_weights,
    remove_adapter,
    zero_values,
)
from fused.common.ml.models import build_model

REPO_ROOT = Path(__file__).resolve().parents[2]


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bit pattern, so -0.0 != 0.0 and NaNs compare by payload."""
    return t.detach().contiguous().view(torch.int32)


def _random_values(layout: AdapterLayout, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(layout.indices[n].numel(), generator=g) for n in layout.names}


# --------------------------------------------------------------------- wrapper, table-driven


@dataclass(frozen=True)
class Case:
    id: str
    factory: Callable[[], nn.Module]
    names: tuple[str, ...]
    input_shape: tuple[int, ...]
    density: float = 0.3


CASES = [
    Case("linear", lambda: nn.Linear(6, 4), ("weight", "bias"), (3, 6)),
    Case("conv2d", lambda: nn.Conv2d(2, 3, 3), ("weight",), (2, 2, 5, 5)),
    Case("batchnorm2d", lambda: nn.BatchNorm2d(3), ("weight", "bias"), (4, 3, 5, 5), 0.5),
    Case("lenet", lambda: build_model("lenet"), ("fc3.weight", "conv1.weight"), (2, 1, 28, 28)),
]


def _fresh(case: Case) -> nn.Module:
    torch.manual_seed(1234)
    model = case.factory().eval()
    if isinstance(model, nn.BatchNorm2d):  # non-trivial running stats and affine parameters
        assert model.running_mean is not None and model.running_var is not None
        with torch.no_grad():
            model.running_mean.uniform_(-1, 1)
            model.running_var.uniform_(0.5, 2)
            model.weight.uniform_(0.5, 2)
            model.bias.uniform_(-1, 1)
    return model


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_attach_remove_merge(case: Case) -> None:
    model = _fresh(case)
    x = torch.randn(case.input_shape, generator=torch.Generator().manual_seed(5))
    originals = dict(model.named_parameters())
    snapshot = {n: p.detach().clone() for n, p in originals.items()}
    base_state = {n: t.clone() for n, t in model.state_dict().items()}
    with torch.no_grad():
        base_out = model(x)
    layout = layout_for(model, case.names, case.density, seed=7)
    assert layout.names == tuple(sorted(case.names))

    # A zero adapter changes nothing.
    trainable = attach_adapter(model, layout)
    assert sorted(trainable) == sorted(case.names)
    with torch.no_grad():
        assert torch.equal(model(x), base_out)

    # Nonzero values: the same function as a plain model loaded with merge_weights.
    values = _random_values(layout)
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(values[name])
        adapted_out = model(x)
    assert not torch.equal(adapted_out, base_out)
    plain = _fresh(case)
    plain.load_state_dict(merge_weights(base_state, layout, values))
    with torch.no_grad():
        assert torch.allclose(plain(x), adapted_out, rtol=1e-5, atol=1e-6)
    got = adapter_values(model)
    assert all(torch.equal(got[n], values[n]) for n in layout.names)

    # Removing restores the very same base tensors, bit for bit, and their requires_grad.
    remove_adapter(model)
    for name, param in model.named_parameters():
        assert param is originals[name]
        assert torch.equal(_bits(param), _bits(snapshot[name]))
        assert param.requires_grad
    assert not hasattr(model, "parametrizations")
    with torch.no_grad():
        assert torch.equal(model(x), base_out)

    # Merging bakes exactly merge_weights into plain parameters.
    attach_adapter(model, layout, values)
    merge_adapter(model)
    expected = merge_weights(base_state, layout, values)
    for name, param in model.named_parameters():
        assert type(param) is nn.Parameter and param.requires_grad
        assert torch.equal(param, expected[name]), name
        assert torch.equal(_bits(originals[name]), _bits(snapshot[name]))  # base untouched


def test_merge_weights_shares_unadapted_tensors_and_leaves_base_alone() -> None:
    base = {"a": torch.zeros(4, 5), "b": torch.ones(3)}
    before = {n: t.clone() for n, t in base.items()}
    layout = build_layout({"a": (4, 5)}, 0.5, seed=1)
    values = _random_values(layout)
    merged = merge_weights(base, layout, values)
    assert merged["b"] is base["b"]
    assert all(torch.equal(base[n], before[n]) for n in base)
    flat = merged["a"].flatten()
    idx = layout.indices["a"]
    assert torch.equal(flat[idx], values["a"])
    outside = torch.ones(20, dtype=torch.bool)
    outside[idx] = False
    assert not flat[outside].any()


def test_merge_weights_validates() -> None:
    layout = build_layout({"a": (4, 5)}, 0.5, seed=1)
    with pytest.raises(ValueError, match="missing"):
        merge_weights({"a": torch.zeros(4, 5)}, layout, {})
    with pytest.raises(ValueError, match="expected shape"):
        merge_weights({"a": torch.zeros(4, 5)}, layout, {"a": torch.zeros(100)})
    with pytest.raises(ValueError, match="not in the base"):
        merge_weights({}, layout, zero_values(layout))
    with pytest.raises(ValueError, match="base shape"):
        merge_weights({"a": torch.zeros(5, 4)}, layout, zero_values(layout))


def test_attach_rejects_bad_use() -> None:
    model = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="no parameter"):
        attach_adapter(model, build_layout({"nope": (3, 4)}, 0.5, 0))
    with pytest.raises(ValueError, match="shape"):
        attach_adapter(model, build_layout({"weight": (4, 3)}, 0.5, 0))
    layout = layout_for(model, ["weight"], 0.5, 0)
    attach_adapter(model, layout)
    with pytest.raises(ValueError, match="already carries"):
        attach_adapter(model, layout)
    remove_adapter(model)
    with pytest.raises(ValueError, match="no adapter"):
        remove_adapter(model)
    with pytest.raises(ValueError, match="no adapter"):
        merge_adapter(model)


def test_sparse_delta_has_no_dense_parameter() -> None:
    delta = SparseDelta(torch.tensor([1, 5]), torch.tensor([2.0, 3.0]))
    assert [n for n, _ in delta.named_parameters()] == ["values"]
    assert "indices" not in delta.state_dict()
    out = delta(torch.zeros(2, 3))
    assert torch.equal(out, torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 3.0]]))


# --------------------------------------------------------------------- gradient isolation


def _bn_net() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    )


def test_training_step_touches_only_adapter_values() -> None:
    model = _bn_net().train()
    bn = model[1]
    assert isinstance(bn, nn.BatchNorm2d)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    layout = layout_for(model, ["0.weight", "1.weight", "4.weight"], 0.5, seed=11)
    trainable = attach_adapter(model, layout)
    live = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in live} == {id(p) for p in trainable.values()}

    optimizer = torch.optim.SGD(live, lr=0.1, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
    with frozen_norm_stats(model):
        assert model.training and not bn.training
        for _ in range(2):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            torch.autograd.backward(loss)
            optimizer.step()
    assert bn.training  # mode restored
    for name, value in trainable.items():
        assert value.grad is not None and value.grad.abs().sum() > 0, name
    assert any(adapter_values(model)[n].abs().sum() > 0 for n in layout.names)

    remove_adapter(model)
    for name, param in model.named_parameters():
        assert param.grad is None, name
        assert torch.equal(_bits(param), _bits(params[name])), name
    for name, buf in model.named_buffers():
        assert torch.equal(buf, buffers[name]), name


def test_without_frozen_norm_stats_running_stats_would_drift() -> None:
    # Guards the test above: the batch does move the statistics when not frozen.
    model = _bn_net().train()
    bn = model[1]
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None
    before = bn.running_mean.clone()
    model(torch.randn(8, 1, 6, 6))
    assert not torch.equal(bn.running_mean, before)


# --------------------------------------------------------------------- masks


def test_mask_is_deterministic_sorted_int64() -> None:
    a = mask_indices("fc3.weight", 5000, 0.1, seed=7)
    b = mask_indices("fc3.weight", 5000, 0.1, seed=7)
    assert a.dtype == torch.int64 and a.dim() == 1
    assert torch.equal(a, b)
    assert bool((a[1:] > a[:-1]).all()) and int(a[0]) >= 0 and int(a[-1]) < 5000
    assert not torch.equal(a, mask_indices("fc3.weight", 5000, 0.1, seed=8))
    assert not torch.equal(a, mask_indices("fc2.weight", 5000, 0.1, seed=7))


def test_mask_matches_the_specified_draw() -> None:
    # Spec: Philox keyed by sha256(f"{seed}:{name}")[:16], raw < floor(density * 2**64).
    key = np.frombuffer(hashlib.sha256(b"3:w").digest()[:16], dtype="<u8")
    raw = np.random.Philox(key=key).random_raw(1000)
    threshold = math.floor(Fraction(0.25) * 2**64)
    expected = [i for i, r in enumerate(raw.tolist()) if r < threshold]
    assert mask_indices("w", 1000, 0.25, seed=3).tolist() == expected


def test_mask_known_answer() -> None:
    # Pins the stream across numpy versions and machines.
    assert mask_indices("fc3.weight", 100, 0.1, seed=0).tolist() == [1, 11, 17, 21, 33, 62, 83, 92]


def test_mask_density_within_tolerance() -> None:
    n, p = 200_000, 0.05
    count = mask_indices("big", n, p, seed=1).numel()
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(count - n * p) < 5 * sigma


def test_density_one_selects_everything() -> None:
    assert torch.equal(mask_indices("w", 37, 1.0, seed=0), torch.arange(37))


def test_tiny_tensors_get_at_least_one_position() -> None:
    for i in range(20):
        idx = mask_indices(f"t{i}", 3, 1e-9, seed=i)
        assert idx.numel() == 1 and 0 <= int(idx[0]) < 3
    assert mask_indices("one", 1, 1e-9, seed=0).tolist() == [0]


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_invalid_density(density: float) -> None:
    with pytest.raises(ValueError, match="density"):
        mask_indices("w", 10, density, seed=0)


def test_invalid_numel() -> None:
    with pytest.raises(ValueError, match="numel"):
        mask_indices("w", 0, 0.5, seed=0)


# --------------------------------------------------------------------- layouts


def _layout(**changes: object) -> AdapterLayout:
    args: dict[str, object] = {
        "shapes": {"fc.weight": (10, 20), "conv.weight": (4, 1, 3, 3)},
        "density": 0.2,
        "seed": 5,
    }
    args.update(changes)
    return build_layout(args["shapes"], args["density"], args["seed"])  # type: ignore[arg-type]


def test_layout_fields() -> None:
    layout = _layout()
    assert layout.names == ("conv.weight", "fc.weight")
    assert layout.shapes["fc.weight"] == (10, 20)
    assert layout.num_values == sum(layout.indices[n].numel() for n in layout.names)
    assert layout == _layout() and hash(layout) == hash(_layout())
    assert len(layout.digest) == 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        layout.seed = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        layout.shapes["x"] = (1,)  # type: ignore[index]
    zeros = zero_values(layout)
    assert all(z.dtype == torch.float32 and not z.any() for z in zeros.values())


def test_digest_changes_when_anything_changes() -> None:
    digests = {
        _layout().digest,
        _layout(seed=6).digest,
        _layout(density=0.3).digest,
        _layout(shapes={"fc.weight": (10, 20)}).digest,
        _layout(shapes={"fc.weight": (20, 10), "conv.weight": (4, 1, 3, 3)}).digest,
        _layout(shapes={"fc2.weight": (10, 20), "conv.weight": (4, 1, 3, 3)}).digest,
    }
    assert len(digests) == 6


def test_layout_for_model_and_state_dict_agree() -> None:
    model = build_model("lenet")
    names = ["fc3.weight", "conv1.weight"]
    a = layout_for(model, names, 0.05, seed=2)
    b = layout_for(model.state_dict(), names, 0.05, seed=2)
    assert a == b and a.shapes["fc3.weight"] == (10, 84)
    with pytest.raises(ValueError, match=r"fc9\.weight"):
        layout_for(model, ["fc9.weight"], 0.05, seed=2)


_CHILD = """
from fused.common.ml.adapters import build_layout
print(build_layout({"fc3.weight": (10, 84), "conv1.weight": (6, 1, 5, 5)}, 0.05, 42).digest)
"""


def test_digest_identical_across_processes() -> None:
    here = build_layout({"fc3.weight": (10, 84), "conv1.weight": (6, 1, 5, 5)}, 0.05, 42).digest
    result = subprocess.run(
        [sys.executable, "-c", _CHILD],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == here
