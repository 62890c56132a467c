"""What a running job holds: its stores, the fleet, metrics, events and byte accounting, and
what its kind decides once it starts: the data participants must hold, and its policy."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from fused.common.domain.aggregation_policy import AggregationPolicy
from fused.common.domain.records import JobEvent, Phase
from fused.common.domain.round_metrics import ByteSummary
from fused.common.domain.tasks import ForgetSet
from fused.common.runtime.logs import set_log_fields
from fused.coordinator.artifacts import ArtifactStore
from fused.coordinator.fleet import Fleet
from fused.coordinator.metrics import CoordinatorMetrics
from fused.coordinator.state import StateStore

log = logging.getLogger(__name__)


class JobFailed(Exception):
    """Raised inside a job to stop it with a reason an operator can act on."""


@dataclass
class RoundBytes:
    """Serialized bytes per participant in one round, counted as calls go by."""

    up: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    down: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def summary(self) -> ByteSummary:
        pids = sorted(set(self.up) | set(self.down))
        return ByteSummary({p: self.up[p] for p in pids}, {p: self.down[p] for p in pids})


Emit = Callable[..., JobEvent]  # (kind, phase, round, message, data=None)


@dataclass(frozen=True)
class Federation:
    """What a job's participants must serve: a workload whose model has this tensor schema,
    on data of this many classes (buckets); registrations that differ are left out."""

    workload: str
    schema_digest: str
    num_classes: int

    def __str__(self) -> str:
        return (
            f"workload {shown(self.workload)} (schema {self.schema_digest[:12]}, "
            f"{self.num_classes} classes)"
        )


def shown(text: str, limit: int = 40) -> str:
    """A participant-chosen string as messages quote it: repr'd and cut to `limit` chars."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


@dataclass
class JobContext:
    """What a running job uses; one per job."""

    job_id: str
    store: StateStore
    artifacts: ArtifactStore
    fleet: Fleet
    metrics: CoordinatorMetrics
    emit: Emit
    round_bytes: Callable[[str, int], RoundBytes]
    clock: Callable[[], float] = time.time
    federation: Federation | None = None  # set by the job kind: None admits any participant
    policy: AggregationPolicy = field(default_factory=AggregationPolicy)
    left_out: set[str] = field(default_factory=set)  # participants reported as left out
    excluded: ForgetSet = field(default_factory=ForgetSet)  # the forget ledger's, at creation
    excluded_entries: tuple[str, ...] = ()  # the ids of the ledger entries `excluded` unites
    requested_by: str = ""  # the caller that started the job

    def progress(self, phase: Phase, round_number: int) -> None:
        self.store.update_job(self.job_id, phase=phase.value, round=round_number)
        # Called in the job's own task: later records of this job carry the phase and round.
        set_log_fields(phase=phase.value, round=round_number)
        log.info("%s round %d started", phase.value, round_number)
