"""Tasks the coordinator hands to participants, and what participants send back."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from common.train_config import TrainConfig


class TaskKind(StrEnum):
    TRAIN = "train"  # train the model locally, upload the new weights
    EVALUATE = "evaluate"  # evaluate on the local test split, report counts


@dataclass(frozen=True)
class TaskSpec:
    task_id: str
    job_id: str
    phase: str
    round: int
    kind: TaskKind
    model_blob_id: str  # sha256 of the safetensors weights to start from
    model_name: str
    num_classes: int
    train: TrainConfig
    deadline_unix: float


@dataclass(frozen=True)
class TrainOutcome:
    update_blob_id: str
    num_examples: int
    mean_loss: float
    seconds: float


@dataclass(frozen=True)
class EvalOutcome:
    correct: tuple[int, ...]  # per class
    total: tuple[int, ...]  # per class
    loss_sum: float

    @property
    def num_examples(self) -> int:
        return sum(self.total)


@dataclass(frozen=True)
class TaskOutcome:
    """Exactly one of train, eval and error is set."""

    participant_id: str
    task_id: str
    train: TrainOutcome | None = None
    eval: EvalOutcome | None = None
    error: str | None = None
