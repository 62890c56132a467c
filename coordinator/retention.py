"""Which model versions an operator may drop (`fusedctl models drop`).

Versions are kept until an operator drops them: a FUSED chain stays available for exact
switching after a consolidation replaces it, and only an explicit drop lets garbage collection
delete weights that still carry forgotten data. A drop never removes what is served or what an
unfinished job reads; a kept version whose parent is dropped becomes a root.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from fused.common.domain.records import JobRecord
from fused.coordinator.auth import RequestRefused
from fused.coordinator.engine.manager import TERMINAL
from fused.coordinator.state import StateStore
from fused.coordinator.versions import active_version

# The spec fields through which each job kind reads a version.
_READS = ("base_version", "init_version", "version_id")


def drop_versions(store: StateStore, version_ids: Sequence[str]) -> list[str]:
    """Drop the versions (all or none); returns them in the order given. Raises
    RequestRefused: none named, an unknown id, the served version, or one a job reads."""
    ids = list(dict.fromkeys(version_ids))  # once each, in the order given
    if not ids:
        raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT, "name at least one version")
    for version_id in ids:
        if store.get_model_version(version_id) is None:
            raise RequestRefused(grpc.StatusCode.NOT_FOUND, f"no model version {version_id!r}")
    served = active_version(store)
    if served is not None and served.version_id in ids:
        raise RequestRefused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{served.version_id} is the served version: serve another one first",
        )
    for job in store.list_jobs():
        used = _read_by(job, ids)
        if used:
            raise RequestRefused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{used} is read by {job.kind} job {job.job_id}, which has not finished",
            )
    store.drop_model_versions(ids)
    return ids


def _read_by(job: JobRecord, ids: list[str]) -> str:
    """The first of `ids` an unfinished `job` reads ("" none)."""
    if job.status in TERMINAL:
        return ""
    return next((str(job.spec[k]) for k in _READS if job.spec.get(k) in ids), "")
