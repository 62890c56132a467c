"""gRPC servicer for operators (fusedctl): parses, and delegates to JobManager, the store and
the transfers; failures are answered through rpc_errors' table."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fused.common.domain.records import (
    BlockedParticipant,
    JobKind,
    JobRecord,
    ModelVersion,
    Phase,
)
from fused.common.rpc.control_convert import (
    blocked_to_proto,
    event_to_proto,
    job_to_proto,
    model_to_proto,
    participant_to_proto,
    training_spec_from_proto,
    unlearning_spec_from_proto,
)
from fused.common.rpc.task_convert import forget_from_proto
from fused.coordinator.adapter_export import adapter_file, file_chunks
from fused.coordinator.artifact_gc import Pinned
from fused.coordinator.artifacts import CorruptArtifactError, MissingArtifactError
from fused.coordinator.auth import RequestRefused
from fused.coordinator.control_ledger import LedgerCalls
from fused.coordinator.engine.manager import JobManager
from fused.coordinator.fleet import Fleet, TaskHeldError
from fused.coordinator.forget_requests import ForgetRequests
from fused.coordinator.jobs import EvaluationRequest
from fused.coordinator.participant_service import PARTICIPANT_ID
from fused.coordinator.retention import drop_versions
from fused.coordinator.rpc_errors import Context, answers, caller_id
from fused.coordinator.state import ParticipantRecord, StateStore
from fused.coordinator.transfer import Downloads
from fused.coordinator.versions import ACTIVE_VERSION_KEY, active_version, set_active
from fused.proto.v1 import common_pb2, control_pb2, control_pb2_grpc

NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
MAX_BLOCK_REASON = 200  # characters


def _participant_id(pid: str) -> str:
    """A well-formed participant id (never echoed when it is not)."""
    if not PARTICIPANT_ID.match(pid):
        raise RequestRefused(
            INVALID_ARGUMENT, "participant_id must be 1-64 letters, digits, '_', '.' or '-'"
        )
    return pid


def _block_reason(reason: str) -> str:
    if len(reason) > MAX_BLOCK_REASON or not reason.isprintable():
        raise RequestRefused(
            INVALID_ARGUMENT, f"reason must be printable, at most {MAX_BLOCK_REASON} characters"
        )
    return reason


@dataclass(frozen=True, eq=False)
class ControlServicer(LedgerCalls, control_pb2_grpc.ControlServiceServicer):
    """Each method parses, and calls the job manager, the store or the downloads."""

    store: StateStore
    fleet: Fleet
    jobs: JobManager
    downloads: Downloads
    pinned: Pinned  # operator uploads kept until the job naming them starts
    max_artifact_bytes: int = 512 << 20  # the participants' upload limit
    collect: Callable[[], object] | None = None  # garbage collection (None: artifacts kept)
    receipt_key: Ed25519PrivateKey | None = None  # signs unlearning receipts (None: none)
    requests: ForgetRequests | None = None  # participants' own forgetting requests

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

    @answers(rejected="upload rejected: ", doing="store the artifact")
    async def UploadArtifact(
        self, request_iterator: AsyncIterator[common_pb2.BlobChunk], context: Context
    ) -> control_pb2.ArtifactInfo:
        """One stream of consecutive chunks; the first names the digest the bytes must have."""
        artifacts = self.downloads.artifacts
        writer = artifacts.begin_write(self.max_artifact_bytes)
        expected = ""
        try:
            async for chunk in request_iterator:
                expected = expected or chunk.blob_id
                if chunk.offset != writer.bytes_written:
                    raise RequestRefused(
                        INVALID_ARGUMENT,
                        f"chunk at offset {chunk.offset}, expected {writer.bytes_written}",
                    )
                await asyncio.to_thread(writer.write, chunk.data)
            if not expected:
                raise RequestRefused(INVALID_ARGUMENT, "the first chunk must name the blob_id")
            digest = await asyncio.to_thread(writer.commit, expected)
            self.pinned.add(digest)
        finally:
            writer.abort()  # a no-op once committed
        return control_pb2.ArtifactInfo(digest=digest, size=artifacts.size(digest))

    @answers(rejected="invalid training spec: ")
    async def StartTraining(
        self, request: control_pb2.StartTrainingRequest, context: Context
    ) -> control_pb2.JobInfo:
        spec = training_spec_from_proto(request.spec)
        spec.validate()
        spec.check_start()
        if spec.init_weights and not self.downloads.artifacts.exists(spec.init_weights):
            raise RequestRefused(
                NOT_FOUND, f"no artifact {spec.init_weights}: upload the initial weights first"
            )
        return job_to_proto(self.jobs.start(JobKind.TRAIN, spec, caller_id()))

    @answers(rejected="invalid unlearning spec: ")
    async def StartUnlearning(
        self, request: control_pb2.StartUnlearningRequest, context: Context
    ) -> control_pb2.JobInfo:
        spec = unlearning_spec_from_proto(request.spec)
        return job_to_proto(self.jobs.start(JobKind.UNLEARN, spec, caller_id()))

    @answers(rejected="cannot evaluate: ")
    async def StartEvaluation(
        self, request: control_pb2.StartEvaluationRequest, context: Context
    ) -> control_pb2.JobInfo:
        version_id = request.version_id or self.store.get_setting(ACTIVE_VERSION_KEY) or ""
        forget = forget_from_proto(request.forget) if request.HasField("forget") else None
        deadline = request.round_deadline_s or 300.0
        evaluation = EvaluationRequest(version_id, forget, deadline)
        return job_to_proto(self.jobs.start(JobKind.EVALUATE, evaluation, caller_id()))

    @answers()
    async def GetLayers(
        self, request: control_pb2.GetJobRequest, context: Context
    ) -> control_pb2.LayersResponse:
        self._job(request.job_id)
        for record in self.store.list_rounds(request.job_id):
            ranking = record.metrics.ranking
            if record.phase == Phase.SENSITIVITY and ranking is not None:
                layers = [control_pb2.LayerScore(**vars(score)) for score in ranking.layers]
                return control_pb2.LayersResponse(
                    layers=layers, selection=ranking.rule, note=ranking.note
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
        blocked = {b.participant_id: b for b in self.store.list_blocked()}
        participants = [self._participant_info(r, blocked) for r in self.store.list_participants()]
        known = {p.participant_id for p in participants}
        participants += [blocked_to_proto(b) for pid, b in blocked.items() if pid not in known]
        participants.sort(key=lambda p: p.participant_id)
        return control_pb2.ListParticipantsResponse(participants=participants)

    def _participant_info(
        self, record: ParticipantRecord, blocked: dict[str, BlockedParticipant]
    ) -> control_pb2.ParticipantInfo:
        pid = record.participant_id
        seen = self.fleet.last_seen(pid)
        if seen is not None:
            record.last_seen = seen
        return participant_to_proto(record, self.fleet.is_online(pid), blocked.get(pid))

    @answers()
    async def RemoveParticipant(
        self, request: control_pb2.ParticipantRequest, context: Context
    ) -> control_pb2.ParticipantInfo:
        pid = _participant_id(request.participant_id)
        record = self.store.get_participant(pid)
        try:
            removed = self.fleet.remove(pid)
        except TaskHeldError as exc:
            raise RequestRefused(
                FAILED_PRECONDITION, f"{exc}: wait for its round to end, or block it"
            ) from None
        if not removed or record is None:
            raise RequestRefused(NOT_FOUND, f"no participant {pid!r}")
        return participant_to_proto(record, online=False)

    @answers()
    async def BlockParticipant(
        self, request: control_pb2.BlockParticipantRequest, context: Context
    ) -> control_pb2.ParticipantInfo:
        pid = _participant_id(request.participant_id)
        block = BlockedParticipant(pid, time.time(), _block_reason(request.reason))
        self.fleet.block(block)
        record = self.store.get_participant(pid)
        if record is None:
            return blocked_to_proto(block)
        return participant_to_proto(record, online=False, blocked=block)

    @answers()
    async def UnblockParticipant(
        self, request: control_pb2.ParticipantRequest, context: Context
    ) -> control_pb2.ParticipantInfo:
        pid = _participant_id(request.participant_id)
        if not self.fleet.unblock(pid):
            raise RequestRefused(NOT_FOUND, f"participant {pid!r} is not blocked")
        record = self.store.get_participant(pid)
        if record is None:
            return control_pb2.ParticipantInfo(participant_id=pid)
        return participant_to_proto(record, self.fleet.is_online(pid))

    @answers()
    async def DropVersions(
        self, request: control_pb2.DropVersionsRequest, context: Context
    ) -> control_pb2.DropVersionsResponse:
        dropped = drop_versions(self.store, list(request.version_ids))
        if self.collect is not None and not self.jobs.busy():
            collecting = self.collect()  # else the last job to end collects
            if inspect.isawaitable(collecting):
                await collecting  # the reply says the dropped artifacts are gone
        return control_pb2.DropVersionsResponse(dropped=dropped)

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

    @answers()
    async def ExportAdapter(  # type: ignore[override]
        self, request: control_pb2.VersionRequest, context: Context
    ) -> AsyncIterator[bytes]:  # pre-serialized BlobChunks (PreSerializedResponses)
        data = await adapter_file(self.downloads.artifacts, self._version(request.version_id))
        for chunk in file_chunks(data, self.downloads.chunk_bytes):
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
