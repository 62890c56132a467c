"""The servicers' one error table: which exception answers with which code and message."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from fused.common.domain.specs import SpecError
from fused.coordinator.artifacts import CorruptArtifactError, MissingArtifactError
from fused.coordinator.auth import RequestRefused
from fused.coordinator.fleet import NotRegisteredError
from fused.coordinator.rpc_errors import Wording, answers, status_of
from fused.coordinator.transfer import OffsetOutOfRange
from fused.proto.v1 import common_pb2, participant_pb2

Code = grpc.StatusCode
WORDS = Wording(rejected="upload rejected: ", doing="store the upload")


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (RequestRefused(Code.NOT_FOUND, "no job 'x'"), Code.NOT_FOUND, "no job 'x'"),
        (
            NotRegisteredError("eve"),
            Code.FAILED_PRECONDITION,
            "participant 'eve' is not registered; call Register first",
        ),
        (PermissionError("not yours"), Code.PERMISSION_DENIED, "not yours"),
        (
            PermissionError(errno.EACCES, "Permission denied"),
            Code.UNAVAILABLE,
            "the coordinator could not store the upload now (Permission denied); retry",
        ),
        (MissingArtifactError("ab" * 32), Code.NOT_FOUND, f"no artifact {'ab' * 32}"),
        (CorruptArtifactError("artifact x is corrupt"), Code.DATA_LOSS, "artifact x is corrupt"),
        (OffsetOutOfRange("offset beyond size 3"), Code.OUT_OF_RANGE, "offset beyond size 3"),
        (SpecError("rounds must be >= 1"), Code.INVALID_ARGUMENT, "upload rejected: rounds"),
        (
            RequestRefused(Code.INVALID_ARGUMENT, "BlobChunk has unexpected field(s) 40"),
            Code.INVALID_ARGUMENT,
            "upload rejected: BlobChunk has unexpected field(s) 40",
        ),
    ],
)
def test_table(exc: Exception, code: grpc.StatusCode, message: str) -> None:
    status = status_of(exc, WORDS)
    assert status is not None
    assert status[0] == code
    assert status[1].startswith(message)


def test_a_bug_is_not_mapped() -> None:
    assert status_of(KeyError("oops"), WORDS) is None
    assert status_of(RuntimeError("oops"), WORDS) is None


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise Aborted(code, message)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"


class Servicer:
    def __init__(self) -> None:
        self.counted: list[str] = []

    def count_rejected(self, reason: str) -> None:
        self.counted.append(reason)

    @answers(rejected="result rejected: ", count="invalid_result")
    async def Unary(self, request: Exception | None, context: Any) -> str:
        if request is not None:
            raise request
        return "ok"

    @answers()
    async def Stream(self, request: Exception, context: Any) -> AsyncIterator[int]:
        yield 1
        raise request


def test_unary_handler_answers_through_the_table() -> None:
    servicer = Servicer()
    assert asyncio.run(servicer.Unary(None, FakeContext())) == "ok"
    with pytest.raises(Aborted) as refused:
        asyncio.run(servicer.Unary(ValueError("no outcome"), FakeContext()))
    assert refused.value.args == (Code.INVALID_ARGUMENT, "result rejected: no outcome")
    assert servicer.counted == ["invalid_result"]
    with pytest.raises(Aborted) as denied:
        asyncio.run(servicer.Unary(PermissionError("not yours"), FakeContext()))
    assert denied.value.args == (Code.PERMISSION_DENIED, "not yours")
    assert servicer.counted == ["invalid_result"]  # only INVALID_ARGUMENT answers count
    with pytest.raises(RuntimeError):  # a bug stays a bug (grpc answers UNKNOWN)
        asyncio.run(servicer.Unary(RuntimeError("bug"), FakeContext()))


def test_streaming_handler_answers_after_what_it_sent() -> None:
    async def drain() -> list[int]:
        got: list[int] = []
        try:
            async for item in Servicer().Stream(CorruptArtifactError("changed"), FakeContext()):
                got.append(item)
        except Aborted as exc:
            assert exc.args == (Code.DATA_LOSS, "changed")
        return got

    assert asyncio.run(drain()) == [1]


class Bounded:
    """Handlers that return what they got: what the table lets through reaches them."""

    def count_rejected(self, reason: str) -> None:
        pass

    @answers(rejected="result rejected: ", count="invalid_result")
    async def Unary(self, request: Any, context: Any) -> Any:
        return request

    @answers(rejected="upload rejected: ")
    async def Upload(self, request: AsyncIterator[Any], context: Any) -> list[Any]:
        return [chunk async for chunk in request]


async def _chunks(*chunks: common_pb2.BlobChunk) -> AsyncIterator[common_pb2.BlobChunk]:
    for chunk in chunks:
        yield chunk


def test_requests_are_held_to_the_limits_table_before_the_handler() -> None:
    ok = participant_pb2.PushResultRequest(participant_id="p0", task_id="task-1")
    assert asyncio.run(Bounded().Unary(ok, FakeContext())) == ok
    long_id = participant_pb2.PushResultRequest(participant_id="p0", task_id="t" * (1 << 20))
    with pytest.raises(Aborted) as refused:
        asyncio.run(Bounded().Unary(long_id, FakeContext()))
    assert refused.value.args == (
        Code.INVALID_ARGUMENT,
        "result rejected: PushResultRequest.task_id is 1048576 characters long "
        "('tttttttttttttttt...'); the limit is 64",
    )
    with pytest.raises(Aborted) as metadata:
        asyncio.run(Bounded().Unary(ok, FakeContext((("fused-job", "j" * 65),))))
    assert metadata.value.args[1].startswith("result rejected: metadata fused-job is 65 char")


def test_streamed_chunks_are_held_to_the_table_as_they_are_read() -> None:
    good = common_pb2.BlobChunk(blob_id="ab" * 32, data=b"x")
    bad = common_pb2.BlobChunk(job_id="job\n1")
    assert asyncio.run(Bounded().Upload(_chunks(good, good), FakeContext())) == [good, good]
    with pytest.raises(Aborted) as refused:
        asyncio.run(Bounded().Upload(_chunks(good, bad), FakeContext()))
    assert refused.value.args == (
        Code.INVALID_ARGUMENT,
        "upload rejected: BlobChunk.job_id holds a control character at position 3",
    )
