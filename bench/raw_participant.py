"""A participant written by hand, for the resource floods of bench.chaos and their tests.

It speaks the participant protocol over its own channel in local mode (its id travels as
metadata), registers with any data summary, holds the tasks it pulls, and streams uploads at
the pace a scenario chooses: all at once, stopping at a gate, or a byte at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from fused.client.initial_weights import start_training
from fused.common.domain.specs import TrainingSpec
from fused.common.rpc.channels import TlsFiles, create_channel
from fused.common.rpc.metering import MD_PARTICIPANT
from fused.common.rpc.protocol import PROTOCOL_VERSION
from fused.participant.site import builtin_summary
from fused.proto.v1 import (
    common_pb2,
    control_pb2,
    control_pb2_grpc,
    participant_pb2,
    participant_pb2_grpc,
)

DIGITS = builtin_summary("mlp", [10] * 10, 20, "digits")
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Answer:
    """How a call ended: its status code and message (OK: a description of the reply)."""

    code: grpc.StatusCode
    details: str

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"


def answer_of(call: object) -> Answer:
    """Wait for a call (a future or a response) and describe how it ended."""
    try:
        reply = call.result() if isinstance(call, grpc.Future) else call
    except grpc.RpcError as exc:
        return Answer(exc.code(), exc.details() or "")
    return Answer(grpc.StatusCode.OK, str(reply).strip().replace("\n", " "))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunks(
    blob: bytes, job_id: str, round_number: int, start: int = 0, size: int = 1 << 16
) -> Iterator[common_pb2.BlobChunk]:
    """The blob from `start` on, in chunks naming its digest and the task's job and round."""
    digest = sha256(blob)
    for at in range(start, max(len(blob), start + 1), size):
        yield common_pb2.BlobChunk(
            blob_id=digest,
            offset=at,
            data=blob[at : at + size],
            total_size=len(blob),
            job_id=job_id,
            round=round_number,
        )


Chunks = Iterator[common_pb2.BlobChunk]


def gated(sent: Iterable[common_pb2.BlobChunk], gate: threading.Event, first: int) -> Chunks:
    """The first `first` chunks, then nothing until `gate` is set, then the rest."""
    for i, chunk in enumerate(sent):
        if i == first:
            gate.wait()
        yield chunk


def trickle(sent: Iterable[common_pb2.BlobChunk], every_s: float, stop: threading.Event) -> Chunks:
    """The chunks one every `every_s` seconds (until `stop` is set)."""
    for chunk in sent:
        yield chunk
        if stop.wait(every_s):
            return


def byte_chunks(blob: bytes, job_id: str, round_number: int) -> Chunks:
    """A slow loris's chunks: one byte each."""
    return chunks(blob, job_id, round_number, size=1)


class RawParticipant:
    """One hand-written participant; every call carries its id as local-mode metadata."""

    def __init__(self, address: str, participant_id: str, tls: TlsFiles | None = None) -> None:
        self.participant_id = participant_id
        self.md = ((MD_PARTICIPANT, participant_id),)
        self.channel = create_channel(address, tls) if tls else grpc.insecure_channel(address)
        self.stub = participant_pb2_grpc.ParticipantServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def register(
        self, summary: participant_pb2.DataSummary = DIGITS
    ) -> participant_pb2.RegisterResponse:
        request = participant_pb2.RegisterRequest(
            protocol_version=PROTOCOL_VERSION,
            participant_id=self.participant_id,
            data=summary,
            agent_version="raw/1",
        )
        reply: participant_pb2.RegisterResponse = self.stub.Register(
            request, metadata=self.md, timeout=TIMEOUT_S
        )
        return reply

    def pull(self, wait_s: float = 30.0) -> participant_pb2.Task | None:
        request = participant_pb2.PullTaskRequest(participant_id=self.participant_id, wait_s=wait_s)
        reply = self.stub.PullTask(request, metadata=self.md, timeout=wait_s + TIMEOUT_S)
        return reply.task if reply.HasField("task") else None

    def pull_task(self, timeout_s: float = 60.0) -> participant_pb2.Task:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            task = self.pull(wait_s=min(10.0, timeout_s))
            if task is not None:
                return task
        raise TimeoutError(f"{self.participant_id} got no task within {timeout_s:g} s")

    @contextlib.contextmanager
    def alive(self, every_s: float = 0.5) -> Iterator[None]:
        """Heartbeats in the background, so a participant busy streaming is not reaped."""
        stop = threading.Event()

        def beat() -> None:
            request = participant_pb2.HeartbeatRequest(participant_id=self.participant_id)
            while not stop.wait(every_s):
                with contextlib.suppress(grpc.RpcError, ValueError):
                    self.stub.Heartbeat(request, metadata=self.md, timeout=TIMEOUT_S)

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def decline(self, task: participant_pb2.Task, why: str = "declined") -> None:
        request = participant_pb2.PushResultRequest(
            participant_id=self.participant_id,
            task_id=task.task_id,
            error=participant_pb2.TaskError(message=why),
        )
        self.stub.PushResult(request, metadata=self.md, timeout=TIMEOUT_S)

    def upload(self, sent: Chunks, timeout_s: float = 60.0) -> Answer:
        return answer_of(self.start_upload(sent, timeout_s))

    def start_upload(self, sent: Iterator[common_pb2.BlobChunk], timeout_s: float = 60.0) -> (
        grpc.Future[Any]
    ):  # fmt: skip
        future: grpc.Future[Any] = self.stub.UploadBlob.future(
            sent, metadata=self.md, timeout=timeout_s
        )
        return future

    def upload_offset(self, digest: str) -> int:
        request = participant_pb2.UploadStatusRequest(blob_id=digest)
        status = self.stub.GetUploadStatus(request, metadata=self.md, timeout=TIMEOUT_S)
        return int(status.offset)


@contextlib.contextmanager
def held_task(
    address: str,
    control: control_pb2_grpc.ControlServiceStub,
    pid: str,
    spec: TrainingSpec,
    tls: TlsFiles | None = None,
) -> Iterator[tuple[RawParticipant, str, int]]:
    """A hand-written participant holding an open task of a training job started with `spec`
    (uploads belong to one): yields it, the task's job and round; declines the task at the
    end and waits for the job to finish."""
    raw = RawParticipant(address, pid, tls)
    raw.register()
    job = start_training(control, spec)
    task = raw.pull_task()
    try:
        yield raw, task.job_id, task.round
    finally:
        raw.decline(task)
        list(control.WatchJob(control_pb2.WatchJobRequest(job_id=job.job_id), timeout=120))
        raw.close()
