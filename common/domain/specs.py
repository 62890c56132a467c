"""Job specifications as the coordinator validates and stores them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fused.common.domain.tasks import ForgetSpec
from fused.common.domain.train_config import TrainConfig


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


METHODS = ("fused", "retrain", "finetune")
UPLOAD_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class UnlearningSpec:
    forget: ForgetSpec
    base_version: str = ""  # "" = the active version
    method: str = "fused"  # fused | retrain (fresh init) | finetune (full model from base)
    rounds: int = 5
    train: TrainConfig = field(default_factory=TrainConfig)
    top_k: int = 2  # fused: adapt the K most sensitive parameter tensors ...
    layers: tuple[str, ...] = ()  # ... or exactly these
    density: float = 0.1  # fused: adapter mask density rho
    min_participants: int = 1
    round_deadline_s: float = 300.0
    wait_for_participants_s: float = 60.0
    seed: int = 0
    evaluate_each_round: bool = True
    upload_dtype: str = "float32"  # fused: float32, float16 or bfloat16 adapter uploads

    def validate(self) -> None:
        try:
            self.train.validate()
            self.forget.validate()
        except ValueError as exc:
            raise SpecError(str(exc)) from exc
        checks = [
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}"),
            (self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}"),
            (self.top_k >= 1 or bool(self.layers), "top_k must be >= 1 (or give layers)"),
            (0 < self.density <= 1, f"density must be in (0, 1], got {self.density}"),
            (self.min_participants >= 1, "min_participants must be >= 1"),
            (self.round_deadline_s > 0, "round_deadline_s must be > 0"),
            (self.wait_for_participants_s >= 0, "wait_for_participants_s must be >= 0"),
            (self.seed >= 0, "seed must be >= 0"),
            (
                self.upload_dtype in UPLOAD_DTYPES,
                f"upload_dtype must be one of {', '.join(UPLOAD_DTYPES)}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise SpecError(message)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
