"""Tasks the coordinator hands to participants, and what participants send back."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fused.common.domain.train_config import TrainConfig


class TaskKind(StrEnum):
    TRAIN = "train"  # train the model locally, upload the new weights
    EVALUATE = "evaluate"  # evaluate on the local test split, report counts
    SENSITIVITY = "sensitivity"  # train one round, report per-tensor L1 distances only
    ADAPTER_TRAIN = "adapter_train"  # train only sparse adapter values, upload them


PARADIGMS = ("participant", "class", "samples")


@dataclass(frozen=True)
class ForgetSpec:
    """What to forget; each participant applies it to its own shard."""

    paradigm: str  # one of PARADIGMS
    participant_id: str = ""  # participant: whose data; samples: who holds them
    class_label: int = -1  # class paradigm
    sample_ids: tuple[int, ...] = ()  # samples paradigm
    relabel: bool = False  # class, samples: relabel at random instead of dropping
    trigger_size: int = 0  # samples paradigm: > 0 = backdoor; FA = attack success rate
    trigger_target: int = 0

    def validate(self, num_classes: int | None = None) -> None:
        if self.paradigm not in PARADIGMS:
            raise ValueError(f"forget paradigm must be one of {', '.join(PARADIGMS)}")
        if self.paradigm in ("participant", "samples") and not self.participant_id:
            raise ValueError(f"forgetting {self.paradigm} needs a participant id")
        too_high = num_classes is not None and self.class_label >= num_classes
        if self.paradigm == "class" and (self.class_label < 0 or too_high):
            raise ValueError(f"class {self.class_label} is not a class of this model")
        if self.paradigm == "samples" and not self.sample_ids:
            raise ValueError("forgetting samples needs at least one sample id")
        if self.trigger_size < 0:
            raise ValueError("trigger_size must be >= 0")
        target_too_high = num_classes is not None and self.trigger_target >= num_classes
        if self.trigger_size > 0 and (self.trigger_target < 0 or target_too_high):
            raise ValueError(f"trigger_target {self.trigger_target} is not a class of this model")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ForgetSpec:
        """From the stored JSON form (dataclasses.asdict)."""
        return cls(**{**data, "sample_ids": tuple(data.get("sample_ids", ()))})

    def excludes(self, participant_id: str) -> bool:
        """Whether this participant takes no part in training on the remaining data."""
        return self.paradigm == "participant" and participant_id == self.participant_id

    def for_participant(self, participant_id: str) -> ForgetSpec:
        """The spec as sent to one participant: sample ids go only to their holder."""
        if self.sample_ids and participant_id != self.participant_id:
            return dataclasses.replace(self, sample_ids=())
        return self


@dataclass(frozen=True)
class HeldSamples:
    participant_id: str
    sample_ids: tuple[int, ...]


@dataclass(frozen=True)
class ForgetSet:
    """What a job leaves out by the forget ledger: forgotten participants take no training
    task; forgotten classes and samples are dropped by every participant that holds them."""

    participants: tuple[str, ...] = ()
    classes: tuple[int, ...] = ()
    samples: tuple[HeldSamples, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.participants or self.classes or self.samples)

    def excludes(self, participant_id: str) -> bool:
        return participant_id in self.participants

    def samples_of(self, participant_id: str) -> tuple[int, ...]:
        return next((h.sample_ids for h in self.samples if h.participant_id == participant_id), ())

    def without(self, forget: ForgetSpec) -> ForgetSet:
        """This set less what `forget` names: an unlearning job handles its own request, so
        repeating an applied request runs exactly as it did the first time."""
        if forget.paradigm == "participant":
            people = tuple(p for p in self.participants if p != forget.participant_id)
            return dataclasses.replace(self, participants=people)
        if forget.paradigm == "class":
            classes = tuple(c for c in self.classes if c != forget.class_label)
            return dataclasses.replace(self, classes=classes)
        drop = set(forget.sample_ids)
        samples = tuple(
            HeldSamples(h.participant_id, tuple(i for i in h.sample_ids if i not in drop))
            if h.participant_id == forget.participant_id
            else h
            for h in self.samples
        )
        return dataclasses.replace(self, samples=tuple(h for h in samples if h.sample_ids))

    def for_participant(self, participant_id: str) -> ForgetSet:
        """As sent to one participant: sample ids only of its own."""
        own = tuple(h for h in self.samples if h.participant_id == participant_id)
        return dataclasses.replace(self, samples=own)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ForgetSet:
        if not data:
            return cls()
        samples = tuple(
            HeldSamples(str(h["participant_id"]), tuple(int(i) for i in h["sample_ids"]))
            for h in data.get("samples", ())
        )
        return cls(
            tuple(str(p) for p in data.get("participants", ())),
            tuple(int(c) for c in data.get("classes", ())),
            samples,
        )


@dataclass(frozen=True)
class AdapterRef:
    """A sparse adapter on a frozen base: the mask comes from the seed, values from a blob."""

    layers: tuple[str, ...]
    density: float
    mask_seed: int
    mask_digest: str
    values_blob_id: str = ""  # "" = all zeros
    upload_dtype: str = "float32"  # dtype participants upload values in


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
    forget: ForgetSpec | None = None
    adapter: AdapterRef | None = None
    excluded: ForgetSet = field(default_factory=ForgetSet)  # the forget ledger's, for this job
    forget_only: bool = False  # sensitivity: measure on the forgotten data alone

    def blob_ids(self) -> tuple[str, ...]:
        """The artifacts this task reads."""
        blobs = (self.model_blob_id, self.adapter.values_blob_id if self.adapter else "")
        return tuple(b for b in blobs if b)


@dataclass(frozen=True)
class TrainOutcome:
    update_blob_id: str
    num_examples: int
    mean_loss: float
    seconds: float


@dataclass(frozen=True)
class EvalOutcome:
    correct: tuple[int, ...]  # per class, on the remaining test data
    total: tuple[int, ...]  # per class, on the remaining test data
    loss_sum: float
    forget_correct: int = 0  # on this participant's part of the forgotten set
    forget_total: int = 0
    # per-example loss histograms (common.ml.membership) on the remaining test data and on
    # the forgotten set: the membership-inference attack's inputs; () when not measured
    test_losses: tuple[int, ...] = ()
    forget_losses: tuple[int, ...] = ()

    @property
    def num_examples(self) -> int:
        return sum(self.total)


@dataclass(frozen=True)
class SensitivityOutcome:
    distances: dict[str, float]  # parameter tensor -> sum |after - before|
    num_examples: int
    # the same after training on this participant's forgotten data alone (asked by a
    # forget-aware selection rule); {} and 0 when not asked or it holds none
    forget_distances: dict[str, float] = field(default_factory=dict)
    forget_examples: int = 0


TIMING_STAGES = ("fetch", "decode", "compute", "encode", "upload")


@dataclass(frozen=True)
class TaskTimings:
    """Wall-clock seconds one task spent in each stage on its participant."""

    fetch_s: float = 0.0  # downloads (an artifact cached or sent inline costs nothing)
    decode_s: float = 0.0  # decoding and checking the model and the adapter
    compute_s: float = 0.0  # the local work: training, evaluation or measuring
    encode_s: float = 0.0  # serializing what is uploaded
    upload_s: float = 0.0  # uploads

    @property
    def total_s(self) -> float:
        return self.fetch_s + self.decode_s + self.compute_s + self.encode_s + self.upload_s

    def validate(self) -> None:
        """Raise ValueError unless every stage is a finite, non-negative number of seconds."""
        for stage in TIMING_STAGES:
            value = getattr(self, f"{stage}_s")
            if not (isinstance(value, int | float) and 0.0 <= value < math.inf):
                raise ValueError(f"timings: {stage}_s must be finite and >= 0, got {value!r}")

    def to_dict(self) -> dict[str, float]:
        return {f"{stage}_s": getattr(self, f"{stage}_s") for stage in TIMING_STAGES}

    def describe(self) -> str:
        """`3.000 s: fetch 0.500, decode 0.250, ...`, for logs."""
        stages = ", ".join(f"{s} {getattr(self, f'{s}_s'):.3f}" for s in TIMING_STAGES)
        return f"{self.total_s:.3f} s: {stages}"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskTimings:
        return cls(**{f"{s}_s": float(data.get(f"{s}_s", 0.0)) for s in TIMING_STAGES})


@dataclass(frozen=True)
class TaskOutcome:
    """Exactly one of train, eval, sensitivity and error is set."""

    participant_id: str
    task_id: str
    train: TrainOutcome | None = None
    eval: EvalOutcome | None = None
    sensitivity: SensitivityOutcome | None = None
    error: str | None = None
    timings: TaskTimings | None = None  # where the task's time went; None: not measured
