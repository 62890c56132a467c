"""In-memory form of a participant's data split, shared by loaders, partitioner and trainer."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorData:
    """Samples of one split, as a workload stores them: image pixels stay uint8 in memory and
    `scale` maps them to [0, 1]; any other workload keeps its inputs as it wants them (token
    ids, float features) with `scale` None."""

    x: torch.Tensor  # (N, ...) stored inputs: (N, C, H, W) uint8 pixels, (N, L) token ids, ...
    y: torch.Tensor  # (N,) labels as the holder has them (flipped / backdoored ones included)
    y_true: torch.Tensor  # (N,) original labels from the source data set
    ids: torch.Tensor  # (N,) int64 stable sample ids, unique within the source data set
    scale: float | None = None  # stored pixels: x * scale lies in [0, 1]; None: x as stored

    @classmethod
    def labelled(cls, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor) -> TensorData:
        """Inputs as the model takes them, their labels (also the true ones) and sample ids."""
        return cls(x=x, y=y, y_true=y, ids=ids)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def features(self) -> torch.Tensor:
        """The model's inputs: scaled float32 pixels in [0, 1], or `x` itself without a scale."""
        if self.scale is None:
            return self.x
        return self.x.to(torch.float32) * self.scale

    def subset(self, index: torch.Tensor | slice) -> TensorData:
        """Rows selected by a boolean mask or an index tensor."""
        return TensorData(
            x=self.x[index],
            y=self.y[index],
            y_true=self.y_true[index],
            ids=self.ids[index],
            scale=self.scale,
        )
