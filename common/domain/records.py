"""Records the coordinator persists; `record_codec` converts them for every store and message.

Round metrics and version meta are typed records of their own; `spec` and `result` stay JSON
objects because their shape belongs to the job kind that wrote them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fused.common.domain.round_metrics import RoundMetrics
from fused.common.domain.version_meta import VersionMeta


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class JobKind(StrEnum):
    TRAIN = "train"
    UNLEARN = "unlearn"
    EVALUATE = "evaluate"
    CONSOLIDATE = "consolidate"


class Phase(StrEnum):
    """A job's phases; rounds are numbered within a phase."""

    TRAIN = "train"  # FedAvg of full weights (a training job)
    EVALUATE = "evaluate"  # federated evaluation
    SENSITIVITY = "sensitivity"  # FUSED: the critical-layer ranking
    ADAPTER = "adapter"  # FUSED: FedAvg of adapter values
    RETRAIN = "retrain"  # the retrain baseline: FedAvg from a fresh initialisation
    FINETUNE = "finetune"  # the finetune baseline: FedAvg from the base weights
    AUDIT = "audit"  # a consolidation: the forget accuracy of each request, before and after


class VersionKind(StrEnum):
    BASE = "base"  # full weights
    ADAPTER = "adapter"  # a frozen base plus a sparse adapter (stored merged, revertible)


@dataclass
class ParticipantRecord:
    participant_id: str
    class_counts: list[int]  # training samples per class; raw data never leaves the participant
    num_train: int
    num_test: int
    registered_at: float  # unix seconds
    last_seen: float  # unix seconds of the last register/heartbeat/call
    info: dict[str, str] = field(default_factory=dict)  # agent version and OFFER_KEYS

    def offer(self, key: str) -> str:
        return self.info.get(key, "")


# What a participant's registration declares about its workload, kept in ParticipantRecord.info
OFFER_KEYS = ("dataset", "workload", "workload_version", "schema_digest", "workload_error")


@dataclass
class JobRecord:
    job_id: str
    kind: JobKind
    spec: dict[str, Any]  # the job's full, resolved configuration (the kind's spec, as JSON)
    status: JobStatus
    phase: str  # the current `Phase`'s value, "" before the first
    round: int  # current round within the phase, 0 before the first
    reason: str  # why it stopped (failed) or a short summary (completed)
    created_at: float
    updated_at: float
    result: dict[str, Any] = field(default_factory=dict)  # final metrics, produced versions


@dataclass
class RoundRecord:
    job_id: str
    phase: Phase
    round: int
    started_at: float
    finished_at: float | None
    participants: list[str]  # those whose results were aggregated
    metrics: RoundMetrics = field(default_factory=RoundMetrics)


@dataclass
class ModelVersion:
    version_id: str
    job_id: str | None
    parent_id: str | None  # the version this one was derived from
    kind: VersionKind
    digest: str  # sha256 of the artifact file
    model: str  # registry name, e.g. "lenet"
    num_params: int
    created_at: float
    meta: VersionMeta = field(default_factory=VersionMeta)


@dataclass
class JobEvent:
    job_id: str
    seq: int  # 1, 2, ... per job, assigned by the store
    time: float
    kind: str  # "job_started", "round_started", "round_completed", "job_completed", ...
    phase: str
    round: int
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class BlockedParticipant:
    """A participant an operator refused: its calls answer PERMISSION_DENIED until unblocked.
    Kept apart from ParticipantRecord, so an id can be blocked before (or after) it has one."""

    participant_id: str
    blocked_at: float  # unix seconds
    reason: str = ""  # the operator's words
