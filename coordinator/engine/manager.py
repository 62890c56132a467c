"""The job manager: starts jobs of the registered kinds, runs each in its own task, resumes
unfinished ones after a restart, and keeps their events for watchers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any

from fused.common.domain.ledger import forget_set
from fused.common.domain.records import JobEvent, JobKind, JobRecord, JobStatus
from fused.common.domain.tasks import ForgetSet
from fused.common.runtime.logs import set_log_fields
from fused.coordinator.accounting import ByteKey
from fused.coordinator.artifacts import ArtifactStore
from fused.coordinator.engine.context import JobContext, JobFailed, RoundBytes
from fused.coordinator.engine.kind import JobKindHandler, JobResult
from fused.coordinator.fleet import Fleet
from fused.coordinator.ids import new_id
from fused.coordinator.limits import ACCOUNTED_PER_ROUND
from fused.coordinator.metrics import CoordinatorMetrics
from fused.coordinator.state import StateStore

log = logging.getLogger(__name__)

# Keys the manager adds to every stored job spec (the kinds' own specs never see them).
EXCLUDED_KEY = "excluded"  # the forget ledger's ForgetSet when the job was created
EXCLUDED_ENTRIES_KEY = "excluded_entries"  # the ids of the ledger entries it unites
REQUESTED_BY_KEY = "requested_by"  # the caller that started it

TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED})


class JobManager:
    def __init__(
        self,
        store: StateStore,
        artifacts: ArtifactStore,
        fleet: Fleet,
        metrics: CoordinatorMetrics,
        kinds: Mapping[str, JobKindHandler],
        clock: Callable[[], float] = time.time,
        on_idle: Callable[[], object] | None = None,
    ) -> None:
        self._kinds = kinds  # injected from the top: the engine never imports job kinds
        self._on_idle = on_idle  # called when the last running job ends
        self._store = store
        self._artifacts = artifacts
        self._fleet = fleet
        self._metrics = metrics
        self._clock = clock
        self._running: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Condition()
        self._bytes: dict[tuple[str, str, int], RoundBytes] = {}
        self._stopping = False
        self._cancelled: set[str] = set()  # by an operator, not by shutdown

    def recover(self) -> tuple[list[str], list[str]]:
        """Jobs a previous coordinator process left unfinished: training and unlearning jobs
        resume from their last committed round; others fail. Returns (resumed, failed) ids."""
        resumed: list[str] = []
        failed: list[str] = []
        for job in self._store.list_jobs():
            if job.status in TERMINAL:
                continue
            handler = self._kinds.get(job.kind)
            if handler is not None and handler.resumable:
                self._launch(job, handler, resume=True)
                resumed.append(job.job_id)
            else:
                reason = "coordinator restarted while the job ran; start it again"
                self._finish(job.job_id, JobStatus.FAILED, reason, {})
                failed.append(job.job_id)
        return resumed, failed

    def start(self, kind: JobKind, request: Any, requested_by: str = "") -> JobRecord:
        """Start a job of `kind` for caller `requested_by`; SpecError if the request is
        invalid. The forget ledger's binding entries as of now are stored with the job, so a
        resumed job leaves out exactly what it left out before."""
        handler = self._kinds[kind]
        binding = [e for e in self._store.list_ledger() if e.binding]
        spec = {
            **handler.prepare(self._store, request),
            EXCLUDED_KEY: forget_set(binding).to_dict(),
            EXCLUDED_ENTRIES_KEY: sorted(e.entry_id for e in binding),
            REQUESTED_BY_KEY: requested_by,
        }
        now = self._clock()
        record = JobRecord(
            job_id=new_id("job"),
            kind=kind,
            spec=spec,
            status=JobStatus.PENDING,
            phase="",
            round=0,
            reason="",
            created_at=now,
            updated_at=now,
        )
        self._store.create_job(record)
        self._launch(record, handler, resume=False)
        return record

    def _launch(self, record: JobRecord, handler: JobKindHandler, resume: bool) -> None:
        ctx = JobContext(
            job_id=record.job_id,
            store=self._store,
            artifacts=self._artifacts,
            fleet=self._fleet,
            metrics=self._metrics,
            emit=lambda *a, **kw: self.emit(record.job_id, *a, **kw),
            round_bytes=lambda phase, r: self.round_bytes(record.job_id, phase, r),
            clock=self._clock,
        )
        spec = dict(record.spec)
        ctx.excluded = ForgetSet.from_dict(spec.pop(EXCLUDED_KEY, None))
        ctx.excluded_entries = tuple(spec.pop(EXCLUDED_ENTRIES_KEY, ()))
        ctx.requested_by = str(spec.pop(REQUESTED_BY_KEY, ""))
        run = handler.run(ctx, spec, resume)
        self._running[record.job_id] = asyncio.create_task(self._run(ctx, handler, run))

    async def _run(
        self, ctx: JobContext, handler: JobKindHandler, run: Coroutine[Any, Any, JobResult]
    ) -> None:
        job_id = ctx.job_id
        # This task's own context (a copy): every record of the job carries its id.
        set_log_fields(job=job_id, phase=None, round=None, participant=None)
        self._store.update_job(job_id, status=JobStatus.RUNNING)
        self.emit(job_id, "job_started", "", 0, f"{handler.kind.value} job started")
        try:
            result = await run
        except JobFailed as exc:
            self._finish(job_id, JobStatus.FAILED, str(exc), {})
        except asyncio.CancelledError:
            if job_id in self._cancelled:
                self._cancelled.discard(job_id)
                self._finish(job_id, JobStatus.FAILED, "cancelled by an operator", {})
            elif self._stopping and handler.resumable:  # the next process resumes it
                self.emit(job_id, "job_interrupted", "", 0, "coordinator stopping; will resume")
                log.info("job %s interrupted by shutdown: it resumes on restart", job_id)
            else:
                reason = "coordinator shut down while the job ran"
                self._finish(job_id, JobStatus.FAILED, reason, {})
            raise
        except Exception as exc:  # a bug must fail the job, not the daemon
            log.exception("job %s crashed", job_id)
            self._finish(job_id, JobStatus.FAILED, f"internal error: {exc!r}", {})
        else:
            self._finish(job_id, JobStatus.COMPLETED, result.summary, result.details)
        finally:
            self._flush_round_bytes(job_id)
            self._running.pop(job_id, None)
            self._bytes = {k: v for k, v in self._bytes.items() if k[0] != job_id}
            if not self._running and self._on_idle is not None:
                self._on_idle()  # on the loop, synchronously: no job can start meanwhile

    def _flush_round_bytes(self, job_id: str) -> None:
        """Store each round's final byte counts (responses are counted after a round ends)."""
        for record in self._store.list_rounds(job_id):
            acct = self._bytes.get((job_id, record.phase, record.round))
            if acct is not None:
                record.metrics = dataclasses.replace(record.metrics, bytes=acct.summary())
                self._store.save_round(record)

    def _finish(self, job_id: str, status: JobStatus, reason: str, result: dict[str, Any]) -> None:
        job = self._store.update_job(job_id, status=status, reason=reason, result=result)
        self._metrics.jobs_finished.labels(job.kind, status.value).inc()
        kind = "job_completed" if status is JobStatus.COMPLETED else "job_failed"
        self.emit(job_id, kind, job.phase, job.round, reason, result)
        log.info("job %s %s: %s", job_id, status.value, reason)

    def emit(
        self,
        job_id: str,
        kind: str,
        phase: str,
        round_number: int,
        message: str,
        data: dict[str, Any] | None = None,
    ) -> JobEvent:
        event = self._store.append_event(
            job_id, kind, phase, round_number, message, data or {}, self._clock()
        )
        asyncio.get_running_loop().create_task(self._notify())
        return event

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def watch(self, job_id: str, after_seq: int = 0) -> AsyncIterator[JobEvent]:
        """Replay the job's events after after_seq, then follow until the job ends."""
        if self._store.get_job(job_id) is None:
            raise KeyError(job_id)
        seq = after_seq
        while True:
            async with self._changed:
                events = self._store.list_events(job_id, seq)
                job = self._store.get_job(job_id)
                if not events and job is not None and job.status in TERMINAL:
                    return
                if not events:
                    # The timeout re-checks the store in case a notify raced the read.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), timeout=5.0)
                    continue
            for event in events:
                seq = event.seq
                yield event

    def busy(self) -> bool:
        """Whether a job runs in this process."""
        return bool(self._running)

    def record_bytes(self, key: ByteKey, direction: str, n: int) -> None:
        """Wire hook: add a task call's bytes to its job round. The key is the caller's
        identity and its open task (coordinator/accounting.py), never metadata; a round
        holds at most ACCOUNTED_PER_ROUND participants."""
        if key.job_id not in self._running:
            return
        acct = self.round_bytes(key.job_id, key.phase, key.round)
        side = acct.up if direction == "received" else acct.down
        if key.participant in side or len(side) < ACCOUNTED_PER_ROUND:
            side[key.participant] += n

    def round_bytes(self, job_id: str, phase: str, round_number: int) -> RoundBytes:
        return self._bytes.setdefault((job_id, phase, round_number), RoundBytes())

    async def cancel(self, job_id: str) -> bool:
        """Stop a running job for good; False if it is not running in this process."""
        task = self._running.get(job_id)
        if task is None:
            return False
        self._cancelled.add(job_id)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return True

    async def shutdown(self) -> None:
        self._stopping = True
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
