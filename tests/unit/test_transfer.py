"""The transfer protocol: resumable uploads bound to an open task, verified downloads from an
offset, and what a stream may hold (quota, concurrent streams, pace)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from fused.common.domain.records import JobKind, JobRecord, JobStatus
from fused.common.domain.tasks import TaskKind, TaskOutcome, TaskSpec
from fused.common.domain.train_config import TrainConfig
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
from fused.coordinator.upload_limits import LimitExceeded, UploadLimits
from fused.proto.v1 import common_pb2

DATA = bytes(range(256)) * 4
DIGEST = hashlib.sha256(DATA).hexdigest()
LIMITS = UploadLimits(max_bytes=4096, quota_bytes=8192, max_streams=2, min_rate_bytes_s=0)


def open_task(fleet: Fleet, pid: str, job_id: str, round_number: int) -> None:
    spec = TaskSpec(
        f"task-{pid}-{round_number}", job_id, "train", round_number, TaskKind.TRAIN, "0" * 64,
        "mlp", 10, TrainConfig(), 0.0,
    )  # fmt: skip

    async def check(outcome: TaskOutcome) -> None:
        return None

    async def submit() -> None:
        fleet.submit(pid, spec, check)

    asyncio.run(submit())


def make_uploads(tmp_path: Path, limits: UploadLimits = LIMITS) -> tuple[Uploads, list[str]]:
    artifacts = ArtifactStore(tmp_path / "artifacts")
    artifacts.ensure()
    store = InMemoryStateStore()
    store.create_job(
        JobRecord("job-1", JobKind.TRAIN, {}, JobStatus.RUNNING, "train", 2, "", 0.0, 0.0)
    )
    fleet = Fleet(store, offline_after_s=15)
    open_task(fleet, "p0", "job-1", 2)
    spool = UploadSpool(tmp_path / "uploads", artifacts)
    refusals: list[str] = []
    return Uploads(spool, artifacts, fleet, store, limits, refusals.append), refusals


@pytest.fixture
def uploads(tmp_path: Path) -> Uploads:
    return make_uploads(tmp_path)[0]


def chunks(
    start: int, end: int, data: bytes = DATA, **fields: object
) -> list[common_pb2.BlobChunk]:
    base: dict[str, object] = {
        "blob_id": hashlib.sha256(data).hexdigest(),
        "total_size": len(data),
        "job_id": "job-1",
        "round": 2,
    } | fields
    return [
        common_pb2.BlobChunk(offset=at, data=data[at : min(at + 100, end)], **base)  # type: ignore[arg-type]
        for at in range(start, end, 100)
    ]


async def stream(
    sent: list[common_pb2.BlobChunk], pause_s: float = 0.0
) -> AsyncIterator[common_pb2.BlobChunk]:
    for chunk in sent:
        yield chunk
    await asyncio.sleep(pause_s)  # an open stream that sends nothing more


def receive(uploads: Uploads, sent: list[common_pb2.BlobChunk], pid: str = "p0") -> StoredBlob:
    return asyncio.run(uploads.receive(pid, stream(sent)))


def test_a_broken_upload_resumes_where_it_ended(uploads: Uploads) -> None:
    with pytest.raises(ValueError, match="stream ended after 300 of 1024 bytes; resume at"):
        receive(uploads, chunks(0, 300))
    assert uploads.status("p0", DIGEST) == UploadState(complete=False, offset=300)
    with pytest.raises(ValueError, match="upload starts at offset 0; resume at offset 300"):
        receive(uploads, chunks(0, 300))
    assert receive(uploads, chunks(300, len(DATA))) == StoredBlob(DIGEST, len(DATA))
    assert uploads.status("p0", DIGEST) == UploadState(complete=True, offset=0)
    assert receive(uploads, chunks(0, 100)) == StoredBlob(DIGEST, len(DATA))  # idempotent


PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("fields", "error", "code"),
    [
        ({"blob_id": ""}, "the first chunk must name the blob's sha256 digest", None),
        ({"total_size": 5000}, "upload of 5000 bytes exceeds the limit of 4096", None),
        ({"job_id": "job-0"}, "upload names unknown job 'job-0'", None),
        ({"round": 3}, "upload names round 3 of job 'job-1', which has not", None),
        ({"job_id": ""}, "an upload must name the job and round of an open task", PRECONDITION),
        ({"round": 1}, "no open task of p0 in round 1 of job 'job-1'", PRECONDITION),
    ],
)
def test_the_first_chunk_is_checked(
    uploads: Uploads, fields: dict[str, object], error: str, code: grpc.StatusCode | None
) -> None:
    with pytest.raises(ValueError if code is None else LimitExceeded, match=error) as info:
        receive(uploads, chunks(0, 100, DATA, **fields))
    if code is not None:
        assert isinstance(info.value, LimitExceeded) and info.value.code is code
    with pytest.raises(ValueError, match="empty upload"):
        receive(uploads, [])


def test_an_upload_needs_a_task_of_its_own_sender(uploads: Uploads) -> None:
    with pytest.raises(LimitExceeded, match="no open task of p1 in round 2 of job 'job-1'"):
        receive(uploads, chunks(0, 100), pid="p1")


def blob(tag: int, size: int = 1000) -> bytes:
    return bytes([tag]) * size


# (what p0 holds before: finished uploads, a broken upload's part), size of the next upload,
# and the refusal (None: admitted). Quota 8192 bytes, at most 4096 per upload.
QUOTA_CASES = [
    ((), 0, 4096, None),
    ((4096,), 0, 4096, None),  # exactly the quota
    ((4096, 4000), 0, 200, "8096 bytes held and 200 declared"),  # 96 bytes left
    ((4096, 4096), 0, 1, "8192 bytes held and 1 declared, above the quota of 8192"),
    ((4000,), 4000, 2200, "6000 bytes held and 2200 declared"),  # a part counts too
    ((), 4000, 4000, None),
]


@pytest.mark.parametrize(("finished", "part", "size", "error"), QUOTA_CASES)
def test_the_quota_counts_finished_uploads_and_parts(
    tmp_path: Path, finished: tuple[int, ...], part: int, size: int, error: str | None
) -> None:
    uploads, refusals = make_uploads(tmp_path)
    for i, n in enumerate(finished):
        receive(uploads, chunks(0, n, blob(i, n)))
    if part:
        with pytest.raises(ValueError, match="stream ended"):  # a part of part // 2 bytes
            receive(uploads, chunks(0, part // 2, blob(99, part)))
    if error is None:
        receive(uploads, chunks(0, size, blob(200, size)))
        assert refusals == []
        return
    with pytest.raises(LimitExceeded, match=error) as info:
        receive(uploads, chunks(0, size, blob(200, size)))
    assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED and refusals == ["quota"]


def test_an_accepted_update_leaves_the_quota(uploads: Uploads) -> None:
    first, second = blob(1, 4096), blob(2, 4096)
    receive(uploads, chunks(0, 4096, first))
    receive(uploads, chunks(0, 4096, second))
    with pytest.raises(LimitExceeded, match="8192 bytes held"):
        receive(uploads, chunks(0, 10, blob(3, 10)))
    uploads.settled("p0", hashlib.sha256(first).hexdigest())  # a result named it
    assert receive(uploads, chunks(0, 10, blob(3, 10))).size == 10
    uploads.ledger.forget_stored()  # collection deleted the rest
    assert uploads.ledger.charge("p0", parts=0) == 0


def test_concurrent_streams_are_capped_and_one_blob_streams_once(tmp_path: Path) -> None:
    uploads, refusals = make_uploads(tmp_path)

    async def run() -> list[BaseException | StoredBlob]:
        held = [asyncio.create_task(uploads.receive("p0", stream(chunks(0, 100, blob(i)), 0.5)))
                for i in (1, 2)]  # fmt: skip
        await asyncio.sleep(0.1)  # both admitted and waiting for their next chunk
        extra = [
            uploads.receive("p0", stream(chunks(0, 100, blob(3)))),  # a third stream
            uploads.receive("p0", stream(chunks(100, 200, blob(1)))),  # blob 1 again
        ]
        done = await asyncio.gather(*extra, return_exceptions=True)
        await asyncio.gather(*held, return_exceptions=True)
        return done

    too_many, twice = asyncio.run(run())
    assert isinstance(too_many, LimitExceeded) and too_many.code is EXHAUSTED
    assert too_many.message == "too many concurrent uploads: 2 streams open (limit 2)"
    assert isinstance(twice, LimitExceeded) and twice.code is grpc.StatusCode.ABORTED
    assert refusals == ["streams", "duplicate"]
    assert uploads.ledger.open_streams("p0") == 0  # every stream ended and let go


PACED = UploadLimits(
    max_bytes=4096, quota_bytes=8192, idle_timeout_s=0.3, min_rate_bytes_s=1000,
    rate_grace_s=0.2, chunk_bytes=100,
)  # fmt: skip


async def trickle(
    sent: list[common_pb2.BlobChunk], every_s: float
) -> AsyncIterator[common_pb2.BlobChunk]:
    for chunk in sent:
        yield chunk
        await asyncio.sleep(every_s)


@pytest.mark.parametrize(
    ("sent", "every_s", "reason", "message"),
    [
        # the first chunk, then nothing: cut by the idle timeout
        (chunks(0, 100), 5.0, "idle", "upload stream sent nothing for 0.3 s; resume at offset 100"),
        # one byte every 0.1 s: never idle, far under 1000 bytes/s
        (
            [common_pb2.BlobChunk(blob_id=DIGEST, offset=i, data=DATA[i : i + 1], total_size=1024,
                                  job_id="job-1", round=2) for i in range(50)],
            0.1,
            "slow",
            "upload stream too slow: ",
        ),
    ],
)  # fmt: skip
def test_a_stalled_stream_is_cut_and_may_resume(
    tmp_path: Path, sent: list[common_pb2.BlobChunk], every_s: float, reason: str, message: str
) -> None:
    uploads, refusals = make_uploads(tmp_path, PACED)
    with pytest.raises(LimitExceeded, match=message) as info:
        asyncio.run(uploads.receive("p0", trickle(sent, every_s)))
    assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED and refusals == [reason]
    held = uploads.status("p0", DIGEST).offset
    assert f"resume at offset {held}" in info.value.message and held > 0
    assert receive(uploads, chunks(held, len(DATA))) == StoredBlob(DIGEST, len(DATA))


def test_collection_keeps_the_part_of_an_open_stream(tmp_path: Path) -> None:
    artifacts = ArtifactStore(tmp_path / "artifacts")
    spool = UploadSpool(tmp_path / "uploads", artifacts)
    streaming = spool.open("p0", "a" * 64, total=10, offset=0)
    streaming.write(0, b"abc")
    broken = spool.open("p0", "b" * 64, total=10, offset=0)
    broken.write(0, b"xy")
    broken.close()
    assert spool.held_bytes("p0") == 2  # the open stream's part is counted by its stream
    assert spool.clear() == 1  # the broken one's
    assert (tmp_path / "uploads" / "p0" / f"{'a' * 64}.part").exists()
    streaming.write(3, b"def")
    streaming.close()
    assert (spool.held_bytes("p0"), spool.clear()) == (6, 1)


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
