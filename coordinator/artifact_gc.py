"""Garbage collection of the state directory: what no model version or unfinished job needs.

Every round stores its aggregate and every participant's upload; kept forever, a ResNet-18
federation would grow by gigabytes per round. Once no job runs, only model versions (and
the adapters and bases they name) and the checkpoints of unfinished jobs are still needed.
"""

from __future__ import annotations

import asyncio
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


@dataclass(frozen=True)
class Collection:
    """What collection works on: the store, the artifacts, the spool and the upload records."""

    store: StateStore
    artifacts: ArtifactStore
    spool: UploadSpool
    fleet: Fleet
    ledger: UploadLedger | None = None
    pinned: Pinned | None = None

    def begin(self) -> tuple[set[str], int]:
        """On the event loop while no job runs (no task is open, so no upload or download
        can start, and no job can start halfway): what to keep, and abandoned upload parts
        removed (a part an upload still writes, its task closed under it, is kept). The
        finished uploads leave the records and the participants' quotas: they may be gone."""
        keep = referenced(self.store) | (self.pinned.current() if self.pinned else set())
        parts = self.spool.clear()
        self.fleet.forget_uploads()  # the next upload of one of them sends the bytes again
        if self.ledger is not None:
            self.ledger.forget_stored()
        self.artifacts.start_collection()
        return keep, parts

    def sweep(self, keep: set[str], parts: int) -> Collected:
        """In any thread, after begin(): delete the unreferenced artifacts."""
        removed, freed = self.artifacts.remove_unreferenced(keep)
        if removed or parts:
            log.info(
                "collected %d artifacts (%.1f MB) and %d upload parts", removed, freed / 1e6, parts
            )
        return Collected(removed, freed, parts)

    def __call__(self) -> Collected:
        """Collect at once, on the calling thread (where no job runs)."""
        return self.sweep(*self.begin())

    def in_background(self) -> asyncio.Task[Collected]:
        """Collect with the deletions in a thread: after a 1,000-participant job they held the
        event loop for seconds (bench.load). Call on the loop where no job runs; an artifact
        a job that starts meanwhile stores or finds is kept (ArtifactStore.start_collection)."""
        keep, parts = self.begin()
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(self.sweep, keep, parts))
        _running.add(task)  # the loop holds tasks weakly
        task.add_done_callback(_running.discard)
        return task


_running: set[asyncio.Task[Collected]] = set()


def collect(
    store: StateStore,
    artifacts: ArtifactStore,
    spool: UploadSpool,
    fleet: Fleet,
    ledger: UploadLedger | None = None,
    pinned: Pinned | None = None,
) -> Collected:
    """Delete unreferenced artifacts and abandoned upload parts, on the calling thread; call
    only while no job runs (Collection.begin)."""
    return Collection(store, artifacts, spool, fleet, ledger, pinned)()
