"""Blob transfers: resumable uploads into a spool, verified downloads from an offset.

An upload is a stream of BlobChunks. The first names the blob's digest, its declared size
and (optionally) the job and round it belongs to; each next chunk continues where the last
ended. A broken stream leaves its part file, and the next stream for the same participant
and digest must start where that ends. A complete upload is checked against its digest and
moved into the artifact store. A download is checked whole before its first byte goes out.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError

from fused.common.rpc.framing import encode_blob_chunk
from fused.coordinator.artifacts import ArtifactStore
from fused.coordinator.auth import check_known_fields
from fused.coordinator.fleet import Fleet
from fused.coordinator.spool import SpoolWriter as SpoolWriter  # re-exported: one import site
from fused.coordinator.spool import UploadSpool as UploadSpool
from fused.coordinator.state import StateStore
from fused.coordinator.upload_limits import (
    LimitExceeded,
    Stream,
    UploadLedger,
    UploadLimits,
    next_chunk_deadline,
    stalled,
)
from fused.proto.v1 import common_pb2

DIGEST = re.compile(r"^[0-9a-f]{64}$")


class OffsetOutOfRange(ValueError):
    """A download asked to start past the blob's end."""


@dataclass(frozen=True)
class UploadState:
    complete: bool  # the caller itself uploaded every byte already
    offset: int  # where the next stream resumes (0 when complete)


@dataclass(frozen=True)
class StoredBlob:
    blob_id: str
    size: int


def _ignore(reason: str) -> None:
    pass


@dataclass(frozen=True)
class Uploads:
    """The upload protocol: where a stream may start, what its first chunk may claim, and
    who uploaded what (a digest an upload lets its sender download and push). Each stream
    belongs to an open task of its sender and is held to upload_limits' quota, stream cap
    and pace; `on_refusal` counts each refusal by a limit under its reason."""

    spool: UploadSpool
    artifacts: ArtifactStore
    fleet: Fleet
    store: StateStore  # to check the job and round an upload names
    limits: UploadLimits
    on_refusal: Callable[[str], None] = _ignore
    inline_max_bytes: int = 0  # results may carry artifacts up to this size inline
    ledger: UploadLedger = field(init=False)

    def __post_init__(self) -> None:
        self.limits.check()
        object.__setattr__(self, "ledger", UploadLedger(self.limits))

    @property
    def max_bytes(self) -> int:
        return self.limits.max_bytes

    def status(self, pid: str, digest: str) -> UploadState:
        if self.fleet.uploaded(pid, digest):
            return UploadState(complete=True, offset=0)
        return UploadState(complete=False, offset=self.spool.offset(pid, digest))

    def settled(self, pid: str, digest: str) -> None:
        """An accepted result names this upload: it leaves pid's quota."""
        self.ledger.settled(pid, digest)

    async def receive(self, pid: str, chunks: AsyncIterator[common_pb2.BlobChunk]) -> StoredBlob:
        """Take one stream of `pid`'s chunks; ValueError (or RequestRefused: a chunk with
        unknown fields, a limit) says why it was refused. Whatever arrived is kept for a
        resume."""
        receipt = _Receipt(self, pid)
        try:
            async for chunk in self._paced(chunks, receipt):
                done = receipt.take(chunk)
                if done is not None:
                    return done
            return await self._finish(pid, receipt.writer)
        except DecodeError:
            raise ValueError("a chunk is not a valid fused.v1.BlobChunk message") from None
        except LimitExceeded as exc:
            self.on_refusal(exc.reason)
            raise
        finally:
            receipt.close()  # a broken connection keeps what arrived

    async def receive_bulk(
        self, pid: str, first: common_pb2.BlobChunk, pump: Callable[[SpoolWriter], Awaitable[None]]
    ) -> StoredBlob:
        """One upload whose bytes `pump` moves into the spool writer (the bulk port): `first`,
        the chunk an UploadBlob stream would start with (without data), is checked and
        admitted as that chunk is; then as receive() does."""
        receipt = _Receipt(self, pid)
        try:
            done = receipt.take(first)
            if done is not None:
                return done
            assert receipt.writer is not None  # take() opened it
            await pump(receipt.writer)
            return await self._finish(pid, receipt.writer)
        except LimitExceeded as exc:
            self.on_refusal(exc.reason)
            raise
        finally:
            receipt.close()

    async def receive_inline(
        self, pid: str, blob: common_pb2.InlineBlob, job_id: str, round_number: int
    ) -> StoredBlob:
        """An artifact a result carries whole: held to the checks, quota and store of an
        upload of one chunk. ValueError or RequestRefused say why it was refused."""
        size = len(blob.data)
        if size > self.inline_max_bytes:
            raise ValueError(
                f"an inline artifact of {size} bytes exceeds inline_max_bytes "
                f"({self.inline_max_bytes}): upload it with UploadBlob"
            )
        first = common_pb2.BlobChunk(
            blob_id=blob.blob_id, total_size=size, job_id=job_id, round=round_number
        )
        try:
            self.check_first_chunk(pid, first)
            if self.fleet.uploaded(pid, blob.blob_id):
                return StoredBlob(blob.blob_id, size)
            if hashlib.sha256(blob.data).hexdigest() != blob.blob_id:
                raise ValueError(f"inline artifact does not match its digest {blob.blob_id}")
            parts = self.spool.held_bytes(pid, but=blob.blob_id)
            stream = self.ledger.admit(pid, blob.blob_id, size, parts)
        except LimitExceeded as exc:
            self.on_refusal(exc.reason)
            raise
        try:
            # no fsync: a crash redoes the round, and the result is sent again
            await asyncio.to_thread(self.artifacts.put_bytes, blob.data, False)
        finally:
            self.ledger.end(stream)
        self.fleet.record_upload(pid, blob.blob_id)
        self.ledger.stored(pid, blob.blob_id, size)
        return StoredBlob(blob.blob_id, size)

    async def _paced(
        self, chunks: AsyncIterator[common_pb2.BlobChunk], receipt: _Receipt
    ) -> AsyncIterator[common_pb2.BlobChunk]:
        """The stream's chunks, each within its deadline (idle timeout, minimum rate)."""
        loop = asyncio.get_running_loop()
        source = chunks.__aiter__()
        started = loop.time()
        received = 0
        while True:
            now = loop.time()
            deadline = next_chunk_deadline(self.limits, started, now, received)
            try:
                chunk = await asyncio.wait_for(anext(source), max(0.0, deadline.at - now))
            except StopAsyncIteration:
                return
            except TimeoutError:
                elapsed = loop.time() - started
                raise stalled(self.limits, deadline, elapsed, received, receipt.offset) from None
            received += len(chunk.data)
            yield chunk

    async def _finish(self, pid: str, writer: SpoolWriter | None) -> StoredBlob:
        if writer is None:
            raise ValueError("empty upload")
        if writer.size != writer.total:
            raise ValueError(
                f"stream ended after {writer.size} of {writer.total} bytes; resume at "
                f"offset {writer.size}"
            )
        digest = await asyncio.to_thread(writer.finish)
        self.fleet.record_upload(pid, digest)
        self.ledger.stored(pid, digest, writer.total)
        return StoredBlob(digest, writer.total)

    def precheck(self, pid: str, first: common_pb2.BlobChunk) -> bool:
        """Whether an upload starting with `first` would be accepted now (as receive() checks
        it; ValueError or RequestRefused say why not): True when pid had uploaded it
        already, False when its bytes are to be sent."""
        check_known_fields(first)
        self.check_first_chunk(pid, first)
        if self.fleet.uploaded(pid, first.blob_id):
            return True
        held = self.spool.offset(pid, first.blob_id)
        if first.offset != held:
            raise ValueError(f"upload starts at offset {first.offset}; resume at offset {held}")
        return False

    def check_first_chunk(self, pid: str, chunk: common_pb2.BlobChunk) -> None:
        if not DIGEST.match(chunk.blob_id):
            raise ValueError("the first chunk must name the blob's sha256 digest")
        if chunk.total_size > self.max_bytes:
            raise ValueError(
                f"upload of {chunk.total_size} bytes exceeds the limit of {self.max_bytes}"
            )
        if not chunk.job_id:
            raise LimitExceeded(
                grpc.StatusCode.FAILED_PRECONDITION,
                "no_task",
                "an upload must name the job and round of an open task of the uploader",
            )
        job = self.store.get_job(chunk.job_id)
        if job is None:
            raise ValueError(f"upload names unknown job {chunk.job_id!r}")
        # Rounds only go up: a round past the job's current one is none it has dispatched.
        if chunk.round > job.round:
            raise ValueError(
                f"upload names round {chunk.round} of job {chunk.job_id!r}, which has not "
                f"reached it (current round {job.round})"
            )
        if not self.fleet.has_open_task(pid, chunk.job_id, chunk.round):
            raise LimitExceeded(
                grpc.StatusCode.FAILED_PRECONDITION,
                "no_task",
                f"no open task of {pid} in round {chunk.round} of job {chunk.job_id!r}: "
                "an upload belongs to a task",
            )


class _Receipt:
    """One stream's progress: its first chunk checked and admitted, then its writer."""

    def __init__(self, uploads: Uploads, pid: str) -> None:
        self._uploads = uploads
        self._pid = pid
        self.writer: SpoolWriter | None = None
        self._stream: Stream | None = None

    @property
    def offset(self) -> int:
        return self.writer.size if self.writer is not None else 0

    def take(self, chunk: common_pb2.BlobChunk) -> StoredBlob | None:
        """Write a chunk; the stored blob when the sender had uploaded it all already."""
        check_known_fields(chunk)
        if self.writer is None:
            up, pid = self._uploads, self._pid
            up.check_first_chunk(pid, chunk)
            # Idempotent, but only for the sender's own uploads: knowing a digest must not
            # let a participant claim another's update as its own.
            if up.fleet.uploaded(pid, chunk.blob_id):
                return StoredBlob(chunk.blob_id, up.artifacts.size(chunk.blob_id))
            parts = up.spool.held_bytes(pid, but=chunk.blob_id)
            self._stream = up.ledger.admit(pid, chunk.blob_id, chunk.total_size, parts)
            self.writer = up.spool.open(pid, chunk.blob_id, chunk.total_size, chunk.offset)
        self.writer.write(chunk.offset, chunk.data)
        return None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self._stream is not None:
            self._uploads.ledger.end(self._stream)


@dataclass(frozen=True)
class Downloads:
    artifacts: ArtifactStore
    chunk_bytes: int

    async def open(self, digest: str, offset: int = 0) -> Iterator[bytes]:
        """Pre-serialized BlobChunks of `digest` from `offset`, once its whole content checks
        out: a corrupt artifact is never served. Raises MissingArtifactError,
        CorruptArtifactError (also while streaming, if the file changed since) or
        OffsetOutOfRange."""
        total = await self.checked_size(digest, offset)
        return self._chunks(digest, offset, total)

    async def checked_size(self, digest: str, offset: int = 0) -> int:
        """The artifact's size once its content checks out (the bulk port then sends its
        file); raises as open() does."""
        total = self.artifacts.size(digest)
        await asyncio.to_thread(self.artifacts.verify, digest)
        if offset > total:
            raise OffsetOutOfRange(f"offset beyond size {total}")
        return total

    def _chunks(self, digest: str, start: int, total: int) -> Iterator[bytes]:
        offset = 0
        for chunk in self.artifacts.iter_chunks(digest, self.chunk_bytes):
            end = offset + len(chunk)
            if end > start:
                skip = max(0, start - offset)
                yield encode_blob_chunk(digest, offset + skip, chunk[skip:], total)
            offset = end
