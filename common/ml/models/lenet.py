"""LeNet-5 as used by the FUSED paper for 1x28x28 inputs (FashionMNIST): 44,426 parameters."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LeNetConfig:
    in_channels: int = 1
    num_classes: int = 10


class LeNet5(nn.Module):
    """conv1(1,6,5) -> pool -> conv2(6,16,5) -> pool -> fc1(256,120) -> fc2(120,84) -> fc3(84,C)."""

    def __init__(self, cfg: LeNetConfig | None = None) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else LeNetConfig()
        self.cfg = cfg
        self.conv1 = nn.Conv2d(cfg.in_channels, 6, kernel_size=5)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 1, 28, 28)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 6, 24, 24) -> (B, 6, 12, 12)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 16, 8, 8) -> (B, 16, 4, 4)
        x = x.flatten(1)  # (B, 256)
        x = F.relu(self.fc1(x))  # (B, 120)
        x = F.relu(self.fc2(x))  # (B, 84)
        out: torch.Tensor = self.fc3(x)  # (B, num_classes)
        return out
