"""ResNet-18 for 32x32 inputs (CIFAR-10): 3x3 stride-1 stem, no max-pool, torchvision names."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ResNetConfig:
    in_channels: int = 3
    num_classes: int = 10
    blocks: tuple[int, int, int, int] = (2, 2, 2, 2)  # BasicBlocks per stage (ResNet-18)
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity (or 1x1 conv + BN) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNet18(nn.Module):
    """About 11.17M parameters for 10 classes."""

    def __init__(self, cfg: ResNetConfig | None = None) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else ResNetConfig()
        self.cfg = cfg
        w = cfg.widths
        self.conv1 = nn.Conv2d(cfg.in_channels, w[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.layer1 = self._make_layer(w[0], w[0], cfg.blocks[0], stride=1)
        self.layer2 = self._make_layer(w[0], w[1], cfg.blocks[1], stride=2)
        self.layer3 = self._make_layer(w[1], w[2], cfg.blocks[2], stride=2)
        self.layer4 = self._make_layer(w[2], w[3], cfg.blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w[3], cfg.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_layer(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes, 1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, 32, 32)
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 64, 32, 32)
        x = self.layer1(x)  # (B, 64, 32, 32)
        x = self.layer2(x)  # (B, 128, 16, 16)
        x = self.layer3(x)  # (B, 256, 8, 8)
        x = self.layer4(x)  # (B, 512, 4, 4)
        x = self.avgpool(x).flatten(1)  # (B, 512)
        out: torch.Tensor = self.fc(x)  # (B, num_classes)
        return out
