"""Job lifecycle: creation, the running task of each job, progress events and watchers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fused.common.domain.specs import SpecError, TrainingSpec, UnlearningSpec
from fused.common.domain.tasks import ForgetSpec
from fused.common.rpc.convert import forget_from_dict, unlearning_spec_from_dict
from fused.common.rpc.metering import MD_JOB, MD_PARTICIPANT, MD_PHASE, MD_ROUND
from fused.common.runtime.logs import set_log_fields
from fused.coordinator.artifacts import ArtifactStore
from fused.coordinator.fleet import Fleet
from fused.coordinator.metrics import CoordinatorMetrics
from fused.coordinator.state import JobEvent, JobRecord, JobStatus, StateStore
from fused.coordinator.versions import new_id

log = logging.getLogger(__name__)

TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED})
RESUMABLE = frozenset({"train", "unlearn"})  # job kinds that continue after a restart


class JobFailed(Exception):
    """Raised inside a job to stop it with a reason an operator can act on."""


@dataclass
class RoundBytes:
    """Serialized bytes per participant in one round: up = to the coordinator."""

    up: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    down: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def summary(self) -> dict[str, Any]:
        pids = sorted(set(self.up) | set(self.down))
        return {
            "up": {p: self.up[p] for p in pids},
            "down": {p: self.down[p] for p in pids},
            "total": sum(self.up.values()) + sum(self.down.values()),
        }


@dataclass
class JobContext:
    """What a running job uses; one per job."""

    job_id: str
    store: StateStore
    artifacts: ArtifactStore
    fleet: Fleet
    metrics: CoordinatorMetrics
    emit: Callable[..., JobEvent]
    round_bytes: Callable[[str, int], RoundBytes]
    clock: Callable[[], float] = time.time

    def progress(self, phase: str, round_number: int) -> None:
        self.store.update_job(self.job_id, phase=phase, round=round_number)
        # Called in the job's own task: later records of this job carry the phase and round.
        set_log_fields(phase=phase, round=round_number)
        log.info("%s round %d started", phase, round_number)


JobBody = Callable[[JobContext], Awaitable[dict[str, Any]]]


def _resumed(job: JobRecord) -> JobBody | None:
    """The body that continues `job` from its last committed round (None: cannot resume)."""
    from fused.coordinator.training_job import run_training  # the job bodies import us back
    from fused.coordinator.unlearning_job import run_unlearning

    if job.kind == "train":
        training = TrainingSpec.from_dict(job.spec)
        return lambda ctx: run_training(ctx, training, resume=True)
    if job.kind == "unlearn":
        unlearning = unlearning_spec_from_dict(job.spec)
        return lambda ctx: run_unlearning(ctx, unlearning, resume=True)
    return None  # evaluation jobs are short: start them again


class JobManager:
    def __init__(
        self,
        store: StateStore,
        artifacts: ArtifactStore,
        fleet: Fleet,
        metrics: CoordinatorMetrics,
        clock: Callable[[], float] = time.time,
        on_idle: Callable[[], object] | None = None,
    ) -> None:
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
            body = _resumed(job)
            if body is not None:
                self._launch(job, body)
                resumed.append(job.job_id)
            else:
                reason = "coordinator restarted while the job ran; start it again"
                self._finish(job.job_id, JobStatus.FAILED, reason, {})
                failed.append(job.job_id)
        return resumed, failed

    def start_training(self, spec: TrainingSpec) -> JobRecord:
        from fused.coordinator.training_job import run_training  # the job body imports us back

        spec.validate()
        if spec.init_version and self._store.get_model_version(spec.init_version) is None:
            raise SpecError(f"init_version {spec.init_version!r} is not a known model version")
        return self._start("train", spec.to_dict(), lambda ctx: run_training(ctx, spec))

    def start_unlearning(self, spec: UnlearningSpec) -> JobRecord:
        from fused.coordinator.unlearning_job import run_unlearning

        spec.validate()
        if spec.base_version and self._store.get_model_version(spec.base_version) is None:
            raise SpecError(f"base_version {spec.base_version!r} is not a known model version")
        return self._start("unlearn", spec.to_dict(), lambda ctx: run_unlearning(ctx, spec))

    def start_evaluation(
        self, version_id: str, forget: ForgetSpec | None, deadline_s: float
    ) -> JobRecord:
        """Evaluate a version; without a forget spec, use that of the job that made it."""
        from fused.coordinator.evaluation_job import run_evaluation

        version = self._store.get_model_version(version_id)
        if version is None:
            raise SpecError(f"{version_id!r} is not a known model version")
        if forget is None and version.job_id:
            job = self._store.get_job(version.job_id)
            if job is not None and job.kind == "unlearn":
                forget = forget_from_dict(job.spec["forget"])
        if forget is not None:
            try:
                forget.validate()
            except ValueError as exc:
                raise SpecError(str(exc)) from exc
        spec = {"version_id": version_id, "forget": forget and dataclasses.asdict(forget)}
        return self._start(
            "evaluate", spec, lambda ctx: run_evaluation(ctx, version_id, forget, deadline_s)
        )

    def _start(self, kind: str, spec: dict[str, Any], body: JobBody) -> JobRecord:
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
        self._launch(record, body)
        return record

    def _launch(self, record: JobRecord, body: JobBody) -> None:
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
        self._running[record.job_id] = asyncio.create_task(self._run(ctx, record.kind, body))

    async def _run(self, ctx: JobContext, kind: str, body: JobBody) -> None:
        job_id = ctx.job_id
        # This task's own context (a copy): every record of the job carries its id.
        set_log_fields(job=job_id, phase=None, round=None, participant=None)
        self._store.update_job(job_id, status=JobStatus.RUNNING)
        self.emit(job_id, "job_started", "", 0, f"{kind} job started")
        try:
            result = await body(ctx)
        except JobFailed as exc:
            self._finish(job_id, JobStatus.FAILED, str(exc), {})
        except asyncio.CancelledError:
            if job_id in self._cancelled:
                self._cancelled.discard(job_id)
                self._finish(job_id, JobStatus.FAILED, "cancelled by an operator", {})
            elif self._stopping and kind in RESUMABLE:  # the next process resumes it
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
            self._finish(job_id, JobStatus.COMPLETED, result.pop("summary", "completed"), result)
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
                record.metrics["bytes"] = acct.summary()
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

    def record_bytes(self, metadata: dict[str, str], direction: str, n: int) -> None:
        """Wire hook: attribute a task call's bytes to its job round and participant."""
        job_id, phase = metadata.get(MD_JOB), metadata.get(MD_PHASE)
        if not job_id or not phase or job_id not in self._running:
            return
        try:
            round_number = int(metadata.get(MD_ROUND, "0"))
        except ValueError:
            return
        pid = metadata.get(MD_PARTICIPANT, "")
        acct = self.round_bytes(job_id, phase, round_number)
        (acct.up if direction == "received" else acct.down)[pid] += n

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
