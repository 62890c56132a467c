"""The hostile corpus's broken uploads and malformed results, refused while mallory's first
task stays open."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fused.proto.v1 import common_pb2, participant_pb2
from tests.integration.hostile import (
    described,
    sha256,
)
from tests.integration.hostile_names import (
    INVALID,
    MALLORY,
    MAX_UPLOAD,
    NOT_OPEN,
    OK,
)

if TYPE_CHECKING:
    from tests.integration.hostile_attack import Attack


def upload_cases(attack: Attack, task: participant_pb2.Task) -> None:
    m = attack.mallory
    job, r = task.job_id, task.round

    def data(tag: str, n: int = 1000) -> bytes:
        return (tag.encode() * n)[:n]

    def chunk(payload: bytes, offset: int, **fields: Any) -> common_pb2.BlobChunk:
        base: dict[str, Any] = {
            "blob_id": sha256(payload),
            "offset": offset,
            "data": payload[offset : offset + 100],
            "total_size": len(payload),
            "job_id": job,
            "round": r,
        }
        return common_pb2.BlobChunk(**(base | fields))

    def upload(*chunks: common_pb2.BlobChunk) -> Callable[[], str]:
        return lambda: described(m.upload(chunks))

    rejected = "upload rejected: "
    attack.check("empty upload stream", upload(), INVALID, rejected + "empty upload")
    a = data("a")
    attack.check(
        "first chunk without a digest",
        upload(chunk(a, 0, blob_id="")),
        INVALID,
        "the first chunk must name the blob's sha256 digest",
    )
    attack.check(
        "declared total_size above the upload limit",
        upload(chunk(a, 0, total_size=2 * MAX_UPLOAD)),
        INVALID,
        f"upload of {2 * MAX_UPLOAD} bytes exceeds the limit of {MAX_UPLOAD}",
    )
    b = data("b")
    attack.check(
        "more bytes than the declared total_size",
        upload(chunk(b, 0, total_size=50)),
        INVALID,
        "upload exceeds its declared size of 50 bytes",
    )
    c = data("c")
    attack.check(
        "chunk offsets going backwards",
        upload(chunk(c, 0), chunk(c, 0)),
        INVALID,
        "chunk at offset 0, expected 100",
    )
    d = data("d")
    attack.check(
        "chunk offsets with a gap",
        upload(chunk(d, 0), chunk(d, 200)),
        INVALID,
        "chunk at offset 200, expected 100",
    )
    e = data("e")
    attack.check(
        "first chunk not at the start",
        upload(chunk(e, 300)),
        INVALID,
        "upload starts at offset 300; resume at offset 0",
    )
    f = data("f", 100)
    attack.check(
        "content not matching the declared digest",
        upload(chunk(f, 0, blob_id=sha256(b"something else"))),
        INVALID,
        f"not the declared {sha256(b'something else')}",
    )
    g = data("g", 100)
    attack.check(
        "upload for an unknown job",
        upload(chunk(g, 0, job_id="job-does-not-exist")),
        INVALID,
        "upload names unknown job 'job-does-not-exist'",
    )
    attack.check(
        "upload for a round the job has not reached",
        upload(chunk(g, 0, round=99)),
        INVALID,
        f"upload names round 99 of job {job!r}, which has not reached it",
    )
    h = data("h")
    attack.check(
        "stream that ends before total_size",
        upload(chunk(h, 0), chunk(h, 100), chunk(h, 200), chunk(h, 300)),
        INVALID,
        "stream ended after 400 of 1000 bytes; resume at offset 400",
    )
    attack.check(
        "restart from 0 after a broken stream",
        upload(chunk(h, 0)),
        INVALID,
        "upload starts at offset 0; resume at offset 400",
    )
    foreign_size = len(
        (attack.fed.work_dir / "state" / "artifacts" / "sha256")
        .joinpath(attack.foreign_upload[:2], attack.foreign_upload)
        .read_bytes()
    )
    attack.check(
        "claiming another participant's upload by its digest",
        upload(
            common_pb2.BlobChunk(
                blob_id=attack.foreign_upload, total_size=foreign_size, job_id=job, round=r
            )
        ),
        INVALID,
        f"stream ended after 0 of {foreign_size} bytes",
    )
    attack.check(
        "upload status of another participant's upload",
        lambda: described(m.upload_status(attack.foreign_upload)),
        OK,
        "complete=False offset=0",
    )
    attack.check(
        "upload status of a path",
        lambda: described(m.upload_status("../uploads")),
        INVALID,
        "blob_id must be a sha256 hex digest",
    )


def result_cases(attack: Attack, task: participant_pb2.Task) -> None:
    m = attack.mallory
    attack.check(
        "result for an unknown task",
        lambda: described(m.push_train("task-0000000000", attack.foreign_upload)),
        OK,
        f"{NOT_OPEN} task-0000000000 is not open (unknown or past deadline)",
    )
    attack.check(
        "result without an outcome",
        lambda: described(
            m.push(participant_pb2.PushResultRequest(participant_id=MALLORY, task_id=task.task_id))
        ),
        INVALID,
        "result rejected: result has no outcome",
    )
    ragged = participant_pb2.EvalResult(correct=[1, 2], total=[3] * 10)
    attack.check(
        "evaluation counts of unequal length",
        lambda: described(
            m.push(
                participant_pb2.PushResultRequest(
                    participant_id=MALLORY, task_id=task.task_id, eval=ragged
                )
            )
        ),
        INVALID,
        "correct and total must have one entry per class",
    )
