from __future__ import annotations

import pytest
import torch

from fused.common.ml.models import (
    build_model,
    count_parameters,
    default_model_for,
    init_model,
)
from fused.common.ml.workloads.builtin import PAIRS


def test_lenet_has_paper_parameter_count() -> None:
    assert count_parameters(build_model("lenet", 10)) == 44_426


def test_lenet_layer_names() -> None:
    names = {n.split(".")[0] for n, _ in build_model("lenet").named_parameters()}
    assert names == {"conv1", "conv2", "fc1", "fc2", "fc3"}


def test_mlp_parameter_count() -> None:
    expected = (64 * 128 + 128) + (128 * 64 + 64) + (64 * 10 + 10)
    assert count_parameters(build_model("mlp", 10)) == expected


def test_resnet18_parameter_count_and_names() -> None:
    model = build_model("resnet18", 10)
    assert count_parameters(model) == 11_173_962
    names = set(model.state_dict())
    for key in (
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.num_batches_tracked",
        "layer4.1.bn2.weight",
        "fc.weight",
        "fc.bias",
    ):
        assert key in names


@pytest.mark.parametrize("name", ["mlp", "lenet", "resnet18"])
def test_forward_shapes(name: str) -> None:
    spec = PAIRS[name]
    model = init_model(name, num_classes=7, seed=0)
    batch = 2 if name == "resnet18" else 5
    x = torch.rand(batch, *spec.input_shape)
    model.train()
    assert model(x).shape == (batch, 7)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (batch, 7)


def test_registry_specs() -> None:
    assert PAIRS["mlp"].input_shape == (1, 8, 8)
    assert PAIRS["lenet"].input_shape == (1, 28, 28)
    assert PAIRS["resnet18"].input_shape == (3, 32, 32)
    assert all(spec.name == key for key, spec in PAIRS.items())


def test_unknown_model_names_known_ones() -> None:
    with pytest.raises(ValueError, match=r"mlp.*resnet18|resnet18.*mlp"):
        build_model("vgg")


def test_default_model_for() -> None:
    assert default_model_for("digits") == "mlp"
    assert default_model_for("fashionmnist") == "lenet"
    assert default_model_for("cifar10") == "resnet18"
    with pytest.raises(ValueError):
        default_model_for("imagenet")


@pytest.mark.parametrize("name", ["mlp", "lenet"])
def test_init_model_reproducible_and_rng_untouched(name: str) -> None:
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a = init_model(name, 10, seed=3)
    b = init_model(name, 10, seed=3)
    c = init_model(name, 10, seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
