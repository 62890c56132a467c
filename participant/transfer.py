"""Artifact transport for one task: cached, digest-checked downloads and resumable uploads."""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from fused.common.domain.tasks import TaskSpec
from fused.common.rpc.bulk_wire import BulkRefused
from fused.participant.blobs import BlobCache
from fused.participant.bulk import BulkLink
from fused.participant.retry import RETRYABLE
from fused.proto.v1 import common_pb2, participant_pb2, participant_pb2_grpc

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str | bytes], ...]


@dataclass(frozen=True)
class TaskTransfer:
    """Moves one task's artifacts over the session's stub, with the task's call metadata."""

    stub: participant_pb2_grpc.ParticipantServiceStub
    task: TaskSpec
    metadata: Metadata
    cache: BlobCache
    max_download_bytes: int
    chunk_bytes: int
    inline_max_bytes: int = 0  # uploads up to this size go with the result, not by stream
    inline: list[common_pb2.InlineBlob] = field(default_factory=list)  # what the result carries
    bulk: BulkLink | None = None  # the coordinator's bulk port, when it has one

    def fetch(self, digest: str) -> bytes:
        """The artifact, downloaded only if this agent does not hold it already."""
        cached = self.cache.get(digest)
        if cached is None:
            cached = self._download(digest)
            self.cache.put(digest, cached)
        return cached

    def _download(self, digest: str) -> bytes:
        request = participant_pb2.DownloadBlobRequest(blob_id=digest)
        if self.bulk is not None:
            ticket = self._ticket(participant_pb2.OpenTransferRequest(download=request))
            try:
                return self.bulk.download(ticket.ticket, digest, self.max_download_bytes)
            except OSError as exc:  # e.g. a firewall between us and the bulk port
                log.warning("bulk download of %s failed (%s); streaming it", digest[:12], exc)
        parts: list[bytes] = []
        size = 0
        hasher = hashlib.sha256()  # as chunks arrive: it overlaps the transfer of the next
        for chunk in self.stub.DownloadBlob(request, timeout=300, metadata=self.metadata):
            size += len(chunk.data)
            if size > self.max_download_bytes:
                raise ValueError(f"download exceeds {self.max_download_bytes} bytes")
            hasher.update(chunk.data)
            parts.append(chunk.data)
        if hasher.hexdigest() != digest:
            raise ValueError(f"downloaded artifact does not match its digest {digest}")
        return b"".join(parts)

    def upload(self, blob: bytes, attempts: int = 4) -> str:
        """A small artifact is kept to travel inline with the result. A larger one goes over
        the bulk port when the coordinator has one, else by stream: idempotent and resumable
        (ask what the coordinator holds, send the rest, and after a broken connection
        continue from where it stopped, by stream)."""
        task, stub = self.task, self.stub
        digest = hashlib.sha256(blob).hexdigest()
        if len(blob) <= self.inline_max_bytes:
            self.inline.append(common_pb2.InlineBlob(blob_id=digest, data=blob))
            return digest
        offset = 0  # a fresh upload just sends: the status is asked only after a failure
        bulk = self.bulk
        for attempt in range(attempts):
            try:
                if bulk is not None:
                    return self._upload_bulk(bulk, blob, digest, offset)
                chunks = upload_chunks(blob, digest, offset, self.chunk_bytes, task)
                return str(stub.UploadBlob(chunks, timeout=300, metadata=self.metadata).blob_id)
            except (OSError, BulkRefused) as exc:
                resumable = not isinstance(exc, BulkRefused) or "resume at offset" in str(exc)
                if not resumable or attempt == attempts - 1:
                    raise
                log.warning("bulk upload of %s failed (%s); streaming the rest", digest[:12], exc)
                bulk = None
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
                if (code not in RETRYABLE and "resume at offset" not in details) or (
                    attempt == attempts - 1
                ):
                    raise
                log.warning("upload of %s interrupted (%s); resuming", digest[:12], code)
                if code in RETRYABLE:
                    time.sleep(min(2.0**attempt, 10.0) * random.uniform(0.5, 1.0))
            status = stub.GetUploadStatus(
                participant_pb2.UploadStatusRequest(
                    blob_id=digest, job_id=task.job_id, round=task.round
                ),
                timeout=30,
                metadata=self.metadata,
            )
            if status.complete:
                return digest
            offset = status.offset
        raise AssertionError("unreachable")

    def _upload_bulk(self, bulk: BulkLink, blob: bytes, digest: str, offset: int) -> str:
        first = common_pb2.BlobChunk(
            blob_id=digest,
            offset=offset,
            total_size=len(blob),
            job_id=self.task.job_id,
            round=self.task.round,
        )
        ticket = self._ticket(participant_pb2.OpenTransferRequest(upload=first))
        if ticket.complete:
            return digest
        return bulk.upload(ticket.ticket, blob, offset)

    def _ticket(
        self, request: participant_pb2.OpenTransferRequest
    ) -> participant_pb2.OpenTransferResponse:
        reply: participant_pb2.OpenTransferResponse = self.stub.OpenTransfer(
            request, timeout=30, metadata=self.metadata
        )
        return reply


def upload_chunks(
    blob: bytes, digest: str, offset: int, chunk_bytes: int, task: TaskSpec
) -> Iterator[common_pb2.BlobChunk]:
    """The blob from offset on, in chunks naming the job, round and digest."""
    for start in range(offset, max(len(blob), offset + 1), chunk_bytes):
        yield common_pb2.BlobChunk(
            blob_id=digest,
            offset=start,
            data=blob[start : start + chunk_bytes],
            total_size=len(blob),
            job_id=task.job_id,
            round=task.round,
        )
