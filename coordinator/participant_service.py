"""gRPC servicer for participants: checks the caller, parses, and delegates to Fleet and the
transfers; failures are answered through rpc_errors' table."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from fused.common.domain.tasks import TaskSpec
from fused.common.ml.schema import parse_schema
from fused.common.rpc.metering import current_labels, respond_for, task_metadata
from fused.common.rpc.protocol import version_refusal
from fused.common.rpc.task_convert import outcome_from_proto, task_to_proto
from fused.coordinator.auth import RequestRefused
from fused.coordinator.bulk_tickets import TicketBook
from fused.coordinator.fleet import (
    Fleet,
    NotRegisteredError,
    ParticipantBlockedError,
    TaskClosedError,
)
from fused.coordinator.forget_requests import ForgetRequests
from fused.coordinator.heartbeat_pace import HeartbeatPace
from fused.coordinator.inline_blobs import InlineBlobs
from fused.coordinator.limits import MAX_INLINE_BLOBS
from fused.coordinator.metrics import CoordinatorMetrics
from fused.coordinator.rpc_errors import Context, answers, bound_participant, caller_id
from fused.coordinator.state import ParticipantRecord
from fused.coordinator.transfer import DIGEST, Downloads, Uploads
from fused.proto.v1 import common_pb2, participant_pb2, participant_pb2_grpc

log = logging.getLogger(__name__)
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT

PARTICIPANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_CLASSES = 10_000
DEADLINE_MARGIN_S = 2.0  # a long poll's empty answer leaves this much of the caller's deadline


@dataclass(frozen=True)
class RegisterTerms:
    """What the Register reply tells a participant: how often to beat and poll, and the
    chunk size, upload limit and inline size of its transfers."""

    heartbeat_interval_s: float
    poll_wait_s: float
    chunk_bytes: int
    max_upload_bytes: int
    inline_max_bytes: int
    bulk_port: int = 0  # 0: no bulk port, artifacts go by DownloadBlob and UploadBlob only


def _digest(blob_id: str) -> str:
    if not DIGEST.match(blob_id):
        raise RequestRefused(
            grpc.StatusCode.INVALID_ARGUMENT, "blob_id must be a sha256 hex digest"
        )
    return blob_id


def _record(pid: str, request: participant_pb2.RegisterRequest) -> ParticipantRecord:
    data = request.data
    counts = list(data.class_counts)
    now = time.time()
    info = {
        "dataset": data.dataset,
        "agent_version": request.agent_version,
        "workload": data.workload,
        "workload_version": data.workload_version,
        "schema_digest": data.schema_digest,
        "workload_error": data.workload_error,
    }
    if data.workload_error:  # registered, so that jobs can say why it is left out
        return ParticipantRecord(pid, [], 0, 0, now, now, info)
    if not data.workload:
        raise RequestRefused(INVALID_ARGUMENT, "data summary: name the workload served")
    buckets = data.num_classes or 1
    if len(counts) != buckets or buckets > MAX_CLASSES or sum(counts) != data.num_train:
        raise RequestRefused(
            INVALID_ARGUMENT,
            "data summary: class_counts must hold one count per class (one without classes) "
            "and sum to num_train",
        )
    return ParticipantRecord(pid, counts, data.num_train, data.num_test, now, now, info)


def _check_schema(data: participant_pb2.DataSummary) -> bytes:
    """The declared tensor schema, when it parses and its sha256 is the declared digest."""
    _checked_schema(data.tensor_schema, data.schema_digest)
    return data.tensor_schema


@functools.lru_cache(maxsize=64)  # a federation's agents declare the same few schemas
def _checked_schema(schema: bytes, digest: str) -> None:
    """Raises RequestRefused (never cached) for a bad schema or digest."""
    try:
        parse_schema(schema)
    except ValueError as exc:
        raise RequestRefused(INVALID_ARGUMENT, f"data summary: {exc}") from None
    if hashlib.sha256(schema).hexdigest() != digest:
        raise RequestRefused(
            INVALID_ARGUMENT, "data summary: schema_digest is not the sha256 of tensor_schema"
        )


@dataclass(frozen=True, eq=False)
class ParticipantServicer(participant_pb2_grpc.ParticipantServiceServicer):
    """Each method checks the caller, parses, and calls the fleet or the transfers."""

    fleet: Fleet
    uploads: Uploads
    downloads: Downloads
    terms: RegisterTerms
    metrics: CoordinatorMetrics
    inline: InlineBlobs
    requests: ForgetRequests | None = None  # participants' own forgetting requests
    tickets: TicketBook | None = None  # the bulk port's, when there is one
    pace: HeartbeatPace | None = None  # heartbeat intervals for the fleet's size

    def count_rejected(self, reason: str) -> None:
        self.metrics.rejected_results.labels(reason).inc()

    def _registered_caller(self, refusal: str) -> str:
        pid = caller_id()
        if not self.fleet.is_registered(pid):
            raise RequestRefused(grpc.StatusCode.FAILED_PRECONDITION, refusal)
        return pid

    @answers()
    async def Register(
        self, request: participant_pb2.RegisterRequest, context: Context
    ) -> participant_pb2.RegisterResponse:
        pid = request.participant_id
        if not PARTICIPANT_ID.match(pid):
            raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT, f"bad participant id {pid!r}")
        bound_participant(pid)
        refusal = version_refusal(request.protocol_version)
        if refusal is not None:
            raise RequestRefused(grpc.StatusCode.FAILED_PRECONDITION, refusal)
        record = _record(pid, request)
        if not request.data.workload_error:  # jobs read the schema by its digest
            schema = _check_schema(request.data)
            if not self.uploads.artifacts.exists(request.data.schema_digest):
                await asyncio.to_thread(self.uploads.artifacts.put_bytes, schema)
        self.fleet.register(record)
        self.inline.new_session(pid)
        log.info("participant %s registered (%d training samples)", pid, request.data.num_train)
        t = self.terms
        beat_s = t.heartbeat_interval_s if self.pace is None else self.pace.interval_for(pid)
        return participant_pb2.RegisterResponse(
            heartbeat_interval_s=beat_s,
            poll_wait_s=t.poll_wait_s,
            chunk_bytes=t.chunk_bytes,
            max_upload_bytes=t.max_upload_bytes,
            inline_max_bytes=t.inline_max_bytes,
            bulk_port=t.bulk_port,
        )

    @answers()
    async def Heartbeat(
        self, request: participant_pb2.HeartbeatRequest, context: Context
    ) -> participant_pb2.HeartbeatResponse:
        pid = bound_participant(request.participant_id)
        return participant_pb2.HeartbeatResponse(registered=self.fleet.heartbeat(pid))

    @answers()
    async def PullTask(
        self, request: participant_pb2.PullTaskRequest, context: Context
    ) -> participant_pb2.PullTaskResponse:
        pid = bound_participant(request.participant_id)
        wait_s = self._wait_within(request.wait_s, context)
        return await self._task_reply(pid, await self.fleet.pull(pid, wait_s))

    def _wait_within(self, asked: float, context: Context) -> float:
        """How long a call may wait for a task: as asked, at most poll_wait_s, and ending
        DEADLINE_MARGIN_S before the caller's deadline, so that a call that queued behind a
        burst is answered empty instead of running out of time."""
        wait_s = max(0.0, min(asked, self.terms.poll_wait_s))
        remaining = context.time_remaining()
        if remaining is not None:
            wait_s = min(wait_s, max(0.0, remaining - DEADLINE_MARGIN_S))
        return wait_s

    async def _task_reply(
        self, pid: str, task: TaskSpec | None
    ) -> participant_pb2.PullTaskResponse:
        """A task with the artifacts that travel inline; its bytes are charged to it."""
        if task is None:
            return participant_pb2.PullTaskResponse()
        respond_for(task_metadata(pid, task.job_id, task.phase, task.round))
        blobs = await self.inline.for_task(pid, task)
        return participant_pb2.PullTaskResponse(task=task_to_proto(task), blobs=blobs)

    async def _next_task(self, pid: str, wait_s: float) -> participant_pb2.PullTaskResponse:
        """After an accepted result: the next task within wait_s, or none (a blocked or
        removed participant learns why from its next PullTask)."""
        try:
            task = await self.fleet.pull(pid, wait_s)
        except (ParticipantBlockedError, NotRegisteredError):
            return participant_pb2.PullTaskResponse()
        return await self._task_reply(pid, task)

    @answers(rejected="result rejected: ", count="invalid_result", doing="check the result")
    async def PushResult(
        self, request: participant_pb2.PushResultRequest, context: Context
    ) -> participant_pb2.PushResultResponse:
        pid = bound_participant(request.participant_id)
        outcome = outcome_from_proto(request)
        await self._store_inline(pid, request)
        try:
            await self.fleet.complete(outcome)
        except TaskClosedError as exc:  # an answer, not an error: the result came too late
            return participant_pb2.PushResultResponse(accepted=False, message=str(exc))
        if outcome.train is not None:  # accepted: its update leaves the sender's upload quota
            self.uploads.settled(pid, outcome.train.update_blob_id)
        reply = participant_pb2.PushResultResponse(accepted=True)
        if request.wait_s > 0:
            await context.send_initial_metadata(())  # headers now: the result is in (bench.load)
            wait_s = self._wait_within(request.wait_s, context)
            reply.next.CopyFrom(await self._next_task(pid, wait_s))
        return reply

    async def _store_inline(self, pid: str, request: participant_pb2.PushResultRequest) -> None:
        """Store the artifacts the result carries, as uploads of its task's round. A result
        for a task that is not open stores nothing: completing it answers why."""
        if len(request.blobs) > MAX_INLINE_BLOBS:
            raise ValueError(f"a result carries at most {MAX_INLINE_BLOBS} inline artifacts")
        task = self.fleet.open_task(pid, request.task_id)
        if task is None:
            return
        for blob in request.blobs:
            await self.uploads.receive_inline(pid, blob, task.job_id, task.round)

    def _downloader(self, request: participant_pb2.DownloadBlobRequest) -> str:
        """The caller, if it may download the blob `request` names."""
        pid = self._registered_caller("register before downloading")
        blob_id = _digest(request.blob_id)
        if not self.fleet.may_download(pid, blob_id):
            raise RequestRefused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"blob {blob_id} is not named by an open task of {pid} (nor uploaded by it)",
            )
        return pid

    @answers()
    async def DownloadBlob(  # type: ignore[override]
        self, request: participant_pb2.DownloadBlobRequest, context: Context
    ) -> AsyncIterator[bytes]:  # pre-serialized BlobChunks (PreSerializedResponses)
        self._downloader(request)
        for chunk in await self.downloads.open(request.blob_id, request.offset):
            yield chunk

    @answers(rejected="transfer refused: ")
    async def OpenTransfer(
        self, request: participant_pb2.OpenTransferRequest, context: Context
    ) -> participant_pb2.OpenTransferResponse:
        """A bulk port ticket, after the checks of the call it stands for."""
        if self.tickets is None:
            raise RequestRefused(
                grpc.StatusCode.UNIMPLEMENTED,
                "this coordinator has no bulk port: use DownloadBlob and UploadBlob",
            )
        kind = request.WhichOneof("transfer")
        if kind == "download":
            pid = self._downloader(request.download)
            ticket = self.tickets.issue(pid, current_labels(), download=request.download)
            return participant_pb2.OpenTransferResponse(ticket=ticket)
        if kind == "upload":
            pid = self._registered_caller("register before uploading")
            if self.uploads.precheck(pid, request.upload):
                return participant_pb2.OpenTransferResponse(complete=True)
            ticket = self.tickets.issue(pid, current_labels(), upload=request.upload)
            return participant_pb2.OpenTransferResponse(ticket=ticket)
        raise ValueError("name the download or the upload to open")

    @answers()
    async def GetUploadStatus(
        self, request: participant_pb2.UploadStatusRequest, context: Context
    ) -> participant_pb2.UploadStatusResponse:
        pid = self._registered_caller("register before uploading")
        state = self.uploads.status(pid, _digest(request.blob_id))
        if state.complete:
            return participant_pb2.UploadStatusResponse(complete=True)
        return participant_pb2.UploadStatusResponse(offset=state.offset)

    @answers(rejected="upload rejected: ", count="invalid_upload", doing="store the upload")
    async def UploadBlob(
        self,
        request_iterator: AsyncIterator[common_pb2.BlobChunk],
        context: Context,
    ) -> participant_pb2.UploadBlobResponse:
        pid = self._registered_caller("register before uploading")
        blob = await self.uploads.receive(pid, request_iterator)
        return participant_pb2.UploadBlobResponse(blob_id=blob.blob_id, size=blob.size)

    @answers()
    async def RequestForgetting(
        self, request: participant_pb2.ForgettingRequest, context: Context
    ) -> participant_pb2.ForgettingReply:
        pid = bound_participant(request.participant_id)  # only its own data, ever
        if not PARTICIPANT_ID.match(pid):
            raise RequestRefused(grpc.StatusCode.INVALID_ARGUMENT, f"bad participant id {pid!r}")
        if self.requests is None:
            raise RequestRefused(grpc.StatusCode.UNIMPLEMENTED, "no request handling here")
        made = self.requests.submit(pid, list(request.sample_ids))
        log.info("participant %s asked to be forgotten: %s", pid, made.request_id)
        return participant_pb2.ForgettingReply(
            request_id=made.request_id, status=made.status.value, job_id=made.job_id
        )
