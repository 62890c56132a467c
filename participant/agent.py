"""The participant agent: connects out to the coordinator, pulls tasks, runs them, reports.

RPC glue only: what each task kind does is in participant.handlers, the PyTorch work in
participant.executor and artifact transfers in participant.transfer.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from fused.common.domain.tasks import TaskOutcome, TaskSpec
from fused.common.rpc.channels import CHUNK_BYTES, TlsFiles, create_channel
from fused.common.rpc.client_metering import CountingChannel
from fused.common.rpc.metering import (
    MD_JOB,
    MD_PARTICIPANT,
    MD_PHASE,
    MD_ROUND,
    WireMetrics,
)
from fused.common.rpc.protocol import PROTOCOL_VERSION
from fused.common.rpc.task_convert import task_from_proto
from fused.common.runtime.logs import log_fields, set_log_fields
from fused.participant.blobs import BlobCache
from fused.participant.bulk import BulkLink
from fused.participant.handlers import run_task
from fused.participant.reporting import error_outcome, failure_reason, push_outcome, shorten
from fused.participant.retry import Action, RegistrationRefused, Stage, decide
from fused.participant.site import Offer, Site, offer_summary
from fused.participant.transfer import TaskTransfer
from fused.proto.v1 import common_pb2, participant_pb2, participant_pb2_grpc

log = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"


@dataclass(frozen=True)
class AgentSettings:
    coordinator: str
    participant_id: str
    tls: TlsFiles | None = None
    token: str | None = None  # bearer token; never logged
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    max_download_bytes: int = 1 << 30
    cache_bytes: int = 512 << 20


class ReRegister(Exception):
    """The coordinator no longer knows us: start a new session."""


class ParticipantMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.wire = WireMetrics(registry)
        self.tasks = Counter(
            "fused_participant_tasks", "Tasks run", ["kind", "outcome"], registry=registry
        )
        self.results = Counter(
            "fused_participant_results",
            "Task outcomes pushed, by the coordinator's verdict (accepted, late, refused)",
            ["outcome"],
            registry=registry,
        )
        self.task_seconds = Histogram(
            "fused_participant_task_seconds", "Time to run a task", ["kind"], registry=registry
        )


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        site: Site | None,
        offer: Offer,
        metrics: ParticipantMetrics,
    ) -> None:
        """`site` is None when the workload could not be opened; `offer.error` says why,
        and the agent registers with it so that the coordinator can report the cause."""
        self._settings = settings
        self._site = site
        self._offer = offer
        self._metrics = metrics
        self._pid = settings.participant_id
        self.sessions = 0  # successful registrations, for observability and tests
        self._cache = BlobCache(settings.cache_bytes)
        self._stop = threading.Event()
        self._busy = threading.Event()  # set while a task runs: only then are heartbeats sent
        self._channel: grpc.Channel | None = None

    def shutdown(self) -> None:
        """Stop serving now: cancels the call in progress (safe from a signal handler)."""
        self._stop.set()
        channel = self._channel
        if channel is not None:
            channel.close()

    def run(self) -> None:
        """Serve until shutdown(); reconnect with exponential backoff and jitter. Returns
        only on shutdown; raises RegistrationRefused when retrying cannot help."""
        stop = self._stop
        set_log_fields(participant=self._pid)  # this thread's records name the participant
        backoff = self._settings.backoff_initial_s
        while not stop.is_set():
            try:
                self._session(stop)
                backoff = self._settings.backoff_initial_s
                continue
            except ReRegister:
                log.warning("coordinator forgot %s; registering again", self._pid)
                continue
            except RegistrationRefused:
                raise
            except grpc.RpcError as exc:
                if stop.is_set():  # shutdown() closed the channel under a call
                    return
                code = exc.code() if hasattr(exc, "code") else None
                if decide(Stage.SESSION, code) is Action.RECONNECT_SLOW:
                    backoff = self._settings.backoff_max_s
                    log.error(
                        "the coordinator refused this participant (%s: %s); check --token-file "
                        "or --tls-cert/--tls-key against its auth file and CA",
                        code.name if code else code,
                        exc.details(),
                    )
            except Exception:  # a bug must not end an edge agent: log it, start over
                if stop.is_set():
                    return
                code = None
                log.exception("session failed")
            delay = random.uniform(0.5, 1.0) * backoff
            log.warning("no session with the coordinator (%s); retrying in %.1f s", code, delay)
            stop.wait(delay)
            backoff = min(backoff * 2, self._settings.backoff_max_s)

    def _session(self, stop: threading.Event) -> None:
        raw = create_channel(self._settings.coordinator, self._settings.tls, self._settings.token)
        channel = CountingChannel(raw, self._metrics.wire, self._pid)
        self._channel = channel
        stub = participant_pb2_grpc.ParticipantServiceStub(channel)
        try:
            reply = self._register(stub)
            self.sessions += 1
            log.info("registered %s with %s", self._pid, self._settings.coordinator)
            lost = threading.Event()
            beat = threading.Thread(
                target=self._heartbeats,
                args=(stub, reply.heartbeat_interval_s, stop, lost),
                daemon=True,
            )
            beat.start()
            try:
                self._work(stub, channel, reply, stop, lost)
            finally:
                lost.set()
                beat.join()
        finally:
            self._channel = None
            channel.close()

    def _register(
        self, stub: participant_pb2_grpc.ParticipantServiceStub
    ) -> participant_pb2.RegisterResponse:
        try:
            reply: participant_pb2.RegisterResponse = stub.Register(
                self._register_request(), timeout=10, metadata=self._md()
            )
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code is not None and decide(Stage.REGISTER, code) is Action.STOP:
                raise RegistrationRefused(code, exc.details() or "") from exc
            raise
        return reply

    def _register_request(self) -> participant_pb2.RegisterRequest:
        data = offer_summary(self._offer)
        return participant_pb2.RegisterRequest(
            participant_id=self._pid,
            data=data,
            agent_version=AGENT_VERSION,
            protocol_version=PROTOCOL_VERSION,
        )

    def _md(self, task: TaskSpec | None = None) -> tuple[tuple[str, str | bytes], ...]:
        if task is None:
            return ((MD_PARTICIPANT, self._pid),)
        return (
            (MD_PARTICIPANT, self._pid),
            (MD_JOB, task.job_id),
            (MD_PHASE, task.phase),
            (MD_ROUND, str(task.round)),
        )

    def _heartbeats(
        self,
        stub: participant_pb2_grpc.ParticipantServiceStub,
        interval: float,
        stop: threading.Event,
        lost: threading.Event,
    ) -> None:
        while not (stop.is_set() or lost.is_set()):
            if lost.wait(interval * random.uniform(0.8, 1.2)):  # jitter spreads the load
                return
            if not self._busy.is_set():
                continue  # an idle agent sits in a long poll, which shows it is alive
            try:
                reply = stub.Heartbeat(
                    participant_pb2.HeartbeatRequest(participant_id=self._pid),
                    timeout=max(interval, 1.0),
                    metadata=self._md(),
                )
            except grpc.RpcError:
                continue  # the task loop notices a dead coordinator and reconnects
            except ValueError:
                return  # the channel was closed: the session is over
            if not reply.registered:
                lost.set()

    def _work(
        self,
        stub: participant_pb2_grpc.ParticipantServiceStub,
        channel: CountingChannel,
        reply: participant_pb2.RegisterResponse,
        stop: threading.Event,
        lost: threading.Event,
    ) -> None:
        """Take tasks until shutdown: from a long poll, or from the reply to the last result
        (protocol 2: a round is one PushResult when its artifacts travel inline)."""
        wait_s = reply.poll_wait_s
        pulled: participant_pb2.PullTaskResponse | None = None
        while not stop.is_set():
            if lost.is_set():
                raise ReRegister
            if pulled is None or not pulled.HasField("task"):
                request = participant_pb2.PullTaskRequest(participant_id=self._pid, wait_s=wait_s)
                pulled = stub.PullTask(request, timeout=wait_s + 10, metadata=self._md())
                if not pulled.HasField("task"):
                    continue
            self._keep_inline(pulled)
            try:
                task = task_from_proto(pulled.task)
            except ValueError as exc:  # a task this agent cannot read: its error, not ours
                log.error("task %s is malformed: %s", pulled.task.task_id, exc)
                outcome = error_outcome(self._pid, pulled.task.task_id, f"malformed task: {exc}")
                pulled = self._push(stub, outcome, self._md())
                continue
            task_stub = participant_pb2_grpc.ParticipantServiceStub(channel.with_phase(task.phase))
            pulled = self._execute(task_stub, task, reply)

    def _keep_inline(self, pulled: participant_pb2.PullTaskResponse) -> None:
        for blob in pulled.blobs:
            if not self._cache.put_checked(blob.blob_id, blob.data):
                log.warning("inline artifact %s does not match its digest", blob.blob_id[:12])

    def _execute(
        self,
        stub: participant_pb2_grpc.ParticipantServiceStub,
        task: TaskSpec,
        reply: participant_pb2.RegisterResponse,
    ) -> participant_pb2.PullTaskResponse | None:
        fields = {"job": task.job_id, "phase": task.phase, "round": task.round}
        with log_fields(participant=self._pid, **fields):  # records of this task name it
            return self._execute_task(stub, task, reply)

    def _execute_task(
        self,
        stub: participant_pb2_grpc.ParticipantServiceStub,
        task: TaskSpec,
        reply: participant_pb2.RegisterResponse,
    ) -> participant_pb2.PullTaskResponse | None:
        """Run the task and push its outcome; whatever the task or the coordinator's verdict
        on it, the agent goes on to the next task (only a lost session raises). Returns the
        next task when the coordinator's reply brought one."""
        started = time.monotonic()
        transfer = self._transfer(stub, task, reply)
        self._busy.set()
        try:
            outcome = self._run_task(task, transfer)
            status = "ok"
        except Exception as exc:
            reason = None if self._stop.is_set() else failure_reason(exc)
            if reason is None:
                raise  # shutdown, or the connection: a new session is offered the task again
            log.error("task %s failed: %s", task.task_id, shorten(reason), exc_info=_traced(exc))
            outcome = error_outcome(self._pid, task.task_id, reason)
            status = "error"
        finally:
            self._busy.clear()
        self._metrics.tasks.labels(task.kind.value, status).inc()
        self._metrics.task_seconds.labels(task.kind.value).observe(time.monotonic() - started)
        blobs = transfer.inline if outcome.error is None else []
        return self._push(stub, outcome, self._md(task), blobs, reply.poll_wait_s)

    def _push(
        self,
        stub: participant_pb2_grpc.ParticipantServiceStub,
        outcome: TaskOutcome,
        metadata: tuple[tuple[str, str | bytes], ...],
        blobs: Sequence[common_pb2.InlineBlob] = (),
        wait_s: float = 0.0,
    ) -> participant_pb2.PullTaskResponse | None:
        """Push; the reply's next task, when it brought one."""
        pushed = push_outcome(stub, outcome, metadata, blobs, wait_s)
        self._metrics.results.labels(pushed.pushed.value).inc()
        return pushed.next

    def _transfer(
        self,
        stub: participant_pb2_grpc.ParticipantServiceStub,
        task: TaskSpec,
        reply: participant_pb2.RegisterResponse,
    ) -> TaskTransfer:
        bulk = None
        if reply.bulk_port:  # its bytes count as the stream calls' would, by the task's phase
            wire, pid = self._metrics.wire, self._pid

            def count(method: str, direction: str, n: int) -> None:
                wire.record(method, direction, task.phase, pid, n)

            bulk = BulkLink.beside(
                self._settings.coordinator, reply.bulk_port, self._settings.tls, count
            )
        return TaskTransfer(
            stub,
            task,
            metadata=self._md(task),
            cache=self._cache,
            max_download_bytes=self._settings.max_download_bytes,
            chunk_bytes=reply.chunk_bytes or CHUNK_BYTES,
            inline_max_bytes=reply.inline_max_bytes,
            bulk=bulk,
        )

    def _run_task(self, task: TaskSpec, transfer: TaskTransfer) -> TaskOutcome:
        if self._site is None:
            raise ValueError(
                f"workload {self._offer.workload!r} cannot run here: {self._offer.error}"
            )
        return run_task(task, self._site, transfer)


def _traced(exc: Exception) -> bool:
    """Whether a task's failure deserves a traceback: a bug, not a refusal or bad data."""
    return not isinstance(exc, grpc.RpcError | ValueError)
