"""Small multilayer perceptron for the 8x8 single-channel `digits` images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MLPConfig:
    in_features: int = 64  # 1 * 8 * 8 flattened pixels
    hidden: tuple[int, ...] = (128, 64)
    num_classes: int = 10


class MLP(nn.Module):
    """flatten -> Linear(64, 128) -> ReLU -> Linear(128, 64) -> ReLU -> Linear(64, num_classes)."""

    def __init__(self, cfg: MLPConfig | None = None) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else MLPConfig()
        self.cfg = cfg
        layers: list[nn.Module] = []
        width = cfg.in_features
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, cfg.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, C, H, W) -> (B, C*H*W)
        out: torch.Tensor = self.net(x)  # (B, num_classes)
        return out
