"""Whose bytes a call moves: labels and job-accounting keys come from the authenticated
caller and the task the coordinator gave it, never from what the call's metadata claims;
counts made before the caller is known wait for it (a unary request is read before
authentication runs)."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from fused.common.domain.tasks import TaskKind, TaskOutcome, TaskSpec
from fused.common.domain.train_config import TrainConfig
from fused.common.rpc.channels import create_channel
from fused.common.rpc.identity import OPERATOR, PARTICIPANT, Identity
from fused.common.rpc.metering import (
    MD_JOB,
    MD_PARTICIPANT,
    MD_PHASE,
    MD_ROUND,
    NO_PARTICIPANT,
    CallLabels,
    CountingServerInterceptor,
    Resolve,
    WireMetrics,
    caller_known,
)
from fused.coordinator.accounting import OTHER, UNKNOWN, ByteKey, CallAccounting
from fused.coordinator.auth import current_identity
from fused.coordinator.fleet import Fleet
from fused.coordinator.state import ParticipantRecord, open_store
from fused.proto.v1 import participant_pb2, participant_pb2_grpc
from tests.unit.test_metering import Context, EchoServicer, ThreadedServer, serialized_size

JOB = "job-1"
TASK = TaskSpec("task-1", JOB, "train", 1, TaskKind.TRAIN, "ab" * 32, "mlp", 10, TrainConfig(), 0.0)
P0_TASK = {MD_PARTICIPANT: "p0", MD_JOB: JOB, MD_PHASE: "train", MD_ROUND: "1"}
Charged = list[tuple[ByteKey, str, int]]


async def _accept(outcome: TaskOutcome) -> None:
    return None


@pytest.fixture
def fleet() -> Fleet:
    """p0, mallory and p2 registered; p0 holds TASK."""
    fleet = Fleet(open_store("memory"), offline_after_s=60)
    for pid in ("p0", "mallory", "p2"):
        fleet.register(ParticipantRecord(pid, [10], 10, 2, 0.0, 0.0))

    async def submit() -> None:
        fleet.submit("p0", TASK, _accept)

    asyncio.run(submit())
    return fleet


def resolve_as(resolve: Resolve, identity: Identity | None) -> CallLabels | None:
    """What the call's labels resolve to once authentication has set `identity`."""

    def authenticated() -> CallLabels | None:
        current_identity.set(identity)
        return resolve()

    return contextvars.copy_context().run(authenticated)


def p0(**changes: str) -> Mapping[str, str]:
    """p0's task metadata with some values changed (keys without the "fused-" prefix)."""
    return {**P0_TASK, **{f"fused-{k}": v for k, v in changes.items()}}


def caller(pid: str) -> Identity:
    return Identity(PARTICIPANT, pid)


P0_ALONE = ("p0", "none", False)  # counted as p0's, in no phase, charged to no job
MALLORY_ALONE = ("mallory", "none", False)

# (case, caller, metadata) -> (participant label, phase label, charged to p0's task?)
CASES: list[tuple[str, Identity | None, Mapping[str, str], tuple[str, str, bool] | None]] = [
    ("p0 names its own task", caller("p0"), P0_TASK, ("p0", "train", True)),
    ("p0 names no task", caller("p0"), {}, P0_ALONE),
    ("mallory names p0's task", caller("mallory"), P0_TASK, MALLORY_ALONE),
    (
        "mallory names p0's round as hers",
        caller("mallory"),
        p0(participant="mallory"),
        MALLORY_ALONE,
    ),
    ("a round p0 has no task in", caller("p0"), p0(round="999"), P0_ALONE),
    ("a phase of no task", caller("p0"), p0(phase="evil"), P0_ALONE),
    ("a job of no task", caller("p0"), p0(job="job-x"), P0_ALONE),
    ("a round in other digits", caller("p0"), p0(round="\uff11"), P0_ALONE),
    ("an 11-digit round", caller("p0"), p0(round="1" * 11), P0_ALONE),
    ("an unregistered caller", caller("eve"), {MD_PARTICIPANT: "eve"}, (UNKNOWN, "none", False)),
    ("an operator", Identity(OPERATOR, "admin"), P0_TASK, (NO_PARTICIPANT, "none", False)),
    ("nobody authenticated yet", None, P0_TASK, None),
]


@pytest.mark.parametrize(("name", "caller", "md", "expected"), CASES, ids=[c[0] for c in CASES])
def test_labels_and_keys(
    fleet: Fleet,
    name: str,
    caller: Identity | None,
    md: Mapping[str, str],
    expected: tuple[str, str, bool] | None,
) -> None:
    charged: Charged = []
    accounting = CallAccounting(fleet, lambda key, d, n: charged.append((key, d, n)))
    labels = resolve_as(accounting("PushResult", md), caller)
    if expected is None:
        assert labels is None
        return
    assert labels is not None
    assert (labels.participant, labels.phase, labels.charge is not None) == expected
    if labels.charge is not None:
        labels.charge("received", 7)
        assert charged == [(ByteKey(JOB, "train", 1, "p0"), "received", 7)]


def test_the_task_is_looked_up_when_the_call_starts(fleet: Fleet) -> None:
    """A result's task closes while its call runs; its answer is still p0's, in that round."""
    accounting = CallAccounting(fleet, lambda key, d, n: None)
    resolve = accounting("PushResult", P0_TASK)
    fleet.close(TASK.task_id)
    labels = resolve_as(resolve, caller("p0"))
    assert labels is not None and labels.phase == "train" and labels.charge is not None
    later = resolve_as(accounting("PushResult", P0_TASK), caller("p0"))
    assert later is not None and later.phase == "none" and later.charge is None


def test_a_first_registration_counts_under_its_caller(fleet: Fleet) -> None:
    accounting = CallAccounting(fleet, lambda key, d, n: None)
    eve = caller("eve")  # authenticated, not registered yet
    registering = resolve_as(accounting("Register", {}), eve)
    beating = resolve_as(accounting("Heartbeat", {}), eve)
    assert registering is not None and beating is not None
    assert (registering.participant, beating.participant) == ("eve", UNKNOWN)


def test_participant_labels_are_capped(fleet: Fleet) -> None:
    accounting = CallAccounting(fleet, lambda key, d, n: None, label_cap=2)
    seen = []
    for pid in ("p0", "mallory", "p2", "p0"):
        labels = resolve_as(accounting("Heartbeat", {}), caller(pid))
        assert labels is not None
        seen.append(labels.participant)
    assert seen == ["p0", "mallory", OTHER, "p0"]


# ---------------------------------------------------------------- counts wait for the caller

CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")


class Authenticating(EchoServicer):
    """Heartbeat stands for a handler behind authentication: it learns who calls (here from
    the request), or refuses before it knows. PullTask is a long poll that says as soon as
    it knows, and answers when released."""

    def __init__(self, known: set[str]) -> None:
        super().__init__(known)
        self.release = asyncio.Event()

    async def Heartbeat(
        self, request: participant_pb2.HeartbeatRequest, context: Context
    ) -> participant_pb2.HeartbeatResponse:
        if request.participant_id == "refused":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no credentials")
        CALLER.set(request.participant_id)
        return await super().Heartbeat(request, context)

    async def PullTask(
        self, request: participant_pb2.PullTaskRequest, context: Context
    ) -> participant_pb2.PullTaskResponse:
        CALLER.set(request.participant_id)
        caller_known()  # as the coordinator's authentication does
        await self.release.wait()  # a long poll
        return participant_pb2.PullTaskResponse()


def by_caller(method: str, md: Mapping[str, str]) -> Resolve:
    return lambda: CallLabels(CALLER.get()) if CALLER.get() else None


@dataclass
class Server:
    stub: participant_pb2_grpc.ParticipantServiceStub
    registry: CollectorRegistry
    per_participant: CollectorRegistry
    servicer: Authenticating
    running: ThreadedServer


@pytest.fixture
def server() -> Iterator[Server]:
    registry, per_participant = CollectorRegistry(), CollectorRegistry()
    interceptor = CountingServerInterceptor(WireMetrics(registry, per_participant), by_caller)
    servicer = Authenticating({"p7"})
    running = ThreadedServer(servicer, interceptor)
    running.start()
    channel = create_channel(f"127.0.0.1:{running.port}")
    try:
        stub = participant_pb2_grpc.ParticipantServiceStub(channel)
        yield Server(stub, registry, per_participant, servicer, running)
    finally:
        channel.close()
        running.stop()


def eventually(condition: Callable[[], bool], tries: int = 500) -> None:
    for _ in range(tries):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("the condition did not come to hold")


def bytes_of(server: Server, direction: str, who: str) -> Any:
    """The bytes the server counted for one caller (phase none, per participant)."""
    labels = {"direction": direction, "phase": "none", "participant": who}
    return server.per_participant.get_sample_value("fused_participant_wire_bytes_total", labels)


def messages(server: Server, direction: str, method: str = "Heartbeat") -> Any:
    """The messages the server counted, all callers (phase none)."""
    labels = {"method": method, "direction": direction, "phase": "none"}
    return server.registry.get_sample_value("fused_wire_messages_total", labels)


def test_a_request_read_before_authentication_counts_under_the_caller(server: Server) -> None:
    request = participant_pb2.HeartbeatRequest(participant_id="p7", task_id="t" * 40)
    response = server.stub.Heartbeat(request)
    assert response.registered
    assert bytes_of(server, "received", "p7") == serialized_size(request)
    assert bytes_of(server, "sent", "p7") == serialized_size(response)
    assert (messages(server, "received"), messages(server, "sent")) == (1, 1)
    assert bytes_of(server, "received", NO_PARTICIPANT) is None


def test_a_refused_call_counts_under_nobody(server: Server) -> None:
    request = participant_pb2.HeartbeatRequest(participant_id="refused")
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as refused:
            server.stub.Heartbeat(request)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # abort sends the status before the handler unwinds: the last count may lag the answer
    eventually(lambda: messages(server, "received") == 3)
    assert bytes_of(server, "received", NO_PARTICIPANT) == 3 * serialized_size(request)
    assert messages(server, "sent") is None
    assert bytes_of(server, "sent", NO_PARTICIPANT) is None
    assert bytes_of(server, "received", "refused") is None


def test_a_long_poll_counts_its_request_once_the_caller_is_known(server: Server) -> None:
    request = participant_pb2.PullTaskRequest(participant_id="p7", wait_s=30)
    poll = server.stub.PullTask.future(request)
    eventually(lambda: bytes_of(server, "received", "p7") is not None)
    assert not poll.done()  # counted while the poll is still open
    assert bytes_of(server, "received", "p7") == serialized_size(request)
    loop = server.running._loop
    assert loop is not None
    loop.call_soon_threadsafe(server.servicer.release.set)
    poll.result(timeout=10)
    eventually(lambda: messages(server, "sent", "PullTask") == 1)
    assert bytes_of(server, "sent", "p7") == serialized_size(participant_pb2.PullTaskResponse())
