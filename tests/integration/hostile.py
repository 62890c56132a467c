"""Mallory's toolkit: a raw gRPC participant client and the malformed payloads she sends.

The client speaks the generated stubs (or raw bytes, for what a stub cannot express) over a
plain channel with large message limits, and adds only the metadata each call is given, so
a test controls every credential and byte that reaches the coordinator.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import torch
import zstandard
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fused.common.codecs import adapter_codec
from fused.common.codecs.adapter_codec import VALUE_DTYPES, Section, default_max_bytes
from fused.common.codecs.tensor_codec import encode_tensors
from fused.common.codecs.varint import varint
from fused.common.ml.adapters import AdapterLayout
from fused.common.rpc.protocol import PROTOCOL_VERSION
from fused.proto.v1 import common_pb2, control_pb2, participant_pb2, participant_pb2_grpc

CLIENT_MAX_MESSAGE = 64 << 20  # far above the coordinator's limit: the server must refuse
TIMEOUT_S = 15.0
SERVICE = "/fused.v1.ParticipantService/"

Metadata = tuple[tuple[str, str], ...]


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One hostile request: `call` returns a description of an OK answer or raises
    grpc.RpcError; the answer must carry `code` and contain `detail`."""

    name: str
    call: Callable[[], str]
    code: grpc.StatusCode
    detail: str


@dataclass(frozen=True)
class Outcome:
    case: Case
    code: grpc.StatusCode
    details: str

    @property
    def ok(self) -> bool:
        return self.code == self.case.code and self.case.detail in self.details

    def __str__(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        return (
            f"{mark} {self.case.name}: expected {self.case.code.name} ~ {self.case.detail!r}, "
            f"got {self.code.name}: {self.details!r}"
        )


def attempt(call: Callable[[], str]) -> tuple[grpc.StatusCode, str]:
    try:
        return grpc.StatusCode.OK, call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


# --------------------------------------------------------------------------- the client


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


class Client:
    """A participant that builds its own requests; `md` is sent unless a call overrides it."""

    def __init__(self, address: str, participant_id: str, token: str | None) -> None:
        self.participant_id = participant_id
        self.md: Metadata = bearer(token) if token else ()
        self.channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", CLIENT_MAX_MESSAGE),
                ("grpc.max_receive_message_length", CLIENT_MAX_MESSAGE),
            ],
        )
        self.stub = participant_pb2_grpc.ParticipantServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def serving(self) -> bool:
        """The coordinator's standard health check (open to anyone)."""
        reply = self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    # raw bytes, for requests the generated classes cannot produce
    def raw_unary(self, method: str, body: bytes, md: Metadata | None = None) -> bytes:
        call = self.channel.unary_unary(SERVICE + method, None, None)
        reply: bytes = call(body, metadata=self.md if md is None else md, timeout=TIMEOUT_S)
        return reply

    def raw_upload(self, bodies: Sequence[bytes], md: Metadata | None = None) -> bytes:
        call = self.channel.stream_unary(SERVICE + "UploadBlob", None, None)
        reply: bytes = call(iter(bodies), metadata=self.md if md is None else md, timeout=TIMEOUT_S)
        return reply

    # typed calls
    def register(
        self, summary: participant_pb2.DataSummary, participant_id: str | None = None
    ) -> participant_pb2.RegisterResponse:
        request = participant_pb2.RegisterRequest(
            protocol_version=PROTOCOL_VERSION,
            participant_id=self.participant_id if participant_id is None else participant_id,
            data=summary,
            agent_version="hostile/1",
        )
        reply: participant_pb2.RegisterResponse = self.stub.Register(
            request, metadata=self.md, timeout=TIMEOUT_S
        )
        return reply

    def pull(self, wait_s: float, md: Metadata | None = None) -> participant_pb2.Task | None:
        request = participant_pb2.PullTaskRequest(participant_id=self.participant_id, wait_s=wait_s)
        reply = self.stub.PullTask(
            request, metadata=self.md if md is None else md, timeout=wait_s + TIMEOUT_S
        )
        return reply.task if reply.HasField("task") else None

    def push(
        self, request: participant_pb2.PushResultRequest, md: Metadata | None = None
    ) -> participant_pb2.PushResultResponse:
        reply: participant_pb2.PushResultResponse = self.stub.PushResult(
            request, metadata=self.md if md is None else md, timeout=TIMEOUT_S
        )
        return reply

    def download(self, blob_id: str, offset: int = 0, md: Metadata | None = None) -> bytes:
        request = participant_pb2.DownloadBlobRequest(blob_id=blob_id, offset=offset)
        stream = self.stub.DownloadBlob(
            request, metadata=self.md if md is None else md, timeout=TIMEOUT_S
        )
        return b"".join(chunk.data for chunk in stream)

    def upload(
        self, chunks: Iterable[common_pb2.BlobChunk], md: Metadata | None = None
    ) -> participant_pb2.UploadBlobResponse:
        reply: participant_pb2.UploadBlobResponse = self.stub.UploadBlob(
            iter(list(chunks)), metadata=self.md if md is None else md, timeout=TIMEOUT_S
        )
        return reply

    def upload_status(self, blob_id: str) -> participant_pb2.UploadStatusResponse:
        reply: participant_pb2.UploadStatusResponse = self.stub.GetUploadStatus(
            participant_pb2.UploadStatusRequest(blob_id=blob_id), metadata=self.md, timeout=10
        )
        return reply

    def upload_bytes(self, data: bytes, job_id: str, round_number: int) -> str:
        """An honest-looking upload of `data` (whatever it holds); returns its digest."""
        digest = sha256(data)
        chunks = chunked(data, digest, job_id, round_number)
        reply = self.upload(chunks)
        assert reply.blob_id == digest and reply.size == len(data), reply
        return digest

    def push_train(
        self,
        task_id: str,
        blob_id: str,
        num_examples: int = 50,
        mean_loss: float = 0.5,
        seconds: float = 0.1,
    ) -> participant_pb2.PushResultResponse:
        result = participant_pb2.TrainResult(
            update_blob_id=blob_id, num_examples=num_examples, mean_loss=mean_loss, seconds=seconds
        )
        return self.push(
            participant_pb2.PushResultRequest(
                participant_id=self.participant_id, task_id=task_id, train=result
            )
        )


def chunked(
    data: bytes, digest: str, job_id: str, round_number: int, size: int = 1 << 16
) -> list[common_pb2.BlobChunk]:
    return [
        common_pb2.BlobChunk(
            blob_id=digest,
            offset=start,
            data=data[start : start + size],
            total_size=len(data),
            job_id=job_id,
            round=round_number,
        )
        for start in range(0, max(len(data), 1), size)
    ]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def with_unknown_field(body: bytes, field_number: int = 99) -> bytes:
    """A serialized message plus a varint field this schema does not define."""
    tag = field_number << 3  # wire type 0 (varint)
    out = bytearray(body)
    while True:
        byte, tag = tag & 0x7F, tag >> 7
        out.append(byte | (0x80 if tag else 0))
        if not tag:
            break
    out.append(1)
    return bytes(out)


def described(reply: Any) -> str:
    """An OK answer as text the cases match on."""
    if isinstance(reply, participant_pb2.PushResultResponse):
        return f"accepted={reply.accepted} {reply.message}"
    if isinstance(reply, participant_pb2.UploadStatusResponse):
        return f"complete={reply.complete} offset={reply.offset}"
    if isinstance(reply, participant_pb2.UploadBlobResponse):
        return f"stored {reply.blob_id} ({reply.size} bytes)"
    if isinstance(reply, bytes):
        return f"{len(reply)} bytes"
    return str(reply)


# --------------------------------------------------------------------------- safetensors


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """A safetensors file's header (parsed) and data buffer."""
    (length,) = struct.unpack("<Q", data[:8])
    header: dict[str, Any] = json.loads(data[8 : 8 + length])
    return header, data[8 + length :]


def assemble(header: str | bytes, body: bytes, declared: int | None = None) -> bytes:
    """A safetensors file from header text, padded to 8 bytes, with any declared length."""
    text = header.encode() if isinstance(header, str) else header
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text) if declared is None else declared) + text + body


def bad_updates(weights: Mapping[str, torch.Tensor], model: str) -> dict[str, bytes]:
    """Model updates that must fail the coordinator's checks, by what is wrong with them."""
    meta = {"model": model}
    names = sorted(weights)
    matrix = next(n for n in names if weights[n].dim() == 2 and weights[n].shape[0] != 1)
    vector = next(n for n in names if weights[n].dim() == 1)

    def changed(name: str, tensor: torch.Tensor) -> bytes:
        return encode_tensors({**weights, name: tensor}, meta)

    good = encode_tensors(weights, meta)
    header, body = split(good)
    first = next(k for k in header if k != "__metadata__")

    def edited(name: str, **fields: Any) -> bytes:
        entries = {**header, name: {**header[name], **fields}}
        return assemble(json.dumps(entries, separators=(",", ":")), body)

    nan = weights[matrix].clone()
    nan[0, 0] = float("nan")
    inf = weights[vector].clone()
    inf[-1] = float("-inf")
    text = json.dumps(header, separators=(",", ":"))
    duplicated = text[:-1] + f",{json.dumps(first)}:{json.dumps(header[first])}}}"
    return {
        "nan": changed(matrix, nan),
        "inf": changed(vector, inf),
        "shape": changed(matrix, weights[matrix].t().contiguous()),
        "dtype": changed(vector, weights[vector].double()),
        "missing": encode_tensors({n: weights[n] for n in names[1:]}, meta),
        "extra": encode_tensors({**weights, "backdoor.weight": torch.ones(3)}, meta),
        "duplicate": assemble(duplicated, body),
        "header_size": struct.pack("<Q", 2**21) + good[8:],
        "truncated": good[:7],
        "cut": good[: len(good) // 2],
        "trailing": good + b"\0" * 64,
        "unknown_dtype": edited(first, dtype="F8_E4M3"),
        "size_lie": edited(first, shape=[1]),
        "not_json": assemble(b"{'not': json}", body),
    }


# --------------------------------------------------------------------------- adapters


def _adapter(
    layout: AdapterLayout,
    digest: str = "",
    extra: int = 0,
    dtype: str = "float32",
    first: float = 1.0,
) -> bytes:
    """Every value nonzero, ``first`` the first; the first tensor claims ``extra`` more."""
    counts = [int(layout.indices[n].numel()) for n in layout.names]
    counts[0] += extra
    values = torch.ones(sum(counts))
    values[0] = first
    sections = [Section(c) for c in counts]
    mask = bytes.fromhex(digest or layout.digest)
    return adapter_codec.assemble(dtype, mask, sections, values.to(VALUE_DTYPES[dtype]))


def _adapter_frame(layout: AdapterLayout, frame: bytes) -> bytes:
    """Every value claimed nonzero (float32), with ``frame`` as their high bytes' zstd frame
    and nothing after it: the frame is refused before the low bytes are read."""
    sections = [Section(int(layout.indices[n].numel())) for n in layout.names]
    digest = bytes.fromhex(layout.digest)
    head = adapter_codec.assemble("float32", digest, sections, torch.empty(0))
    return head + varint(len(frame)) + frame


def bad_adapters(layout: AdapterLayout) -> dict[str, bytes]:
    """Adapter uploads that must fail the coordinator's checks, by what is wrong with them."""
    frame = zstandard.ZstdCompressor(level=3, write_content_size=True)
    high = frame.compress(bytes(layout.num_values))
    return {
        # 16 MiB of zeros in about 0.5 KiB (fits any layout's limit): the frame declares the
        # size, far above what the counts allow
        "bomb": _adapter_frame(layout, frame.compress(bytes(16 << 20))),
        "no_content_size": _adapter_frame(
            layout, zstandard.ZstdCompressor(write_content_size=False).compress(bytes(100))
        ),
        "oversized": os.urandom(default_max_bytes(layout) + 1024),
        "not_v3": b"FAv2" + bytes(1024),  # neither format
        "v2_garbage": frame.compress(bytes(1024)),  # a zstd frame: read as a stored v2, refused
        "two_frames": _adapter_frame(layout, high + high),
        "mask": _adapter(layout, digest="0" * 64),
        "nan": _adapter(layout, first=float("nan")),
        "count": _adapter(layout, extra=1),
        "dtype": _adapter(layout, dtype="float16"),
    }


def serve_job(
    client: Client,
    control: Any,
    job_id: str,
    on_task: Callable[[participant_pb2.Task], None],
    timeout_s: float = 180,
) -> Any:
    """Hand each of the job's tasks the client pulls to `on_task` until the job ends; returns
    the job's `JobInfo`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        task = client.pull(wait_s=1.0)
        if task is not None:
            assert task.job_id == job_id, task
            on_task(task)
            continue
        info = control.GetJob(control_pb2.GetJobRequest(job_id=job_id))
        if info.status in ("completed", "failed"):
            return info
    raise TimeoutError(f"job {job_id} did not end within {timeout_s} s")
