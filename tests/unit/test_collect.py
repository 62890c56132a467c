"""Garbage collection: only what model versions and unfinished jobs need survives."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fused.common.domain.records import JobKind, Phase, VersionKind
from fused.common.domain.round_metrics import AggregateSummary, PayloadKind, RoundMetrics
from fused.common.domain.version_meta import AdapterMeta, VersionMeta
from fused.coordinator.artifact_gc import Collected, Collection, collect, referenced
from fused.coordinator.artifacts import ArtifactStore
from fused.coordinator.fleet import Fleet
from fused.coordinator.state import JobRecord, JobStatus, ModelVersion, RoundRecord
from fused.coordinator.state.memory import InMemoryStateStore
from fused.coordinator.transfer import UploadSpool


def job(job_id: str, status: JobStatus) -> JobRecord:
    return JobRecord(job_id, JobKind.TRAIN, {}, status, "train", 1, "", 0.0, 0.0)


def adapter_version(version_id: str, digest: str, adapter: str, base: str) -> ModelVersion:
    meta = VersionMeta(adapter=AdapterMeta(adapter, base, ("fc1.weight",), 0.1, 7, "d" * 64, 10))
    return ModelVersion(version_id, None, None, VersionKind.ADAPTER, digest, "mlp", 1, 0.0, meta)


def aggregate_round(job_id: str, phase: Phase, payload: PayloadKind, blob: str) -> RoundRecord:
    metrics = RoundMetrics(aggregate=AggregateSummary(payload, blob, train_loss=0.5))
    return RoundRecord(job_id, phase, 1, 0.0, 1.0, [], metrics)


def test_collect_keeps_versions_and_unfinished_checkpoints(tmp_path: Path) -> None:
    artifacts = ArtifactStore(tmp_path / "artifacts")
    artifacts.ensure()
    blob = {
        name: artifacts.put_bytes(name.encode())
        for name in (
            "served",
            "adapter",
            "base",
            "finished-round",
            "running-round",
            "running-values",
            "upload",
        )
    }
    store = InMemoryStateStore()
    store.add_model_version(adapter_version("m-1", blob["served"], blob["adapter"], blob["base"]))
    weights, values = PayloadKind.WEIGHTS, PayloadKind.ADAPTER
    store.create_job(job("job-done", JobStatus.COMPLETED))
    store.save_round(aggregate_round("job-done", Phase.TRAIN, weights, blob["finished-round"]))
    store.create_job(job("job-live", JobStatus.RUNNING))
    store.save_round(aggregate_round("job-live", Phase.TRAIN, weights, blob["running-round"]))
    store.save_round(aggregate_round("job-live", Phase.ADAPTER, values, blob["running-values"]))
    spool = UploadSpool(tmp_path / "uploads", artifacts)
    writer = spool.open("p0", "a" * 64, total=10, offset=0)
    writer.write(0, b"abc")
    writer.close()

    kept = {"served", "adapter", "base", "running-round", "running-values"}
    assert referenced(store) == {blob[k] for k in kept}
    fleet = Fleet(store, offline_after_s=15)
    fleet.record_upload("p0", blob["upload"])
    done = collect(store, artifacts, spool, fleet)
    assert (done.artifacts, done.bytes, done.upload_parts) == (2, len("finished-round") + 6, 1)
    assert sorted(artifacts.digests()) == sorted(blob[k] for k in kept)
    assert spool.offset("p0", "a" * 64) == 0
    assert not fleet.uploaded("p0", blob["upload"])  # it must send the bytes again
    assert collect(store, artifacts, spool, fleet).artifacts == 0  # nothing left to collect


def test_a_collection_keeps_what_is_stored_or_found_while_it_runs(tmp_path: Path) -> None:
    """Between the keep set and the deletions a job may start and store (or find, and
    rely on) content that was unreferenced: the sweep keeps it."""
    artifacts = ArtifactStore(tmp_path / "artifacts")
    artifacts.ensure()
    stale, stored, found = (artifacts.put_bytes(n) for n in (b"stale", b"stored", b"found"))
    store = InMemoryStateStore()
    collection = Collection(
        store, artifacts, UploadSpool(tmp_path / "up", artifacts), Fleet(store, 15)
    )
    keep, parts = collection.begin()
    assert artifacts.put_bytes(b"stored") == stored  # already there: no write, but kept
    assert artifacts.exists(found)
    done = collection.sweep(keep, parts)
    assert done.artifacts == 1 and sorted(artifacts.digests()) == sorted([stored, found])
    assert collection().artifacts == 2  # the next collection takes them
    assert artifacts.digests() == [] and stale not in artifacts.digests()


def test_background_collection_ends_with_its_task(tmp_path: Path) -> None:
    artifacts = ArtifactStore(tmp_path / "artifacts")
    artifacts.ensure()
    artifacts.put_bytes(b"old round")
    store = InMemoryStateStore()
    spool = UploadSpool(tmp_path / "up", artifacts)

    async def collect_in_background() -> Collected:
        return await Collection(store, artifacts, spool, Fleet(store, 15)).in_background()

    done = asyncio.run(collect_in_background())
    assert done.artifacts == 1 and artifacts.digests() == []
