"""How a data set is dealt out to participants (the settings of `fusedctl data partition`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PartitionConfig:
    num_participants: int
    alpha: float = 1.0  # Dirichlet concentration: small = skewed label mix, large = near IID
    seed: int = 0
    test_fraction: float = 0.2  # share of each participant's samples held out locally
    min_train_size: int = 10
    attacker: int | None = None  # index of a label-flipping participant
    backdoor_participant: int | None = None
    backdoor_count: int = 0
    backdoor_target: int = 0
    trigger_size: int = 1

    def validate(self, num_classes: int, height: int, width: int) -> None:
        """Raise ValueError for settings that cannot apply to a data set of this shape."""
        n = self.num_participants
        if n < 1:
            raise ValueError(f"num_participants must be >= 1, got {n}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0 <= self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.min_train_size < 1:
            raise ValueError(f"min_train_size must be >= 1, got {self.min_train_size}")
        for label, index in (("attacker", self.attacker), ("backdoor", self.backdoor_participant)):
            if index is not None and not 0 <= index < n:
                raise ValueError(f"{label} participant {index} not in 0..{n - 1}")
        if self.backdoor_count < 0:
            raise ValueError(f"backdoor_count must be >= 0, got {self.backdoor_count}")
        if not 0 <= self.backdoor_target < num_classes:
            raise ValueError(f"backdoor_target {self.backdoor_target} not in 0..{num_classes - 1}")
        if not 1 <= self.trigger_size <= min(height, width):
            raise ValueError(f"trigger_size {self.trigger_size} does not fit {height}x{width}")
