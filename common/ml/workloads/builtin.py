"""The three built-in pairs as workloads: an MLP on digits, LeNet-5 on FashionMNIST and
ResNet-18 on CIFAR-10. Their names are the model names jobs, stored versions and the wire
have always used; they read the shards `fusedctl data partition` writes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fused.common.ml.data.partition import apply_trigger
from fused.common.ml.data.shards import load_shard
from fused.common.ml.models.lenet import LeNet5, LeNetConfig
from fused.common.ml.models.mlp import MLP, MLPConfig
from fused.common.ml.models.resnet import ResNet18, ResNetConfig
from fused.common.ml.workloads.base import LocalData, Workload, WorkloadError, WorkloadInfo

VERSION = "1"  # bump when a built-in's model or data changes meaning


@dataclass(frozen=True)
class ImagePair:
    """A built-in model and the data set it is made for."""

    name: str  # model name
    dataset: str  # the shard's data set (`fusedctl data partition --dataset`)
    input_shape: tuple[int, int, int]  # (C, H, W) of one sample
    pixel_max: int  # largest raw pixel value; a backdoor trigger is stamped in this value
    description: str
    make: Callable[[int], nn.Module]  # num_classes -> model (global RNG)


PAIRS: dict[str, ImagePair] = {
    p.name: p
    for p in (
        ImagePair(
            "mlp",
            "digits",
            (1, 8, 8),
            16,
            "MLP 64-128-64-C for the 8x8 digits data set",
            lambda n: MLP(MLPConfig(num_classes=n)),
        ),
        ImagePair(
            "lenet",
            "fashionmnist",
            (1, 28, 28),
            255,
            "LeNet-5 (44,426 parameters) for FashionMNIST",
            lambda n: LeNet5(LeNetConfig(num_classes=n)),
        ),
        ImagePair(
            "resnet18",
            "cifar10",
            (3, 32, 32),
            255,
            "ResNet-18 with a 3x3 stem for CIFAR-10",
            lambda n: ResNet18(ResNetConfig(num_classes=n)),
        ),
    )
}

# other spellings of the built-ins; they resolve to the canonical workload (and its name)
ALIASES: dict[str, str] = {
    "digits-mlp": "mlp",
    "fashionmnist-lenet": "lenet",
    "cifar10-resnet18": "resnet18",
    "resnet": "resnet18",
}


class ImageClassification(Workload):
    """A built-in pair. The head follows the data's class count (the shard records it), so
    `with_classes` gives a workload of any positive count, as the old model registry did."""

    def __init__(self, pair: ImagePair, num_classes: int = 10) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.pair = pair
        self.info = WorkloadInfo(pair.name, VERSION, num_classes, pair.description)

    def make_model(self) -> nn.Module:
        assert self.info.num_classes is not None  # always set for the built-ins
        return self.pair.make(self.info.num_classes)

    def with_classes(self, num_classes: int) -> ImageClassification:
        if num_classes == self.num_classes:
            return self
        return ImageClassification(self.pair, num_classes)

    def load_data(self, data_dir: Path) -> LocalData:
        shard = load_shard(data_dir)
        if shard.meta.dataset != self.pair.dataset:
            raise WorkloadError(
                self.name, f"{data_dir} holds {shard.meta.dataset!r}, not {self.pair.dataset!r}"
            )
        return LocalData(shard.train, shard.test, shard.meta.num_classes, shard.meta.dataset)

    def trigger(self, inputs: torch.Tensor, size: int) -> torch.Tensor:
        """A white size x size square in the bottom-right corner (as `fusedctl data partition
        --backdoor` plants it)."""
        return apply_trigger(inputs, size, self.pair.pixel_max)


def builtin(name: str) -> ImageClassification | None:
    """The built-in workload called `name` (or an alias of it), with 10 classes; None if none."""
    pair = PAIRS.get(ALIASES.get(name, name))
    return ImageClassification(pair) if pair is not None else None


def default_for(dataset: str) -> str:
    """The built-in workload for a shard's data set."""
    for pair in PAIRS.values():
        if pair.dataset == dataset:
            return pair.name
    known = ", ".join(sorted(p.dataset for p in PAIRS.values()))
    raise WorkloadError(dataset, f"no built-in workload for data set {dataset!r}; known: {known}")
