"""In-memory form of a participant's data split, shared by loaders, partitioner and trainer."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorData:
    """Samples of one split. Pixels stay uint8 on disk and in memory; `features()` scales them."""

    x: torch.Tensor  # (N, C, H, W) uint8 raw pixels
    y: torch.Tensor  # (N,) int64 labels as the holder has them (flipped / backdoored ones included)
    y_true: torch.Tensor  # (N,) int64 original labels from the source data set
    ids: torch.Tensor  # (N,) int64 stable sample ids, unique within the source data set
    scale: float  # x * scale lies in [0, 1]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def features(self) -> torch.Tensor:
        """Float inputs for a model: (N, C, H, W) float32 in [0, 1]."""
        return self.x.to(torch.float32) * self.scale

    def subset(self, index: torch.Tensor) -> TensorData:
        """Rows selected by a boolean mask or an index tensor."""
        return TensorData(
            x=self.x[index],
            y=self.y[index],
            y_true=self.y_true[index],
            ids=self.ids[index],
            scale=self.scale,
        )
