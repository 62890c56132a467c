"""Participants' own forgetting requests: submitted over the participant service, decided by
an operator (or approved by configuration); an approval starts the unlearning job, whose
completion writes the ledger entry."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from fused.common.domain.ledger import ForgetRequest, RequestStatus
from fused.common.domain.records import JobKind
from fused.common.domain.specs import UnlearningSpec
from fused.common.domain.tasks import ForgetSpec
from fused.coordinator.auth import RequestRefused
from fused.coordinator.engine.manager import JobManager
from fused.coordinator.ids import new_id
from fused.coordinator.state import StateStore

AUTO = "auto"  # decided_by of an approval the configuration made


@dataclass
class ForgetRequests:
    store: StateStore
    jobs: JobManager
    auto_approve: bool = False
    clock: Callable[[], float] = time.time

    def submit(self, participant_id: str, sample_ids: Sequence[int]) -> ForgetRequest:
        """A request of `participant_id` (the authenticated caller) about its own data."""
        if self.store.get_participant(participant_id) is None:
            raise RequestRefused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"participant {participant_id!r} is not registered: register before asking",
            )
        ids = tuple(sorted(set(sample_ids)))
        forget = (
            ForgetSpec("samples", participant_id=participant_id, sample_ids=ids)
            if ids
            else ForgetSpec("participant", participant_id=participant_id)
        )
        request = ForgetRequest(
            new_id("r"), participant_id, forget, self.clock(), RequestStatus.PENDING, "", 0, "", ""
        )
        self.store.add_forget_request(request)
        return self.approve(request.request_id, AUTO) if self.auto_approve else request

    def approve(self, request_id: str, by: str) -> ForgetRequest:
        """Start the request's unlearning job (the default method and budget)."""
        request = self._pending(request_id)
        spec = UnlearningSpec(request.forget)
        job = self.jobs.start(JobKind.UNLEARN, spec, f"participant:{request.participant_id}")
        return self.store.decide_forget_request(
            request_id, RequestStatus.APPROVED, by, "", job.job_id, self.clock()
        )

    def reject(self, request_id: str, by: str, reason: str) -> ForgetRequest:
        self._pending(request_id)
        return self.store.decide_forget_request(
            request_id, RequestStatus.REJECTED, by, reason, "", self.clock()
        )

    def _pending(self, request_id: str) -> ForgetRequest:
        found = next(
            (r for r in self.store.list_forget_requests() if r.request_id == request_id), None
        )
        if found is None:
            raise RequestRefused(grpc.StatusCode.NOT_FOUND, f"no forget request {request_id!r}")
        if found.status is not RequestStatus.PENDING:
            done = f" (job {found.job_id})" if found.job_id else ""
            raise RequestRefused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"request {request_id} is already {found.status.value}{done}",
            )
        return found
