"""The interface of a job kind: how a start request becomes a stored spec, and how a job of
the kind runs from that spec (fresh or resumed). Kinds register in fused.coordinator.jobs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fused.common.domain.records import JobKind
from fused.coordinator.engine.context import JobContext
from fused.coordinator.state import StateStore


@dataclass(frozen=True)
class JobResult:
    summary: str  # one line for operators: the job's reason when it completes
    details: dict[str, Any] = field(default_factory=dict)  # the job record's result


class JobKindHandler(ABC):
    kind: ClassVar[JobKind]
    resumable: ClassVar[bool]  # continues after a coordinator restart (else: fails)

    @abstractmethod
    def prepare(self, store: StateStore, request: Any) -> dict[str, Any]:
        """Check a start request against the store; returns the spec to store with the job.
        Raises SpecError with a message for the operator."""

    @abstractmethod
    async def run(self, ctx: JobContext, spec: dict[str, Any], resume: bool) -> JobResult:
        """Run the job from its stored spec; resuming, committed rounds are kept."""
