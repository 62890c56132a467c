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
    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise Aborted(code, message)


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
