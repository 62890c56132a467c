"""gRPC servicer for participants: a thin layer over Fleet and ArtifactStore."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from fused.common.rpc.convert import outcome_from_proto, task_to_proto
from fused.common.rpc.framing import encode_blob_chunk
from fused.coordinator.artifacts import ArtifactStore, CorruptArtifactError, MissingArtifactError
from fused.coordinator.auth import RequestRefused, check_known_fields
from fused.coordinator.fleet import Fleet, NotRegisteredError, TaskClosedError
from fused.coordinator.metrics import CoordinatorMetrics
from fused.coordinator.rpc_errors import Context, abort, bound_participant, caller_id
from fused.coordinator.state import ParticipantRecord, StateStore
from fused.coordinator.transfer import SpoolWriter, UploadSpool
from fused.proto.v1 import common_pb2, participant_pb2, participant_pb2_grpc

log = logging.getLogger(__name__)

PARTICIPANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DIGEST = re.compile(r"^[0-9a-f]{64}$")
MAX_CLASSES = 10_000


@dataclass(frozen=True)
class FleetSettings:
    heartbeat_interval_s: float
    poll_wait_s: float
    chunk_bytes: int
    max_upload_bytes: int


class ParticipantServicer(participant_pb2_grpc.ParticipantServiceServicer):
    def __init__(
        self,
        fleet: Fleet,
        artifacts: ArtifactStore,
        settings: FleetSettings,
        metrics: CoordinatorMetrics,
        spool: UploadSpool,
        store: StateStore,
    ) -> None:
        self._fleet = fleet
        self._artifacts = artifacts
        self._spool = spool
        self._store = store
        self._settings = settings
        self._metrics = metrics

    async def Register(
        self, request: participant_pb2.RegisterRequest, context: Context
    ) -> participant_pb2.RegisterResponse:
        pid = request.participant_id
        if not PARTICIPANT_ID.match(pid):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"bad participant id {pid!r}")
        await bound_participant(context, pid)
        counts = list(request.data.class_counts)
        if not 0 < len(counts) <= MAX_CLASSES or sum(counts) != request.data.num_train:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "data summary: class_counts must be non-empty and sum to num_train",
            )
        now = time.time()
        info = {"dataset": request.data.dataset, "agent_version": request.agent_version}
        self._fleet.register(
            ParticipantRecord(
                pid, counts, request.data.num_train, request.data.num_test, now, now, info
            )
        )
        log.info("participant %s registered (%d training samples)", pid, request.data.num_train)
        s = self._settings
        return participant_pb2.RegisterResponse(
            heartbeat_interval_s=s.heartbeat_interval_s,
            poll_wait_s=s.poll_wait_s,
            chunk_bytes=s.chunk_bytes,
            max_upload_bytes=s.max_upload_bytes,
        )

    async def Heartbeat(
        self, request: participant_pb2.HeartbeatRequest, context: Context
    ) -> participant_pb2.HeartbeatResponse:
        pid = await bound_participant(context, request.participant_id)
        return participant_pb2.HeartbeatResponse(registered=self._fleet.heartbeat(pid))

    async def PullTask(
        self, request: participant_pb2.PullTaskRequest, context: Context
    ) -> participant_pb2.PullTaskResponse:
        pid = await bound_participant(context, request.participant_id)
        wait_s = max(0.0, min(request.wait_s, self._settings.poll_wait_s))
        try:
            task = await self._fleet.pull(pid, wait_s)
        except NotRegisteredError:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"participant {request.participant_id!r} is not registered; call Register first",
            )
        if task is None:
            return participant_pb2.PullTaskResponse()
        return participant_pb2.PullTaskResponse(task=task_to_proto(task))

    async def PushResult(
        self, request: participant_pb2.PushResultRequest, context: Context
    ) -> participant_pb2.PushResultResponse:
        await bound_participant(context, request.participant_id)
        try:
            outcome = outcome_from_proto(request)
            await self._fleet.complete(outcome)
        except NotRegisteredError:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"participant {request.participant_id!r} is not registered; call Register first",
            )
        except TaskClosedError as exc:
            return participant_pb2.PushResultResponse(accepted=False, message=str(exc))
        except PermissionError as exc:
            await abort(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except OSError as exc:  # our disk or file limit, not the result: the task stays open
            log.error("could not check the result of task %s: %s", request.task_id, exc)
            await abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"the coordinator could not check the result now ({exc.strerror}); retry",
            )
        except ValueError as exc:
            self._metrics.rejected_results.labels("invalid_result").inc()
            log.warning(
                "rejected result of %s for task %s: %s",
                request.participant_id,
                request.task_id,
                exc,
            )
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"result rejected: {exc}")
        return participant_pb2.PushResultResponse(accepted=True)

    async def DownloadBlob(  # type: ignore[override]
        self, request: participant_pb2.DownloadBlobRequest, context: Context
    ) -> AsyncIterator[bytes]:  # pre-serialized BlobChunks (PreSerializedResponses)
        pid = caller_id(context)
        if not self._fleet.is_registered(pid):
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, "register before downloading")
        if not DIGEST.match(request.blob_id):
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "blob_id must be a sha256 hex digest"
            )
        if not self._fleet.may_download(pid, request.blob_id):
            await abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"blob {request.blob_id} is not named by an open task of {pid} (nor uploaded "
                "by it)",
            )
        try:
            total = self._artifacts.size(request.blob_id)
            # Checked before the first byte goes out: a corrupt artifact is never served.
            await asyncio.to_thread(self._artifacts.verify, request.blob_id)
        except MissingArtifactError:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no artifact {request.blob_id}")
        except CorruptArtifactError as exc:
            log.error("refused to serve %s: %s", request.blob_id, exc)
            await abort(context, grpc.StatusCode.DATA_LOSS, str(exc))
        if request.offset > total:
            await abort(context, grpc.StatusCode.OUT_OF_RANGE, f"offset beyond size {total}")
        offset = 0
        for chunk in self._artifacts.iter_chunks(request.blob_id, self._settings.chunk_bytes):
            end = offset + len(chunk)
            if end > request.offset:
                skip = max(0, request.offset - offset)
                yield encode_blob_chunk(request.blob_id, offset + skip, chunk[skip:], total)
            offset = end

    async def GetUploadStatus(
        self, request: participant_pb2.UploadStatusRequest, context: Context
    ) -> participant_pb2.UploadStatusResponse:
        pid = caller_id(context)
        if not self._fleet.is_registered(pid):
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, "register before uploading")
        if not DIGEST.match(request.blob_id):
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "blob_id must be a sha256 hex digest"
            )
        if self._fleet.uploaded(pid, request.blob_id):
            return participant_pb2.UploadStatusResponse(complete=True)
        return participant_pb2.UploadStatusResponse(offset=self._spool.offset(pid, request.blob_id))

    async def UploadBlob(
        self,
        request_iterator: AsyncIterator[common_pb2.BlobChunk],
        context: Context,
    ) -> participant_pb2.UploadBlobResponse:
        pid = caller_id(context)
        if not self._fleet.is_registered(pid):
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, "register before uploading")
        writer: SpoolWriter | None = None
        try:
            async for chunk in request_iterator:
                check_known_fields(chunk)
                if writer is None:
                    self._check_first_chunk(chunk)
                    # Idempotent, but only for the sender's own uploads: knowing a digest
                    # must not let a participant claim another's update as its own.
                    if self._fleet.uploaded(pid, chunk.blob_id):
                        return participant_pb2.UploadBlobResponse(
                            blob_id=chunk.blob_id, size=self._artifacts.size(chunk.blob_id)
                        )
                    writer = self._spool.open(pid, chunk.blob_id, chunk.total_size, chunk.offset)
                writer.write(chunk.offset, chunk.data)
            if writer is None:
                raise ValueError("empty upload")
            if writer.size != writer.total:
                writer.close()
                raise ValueError(
                    f"stream ended after {writer.size} of {writer.total} bytes; resume at "
                    f"offset {writer.size}"
                )
            digest = await asyncio.to_thread(writer.finish)
            self._fleet.record_upload(pid, digest)
        except RequestRefused as exc:
            self._metrics.rejected_results.labels("invalid_upload").inc()
            await abort(context, exc.code, f"upload rejected: {exc.message}")
        except DecodeError:
            self._metrics.rejected_results.labels("invalid_upload").inc()
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "upload rejected: a chunk is not a valid fused.v1.BlobChunk message",
            )
        except ValueError as exc:
            if writer is not None and writer.size != writer.total:
                writer.close()  # keep the part: the participant may resume
            self._metrics.rejected_results.labels("invalid_upload").inc()
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"upload rejected: {exc}")
        finally:
            if writer is not None:
                writer.close()  # a broken connection keeps what arrived
        return participant_pb2.UploadBlobResponse(blob_id=digest, size=writer.total)

    def _check_first_chunk(self, chunk: common_pb2.BlobChunk) -> None:
        if not DIGEST.match(chunk.blob_id):
            raise ValueError("the first chunk must name the blob's sha256 digest")
        if chunk.total_size > self._settings.max_upload_bytes:
            raise ValueError(
                f"upload of {chunk.total_size} bytes exceeds the limit of "
                f"{self._settings.max_upload_bytes}"
            )
        if chunk.job_id:
            job = self._store.get_job(chunk.job_id)
            if job is None:
                raise ValueError(f"upload names unknown job {chunk.job_id!r}")
            # Rounds only go up: a round past the job's current one is none it has dispatched.
            if chunk.round > job.round:
                raise ValueError(
                    f"upload names round {chunk.round} of job {chunk.job_id!r}, which has not "
                    f"reached it (current round {job.round})"
                )
