"""The interface of an unlearning method: given the base version and the request, produce the
unlearned model (as weights or as an adapter on the base) and its round history."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from fused.common.domain.records import ModelVersion, Phase, VersionKind
from fused.common.domain.specs import UnlearningSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.domain.version_meta import AdapterMeta
from fused.coordinator.engine.checkpoints import HistoryEntry
from fused.coordinator.engine.context import JobContext, JobFailed
from fused.coordinator.engine.evaluation import ModelInfo
from fused.coordinator.engine.fedavg_loop import FedAvgPlan
from fused.coordinator.engine.schemas import Schema
from fused.coordinator.engine.stopping import Plateau


@dataclass(frozen=True)
class Base:
    """The version to unlearn from, loaded."""

    version: ModelVersion
    model: ModelInfo
    weights: dict[str, torch.Tensor]
    schema: Schema  # the model's tensors: sizes, and which ones FUSED may adapt


@dataclass(frozen=True)
class Unlearned:
    """What a method produced; the unlearning job stores it as a new version."""

    kind: VersionKind
    digest: str  # the full weights to serve (base + adapter, merged, for an adapter)
    history: list[HistoryEntry]
    adapter: AdapterMeta | None = None
    details: dict[str, Any] = field(default_factory=dict)  # method-specific job result fields


class UnlearningMethod(ABC):
    """One unlearning method; registered by name in fused.coordinator.methods."""

    name: ClassVar[str]
    # A method that starts from the base may stop once the forgotten set's FA stops falling;
    # one that starts from scratch (retrain) never learnt it, so FA says nothing of its
    # progress: it runs its whole budget.
    stops_early: ClassVar[bool] = True

    def stop_rule(self, spec: UnlearningSpec) -> Plateau | None:
        if not (self.stops_early and spec.stop_patience and spec.evaluate_each_round):
            return None  # without per-round evaluation there is no FA to stop on
        return Plateau(spec.stop_patience, spec.stop_min_delta)

    @abstractmethod
    async def run(self, ctx: JobContext, spec: UnlearningSpec, base: Base) -> Unlearned:
        """Unlearn `spec.forget` from `base`; resuming, committed rounds are kept."""


def fedavg_plan(spec: UnlearningSpec, phase: Phase, stop: Plateau | None) -> FedAvgPlan:
    """The rounds every method runs on the remaining data, with the request's budget."""
    return FedAvgPlan(
        phase,
        spec.rounds,
        local_training(spec),
        spec.seed,
        0,  # every participant holding remaining data
        spec.min_participants,
        spec.round_deadline_s,
        spec.evaluate_each_round,
        spec.forget,
        stop,
    )


def local_training(spec: UnlearningSpec) -> TrainConfig:
    """The job's optimiser settings: the start resolved an inherited one (jobs.unlearn)."""
    if spec.train is None:
        raise JobFailed("the job's spec names no local training settings")
    return spec.train
