"""Garbage collection of the state directory: what no model version or unfinished job needs.

Every round stores its aggregate and every participant's upload; kept forever, a ResNet-18
federation would grow by gigabytes per round. Once no job runs, only model versions (and
the adapters and bases they name) and the checkpoints of unfinished jobs are still needed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from fused.coordinator.artifacts import ArtifactStore
from fused.coordinator.fleet import Fleet
from fused.coordinator.state import JobStatus, StateStore
from fused.coordinator.transfer import UploadSpool
from fused.coordinator.upload_limits import UploadLedger

log = logging.getLogger(__name__)


@dataclass
class Pinned:
    """Artifacts an operator uploaded (UploadArtifact) for a job that has not started yet:
    `fusedctl train` uploads the initial weights, then starts the job that names them. They
    are kept from collection for `hold_s` seconds after their upload."""

    hold_s: float = 3600.0
    _since: dict[str, float] = field(default_factory=dict)

    def add(self, digest: str) -> None:
        self._since[digest] = time.monotonic()

    def current(self) -> set[str]:
        cutoff = time.monotonic() - self.hold_s
        self._since = {d: t for d, t in self._since.items() if t >= cutoff}
        return set(self._since)


@dataclass(frozen=True)
class Collected:
    artifacts: int
    bytes: int
    upload_parts: int


def referenced(store: StateStore) -> set[str]:
    """The artifacts something still needs."""
    keep: set[str] = set()
    for version in store.list_model_versions():
        keep.add(version.digest)
        keep.update(version.meta.blobs())
    for participant in store.list_participants():  # schemas jobs check registrations against
        keep.add(participant.offer("schema_digest"))
    for job in store.list_jobs():
        if job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
            continue
        keep.add(str(job.spec.get("init_weights", "")))
        for record in store.list_rounds(job.job_id):  # the checkpoints a resumed job reads
            aggregate = record.metrics.aggregate
            if aggregate is not None:
                keep.add(aggregate.blob)
    keep.discard("")  # a field that names nothing
    return keep


def collect(
    store: StateStore,
    artifacts: ArtifactStore,
    spool: UploadSpool,
    fleet: Fleet,
    ledger: UploadLedger | None = None,
    pinned: Pinned | None = None,
) -> Collected:
    """Delete unreferenced artifacts and abandoned upload parts. Call only while no job runs
    (no task is open, so no new upload or download can start), on the event loop so that no
    job can start halfway. A part an upload is still writing (its task closed under it) is
    kept; the ledger's finished uploads are gone, so they leave the participants' quotas."""
    keep = referenced(store) | (pinned.current() if pinned is not None else set())
    removed = freed = 0
    for digest in artifacts.digests():
        if digest not in keep:
            freed += artifacts.remove(digest)
            removed += 1
    parts = spool.clear()
    fleet.forget_uploads()  # what they uploaded may be gone: the next upload sends it again
    if ledger is not None:
        ledger.forget_stored()
    if removed or parts:
        log.info(
            "collected %d artifacts (%.1f MB) and %d upload parts", removed, freed / 1e6, parts
        )
    return Collected(removed, freed, parts)
