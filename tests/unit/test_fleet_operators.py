"""The fleet under an operator's say: a blocked participant is refused everywhere and never
selected, a removed one is forgotten, and neither can happen behind an open task's back."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from fused.common.domain.tasks import TaskKind, TaskOutcome, TaskSpec
from fused.common.domain.train_config import TrainConfig
from fused.coordinator.fleet import (
    Fleet,
    NotRegisteredError,
    ParticipantBlockedError,
    Refused,
    TaskHeldError,
)
from fused.coordinator.rpc_errors import Wording, status_of
from fused.coordinator.state import BlockedParticipant, InMemoryStateStore, ParticipantRecord


def record(pid: str) -> ParticipantRecord:
    now = time.time()
    return ParticipantRecord(pid, [5, 5], 10, 2, now, now, {"dataset": "digits"})


def task(task_id: str) -> TaskSpec:
    return TaskSpec(
        task_id, "job-1", "train", 1, TaskKind.TRAIN, "a" * 64, "mlp", 2, TrainConfig(), 1e12
    )


async def never_checked(outcome: TaskOutcome) -> None:
    raise AssertionError("no outcome may reach the check")


def fleet_with(*pids: str) -> Fleet:
    fleet = Fleet(InMemoryStateStore(), offline_after_s=15)
    for pid in pids:
        fleet.register(record(pid))
    return fleet


def test_blocking_fails_open_tasks_and_refuses_every_call() -> None:
    async def scenario() -> None:
        fleet = fleet_with("p0", "m")
        future = fleet.submit("m", task("t1"), never_checked)
        fleet.block(BlockedParticipant("m", 1.0, "poisoned round 3"))
        settled = await future
        assert isinstance(settled, Refused)
        assert settled.reason == "participant m was blocked by an operator"
        assert fleet.online_ids() == ["p0"] and not fleet.is_registered("m")
        assert fleet.is_blocked("m") and not fleet.heartbeat("m")
        with pytest.raises(ParticipantBlockedError, match="'m' is blocked"):
            await fleet.pull("m", 0.0)
        with pytest.raises(ParticipantBlockedError):
            await fleet.complete(TaskOutcome("m", "t1", error="x"))
        with pytest.raises(ParticipantBlockedError):
            fleet.register(record("m"))

    asyncio.run(scenario())


def test_a_long_poll_ends_when_its_participant_is_blocked() -> None:
    async def scenario() -> None:
        fleet = fleet_with("m")
        poll = asyncio.create_task(fleet.pull("m", 30.0))
        await asyncio.sleep(0.05)
        fleet.block(BlockedParticipant("m", 1.0))
        with pytest.raises(ParticipantBlockedError):
            await asyncio.wait_for(poll, 5.0)

    asyncio.run(scenario())


def test_blocks_are_persisted_and_lifted() -> None:
    store = InMemoryStateStore()
    Fleet(store, offline_after_s=15).block(BlockedParticipant("m", 1.0))
    later = Fleet(store, offline_after_s=15)  # a restarted coordinator
    with pytest.raises(ParticipantBlockedError):
        later.register(record("m"))
    assert later.unblock("m") is True and later.unblock("m") is False
    later.register(record("m"))
    assert later.online_ids() == ["m"] and store.list_blocked() == []


def test_remove_waits_for_open_tasks() -> None:
    async def scenario() -> None:
        fleet = fleet_with("p0")
        fleet.submit("p0", task("t1"), never_checked)
        with pytest.raises(TaskHeldError, match="'p0' holds 1 open task"):
            fleet.remove("p0")
        assert fleet.is_registered("p0")
        fleet.close("t1")
        assert fleet.remove("p0") is True
        assert not fleet.is_registered("p0") and fleet.online_ids() == []
        with pytest.raises(NotRegisteredError):
            await fleet.pull("p0", 0.0)
        assert fleet.remove("p0") is False
        fleet.register(record("p0"))  # an agent still running comes back
        assert fleet.online_ids() == ["p0"]

    asyncio.run(scenario())


def test_blocked_answers_permission_denied() -> None:
    status = status_of(ParticipantBlockedError("m"), Wording())
    assert status is not None
    code, message = status
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert message == (
        "participant 'm' is blocked by the coordinator's operator; it takes no part until "
        "unblocked (fusedctl participants unblock)"
    )
