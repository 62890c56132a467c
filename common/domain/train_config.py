"""Local optimisation settings, shared by the coordinator (which sends them) and participants."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    local_epochs: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    seed: int = 0

    def validate(self) -> None:
        for name in ("lr", "momentum", "weight_decay"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        if self.local_epochs < 1:
            raise ValueError(f"local_epochs must be >= 1, got {self.local_epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def task_seed(job_seed: int, round_number: int, participant_id: str) -> int:
    """The local seed of one participant's task: stable across processes and runs."""
    digest = hashlib.sha256(f"{job_seed}:{round_number}:{participant_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # fits in int64
