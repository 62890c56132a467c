"""Participants' requests in the coordinator: a request names only its holder's data, waits
for an operator unless the configuration approves it, and is decided once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from fused.common.domain.ledger import RequestStatus
from fused.common.domain.records import ParticipantRecord
from fused.coordinator.artifacts import ArtifactStore
from fused.coordinator.auth import RequestRefused
from fused.coordinator.engine.manager import JobManager
from fused.coordinator.fleet import Fleet
from fused.coordinator.forget_requests import AUTO, ForgetRequests
from fused.coordinator.jobs import JOB_KINDS
from fused.coordinator.metrics import CoordinatorMetrics
from fused.coordinator.state import InMemoryStateStore


def requests(tmp_path: Path, auto: bool) -> ForgetRequests:
    store = InMemoryStateStore()
    store.upsert_participant(ParticipantRecord("p1", [5, 5], 10, 2, 1.0, 1.0))
    artifacts = ArtifactStore(tmp_path / "artifacts")
    metrics = CoordinatorMetrics(CollectorRegistry())
    jobs = JobManager(store, artifacts, Fleet(store, 15.0), metrics, JOB_KINDS)
    return ForgetRequests(store, jobs, auto_approve=auto, clock=lambda: 7.0)


def test_automatic_approval_starts_the_job(tmp_path: Path) -> None:
    async def scenario() -> None:
        made = requests(tmp_path, auto=True)
        done = made.submit("p1", [4, 2, 4])
        assert (done.status, done.decided_by, done.forget.sample_ids) == (
            RequestStatus.APPROVED,
            AUTO,
            (2, 4),
        )
        job = made.store.get_job(done.job_id)
        assert job is not None and job.spec["forget"]["participant_id"] == "p1"
        assert job.spec["requested_by"] == "participant:p1"
        await asyncio.sleep(0.05)  # the job starts (it waits for participants), then stops
        await made.jobs.shutdown()

    asyncio.run(scenario())


def test_a_request_waits_and_is_decided_once(tmp_path: Path) -> None:
    made = requests(tmp_path, auto=False)
    pending = made.submit("p1", [])
    assert (pending.status, pending.forget.paradigm, pending.job_id) == (
        "pending",
        "participant",
        "",
    )
    rejected = made.reject(pending.request_id, "admin", "not yet")
    assert (rejected.status, rejected.reason, rejected.decided_at) == ("rejected", "not yet", 7.0)
    with pytest.raises(RequestRefused) as again:
        made.approve(pending.request_id, "admin")
    assert again.value.code is grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(RequestRefused) as stranger:
        made.submit("p9", [])
    assert "not registered" in stranger.value.message
