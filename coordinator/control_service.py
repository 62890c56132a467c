"""gRPC servicer for operators (fusedctl): parses, and delegates to JobManager, the store and
the transfers; failures are answered through rpc_errors' table."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc

from fused.common.domain.records import JobKind, JobRecord, ModelVersion, Phase
from fused.common.rpc.control_convert import (
    event_to_proto,
    job_to_proto,
    model_to_proto,
    participant_to_proto,
    training_spec_from_proto,
    unlearning_spec_from_proto,
)
from fused.common.rpc.task_convert import forget_from_proto
from fused.coordinator.artifacts import CorruptArtifactError, MissingArtifactError
from fused.coordinator.auth import RequestRefused
from fused.coordinator.engine.manager import JobManager
from fused.coordinator.fleet import Fleet
from fused.coordinator.jobs import EvaluationRequest
from fused.coordinator.rpc_errors import Context, answers
from fused.coordinator.state import StateStore
from fused.coordinator.transfer import Downloads
from fused.coordinator.versions import ACTIVE_VERSION_KEY, active_version, set_active
from fused.proto.v1 import control_pb2, control_pb2_grpc

NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


@dataclass(frozen=True, eq=False)
class ControlServicer(control_pb2_grpc.ControlServiceServicer):
    """Each method parses, and calls the job manager, the store or the downloads."""

    store: StateStore
    fleet: Fleet
    jobs: JobManager
    downloads: Downloads

    def _job(self, job_id: str) -> JobRecord:
        job = self.store.get_job(job_id)
        if job is None:
            raise RequestRefused(NOT_FOUND, f"no job {job_id!r}")
        return job

    def _job_info(self, job_id: str) -> control_pb2.JobInfo:
        return job_to_proto(self._job(job_id), self.store.list_rounds(job_id))

    def _version(self, version_id: str) -> ModelVersion:
        version = self.store.get_model_version(version_id)
        if version is None:
            raise RequestRefused(NOT_FOUND, f"no model version {version_id!r}")
        return version

    @answers(rejected="invalid training spec: ")
    async def StartTraining(
        self, request: control_pb2.StartTrainingRequest, context: Context
    ) -> control_pb2.JobInfo:
        return job_to_proto(self.jobs.start(JobKind.TRAIN, training_spec_from_proto(request.spec)))

    @answers(rejected="invalid unlearning spec: ")
    async def StartUnlearning(
        self, request: control_pb2.StartUnlearningRequest, context: Context
    ) -> control_pb2.JobInfo:
        spec = unlearning_spec_from_proto(request.spec)
        return job_to_proto(self.jobs.start(JobKind.UNLEARN, spec))

    @answers(rejected="cannot evaluate: ")
    async def StartEvaluation(
        self, request: control_pb2.StartEvaluationRequest, context: Context
    ) -> control_pb2.JobInfo:
        version_id = request.version_id or self.store.get_setting(ACTIVE_VERSION_KEY) or ""
        forget = forget_from_proto(request.forget) if request.HasField("forget") else None
        deadline = request.round_deadline_s or 300.0
        evaluation = EvaluationRequest(version_id, forget, deadline)
        return job_to_proto(self.jobs.start(JobKind.EVALUATE, evaluation))

    @answers()
    async def GetLayers(
        self, request: control_pb2.GetJobRequest, context: Context
    ) -> control_pb2.LayersResponse:
        self._job(request.job_id)
        for record in self.store.list_rounds(request.job_id):
            ranking = record.metrics.ranking
            if record.phase == Phase.SENSITIVITY and ranking is not None:
                return control_pb2.LayersResponse(
                    layers=[control_pb2.LayerScore(**vars(score)) for score in ranking]
                )
        raise RequestRefused(
            FAILED_PRECONDITION,
            f"job {request.job_id} has no sensitivity ranking (not a FUSED job, or not there yet)",
        )

    @answers()
    async def Revert(
        self, request: control_pb2.VersionRequest, context: Context
    ) -> control_pb2.ModelVersionInfo:
        version = self._version(request.version_id)
        if version.parent_id is None:
            raise RequestRefused(
                FAILED_PRECONDITION, f"{version.version_id} has no parent version to revert to"
            )
        return self._activate(self._version(version.parent_id))

    @answers()
    async def Reapply(
        self, request: control_pb2.VersionRequest, context: Context
    ) -> control_pb2.ModelVersionInfo:
        return self._activate(self._version(request.version_id))

    def _activate(self, version: ModelVersion) -> control_pb2.ModelVersionInfo:
        """Switch the served version: instant, and exact since artifacts are immutable."""
        set_active(self.store, version.version_id)
        return model_to_proto(version, active=True)

    @answers()
    async def CancelJob(
        self, request: control_pb2.CancelJobRequest, context: Context
    ) -> control_pb2.JobInfo:
        job = self._job(request.job_id)
        if not await self.jobs.cancel(job.job_id):
            raise RequestRefused(
                FAILED_PRECONDITION, f"job {job.job_id} is {job.status.value}: nothing to cancel"
            )
        return self._job_info(job.job_id)

    @answers()
    async def GetJob(
        self, request: control_pb2.GetJobRequest, context: Context
    ) -> control_pb2.JobInfo:
        return self._job_info(request.job_id)

    @answers()
    async def WatchJob(
        self, request: control_pb2.WatchJobRequest, context: Context
    ) -> AsyncIterator[control_pb2.JobEvent]:
        self._job(request.job_id)
        async for event in self.jobs.watch(request.job_id, request.after_seq):
            yield event_to_proto(event)

    async def ListJobs(
        self, request: control_pb2.ListJobsRequest, context: Context
    ) -> control_pb2.ListJobsResponse:
        return control_pb2.ListJobsResponse(jobs=[job_to_proto(j) for j in self.store.list_jobs()])

    async def ListParticipants(
        self, request: control_pb2.ListParticipantsRequest, context: Context
    ) -> control_pb2.ListParticipantsResponse:
        participants = []
        for record in self.store.list_participants():
            seen = self.fleet.last_seen(record.participant_id)
            if seen is not None:
                record.last_seen = seen
            participants.append(
                participant_to_proto(record, self.fleet.is_online(record.participant_id))
            )
        return control_pb2.ListParticipantsResponse(participants=participants)

    async def ListModels(
        self, request: control_pb2.ListModelsRequest, context: Context
    ) -> control_pb2.ListModelsResponse:
        active = self.store.get_setting(ACTIVE_VERSION_KEY)
        return control_pb2.ListModelsResponse(
            models=[
                model_to_proto(v, v.version_id == active) for v in self.store.list_model_versions()
            ]
        )

    @answers()
    async def ExportModel(  # type: ignore[override]
        self, request: control_pb2.ExportModelRequest, context: Context
    ) -> AsyncIterator[bytes]:  # pre-serialized BlobChunks (PreSerializedResponses)
        if request.version_id:
            version = self._version(request.version_id)
        else:
            active = active_version(self.store)
            if active is None:
                raise RequestRefused(NOT_FOUND, "no model version active version")
            version = active
        for chunk in await self._model_chunks(version):
            yield chunk

    async def _model_chunks(self, version: ModelVersion) -> Iterator[bytes]:
        """A model version's artifact is state the coordinator must hold: missing or corrupt,
        it is lost data (DATA_LOSS), not a bad request."""
        try:
            return await self.downloads.open(version.digest)
        except MissingArtifactError:
            raise RequestRefused(
                grpc.StatusCode.DATA_LOSS,
                f"the artifact of {version.version_id} ({version.digest}) is missing from the "
                "state directory; restore it from a backup",
            ) from None
        except CorruptArtifactError as exc:
            raise RequestRefused(
                grpc.StatusCode.DATA_LOSS, f"{exc}; restore it from a backup"
            ) from None
