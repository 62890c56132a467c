"""The simulated participant of bench.load: participant protocol 2 without torch.

Each one does what participant/agent.py does, over its own channel: Register; a long poll
for the first task; the task's model arrives inline in the task reply (DownloadBlob only for
what did not); simulated work with heartbeats; the update goes inline in PushResult
(UploadBlob only above the coordinator's inline_max_bytes), which asks for the next task
(wait_s), so that a round without large artifacts is one call. Latencies and errors go to
the process's Stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio

from bench.load_artifacts import ModelCache, make_update
from bench.load_stats import DOWNLOAD, HEARTBEAT, PULL, PUSH, PUSH_WAIT, REGISTER, UPLOAD, Stats
from fused.common.rpc.metering import MD_JOB, MD_PARTICIPANT, MD_PHASE, MD_ROUND
from fused.common.rpc.protocol import PROTOCOL_VERSION
from fused.proto.v1 import common_pb2, participant_pb2, participant_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

DATASET = "digits"  # its default model is the small MLP
NUM_CLASSES = 10
TRAIN_PER_CLASS = 18
TEST_PER_CLASS = 5
AGENT_VERSION = "bench-load/0.2"
HELD_PER_AGENT = 16  # digests one agent keeps, like the agent's blob cache

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

Metadata = tuple[tuple[str, str], ...]
Task = participant_pb2.Task
Result = participant_pb2.PushResultRequest
Pulled = participant_pb2.PullTaskResponse
PUSH_METHOD = "/fused.v1.ParticipantService/PushResult"


def describe(exc: grpc.aio.AioRpcError) -> str:
    """CODE: details (the core's reason too, where it says more, e.g. a closed transport)."""
    debug = exc.debug_error_string() or ""
    return f"{exc.code().name}: {exc.details()}" + (f" [{debug[:300]}]" if debug else "")


# --------------------------------------------------------------------------- participants


@dataclass(frozen=True)
class Settings:
    target: str
    work_s: float  # mean simulated training time; evaluation takes a third of it
    summary: bytes  # the serialized DataSummary every participant registers (bench.load_assets)
    register_timeout_s: float = 30.0
    register_spread_s: float = 0.0  # each first registration at a random time in [0, this)
    push_timeout_s: float = 60.0  # the agent's, plus the wait for the next task
    transfer_timeout_s: float = 300.0  # the agent's, for DownloadBlob and UploadBlob


class Participant:
    def __init__(
        self,
        index: int,
        settings: Settings,
        stats: Stats,
        models: ModelCache,
        on_registered: Callable[[], None],
        token: str | None = None,
    ) -> None:
        self.pid = f"load-{index:05d}"
        self._settings = settings
        self._stats = stats
        self._models = models
        self._on_registered = on_registered  # once, at the first registration
        self._rng = random.Random(self.pid)
        self._token = token
        self._channel = grpc.aio.insecure_channel(settings.target, options=CHANNEL_OPTIONS)
        self._stub = participant_pb2_grpc.ParticipantServiceStub(self._channel)
        # PushResult called as a response stream (the same call on the wire): grpc.aio hands
        # a unary call's headers over only with its reply, a stream's as they arrive.
        self._push_call = self._channel.unary_stream(
            PUSH_METHOD,
            request_serializer=Result.SerializeToString,
            response_deserializer=participant_pb2.PushResultResponse.FromString,
        )
        self._reply = participant_pb2.RegisterResponse()
        self._registered = False
        self._ever_registered = False
        self._busy = False  # from a task's start to its push, as the agent: heartbeats go out
        self._held: deque[str] = deque(maxlen=HELD_PER_AGENT)  # digests this agent received
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
        pending: Pulled | None = None
        await asyncio.sleep(self._rng.uniform(0.0, self._settings.register_spread_s))
        try:
            while True:
                try:
                    if not self._registered:
                        pending = None
                        await self._register()
                    pending = await self._step(pending)
                    backoff = 0.5
                    continue
                except grpc.aio.AioRpcError as exc:  # counted where it happened
                    pending = None
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
            REGISTER,
            lambda: self._stub.Register(
                request, timeout=self._settings.register_timeout_s, metadata=self._md()
            ),
        )
        self._registered = True
        self._held.clear()  # a new session: the coordinator sends inline again
        if not self._ever_registered:
            self._ever_registered = True
            self._on_registered()

    async def _step(self, pending: Pulled | None) -> Pulled | None:
        """Run one task, from `pending` (a result's reply) or a long poll; returns the next
        task when the result's reply brought one."""
        if pending is None or not pending.HasField("task"):
            wait_s = self._reply.poll_wait_s
            request = participant_pb2.PullTaskRequest(participant_id=self.pid, wait_s=wait_s)
            pending = await self._timed(
                PULL, lambda: self._stub.PullTask(request, timeout=wait_s + 10, metadata=self._md())
            )
            if not pending.HasField("task"):
                return None
        self._keep_inline(pending)
        task = pending.task
        self.tasks[participant_pb2.TaskKind.Name(task.kind)] += 1
        result = await self._outcome(task)
        return await self._push(task, result)

    def _keep_inline(self, pulled: Pulled) -> None:
        for blob in pulled.blobs:
            self._stats.inline_in += 1
            if self._models.check(blob.blob_id, blob.data):
                self._held.append(blob.blob_id)
            else:
                self._stats.client_error(f"{self.pid}: inline {blob.blob_id[:12]} mismatch")

    async def _outcome(self, task: Task) -> Result:
        self._busy = True
        handler = TASK_HANDLERS.get(task.kind)
        try:
            if handler is None:
                return self._failed(task, "bench.load runs TRAIN and EVALUATE tasks only")
            return await handler(self, task)
        except grpc.aio.AioRpcError as exc:  # counted; report the failure so the round goes on
            return self._failed(task, f"simulated participant: {describe(exc)}")
        except Exception as exc:  # e.g. a bad artifact
            self._stats.client_error(f"{self.pid}: {exc!r}")
            return self._failed(task, f"simulated participant: {exc!r}")
        finally:
            self._busy = False

    async def _push(self, task: Task, result: Result) -> Pulled | None:
        """PushResult asking for the next task. Two latencies: to the coordinator's headers,
        which it sends once the result is accepted (PUSH), and to the reply (PUSH_WAIT, a
        long poll: it includes waiting for the next round)."""
        result.wait_s = self._reply.poll_wait_s
        timeout = self._settings.push_timeout_s + result.wait_s
        started = time.perf_counter()
        call = self._push_call(result, timeout=timeout, metadata=self._md(task))
        try:
            await call.initial_metadata()
            self._stats.ok(PUSH, time.perf_counter() - started)
            ack = await call.read()
        except grpc.aio.AioRpcError as exc:
            self._stats.error(PUSH, describe(exc))
            raise
        if not isinstance(ack, participant_pb2.PushResultResponse):  # EOF: no reply message
            code = await call.code()
            self._stats.error(PUSH_WAIT, f"{code.name}: {await call.details()}")
            raise RuntimeError(f"{self.pid}: PushResult answered no message ({code.name})")
        self._stats.ok(PUSH_WAIT, time.perf_counter() - started)
        if not ack.accepted:
            self._stats.rejected(ack.message)
            return None
        if not ack.next.HasField("task"):
            return None
        self._stats.next_from_push += 1
        return ack.next

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
            if not (self._busy and self._registered):
                continue  # an idle agent sits in a long poll, which shows it is alive
            beat = functools.partial(
                self._stub.Heartbeat,
                participant_pb2.HeartbeatRequest(participant_id=self.pid),
                timeout=max(interval, 1.0),
                metadata=self._md(),
            )
            try:
                reply = await self._timed(HEARTBEAT, beat)
            except grpc.aio.AioRpcError:
                continue  # counted; the task loop notices a dead coordinator
            if not reply.registered:
                self._registered = False

    async def train(self, task: Task) -> Result:
        started = time.monotonic()
        data = await self._model(task)
        weights = self._models.get(task.model_blob_id, data)
        await asyncio.sleep(self._settings.work_s * self._rng.uniform(0.5, 1.5))
        blob = make_update(weights, task.model_name, self.pid, task.round)
        digest = hashlib.sha256(blob).hexdigest()
        train = participant_pb2.TrainResult(
            update_blob_id=digest,
            num_examples=TRAIN_PER_CLASS * NUM_CLASSES,
            mean_loss=2.3 / task.round + self._rng.uniform(0.0, 0.1),
            seconds=time.monotonic() - started,
        )
        result = Result(participant_id=self.pid, task_id=task.task_id, train=train)
        if len(blob) <= self._reply.inline_max_bytes:
            result.blobs.append(common_pb2.InlineBlob(blob_id=digest, data=blob))
            self._stats.inline_out += 1
        else:
            await self._upload(task, blob, digest)
        return result

    async def evaluate(self, task: Task) -> Result:
        if task.model_blob_id:
            await self._model(task)  # the agent loads the model it evaluates
        await asyncio.sleep(self._settings.work_s / 3 * self._rng.uniform(0.5, 1.5))
        classes = task.num_classes or NUM_CLASSES
        correct = [self._rng.randint(0, TEST_PER_CLASS) for _ in range(classes)]
        evaluation = participant_pb2.EvalResult(
            correct=correct,
            total=[TEST_PER_CLASS] * classes,
            loss_sum=sum(TEST_PER_CLASS - c for c in correct) * 1.5 + 0.1 * classes,
        )
        return Result(participant_id=self.pid, task_id=task.task_id, eval=evaluation)

    async def _model(self, task: Task) -> bytes:
        """The task's model: received inline in this session, or downloaded."""
        digest = task.model_blob_id
        data = self._models.held(digest) if digest in self._held else None
        if data is None:
            data = await self._download(task, digest)
            self._held.append(digest)
        return data

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

        data = await self._timed(DOWNLOAD, fetch)
        if not self._models.check(digest, data):
            raise RuntimeError(f"{self.pid}: download does not match its digest {digest}")
        return data

    async def _upload(self, task: Task, blob: bytes, digest: str) -> None:
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
            UPLOAD,
            lambda: self._stub.UploadBlob(
                iter(chunks), timeout=self._settings.transfer_timeout_s, metadata=self._md(task)
            ),
        )
        if reply.blob_id != digest:
            raise RuntimeError(f"{self.pid}: upload stored as {reply.blob_id}, not {digest}")


# What a simulated participant does per task kind; any other kind is reported as failed.
TaskHandler = Callable[[Participant, Task], Awaitable[Result]]
TASK_HANDLERS: Mapping[int, TaskHandler] = {
    participant_pb2.TASK_KIND_TRAIN: Participant.train,
    participant_pb2.TASK_KIND_EVALUATE: Participant.evaluate,
}
