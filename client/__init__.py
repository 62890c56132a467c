"""The Python client library of a FUSED coordinator.

    from fused.client import Coordinator
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
from fused.client.records import Job, LayerScore, Participant, Version

__all__ = [
    "Conflict",
    "Coordinator",
    "CoordinatorError",
    "DataLoss",
    "Exported",
    "FusedError",
    "InvalidRequest",
    "Job",
    "LayerScore",
    "LocalError",
    "NotFound",
    "Participant",
    "PermissionDenied",
    "ResourceExhausted",
    "ServerError",
    "Timeout",
    "Unauthenticated",
    "Unavailable",
    "Version",
]
