"""Blob transfers: resumable uploads into a spool, verified downloads from an offset.

An upload is a stream of BlobChunks. The first names the blob's digest, its declared size
and (optionally) the job and round it belongs to; each next chunk continues where the last
ended. A broken stream leaves its part file, and the next stream for the same participant
and digest must start where that ends. A complete upload is checked against its digest and
moved into the artifact store. A download is checked whole before its first byte goes out.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from fused.common.rpc.framing import encode_blob_chunk
from fused.coordinator.artifacts import ArtifactStore
from fused.coordinator.auth import check_known_fields
from fused.coordinator.fleet import Fleet
from fused.coordinator.state import StateStore
from fused.proto.v1 import common_pb2

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
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


@dataclass(frozen=True)
class Uploads:
    """The upload protocol: where a stream may start, what its first chunk may claim, and
    who uploaded what (a digest an upload lets its sender download and push)."""

    spool: UploadSpool
    artifacts: ArtifactStore
    fleet: Fleet
    store: StateStore  # to check the job and round an upload names
    max_bytes: int

    def status(self, pid: str, digest: str) -> UploadState:
        if self.fleet.uploaded(pid, digest):
            return UploadState(complete=True, offset=0)
        return UploadState(complete=False, offset=self.spool.offset(pid, digest))

    async def receive(self, pid: str, chunks: AsyncIterator[common_pb2.BlobChunk]) -> StoredBlob:
        """Take one stream of `pid`'s chunks; ValueError (or RequestRefused for a chunk with
        unknown fields) says why it was refused. Whatever arrived is kept for a resume."""
        writer: SpoolWriter | None = None
        try:
            async for chunk in chunks:
                check_known_fields(chunk)
                if writer is None:
                    self._check_first_chunk(chunk)
                    # Idempotent, but only for the sender's own uploads: knowing a digest
                    # must not let a participant claim another's update as its own.
                    if self.fleet.uploaded(pid, chunk.blob_id):
                        return StoredBlob(chunk.blob_id, self.artifacts.size(chunk.blob_id))
                    writer = self.spool.open(pid, chunk.blob_id, chunk.total_size, chunk.offset)
                writer.write(chunk.offset, chunk.data)
            return await self._finish(pid, writer)
        except DecodeError:
            raise ValueError("a chunk is not a valid fused.v1.BlobChunk message") from None
        finally:
            if writer is not None:
                writer.close()  # a broken connection keeps what arrived

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
        return StoredBlob(digest, writer.total)

    def _check_first_chunk(self, chunk: common_pb2.BlobChunk) -> None:
        if not DIGEST.match(chunk.blob_id):
            raise ValueError("the first chunk must name the blob's sha256 digest")
        if chunk.total_size > self.max_bytes:
            raise ValueError(
                f"upload of {chunk.total_size} bytes exceeds the limit of {self.max_bytes}"
            )
        if chunk.job_id:
            job = self.store.get_job(chunk.job_id)
            if job is None:
                raise ValueError(f"upload names unknown job {chunk.job_id!r}")
            # Rounds only go up: a round past the job's current one is none it has dispatched.
            if chunk.round > job.round:
                raise ValueError(
                    f"upload names round {chunk.round} of job {chunk.job_id!r}, which has not "
                    f"reached it (current round {job.round})"
                )


@dataclass(frozen=True)
class Downloads:
    artifacts: ArtifactStore
    chunk_bytes: int

    async def open(self, digest: str, offset: int = 0) -> Iterator[bytes]:
        """Pre-serialized BlobChunks of `digest` from `offset`, once its whole content checks
        out: a corrupt artifact is never served. Raises MissingArtifactError,
        CorruptArtifactError (also while streaming, if the file changed since) or
        OffsetOutOfRange."""
        total = self.artifacts.size(digest)
        await asyncio.to_thread(self.artifacts.verify, digest)
        if offset > total:
            raise OffsetOutOfRange(f"offset beyond size {total}")
        return self._chunks(digest, offset, total)

    def _chunks(self, digest: str, start: int, total: int) -> Iterator[bytes]:
        offset = 0
        for chunk in self.artifacts.iter_chunks(digest, self.chunk_bytes):
            end = offset + len(chunk)
            if end > start:
                skip = max(0, start - offset)
                yield encode_blob_chunk(digest, offset + skip, chunk[skip:], total)
            offset = end


class UploadSpool:
    """Bytes of unfinished uploads under root/<participant>/<digest>.part.

    A broken stream leaves its part file; the next stream for the same participant and
    digest must start where it ends. A complete file is checked and moved into the store.
    """

    def __init__(self, root: Path, artifacts: ArtifactStore) -> None:
        self._root = root
        self._artifacts = artifacts

    def _path(self, participant: str, digest: str) -> Path:
        if not _SAFE.match(participant):  # ids are validated at registration; be sure anyway
            raise ValueError(f"bad participant id {participant!r}")
        return self._root / participant / f"{digest}.part"

    def clear(self) -> int:
        """Remove every partial upload; returns how many (only when no task is open)."""
        parts = list(self._root.glob("*/*.part")) if self._root.exists() else []
        for part in parts:
            part.unlink(missing_ok=True)
        return len(parts)

    def offset(self, participant: str, digest: str) -> int:
        path = self._path(participant, digest)
        return path.stat().st_size if path.exists() else 0

    def open(self, participant: str, digest: str, total: int, offset: int) -> SpoolWriter:
        held = self.offset(participant, digest)
        if offset != held:
            raise ValueError(f"upload starts at offset {offset}; resume at offset {held}")
        path = self._path(participant, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        return SpoolWriter(self._artifacts, path, digest, total, held)


class SpoolWriter:
    def __init__(
        self, artifacts: ArtifactStore, path: Path, digest: str, total: int, held: int
    ) -> None:
        self._artifacts = artifacts
        self._path = path
        self._digest = digest
        self.total = total
        self.size = held
        self._file = path.open("ab")

    def write(self, offset: int, data: bytes) -> None:
        if offset != self.size:
            raise ValueError(f"chunk at offset {offset}, expected {self.size}")
        if self.size + len(data) > self.total:
            raise ValueError(f"upload exceeds its declared size of {self.total} bytes")
        self._file.write(data)
        self.size += len(data)

    def close(self) -> None:
        """Keep what arrived, durably, for a later resume."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def finish(self) -> str:
        """Check the complete upload's digest and store it; a mismatch discards it."""
        self.close()
        try:
            return self._artifacts.adopt(self._path, self._digest)
        except ValueError:
            self.discard()
            raise

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._path.unlink(missing_ok=True)
