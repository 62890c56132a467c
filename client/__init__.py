"""The Python client library of a FUSED coordinator.

    from fused.client import Coordinator, ForgetSpec, UnlearningSpec
    with Coordinator("127.0.0.1:50051", token=...) as coordinator:
        job = coordinator.unlearn(UnlearningSpec(ForgetSpec("participant", "p3")))
        done = coordinator.wait(job.job_id)

docs/CLIENT.md walks through it. `fusedctl` is built on it.
"""

from fused.client.coordinator import Coordinator, Exported
from fused.client.errors import (
    Conflict,
    CoordinatorError,
    DataLoss,
    FusedError,
    InvalidRequest,
    LocalError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServerError,
    Timeout,
    Unauthenticated,
    Unavailable,
)
from fused.client.records import Job, LayerScore, Participant, Ranking, Version
from fused.common.domain.ledger import LedgerEntry, LedgerStatus, Withdrawal
from fused.common.domain.records import JobEvent, JobStatus
from fused.common.domain.specs import (
    ConsolidationSpec,
    FinetuneConfig,
    FusedConfig,
    RetrainConfig,
    TrainingSpec,
    UnlearningSpec,
)
from fused.common.domain.tasks import ForgetSpec
from fused.common.domain.train_config import TrainConfig

__all__ = [
    "Conflict",
    "ConsolidationSpec",
    "Coordinator",
    "CoordinatorError",
    "DataLoss",
    "Exported",
    "FinetuneConfig",
    "ForgetSpec",
    "FusedConfig",
    "FusedError",
    "InvalidRequest",
    "Job",
    "JobEvent",
    "JobStatus",
    "LayerScore",
    "LedgerEntry",
    "LedgerStatus",
    "LocalError",
    "NotFound",
    "Participant",
    "PermissionDenied",
    "Ranking",
    "ResourceExhausted",
    "RetrainConfig",
    "ServerError",
    "Timeout",
    "TrainConfig",
    "TrainingSpec",
    "Unauthenticated",
    "Unavailable",
    "UnlearningSpec",
    "Version",
    "Withdrawal",
]
