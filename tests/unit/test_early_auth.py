"""Calls without valid credentials are refused before their request is read (tokens only),
over a real gRPC server on loopback: a stranger's 3 MiB request is never deserialized."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from fused.common.rpc.identity import AuthFile, hash_token
from fused.coordinator.auth import AuthInterceptor, AuthPolicy
from fused.coordinator.early_auth import EarlyAuthInterceptor
from fused.proto.v1 import participant_pb2, participant_pb2_grpc

BIG = "x" * (3 << 20)  # under the 4 MiB message limit: only credentials can refuse it
TOKENS = AuthFile(participants={"p0": hash_token("p0-token")}, operators={"op": hash_token("op")})
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


class Parsed(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts the requests the server deserializes (placed after the early check)."""

    def __init__(self) -> None:
        self.count = 0

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        def counted(data: bytes) -> Any:
            self.count += 1
            return parse(data)

        return handler._replace(request_deserializer=counted)


class Registry(participant_pb2_grpc.ParticipantServiceServicer):
    async def Register(
        self, request: participant_pb2.RegisterRequest, context: Any
    ) -> participant_pb2.RegisterResponse:
        return participant_pb2.RegisterResponse(chunk_bytes=len(request.agent_version))


def call(port: int, token: str | None) -> tuple[grpc.StatusCode, str]:
    md = (("authorization", f"Bearer {token}"),) if token else ()
    options = [("grpc.max_send_message_length", 8 << 20)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = participant_pb2_grpc.ParticipantServiceStub(channel)
        request = participant_pb2.RegisterRequest(participant_id="p0", agent_version=BIG)
        try:
            reply = stub.Register(request, metadata=md, timeout=30)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, str(reply.chunk_bytes)


async def answers(early: bool, tokens: list[str | None]) -> tuple[list[Any], int, list[str]]:
    policy = AuthPolicy(TOKENS, client_certs=False)
    rejected: list[str] = []
    parsed = Parsed()
    chain: list[Any] = [parsed, AuthInterceptor(policy, rejected.append)]
    if early:
        chain.insert(0, EarlyAuthInterceptor(policy, rejected.append))
    server = grpc.aio.server(
        interceptors=chain, options=[("grpc.max_receive_message_length", 4 << 20)]
    )
    registry = Registry()  # type: ignore[abstract]  # Register is all these calls need
    participant_pb2_grpc.add_ParticipantServiceServicer_to_server(registry, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        got = [await asyncio.to_thread(call, port, token) for token in tokens]
    finally:
        await server.stop(0)
    return got, parsed.count, rejected


STRANGERS: list[str | None] = [None, "stolen?", "op"]
REFUSED = [
    (UNAUTHENTICATED, "this coordinator requires a client certificate or a bearer token"),
    (UNAUTHENTICATED, "unknown bearer token"),
    (grpc.StatusCode.PERMISSION_DENIED, "this call needs a participant credential"),
]


@pytest.mark.parametrize("early", [True, False])
def test_strangers_are_refused_with_the_same_answers(early: bool) -> None:
    got, parsed, rejected = asyncio.run(answers(early, [*STRANGERS, "p0-token"]))
    for (code, details), (want_code, want) in zip(got, REFUSED, strict=False):
        assert code is want_code and details.startswith(want), (code, details)
    assert got[-1] == (grpc.StatusCode.OK, str(len(BIG)))
    assert rejected == ["unauthenticated", "unauthenticated", "permission_denied"]
    # Early: only the one authenticated request was parsed; without it, every one was.
    assert parsed == (1 if early else len(STRANGERS) + 1)
