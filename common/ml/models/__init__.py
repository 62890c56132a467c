"""Model registry: names, expected input shapes and reproducible construction."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fused.common.ml.models.lenet import LeNet5, LeNetConfig
from fused.common.ml.models.mlp import MLP, MLPConfig
from fused.common.ml.models.resnet import ResNet18, ResNetConfig


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_shape: tuple[int, int, int]  # (C, H, W) of one sample
    description: str


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec("mlp", (1, 8, 8), "MLP 64-128-64-C for the 8x8 digits data set"),
    "lenet": ModelSpec("lenet", (1, 28, 28), "LeNet-5 (44,426 parameters) for FashionMNIST"),
    "resnet18": ModelSpec("resnet18", (3, 32, 32), "ResNet-18 with a 3x3 stem for CIFAR-10"),
}

_DEFAULT_FOR_DATASET: dict[str, str] = {
    "digits": "mlp",
    "fashionmnist": "lenet",
    "cifar10": "resnet18",
}


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """A freshly initialised model (uses the global RNG; see `init_model` for a seeded one)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if name == "mlp":
        return MLP(MLPConfig(num_classes=num_classes))
    if name == "lenet":
        return LeNet5(LeNetConfig(num_classes=num_classes))
    if name == "resnet18":
        return ResNet18(ResNetConfig(num_classes=num_classes))
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")


def init_model(name: str, num_classes: int, seed: int) -> nn.Module:
    """Build `name` with weights determined by `seed` alone; the global RNG state is unchanged."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(name, num_classes)


def default_model_for(dataset: str) -> str:
    try:
        return _DEFAULT_FOR_DATASET[dataset]
    except KeyError:
        known = ", ".join(sorted(_DEFAULT_FOR_DATASET))
        raise ValueError(f"no default model for data set {dataset!r}; known: {known}") from None


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (buffers such as BatchNorm running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "MODELS",
    "ModelSpec",
    "build_model",
    "count_parameters",
    "default_model_for",
    "init_model",
]
