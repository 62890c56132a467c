"""A bug's message never reaches the caller (it may name internal paths): over a real gRPC
server on loopback, an unanswered exception becomes INTERNAL with a fixed message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from fused.coordinator.internal_errors import MESSAGE, InternalErrors
from fused.proto.v1 import common_pb2, participant_pb2, participant_pb2_grpc

SECRET = "/var/lib/fused/coordinator/uploads/p0/0123.part"


class Buggy(participant_pb2_grpc.ParticipantServiceServicer):
    async def Heartbeat(self, request: Any, context: Any) -> participant_pb2.HeartbeatResponse:
        raise FileNotFoundError(2, "No such file or directory", SECRET)

    async def PullTask(self, request: Any, context: Any) -> participant_pb2.PullTaskResponse:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "register first")
        raise AssertionError("unreachable")

    async def Register(self, request: Any, context: Any) -> participant_pb2.RegisterResponse:
        return participant_pb2.RegisterResponse(chunk_bytes=7)

    async def DownloadBlob(self, request: Any, context: Any) -> AsyncIterator[common_pb2.BlobChunk]:
        yield common_pb2.BlobChunk(data=b"first")
        raise KeyError(SECRET)


def outcome(stub: participant_pb2_grpc.ParticipantServiceStub, name: str) -> tuple[Any, ...]:
    calls: dict[str, Callable[[], Any]] = {
        "Heartbeat": lambda: stub.Heartbeat(participant_pb2.HeartbeatRequest(), timeout=10),
        "PullTask": lambda: stub.PullTask(participant_pb2.PullTaskRequest(), timeout=10),
        "Register": lambda: stub.Register(participant_pb2.RegisterRequest(), timeout=10),
    }
    if name == "DownloadBlob":
        got: list[bytes] = []
        try:
            for chunk in stub.DownloadBlob(participant_pb2.DownloadBlobRequest(), timeout=10):
                got.append(chunk.data)
        except grpc.RpcError as exc:
            return got, exc.code(), exc.details()
        return got, grpc.StatusCode.OK, ""
    try:
        reply = calls[name]()
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, str(reply.chunk_bytes)


async def serve_and_call(name: str) -> tuple[Any, ...]:
    server = grpc.aio.server(interceptors=[InternalErrors()])
    servicer = Buggy()  # type: ignore[abstract]  # the calls below are all it serves
    participant_pb2_grpc.add_ParticipantServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = participant_pb2_grpc.ParticipantServiceStub(channel)
            return await asyncio.to_thread(outcome, stub, name)
    finally:
        await server.stop(0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Heartbeat", (grpc.StatusCode.INTERNAL, MESSAGE)),
        ("DownloadBlob", ([b"first"], grpc.StatusCode.INTERNAL, MESSAGE)),
        ("PullTask", (grpc.StatusCode.FAILED_PRECONDITION, "register first")),
        ("Register", (grpc.StatusCode.OK, "7")),
    ],
)
def test_bugs_answer_internal_and_refusals_pass(name: str, expected: tuple[Any, ...]) -> None:
    got = asyncio.run(serve_and_call(name))
    assert got == expected
    assert SECRET not in repr(got)
