"""Job specifications as the coordinator validates and stores them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from common.train_config import TrainConfig


class SpecError(ValueError):
    """A job specification is invalid; the message says which field and why."""


@dataclass(frozen=True)
class TrainingSpec:
    model: str = ""  # registry name; "" = the participants' data set default
    rounds: int = 10
    train: TrainConfig = field(default_factory=TrainConfig)
    participants_per_round: int = 0  # 0 = every online participant
    min_participants: int = 1
    round_deadline_s: float = 300.0
    seed: int = 0
    init_version: str = ""  # "" = fresh initialisation
    wait_for_participants_s: float = 60.0
    evaluate_each_round: bool = True

    def validate(self) -> None:
        try:
            self.train.validate()
        except ValueError as exc:
            raise SpecError(f"train: {exc}") from exc
        checks = [
            (self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}"),
            (
                self.min_participants >= 1,
                f"min_participants must be >= 1, got {self.min_participants}",
            ),
            (self.participants_per_round >= 0, "participants_per_round must be >= 0"),
            (
                self.participants_per_round == 0
                or self.participants_per_round >= self.min_participants,
                "participants_per_round must be 0 (all) or >= min_participants",
            ),
            (self.round_deadline_s > 0, "round_deadline_s must be > 0"),
            (self.wait_for_participants_s >= 0, "wait_for_participants_s must be >= 0"),
            (self.seed >= 0, "seed must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise SpecError(message)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingSpec:
        values = dict(data)
        values["train"] = TrainConfig(**values.get("train", {}))
        return cls(**values)
