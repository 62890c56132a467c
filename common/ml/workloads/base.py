"""The workload interface: a model, the participant's local data and the loss, in one object.

A workload is what a federation trains: the built-in pairs (`builtin.py`) and any user package
(exposed through the `fused.workloads` entry point group or a `module:attribute` reference,
see `registry.py`). Subclass `Workload`, set `info`, and write `make_model` and `load_data`;
everything else has classification defaults (cross-entropy, accuracy, per-class counts).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fused.common.ml.data.tensors import TensorData
from fused.common.ml.schema import TensorEntry, schema_digest, schema_of_model


class WorkloadError(ValueError):
    """A workload that cannot be used: unknown, failing to import, or not a workload. Names
    the reference the caller gave and the cause, so an operator can act on the message. A
    ValueError, so callers that already report bad input (the agent, `fusedctl`) report it."""

    def __init__(self, reference: str, cause: str) -> None:
        super().__init__(f"workload {reference!r}: {cause}")
        self.reference = reference
        self.cause = cause


@dataclass(frozen=True)
class WorkloadInfo:
    name: str  # what jobs and tasks call it (the wire's model name)
    version: str  # the user's own version string; part of what a participant declares
    num_classes: int | None = None  # None: no classes, so no class unlearning
    description: str = ""


@dataclass(frozen=True)
class LocalData:
    """A participant's data. `ids` (int64, stable across restarts) make sample unlearning
    possible; `y` holds labels for class workloads (zeros where there are no classes)."""

    train: TensorData
    test: TensorData
    num_classes: int | None
    source: str = ""  # what the data is, for operators' listings ("" = the workload's name)


@dataclass(frozen=True)
class EvalCounts:
    """A workload's evaluation counts. With classes, one bucket per class; a workload without
    classes reports one bucket (`correct[0]` of `total[0]` examples met its own criterion)."""

    correct: list[int]  # correct[c]: correct predictions among examples labelled c
    total: list[int]  # total[c]: examples labelled c
    loss_sum: float  # summed loss over the examples

    @property
    def num_examples(self) -> int:
        return sum(self.total)

    @property
    def accuracy(self) -> float:
        n = self.num_examples
        return sum(self.correct) / n if n > 0 else 0.0

    def __add__(self, other: EvalCounts) -> EvalCounts:
        if len(self.total) != len(other.total):
            raise ValueError(
                f"cannot add counts of {len(self.total)} and {len(other.total)} buckets"
            )
        return EvalCounts(
            [a + b for a, b in zip(self.correct, other.correct, strict=True)],
            [a + b for a, b in zip(self.total, other.total, strict=True)],
            self.loss_sum + other.loss_sum,
        )


def classification_counts(outputs: torch.Tensor, targets: torch.Tensor, n: int) -> EvalCounts:
    """Per-class hits and summed cross-entropy of a batch of logits (B, n) against (B,) labels."""
    lo, hi = (int(targets.min()), int(targets.max())) if targets.numel() else (0, 0)
    if lo < 0 or hi >= n:
        raise ValueError(f"labels must lie in [0, {n}), got values in [{lo}, {hi}]")
    hit = outputs.argmax(dim=1) == targets
    return EvalCounts(
        correct=torch.bincount(targets[hit], minlength=n).tolist(),
        total=torch.bincount(targets, minlength=n).tolist(),
        loss_sum=float(F.cross_entropy(outputs.detach().float(), targets, reduction="sum")),
    )


class Workload(ABC):
    """Model + data + loss. Implement `make_model` and `load_data`; override the rest as
    needed. No I/O in `__init__`: a registry may build workloads it never uses."""

    info: WorkloadInfo  # a class attribute is enough; built-ins set it per instance

    @abstractmethod
    def make_model(self) -> nn.Module:
        """A fresh model, initialised from torch's global RNG (`build_model` seeds it)."""

    @abstractmethod
    def load_data(self, data_dir: Path) -> LocalData:
        """This participant's train and test splits, from a folder in the workload's format."""

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def num_classes(self) -> int | None:
        return self.info.num_classes

    def build_model(self, seed: int) -> nn.Module:
        """`make_model` with weights determined by `seed` alone; the global RNG is unchanged.
        The same seed gives the same bytes on every machine, so every party agrees on round 0."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.make_model()

    def with_classes(self, num_classes: int) -> Workload:
        """This workload for data of `num_classes` classes. Fixed-head workloads serve only
        their own count; the built-ins size their head from the data (`builtin.py`)."""
        if num_classes != self.num_classes:
            raise WorkloadError(
                self.name, f"has {self.num_classes} classes, the task needs {num_classes}"
            )
        return self

    def transform(self, inputs: torch.Tensor) -> torch.Tensor:
        """A batch's inputs as the model takes them (augmentation, normalisation): identity."""
        return inputs

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean training loss of a batch: cross-entropy on logits."""
        return F.cross_entropy(outputs, targets)

    def sample_losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each example's loss, shape (B,), for membership inference: cross-entropy per
        example, or a custom `loss` applied example by example (override to vectorise it)."""
        if type(self).loss is Workload.loss:
            return F.cross_entropy(outputs, targets, reduction="none")
        each = [self.loss(outputs[i : i + 1], targets[i : i + 1]) for i in range(len(targets))]
        return torch.stack(each)

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> EvalCounts:
        """Per-class correct/total counts and summed loss of one batch (accuracy is their
        ratio). Needs classes; a workload without them overrides this (one bucket)."""
        if self.num_classes is None:
            raise WorkloadError(self.name, "has no classes: override evaluate()")
        return classification_counts(outputs, targets, self.num_classes)

    def adaptable(self, name: str) -> bool:
        """Whether FUSED may place adapter entries in parameter tensor `name`: all by default."""
        return True

    def trigger(self, inputs: torch.Tensor, size: int) -> torch.Tensor:
        """Stored inputs with a backdoor trigger of `size` stamped in, for measuring a backdoor's
        attack success after unlearning. Only workloads that define a trigger support it."""
        raise WorkloadError(self.name, "defines no backdoor trigger (override trigger())")

    def tensor_schema(self) -> tuple[TensorEntry, ...]:
        """Names, shapes and dtypes of the model's state dict (seed-independent), with which
        tensors are trainable parameters and which of those FUSED may adapt."""
        return schema_of_model(self.build_model(0), self.adaptable)

    def schema_digest(self) -> str:
        return schema_digest(self.tensor_schema())
