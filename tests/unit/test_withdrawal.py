"""Withdrawal's plan on a stored chain: what it switches to, when it starts a rebuild, and what
it refuses. The chain: base -> v1 (forgets f1) -> v2 (f1, f2) -> v3 (f1, f2, f3)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from fused.common.domain.ledger import LedgerEntry, LedgerStatus
from fused.common.domain.records import (
    JobKind,
    JobRecord,
    JobStatus,
    ModelVersion,
    VersionKind,
)
from fused.common.domain.specs import UnlearningSpec
from fused.common.domain.tasks import ForgetSpec
from fused.common.domain.version_meta import VersionMeta
from fused.coordinator.artifacts import ArtifactStore
from fused.coordinator.auth import RequestRefused
from fused.coordinator.engine.manager import JobManager
from fused.coordinator.fleet import Fleet
from fused.coordinator.jobs import JOB_KINDS
from fused.coordinator.jobs.unlearn import rebuild_current
from fused.coordinator.metrics import CoordinatorMetrics
from fused.coordinator.state import InMemoryStateStore, StateStore
from fused.coordinator.versions import active_version, set_active
from fused.coordinator.withdrawal import withdraw

FORGETS = {"f1": ForgetSpec("class", class_label=1), "f2": ForgetSpec("class", class_label=2)}
FORGETS["f3"] = ForgetSpec("participant", participant_id="p3")


def chain(base_forgets: tuple[str, ...] = ()) -> InMemoryStateStore:
    store = InMemoryStateStore()
    parent = None
    applied: list[str] = list(base_forgets)
    for i, name in enumerate(("base", "v1", "v2", "v3")):
        job_id = f"job-{name}"
        spec = UnlearningSpec(FORGETS.get(f"f{i}", FORGETS["f1"]), rounds=2).to_dict()
        store.create_job(
            JobRecord(job_id, JobKind.UNLEARN, spec, JobStatus.COMPLETED, "", 0, "", i, i)
        )
        if i:
            applied.append(f"f{i}")
            store.add_ledger_entry(
                LedgerEntry(f"f{i}", FORGETS[f"f{i}"], "", i, job_id, name, LedgerStatus.ACTIVE, i)
            )
        meta = VersionMeta(forgets=tuple(sorted(applied)))
        kind = VersionKind.ADAPTER if i else VersionKind.BASE
        store.add_model_version(
            ModelVersion(name, job_id, parent, kind, "ab" * 32, "mlp", 10, float(i), meta)
        )
        parent = name
    set_active(store, "v3")
    return store


def run(store: StateStore, tmp_path: Path, entry: str, keep: bool = False) -> tuple[str, str]:
    """(message, served version) of withdrawing `entry`; a started job is stopped again."""

    async def scenario() -> tuple[str, str]:
        metrics = CoordinatorMetrics(CollectorRegistry())
        artifacts = ArtifactStore(tmp_path / "artifacts")
        jobs = JobManager(store, artifacts, Fleet(store, 15.0), metrics, JOB_KINDS)
        done = withdraw(store, jobs, entry, keep, "admin")
        await asyncio.sleep(0.05)
        await jobs.shutdown()
        served = active_version(store)
        return done.message, served.version_id if served is not None else ""

    return asyncio.run(scenario())


def status(store: StateStore, entry: str) -> LedgerStatus:
    return next(e.status for e in store.list_ledger() if e.entry_id == entry)


def test_the_latest_request_is_a_pointer_switch(tmp_path: Path) -> None:
    store = chain()
    message, served = run(store, tmp_path, "f3")
    assert (message, served) == ("switched to v2", "v2")
    assert status(store, "f3") is LedgerStatus.WITHDRAWN


def test_an_earlier_request_starts_a_rebuild_of_the_later_ones(tmp_path: Path) -> None:
    store = chain()
    message, served = run(store, tmp_path, "f2")
    assert served == "v3"  # until the rebuild publishes: it forgets more, never less
    [rebuild] = [j for j in store.list_jobs() if j.spec.get("replays")]
    spec = UnlearningSpec.from_dict(rebuild.spec)
    assert (spec.base_version, spec.replays, spec.forget) == ("v1", ("f3",), FORGETS["f3"])
    assert rebuild.spec["excluded_entries"] == ["f1", "f3"]
    assert message == f"{rebuild.job_id} applies f3 again on v1"


def test_keep_version_only_marks(tmp_path: Path) -> None:
    store = chain()
    message, served = run(store, tmp_path, "f1", keep=True)
    assert (message, served) == ("the served version is unchanged", "v3")
    assert status(store, "f1") is LedgerStatus.WITHDRAWN
    assert len(store.list_jobs()) == 4  # no rebuild


def test_a_lineage_that_forgets_it_from_the_root_asks_for_consolidation(tmp_path: Path) -> None:
    store = chain(base_forgets=("f0",))  # a base retrained without f0's data
    store.add_ledger_entry(
        LedgerEntry("f0", FORGETS["f1"], "", 0, "job-base", "base", LedgerStatus.ACTIVE, 0)
    )
    message, served = run(store, tmp_path, "f0")
    assert served == "v3" and "consolidate to retrain without it" in message


def test_withdrawing_twice_is_refused(tmp_path: Path) -> None:
    store = chain()
    run(store, tmp_path, "f3")
    with pytest.raises(RequestRefused) as again:
        run(store, tmp_path, "f3")
    assert again.value.code is grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(RequestRefused) as unknown:
        run(store, tmp_path, "f9")
    assert unknown.value.code is grpc.StatusCode.NOT_FOUND


def test_a_rebuild_outdated_by_a_later_withdrawal_is_not_served() -> None:
    store = chain()
    assert rebuild_current(("f1", "f3"), store.list_ledger())
    store.set_ledger_status(["f1"], LedgerStatus.WITHDRAWN, 9.0)  # a second withdrawal
    assert not rebuild_current(("f1", "f3"), store.list_ledger())
    assert rebuild_current(("f3",), store.list_ledger())
