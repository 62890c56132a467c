"""Byte and message counting on a real grpc.aio server and a real blocking client.

The server runs the generated ParticipantService with a small servicer of our own in a
background thread's event loop; the client is the generated stub on a CountingChannel.
Every count is checked against the serialized sizes of the messages actually exchanged.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

from fused.common.rpc.channels import create_channel, create_server
from fused.common.rpc.client_metering import CountingChannel
from fused.common.rpc.metering import (
    MD_PARTICIPANT,
    MD_PHASE,
    NO_PARTICIPANT,
    NO_PHASE,
    CallLabels,
    CountingServerInterceptor,
    Resolve,
    WireMetrics,
    short_method,
)
from fused.proto.v1 import common_pb2, participant_pb2, participant_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
Metadata = tuple[tuple[str, str], ...]

PID = "p7"
MD: Metadata = ((MD_PARTICIPANT, PID), (MD_PHASE, "train"))
CHUNK_SIZES = (1000, 17, 0)  # the last chunk is empty: it still counts as a message
HookCall = tuple[dict[str, str], str, int]


class EchoServicer(participant_pb2_grpc.ParticipantServiceServicer):
    """Tiny, deterministic behaviour: enough to move messages of known sizes both ways."""

    def __init__(self, known: set[str]) -> None:
        self.known = known
        self.uploaded: list[common_pb2.BlobChunk] = []

    async def Register(
        self, request: participant_pb2.RegisterRequest, context: Context
    ) -> participant_pb2.RegisterResponse:
        return participant_pb2.RegisterResponse(
            heartbeat_interval_s=float(len(request.participant_id)),
            poll_wait_s=0.5,
            chunk_bytes=sum(request.data.class_counts),
            max_upload_bytes=request.data.num_train,
        )

    async def Heartbeat(
        self, request: participant_pb2.HeartbeatRequest, context: Context
    ) -> participant_pb2.HeartbeatResponse:
        return participant_pb2.HeartbeatResponse(registered=request.participant_id in self.known)

    async def PullTask(
        self, request: participant_pb2.PullTaskRequest, context: Context
    ) -> participant_pb2.PullTaskResponse:
        return participant_pb2.PullTaskResponse()

    async def PushResult(
        self, request: participant_pb2.PushResultRequest, context: Context
    ) -> participant_pb2.PushResultResponse:
        return participant_pb2.PushResultResponse(accepted=True)

    async def DownloadBlob(
        self, request: participant_pb2.DownloadBlobRequest, context: Context
    ) -> AsyncIterator[common_pb2.BlobChunk]:
        for chunk in blob_chunks(request.blob_id):
            yield chunk

    async def UploadBlob(
        self, request_iterator: AsyncIterator[common_pb2.BlobChunk], context: Context
    ) -> participant_pb2.UploadBlobResponse:
        async for chunk in request_iterator:
            self.uploaded.append(chunk)
        size = sum(len(c.data) for c in self.uploaded)
        return participant_pb2.UploadBlobResponse(blob_id=self.uploaded[0].blob_id, size=size)

    async def GetUploadStatus(
        self, request: participant_pb2.UploadStatusRequest, context: Context
    ) -> participant_pb2.UploadStatusResponse:
        return participant_pb2.UploadStatusResponse(offset=0)

    async def RequestForgetting(
        self, request: participant_pb2.ForgettingRequest, context: Context
    ) -> participant_pb2.ForgettingReply:
        return participant_pb2.ForgettingReply(request_id="r-1", status="pending")

    async def OpenTransfer(
        self, request: participant_pb2.OpenTransferRequest, context: Context
    ) -> participant_pb2.OpenTransferResponse:
        return participant_pb2.OpenTransferResponse(ticket=b"t" * 32)


def blob_chunks(blob_id: str) -> list[common_pb2.BlobChunk]:
    total = sum(CHUNK_SIZES)
    chunks, offset = [], 0
    for i, n in enumerate(CHUNK_SIZES):
        first = i == 0
        chunks.append(
            common_pb2.BlobChunk(
                blob_id=blob_id if first else "",
                offset=offset,
                data=bytes(range(256)) * (n // 256) + bytes(n % 256),
                total_size=total if first else 0,
            )
        )
        offset += n
    return chunks


def serialized_size(*messages: Message) -> float:
    return float(sum(len(m.SerializeToString()) for m in messages))


class ThreadedServer:
    """A grpc.aio server running in its own thread and event loop."""

    def __init__(self, servicer: EchoServicer, interceptor: CountingServerInterceptor) -> None:
        self._servicer = servicer
        self._interceptor = interceptor
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grpc-aio-test", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.port = 0

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test thread by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server, self.port = create_server("127.0.0.1:0", [self._interceptor])
        participant_pb2_grpc.add_ParticipantServiceServicer_to_server(self._servicer, server)
        await server.start()
        self._ready.set()
        await self._stop.wait()
        await server.stop(None)

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "server did not start"
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive(), "server thread did not stop"


@dataclass
class Wire:
    port: int
    servicer: EchoServicer
    server_registry: CollectorRegistry
    per_participant: CollectorRegistry  # the server's per-participant bytes
    hook_calls: list[HookCall]
    channels: list[CountingChannel] = field(default_factory=list)

    def client(self, participant: str = PID) -> tuple[CountingChannel, CollectorRegistry]:
        registry = CollectorRegistry()
        channel = CountingChannel(
            create_channel(f"127.0.0.1:{self.port}"), WireMetrics(registry), participant
        )
        self.channels.append(channel)
        return channel, registry


def running_wire() -> Iterator[Wire]:
    """A counting server in its own thread, closed with the clients made on it (a fixture body)."""
    known = {PID}
    registry = CollectorRegistry()
    hook_calls: list[HookCall] = []
    lock = threading.Lock()

    def hook(md: dict[str, str], direction: str, n: int) -> None:
        with lock:
            hook_calls.append((dict(md), direction, n))

    def labeller(method: str, md: Mapping[str, str]) -> Resolve:
        # labels from metadata (the coordinator's come from the authenticated caller: see
        # test_accounting): known ids as themselves, others collapse to one label
        pid = md.get(MD_PARTICIPANT, "")
        labels = CallLabels(
            (pid if pid in known else "unknown") if pid else NO_PARTICIPANT,
            md.get(MD_PHASE, NO_PHASE),
            charge=lambda direction, n: hook(dict(md), direction, n),
        )
        return lambda: labels

    per_participant = CollectorRegistry()
    interceptor = CountingServerInterceptor(WireMetrics(registry, per_participant), labeller)
    servicer = EchoServicer(known)
    server = ThreadedServer(servicer, interceptor)
    server.start()
    state = Wire(server.port, servicer, registry, per_participant, hook_calls)
    try:
        yield state
    finally:
        for channel in state.channels:
            channel.close()
        server.stop()


def sample(
    registry: CollectorRegistry,
    kind: str,
    method: str,
    direction: str,
    phase: str = "train",
) -> float | None:
    labels = {"method": method, "direction": direction, "phase": phase}
    return registry.get_sample_value(f"fused_wire_{kind}_total", labels)


def participant_bytes(
    registry: CollectorRegistry, direction: str, phase: str = "train", participant: str = PID
) -> float | None:
    labels = {"direction": direction, "phase": phase, "participant": participant}
    return registry.get_sample_value("fused_participant_wire_bytes_total", labels)


def byte_count(registry: CollectorRegistry, method: str, direction: str, **kw: str) -> float | None:
    return sample(registry, "bytes", method, direction, **kw)


def message_count(
    registry: CollectorRegistry, method: str, direction: str, **kw: str
) -> float | None:
    return sample(registry, "messages", method, direction, **kw)


def assert_ends_agree(
    client: CollectorRegistry,
    server: CollectorRegistry,
    method: str,
    phase: str = "train",
) -> None:
    """What one end sent is exactly what the other received, in bytes and in messages."""
    for kind in ("bytes", "messages"):
        assert sample(client, kind, method, "sent", phase) == sample(
            server, kind, method, "received", phase
        ), (method, kind, "request")
        assert sample(client, kind, method, "received", phase) == sample(
            server, kind, method, "sent", phase
        ), (method, kind, "response")


@pytest.fixture
def wire() -> Iterator[Wire]:
    yield from running_wire()


def test_unary_bytes_match_serialized_sizes(wire: Wire) -> None:
    channel, client = wire.client()
    stub = participant_pb2_grpc.ParticipantServiceStub(channel.with_phase("train"))
    requests = [
        participant_pb2.RegisterRequest(
            participant_id=PID,
            data=participant_pb2.DataSummary(
                dataset="digits", class_counts=[3, 4, 5], num_train=12, num_test=2
            ),
            agent_version="0.1.0",
        ),
        participant_pb2.RegisterRequest(participant_id=PID + "-again", agent_version="x" * 300),
    ]
    responses = [stub.Register(r, metadata=MD) for r in requests]
    assert responses[0].chunk_bytes == 12  # the servicer really ran

    assert byte_count(client, "Register", "sent") == serialized_size(*requests)
    assert byte_count(client, "Register", "received") == serialized_size(*responses)
    assert message_count(client, "Register", "sent") == 2
    assert message_count(client, "Register", "received") == 2
    assert_ends_agree(client, wire.server_registry, "Register")


def test_empty_messages_count_as_zero_bytes(wire: Wire) -> None:
    channel, client = wire.client()
    stub = participant_pb2_grpc.ParticipantServiceStub(channel.with_phase("train"))
    request = participant_pb2.HeartbeatRequest()  # serializes to b""
    response = stub.Heartbeat(request, metadata=MD)
    assert response.registered is False and response.SerializeToString() == b""
    assert byte_count(client, "Heartbeat", "sent") == 0.0
    assert byte_count(client, "Heartbeat", "received") == 0.0
    assert message_count(client, "Heartbeat", "sent") == 1
    assert message_count(client, "Heartbeat", "received") == 1
    assert_ends_agree(client, wire.server_registry, "Heartbeat")


def test_server_stream_counts_each_chunk(wire: Wire) -> None:
    channel, client = wire.client()
    stub = participant_pb2_grpc.ParticipantServiceStub(channel.with_phase("train"))
    request = participant_pb2.DownloadBlobRequest(blob_id="ab" * 32, offset=0)
    chunks = list(stub.DownloadBlob(request, metadata=MD))
    assert chunks == blob_chunks("ab" * 32)
    assert len(chunks) == 3

    assert byte_count(client, "DownloadBlob", "sent") == serialized_size(request)
    assert message_count(client, "DownloadBlob", "sent") == 1
    assert byte_count(client, "DownloadBlob", "received") == serialized_size(*chunks)
    assert message_count(client, "DownloadBlob", "received") == 3
    assert message_count(wire.server_registry, "DownloadBlob", "sent") == 3
    assert_ends_agree(client, wire.server_registry, "DownloadBlob")


def test_client_stream_counts_each_chunk(wire: Wire) -> None:
    channel, client = wire.client()
    stub = participant_pb2_grpc.ParticipantServiceStub(channel.with_phase("train"))
    chunks = blob_chunks("cd" * 32)
    response = stub.UploadBlob(iter(chunks), metadata=MD)
    assert response == participant_pb2.UploadBlobResponse(blob_id="cd" * 32, size=1017)
    assert wire.servicer.uploaded == chunks

    assert byte_count(client, "UploadBlob", "sent") == serialized_size(*chunks)
    assert message_count(client, "UploadBlob", "sent") == 3
    assert byte_count(client, "UploadBlob", "received") == serialized_size(response)
    assert message_count(client, "UploadBlob", "received") == 1
    assert message_count(wire.server_registry, "UploadBlob", "received") == 3
    assert_ends_agree(client, wire.server_registry, "UploadBlob")


def test_methods_are_counted_separately(wire: Wire) -> None:
    channel, client = wire.client()
    stub = participant_pb2_grpc.ParticipantServiceStub(channel.with_phase("train"))
    pull = participant_pb2.PullTaskRequest(participant_id=PID, wait_s=0.25)
    push = participant_pb2.PushResultRequest(
        participant_id=PID, task_id="t1", error=participant_pb2.TaskError(message="boom")
    )
    stub.PullTask(pull, metadata=MD)
    stub.PushResult(push, metadata=MD)
    stub.PushResult(push, metadata=MD)
    assert byte_count(client, "PullTask", "sent") == serialized_size(pull)
    assert byte_count(client, "PushResult", "sent") == 2 * serialized_size(push)
    assert message_count(client, "PushResult", "sent") == 2
    assert byte_count(client, "PushResult", "received") == 2 * serialized_size(
        participant_pb2.PushResultResponse(accepted=True)
    )
    for method in ("PullTask", "PushResult"):
        assert_ends_agree(client, wire.server_registry, method)
    assert byte_count(client, "Register", "sent") is None  # nothing invented for unused methods


def test_short_method() -> None:
    assert short_method("/fused.v1.ParticipantService/Register") == "Register"
    assert short_method("Register") == "Register"


def test_unknown_method_is_unimplemented_and_uncounted(wire: Wire) -> None:
    channel, client = wire.client()
    call = channel.unary_unary(
        "/fused.v1.ParticipantService/NoSuchMethod",
        request_serializer=participant_pb2.HeartbeatRequest.SerializeToString,
        response_deserializer=participant_pb2.HeartbeatResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as info:
        call(participant_pb2.HeartbeatRequest(participant_id=PID), metadata=MD)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert message_count(client, "NoSuchMethod", "sent", phase="none") == 1
    assert message_count(wire.server_registry, "NoSuchMethod", "received") is None
    assert wire.hook_calls == []


@pytest.mark.parametrize(
    ("blob_id", "offset", "data", "total"),
    [
        ("ab" * 32, 0, b"x" * 300, 300),
        ("", 5, b"", 0),
        ("ab" * 32, 2**40, b"\x00" * 3, 2**41),
        ("", 0, b"", 0),
    ],
)
def test_hand_written_blob_chunks_equal_protobuf(
    blob_id: str, offset: int, data: bytes, total: int
) -> None:
    from fused.common.rpc.framing import encode_blob_chunk

    expected = common_pb2.BlobChunk(blob_id=blob_id, offset=offset, data=data, total_size=total)
    assert encode_blob_chunk(blob_id, offset, data, total) == expected.SerializeToString()
