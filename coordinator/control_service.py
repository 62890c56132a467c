"""gRPC servicer for operators (fusedctl): a thin layer over JobManager and the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio

from fused.common.domain.specs import SpecError
from fused.common.rpc.convert import (
    event_to_proto,
    forget_from_proto,
    job_to_proto,
    model_to_proto,
    participant_to_proto,
    training_spec_from_proto,
    unlearning_spec_from_proto,
)
from fused.common.rpc.framing import encode_blob_chunk
from fused.coordinator.artifacts import ArtifactStore, CorruptArtifactError, MissingArtifactError
from fused.coordinator.fleet import Fleet
from fused.coordinator.jobs import JobManager
from fused.coordinator.rpc_errors import Context, abort
from fused.coordinator.state import StateStore
from fused.coordinator.versions import ACTIVE_VERSION_KEY, active_version, set_active
from fused.proto.v1 import control_pb2, control_pb2_grpc


class ControlServicer(control_pb2_grpc.ControlServiceServicer):
    def __init__(
        self,
        store: StateStore,
        artifacts: ArtifactStore,
        fleet: Fleet,
        jobs: JobManager,
        chunk_bytes: int,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._fleet = fleet
        self._jobs = jobs
        self._chunk_bytes = chunk_bytes

    async def StartTraining(
        self, request: control_pb2.StartTrainingRequest, context: Context
    ) -> control_pb2.JobInfo:
        try:
            job = self._jobs.start_training(training_spec_from_proto(request.spec))
        except SpecError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"invalid training spec: {exc}")
        return job_to_proto(job)

    async def StartUnlearning(
        self, request: control_pb2.StartUnlearningRequest, context: Context
    ) -> control_pb2.JobInfo:
        try:
            job = self._jobs.start_unlearning(unlearning_spec_from_proto(request.spec))
        except SpecError as exc:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"invalid unlearning spec: {exc}"
            )
        return job_to_proto(job)

    async def StartEvaluation(
        self, request: control_pb2.StartEvaluationRequest, context: Context
    ) -> control_pb2.JobInfo:
        version_id = request.version_id or self._store.get_setting(ACTIVE_VERSION_KEY) or ""
        forget = forget_from_proto(request.forget) if request.HasField("forget") else None
        deadline = request.round_deadline_s or 300.0
        try:
            job = self._jobs.start_evaluation(version_id, forget, deadline)
        except SpecError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"cannot evaluate: {exc}")
        return job_to_proto(job)

    async def GetLayers(
        self, request: control_pb2.GetJobRequest, context: Context
    ) -> control_pb2.LayersResponse:
        if self._store.get_job(request.job_id) is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no job {request.job_id!r}")
        for record in self._store.list_rounds(request.job_id):
            if record.phase == "sensitivity" and "ranking" in record.metrics:
                return control_pb2.LayersResponse(
                    layers=[control_pb2.LayerScore(**entry) for entry in record.metrics["ranking"]]
                )
        await abort(
            context,
            grpc.StatusCode.FAILED_PRECONDITION,
            f"job {request.job_id} has no sensitivity ranking (not a FUSED job, or not there yet)",
        )

    async def Revert(
        self, request: control_pb2.VersionRequest, context: Context
    ) -> control_pb2.ModelVersionInfo:
        version = self._store.get_model_version(request.version_id)
        if version is None:
            await abort(
                context, grpc.StatusCode.NOT_FOUND, f"no model version {request.version_id!r}"
            )
        if version.parent_id is None:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{version.version_id} has no parent version to revert to",
            )
        return self._activate(version.parent_id)

    async def Reapply(
        self, request: control_pb2.VersionRequest, context: Context
    ) -> control_pb2.ModelVersionInfo:
        if self._store.get_model_version(request.version_id) is None:
            await abort(
                context, grpc.StatusCode.NOT_FOUND, f"no model version {request.version_id!r}"
            )
        return self._activate(request.version_id)

    def _activate(self, version_id: str) -> control_pb2.ModelVersionInfo:
        """Switch the served version: instant, and exact since artifacts are immutable."""
        set_active(self._store, version_id)
        version = self._store.get_model_version(version_id)
        assert version is not None
        return model_to_proto(version, active=True)

    async def CancelJob(
        self, request: control_pb2.CancelJobRequest, context: Context
    ) -> control_pb2.JobInfo:
        job = self._store.get_job(request.job_id)
        if job is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no job {request.job_id!r}")
        if not await self._jobs.cancel(job.job_id):
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job {job.job_id} is {job.status.value}: nothing to cancel",
            )
        info = self._store.get_job(job.job_id)
        assert info is not None
        return job_to_proto(info, self._store.list_rounds(job.job_id))

    async def GetJob(
        self, request: control_pb2.GetJobRequest, context: Context
    ) -> control_pb2.JobInfo:
        job = self._store.get_job(request.job_id)
        if job is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no job {request.job_id!r}")
        return job_to_proto(job, self._store.list_rounds(job.job_id))

    async def WatchJob(
        self, request: control_pb2.WatchJobRequest, context: Context
    ) -> AsyncIterator[control_pb2.JobEvent]:
        if self._store.get_job(request.job_id) is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no job {request.job_id!r}")
        async for event in self._jobs.watch(request.job_id, request.after_seq):
            yield event_to_proto(event)

    async def ListJobs(
        self, request: control_pb2.ListJobsRequest, context: Context
    ) -> control_pb2.ListJobsResponse:
        return control_pb2.ListJobsResponse(jobs=[job_to_proto(j) for j in self._store.list_jobs()])

    async def ListParticipants(
        self, request: control_pb2.ListParticipantsRequest, context: Context
    ) -> control_pb2.ListParticipantsResponse:
        participants = []
        for record in self._store.list_participants():
            seen = self._fleet.last_seen(record.participant_id)
            if seen is not None:
                record.last_seen = seen
            participants.append(
                participant_to_proto(record, self._fleet.is_online(record.participant_id))
            )
        return control_pb2.ListParticipantsResponse(participants=participants)

    async def ListModels(
        self, request: control_pb2.ListModelsRequest, context: Context
    ) -> control_pb2.ListModelsResponse:
        active = self._store.get_setting(ACTIVE_VERSION_KEY)
        return control_pb2.ListModelsResponse(
            models=[
                model_to_proto(v, v.version_id == active) for v in self._store.list_model_versions()
            ]
        )

    async def ExportModel(  # type: ignore[override]
        self, request: control_pb2.ExportModelRequest, context: Context
    ) -> AsyncIterator[bytes]:  # pre-serialized BlobChunks (PreSerializedResponses)
        if request.version_id:
            version = self._store.get_model_version(request.version_id)
        else:
            version = active_version(self._store)
        if version is None:
            what = repr(request.version_id) if request.version_id else "active version"
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no model version {what}")
        try:  # checked before the first byte goes out: a corrupt model is never exported
            total = self._artifacts.size(version.digest)
            await asyncio.to_thread(self._artifacts.verify, version.digest)
        except MissingArtifactError:
            await abort(
                context,
                grpc.StatusCode.DATA_LOSS,
                f"the artifact of {version.version_id} ({version.digest}) is missing from the "
                "state directory; restore it from a backup",
            )
        except CorruptArtifactError as exc:
            await abort(context, grpc.StatusCode.DATA_LOSS, f"{exc}; restore it from a backup")
        offset = 0
        try:
            for chunk in self._artifacts.iter_chunks(version.digest, self._chunk_bytes):
                yield encode_blob_chunk(version.digest, offset, chunk, total)
                offset += len(chunk)
        except CorruptArtifactError as exc:  # changed on disk since it was verified
            await abort(context, grpc.StatusCode.DATA_LOSS, str(exc))
