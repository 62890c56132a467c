"""The signed receipt of an unlearning job (`fusedctl receipt VERSION`).

A receipt is derived from records that never change once the job completed (the job's spec
and result, the version, the ledger entries' request fields) and signed deterministically
(Ed25519), so every fetch returns the same bytes. The figures are the federated ones the job
measured before and after: RA, FA and the membership-inference AUC on the forgotten set
(common.ml.membership; None where the forgotten set or the loss histograms are missing).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fused.common.codecs.receipts import (
    FORMAT,
    key_id,
    load_signing_key,
    new_signing_key,
    sign_receipt,
)
from fused.common.domain.records import JobKind, JobRecord, JobStatus, ModelVersion
from fused.common.domain.specs import UnlearningSpec
from fused.coordinator.auth import RequestRefused
from fused.coordinator.state import StateStore

_MEASURED = (
    "method",
    "ra_before",
    "fa_before",
    "mia_before",
    "ra_after",
    "fa_after",
    "mia_after",
    "seconds",
)


def signing_key(path: Path) -> Ed25519PrivateKey:
    """The coordinator's receipt key at `path`, made there (0600) on first use."""
    if not path.exists():
        new_signing_key(path)
    return load_signing_key(path)


def receipt(store: StateStore, version: ModelVersion, key: Ed25519PrivateKey) -> bytes:
    """The signed receipt of the unlearning job that made `version`; FAILED_PRECONDITION for a
    version no completed unlearning job made."""
    job = store.get_job(version.job_id) if version.job_id else None
    if job is None or job.kind != JobKind.UNLEARN or job.status is not JobStatus.COMPLETED:
        raise RequestRefused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{version.version_id} was not made by a completed unlearning job: only "
            "unlearning versions have receipts",
        )
    return sign_receipt(_content(store, version, job, key_id(key.public_key())), key)


def _content(
    store: StateStore, version: ModelVersion, job: JobRecord, signer: str
) -> dict[str, Any]:
    result = job.result
    spec = UnlearningSpec.from_dict(job.spec)
    adapter = version.meta.adapter
    applied = set(result.get("ledger_entries", ()))
    entries = [
        {
            "entry_id": e.entry_id,
            "forget": dataclasses.asdict(e.forget),
            "requested_by": e.requested_by,
            "requested_at": e.requested_at,
        }
        for e in store.list_ledger()
        if e.entry_id in applied
    ]
    rounds = store.list_rounds(job.job_id)
    moved = sum(r.metrics.bytes.total for r in rounds if r.metrics.bytes is not None)
    return {
        "format": FORMAT,
        "signed_by": signer,
        "version_id": version.version_id,
        "job_id": job.job_id,
        "request": dataclasses.asdict(spec.forget),
        "ledger_entries": entries,
        "base_version": result.get("base_version", version.parent_id or ""),
        "base_sha256": result.get("base_sha256", adapter.base_digest if adapter else ""),
        "adapter_sha256": adapter.adapter_digest if adapter is not None else None,
        "model_sha256": version.digest,
        **{k: result.get(k) for k in _MEASURED},
        "rounds": len(rounds),
        "bytes": moved,
        "started_at": job.created_at,
        "finished_at": job.updated_at,
    }
