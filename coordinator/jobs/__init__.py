"""Job kinds, by the kind a job record names.

Adding a job kind: one module with a `JobKindHandler` subclass, and one line here (plus the
control RPC that starts it).
"""

from __future__ import annotations

from fused.coordinator.engine.kind import JobKindHandler
from fused.coordinator.jobs.consolidate import ConsolidationJob
from fused.coordinator.jobs.evaluate import EvaluationJob, EvaluationRequest
from fused.coordinator.jobs.train import TrainingJob
from fused.coordinator.jobs.unlearn import UnlearningJob

JOB_KINDS: dict[str, JobKindHandler] = {
    k.kind.value: k for k in (TrainingJob(), UnlearningJob(), EvaluationJob(), ConsolidationJob())
}

__all__ = ["JOB_KINDS", "EvaluationRequest", "JobKindHandler"]
