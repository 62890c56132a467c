"""The transfer protocol: resumable uploads and verified downloads from an offset."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fused.common.domain.records import JobKind, JobRecord, JobStatus
from fused.coordinator.artifacts import ArtifactStore, CorruptArtifactError, MissingArtifactError
from fused.coordinator.fleet import Fleet
from fused.coordinator.state.memory import InMemoryStateStore
from fused.coordinator.transfer import (
    Downloads,
    OffsetOutOfRange,
    StoredBlob,
    Uploads,
    UploadSpool,
    UploadState,
)
from fused.proto.v1 import common_pb2

DATA = bytes(range(256)) * 4
DIGEST = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def uploads(tmp_path: Path) -> Uploads:
    artifacts = ArtifactStore(tmp_path / "artifacts")
    artifacts.ensure()
    store = InMemoryStateStore()
    store.create_job(
        JobRecord("job-1", JobKind.TRAIN, {}, JobStatus.RUNNING, "train", 2, "", 0.0, 0.0)
    )
    spool = UploadSpool(tmp_path / "uploads", artifacts)
    return Uploads(spool, artifacts, Fleet(store, offline_after_s=15), store, max_bytes=4096)


def chunks(start: int, end: int, **fields: object) -> list[common_pb2.BlobChunk]:
    base: dict[str, object] = {"blob_id": DIGEST, "total_size": len(DATA)} | fields
    return [
        common_pb2.BlobChunk(offset=at, data=DATA[at : min(at + 100, end)], **base)  # type: ignore[arg-type]
        for at in range(start, end, 100)
    ]


def receive(uploads: Uploads, sent: list[common_pb2.BlobChunk]) -> StoredBlob:
    async def stream() -> AsyncIterator[common_pb2.BlobChunk]:
        for chunk in sent:
            yield chunk

    return asyncio.run(uploads.receive("p0", stream()))


def test_a_broken_upload_resumes_where_it_ended(uploads: Uploads) -> None:
    with pytest.raises(ValueError, match="stream ended after 300 of 1024 bytes; resume at"):
        receive(uploads, chunks(0, 300, job_id="job-1", round=2))
    assert uploads.status("p0", DIGEST) == UploadState(complete=False, offset=300)
    with pytest.raises(ValueError, match="upload starts at offset 0; resume at offset 300"):
        receive(uploads, chunks(0, 300))
    assert receive(uploads, chunks(300, len(DATA))) == StoredBlob(DIGEST, len(DATA))
    assert uploads.status("p0", DIGEST) == UploadState(complete=True, offset=0)
    assert receive(uploads, chunks(0, 100)) == StoredBlob(DIGEST, len(DATA))  # idempotent


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"blob_id": ""}, "the first chunk must name the blob's sha256 digest"),
        ({"total_size": 5000}, "upload of 5000 bytes exceeds the limit of 4096"),
        ({"job_id": "job-0"}, "upload names unknown job 'job-0'"),
        ({"job_id": "job-1", "round": 3}, "upload names round 3 of job 'job-1', which has not"),
    ],
)
def test_the_first_chunk_is_checked(
    uploads: Uploads, fields: dict[str, object], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        receive(uploads, chunks(0, 100, **fields))
    with pytest.raises(ValueError, match="empty upload"):
        receive(uploads, [])


def test_a_download_starts_at_its_offset_after_a_check(tmp_path: Path) -> None:
    artifacts = ArtifactStore(tmp_path / "artifacts")
    artifacts.ensure()
    downloads = Downloads(artifacts, chunk_bytes=300)
    with pytest.raises(MissingArtifactError):
        asyncio.run(downloads.open(DIGEST))
    digest = artifacts.put_bytes(DATA)
    with pytest.raises(OffsetOutOfRange, match=f"offset beyond size {len(DATA)}"):
        asyncio.run(downloads.open(digest, len(DATA) + 1))
    for offset in (0, 250, 300, len(DATA)):
        got = [
            common_pb2.BlobChunk.FromString(c) for c in asyncio.run(downloads.open(digest, offset))
        ]
        assert b"".join(c.data for c in got) == DATA[offset:]
        assert [c.offset for c in got][:1] == ([offset] if offset < len(DATA) else [])
    artifacts.path_for(digest).write_bytes(b"x" * len(DATA))  # same size, other content
    with pytest.raises(CorruptArtifactError):
        asyncio.run(Downloads(ArtifactStore(tmp_path / "artifacts"), 300).open(digest))
