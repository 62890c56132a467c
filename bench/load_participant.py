"""The simulated participant of bench.load: the participant protocol without torch.

Each one does what participant/agent.py does, over its own channel; latencies and errors
go to a shared Stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy as np
import safetensors.numpy

from fused.common.rpc.metering import MD_JOB, MD_PARTICIPANT, MD_PHASE, MD_ROUND
from fused.common.rpc.protocol import PROTOCOL_VERSION
from fused.proto.v1 import (
    common_pb2,
    participant_pb2,
    participant_pb2_grpc,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

DATASET = "digits"  # its default model is the small MLP
NUM_CLASSES = 10
TRAIN_PER_CLASS = 18
TEST_PER_CLASS = 5
AGENT_VERSION = "bench-load/0.1"
TERMINAL = frozenset({"completed", "failed"})
LONG_POLL = "pull_task"
CALL_TYPES = ("register", "heartbeat", LONG_POLL, "download", "upload", "push_result")
MAX_ERROR_SAMPLES = 5

# Like common.rpc.channels' client options (limits, keepalive), plus a channel-private subchannel
# pool: without it gRPC shares one TCP connection between channels to the same target.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", 4 << 20),
    ("grpc.max_receive_message_length", 4 << 20),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.use_local_subchannel_pool", 1),
]
CONTROL_OPTIONS: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 256 << 20)]

Metadata = tuple[tuple[str, str], ...]
Task = participant_pb2.Task
Result = participant_pb2.PushResultRequest


# --------------------------------------------------------------------------- recording


@dataclass
class Stats:
    """Latencies (ms) of successful calls, call and error counts per call type."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in CALL_TYPES})
    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    rejected_results: int = 0
    client_errors: int = 0  # artifacts that failed their checks here

    def ok(self, kind: str, seconds: float) -> None:
        self.calls[kind] += 1
        self.latencies[kind].append(seconds * 1000.0)

    def error(self, kind: str, message: str) -> None:
        self.calls[kind] += 1
        self.errors[kind] += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(f"{kind}: {message}")

    def client_error(self, message: str) -> None:
        self.client_errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(f"client: {message}")

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            return round(float(np.percentile(values, q)), 3) if values else None

        overall = [v for k, vs in self.latencies.items() if k != LONG_POLL for v in vs]
        groups = {**self.latencies, "overall": overall}
        return {
            "errors": sum(self.errors.values()),
            "errors_by_call": dict(self.errors),
            "error_samples": self.error_samples,
            "rejected_results": self.rejected_results,
            "client_errors": self.client_errors,
            "calls": {k: self.calls[k] for k in CALL_TYPES},
            "p50_ms": {k: pct(v, 50) for k, v in groups.items()},
            "p99_ms": {k: pct(v, 99) for k, v in groups.items()},
            "max_ms": {k: (round(max(v), 3) if v else None) for k, v in groups.items()},
        }


def describe(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"


# --------------------------------------------------------------------------- the update


class ModelCache:
    """Parsed model artifacts by digest, shared by the simulated participants (the parse is
    load-generator work, not coordinator load; every participant still downloads)."""

    def __init__(self) -> None:
        self._parsed: dict[str, dict[str, np.ndarray[Any, Any]]] = {}

    def get(self, digest: str, data: bytes) -> dict[str, np.ndarray[Any, Any]]:
        parsed = self._parsed.get(digest)
        if parsed is None:
            parsed = self._parsed[digest] = safetensors.numpy.load(data)
        return parsed


def make_update(
    weights: dict[str, np.ndarray[Any, Any]], model_name: str, pid: str, round_number: int
) -> bytes:
    """The model plus a small deterministic perturbation, as safetensors bytes with the
    header the coordinator's schema check expects (same names, shapes and dtypes)."""
    seed = int.from_bytes(hashlib.sha256(f"{pid}:{round_number}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray[Any, Any]] = {}
    for name, array in weights.items():
        if np.issubdtype(array.dtype, np.floating):
            noise = rng.standard_normal(array.shape).astype(array.dtype) * array.dtype.type(1e-3)
            out[name] = np.ascontiguousarray(array + noise)
        else:
            out[name] = np.ascontiguousarray(array)
    data: bytes = safetensors.numpy.save(out, metadata={"model": model_name})
    return data


# --------------------------------------------------------------------------- participants


@dataclass(frozen=True)
class Settings:
    target: str
    work_s: float  # mean simulated training time; evaluation takes a third of it
    summary: bytes  # the serialized DataSummary every participant registers (bench.load_assets)
    register_timeout_s: float = 30.0
    push_timeout_s: float = 60.0  # the agent's
    transfer_timeout_s: float = 300.0  # the agent's, for DownloadBlob and UploadBlob


class Participant:
    def __init__(
        self,
        index: int,
        settings: Settings,
        stats: Stats,
        models: ModelCache,
        registered: asyncio.Event,
        counter: list[int],
        token: str | None = None,
    ) -> None:
        self.pid = f"load-{index:05d}"
        self._settings = settings
        self._stats = stats
        self._models = models
        self._all_registered = registered
        self._counter = counter  # [registered so far, needed]
        self._rng = random.Random(self.pid)
        self._token = token
        self._channel = grpc.aio.insecure_channel(settings.target, options=CHANNEL_OPTIONS)
        self._stub = participant_pb2_grpc.ParticipantServiceStub(self._channel)
        self._reply = participant_pb2.RegisterResponse()
        self._registered = False
        self._task: Task | None = None  # the task being worked on
        self.tasks = Counter[str]()

    async def close(self) -> None:
        await self._channel.close(None)

    def _md(self, task: Task | None = None) -> Metadata:
        md: list[tuple[str, str]] = [(MD_PARTICIPANT, self.pid)]
        if task is not None:
            md += [(MD_JOB, task.job_id), (MD_PHASE, task.phase), (MD_ROUND, str(task.round))]
        if self._token is not None:
            md.append(("authorization", f"Bearer {self._token}"))
        return tuple(md)

    async def _timed(self, kind: str, call: Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        try:
            result = await call()
        except grpc.aio.AioRpcError as exc:
            self._stats.error(kind, describe(exc))
            raise
        self._stats.ok(kind, time.perf_counter() - started)
        return result

    async def run(self) -> None:
        """Serve until cancelled; after a failed call back off and go on, like the agent."""
        backoff = 0.5
        beats = asyncio.create_task(self._heartbeats())
        try:
            while True:
                try:
                    if not self._registered:
                        await self._register()
                    await self._pull_and_run()
                    backoff = 0.5
                    continue
                except grpc.aio.AioRpcError as exc:  # counted where it happened
                    if exc.code() is grpc.StatusCode.FAILED_PRECONDITION:
                        self._registered = False  # the coordinator forgot us
                await asyncio.sleep(backoff * self._rng.uniform(0.5, 1.0))
                backoff = min(backoff * 2, 10.0)
        finally:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats

    async def _register(self) -> None:
        data = participant_pb2.DataSummary.FromString(self._settings.summary)
        request = participant_pb2.RegisterRequest(
            protocol_version=PROTOCOL_VERSION,
            participant_id=self.pid,
            data=data,
            agent_version=AGENT_VERSION,
        )
        self._reply = await self._timed(
            "register",
            lambda: self._stub.Register(
                request, timeout=self._settings.register_timeout_s, metadata=self._md()
            ),
        )
        if not self._registered:
            self._registered = True
            self._counter[0] += 1
            if self._counter[0] >= self._counter[1]:
                self._all_registered.set()

    async def _pull_and_run(self) -> None:
        wait_s = self._reply.poll_wait_s
        request = participant_pb2.PullTaskRequest(participant_id=self.pid, wait_s=wait_s)
        pulled = await self._timed(
            LONG_POLL,
            lambda: self._stub.PullTask(request, timeout=wait_s + 10, metadata=self._md()),
        )
        if not pulled.HasField("task"):
            return
        task = pulled.task
        self.tasks[participant_pb2.TaskKind.Name(task.kind)] += 1
        self._task = task  # busy from the pull to the push, as the agent: heartbeats go out
        handler = TASK_HANDLERS.get(task.kind)
        try:
            if handler is None:
                result = self._failed(task, "bench.load runs TRAIN and EVALUATE tasks only")
            else:
                result = await handler(self, task)
        except grpc.aio.AioRpcError as exc:  # counted; report the failure so the round goes on
            result = self._failed(task, f"simulated participant: {describe(exc)}")
        except Exception as exc:  # e.g. a bad artifact
            self._stats.client_error(f"{self.pid}: {exc!r}")
            result = self._failed(task, f"simulated participant: {exc!r}")
        finally:
            self._task = None
        ack = await self._timed(
            "push_result",
            lambda: self._stub.PushResult(
                result, timeout=self._settings.push_timeout_s, metadata=self._md(task)
            ),
        )
        if not ack.accepted:
            self._stats.rejected_results += 1
            if len(self._stats.error_samples) < MAX_ERROR_SAMPLES:
                self._stats.error_samples.append(f"push_result not accepted: {ack.message}")

    def _failed(self, task: Task, message: str) -> Result:
        return Result(
            participant_id=self.pid,
            task_id=task.task_id,
            error=participant_pb2.TaskError(message=message),
        )

    async def _heartbeats(self) -> None:
        """The agent's heartbeat timer: ticks all session long with jitter, beats only while a
        task runs. The first tick comes at a random phase, as for agents started at different
        times (tasks are dispatched to all at once; timers started then would beat in step)."""
        first = True
        while True:
            interval = self._reply.heartbeat_interval_s or 5.0
            await asyncio.sleep(
                interval * self._rng.uniform(*((0.0, 1.0) if first else (0.8, 1.2)))
            )
            first = False
            task = self._task
            if task is None or not self._registered:
                continue  # an idle agent sits in a long poll, which shows it is alive
            request = participant_pb2.HeartbeatRequest(
                participant_id=self.pid, task_id=task.task_id
            )
            try:
                beat = functools.partial(
                    self._stub.Heartbeat, request, timeout=max(interval, 1.0), metadata=self._md()
                )
                reply = await self._timed("heartbeat", beat)
            except grpc.aio.AioRpcError:
                continue  # counted; the task loop notices a dead coordinator
            if not reply.registered:
                self._registered = False

    async def train(self, task: Task) -> Result:
        started = time.monotonic()
        data = await self._download(task, task.model_blob_id)
        weights = self._models.get(task.model_blob_id, data)
        await asyncio.sleep(self._settings.work_s * self._rng.uniform(0.5, 1.5))
        blob = make_update(weights, task.model_name, self.pid, task.round)
        blob_id = await self._upload(task, blob)
        train = participant_pb2.TrainResult(
            update_blob_id=blob_id,
            num_examples=TRAIN_PER_CLASS * NUM_CLASSES,
            mean_loss=2.3 / task.round + self._rng.uniform(0.0, 0.1),
            seconds=time.monotonic() - started,
        )
        return Result(participant_id=self.pid, task_id=task.task_id, train=train)

    async def evaluate(self, task: Task) -> Result:
        await asyncio.sleep(self._settings.work_s / 3 * self._rng.uniform(0.5, 1.5))
        classes = task.num_classes or NUM_CLASSES
        correct = [self._rng.randint(0, TEST_PER_CLASS) for _ in range(classes)]
        evaluation = participant_pb2.EvalResult(
            correct=correct,
            total=[TEST_PER_CLASS] * classes,
            loss_sum=sum(TEST_PER_CLASS - c for c in correct) * 1.5 + 0.1 * classes,
        )
        return Result(participant_id=self.pid, task_id=task.task_id, eval=evaluation)

    async def _download(self, task: Task, digest: str) -> bytes:
        async def fetch() -> bytes:
            parts: list[bytes] = []
            call = self._stub.DownloadBlob(
                participant_pb2.DownloadBlobRequest(blob_id=digest),
                timeout=self._settings.transfer_timeout_s,
                metadata=self._md(task),
            )
            async for chunk in call:
                parts.append(chunk.data)
            return b"".join(parts)

        data = await self._timed("download", fetch)
        if hashlib.sha256(data).hexdigest() != digest:
            raise RuntimeError(f"{self.pid}: download does not match its digest {digest}")
        return data

    async def _upload(self, task: Task, blob: bytes) -> str:
        digest = hashlib.sha256(blob).hexdigest()
        step = self._reply.chunk_bytes or 1 << 20
        chunks = [
            common_pb2.BlobChunk(
                blob_id=digest,
                offset=start,
                data=blob[start : start + step],
                total_size=len(blob),
                job_id=task.job_id,
                round=task.round,
            )
            for start in range(0, max(len(blob), 1), step)
        ]
        reply = await self._timed(
            "upload",
            lambda: self._stub.UploadBlob(
                iter(chunks), timeout=self._settings.transfer_timeout_s, metadata=self._md(task)
            ),
        )
        if reply.blob_id != digest:
            raise RuntimeError(f"{self.pid}: upload stored as {reply.blob_id}, not {digest}")
        return digest


# What a simulated participant does per task kind; any other kind is reported as failed.
TaskHandler = Callable[[Participant, Task], Awaitable[Result]]
TASK_HANDLERS: Mapping[int, TaskHandler] = {
    participant_pb2.TASK_KIND_TRAIN: Participant.train,
    participant_pb2.TASK_KIND_EVALUATE: Participant.evaluate,
}
