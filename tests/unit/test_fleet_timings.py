"""The coordinator's record of an accepted task (coordinator/fleet.py): one INFO line with
where the task's time went on its participant."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fused.common.domain.tasks import TaskOutcome, TaskTimings, TrainOutcome
from fused.common.runtime.logs import record_fields
from fused.coordinator.fleet import Accepted
from tests.unit.test_fleet_operators import fleet_with, task

TIMINGS = TaskTimings(0.5, 0.25, 2.0, 0.125, 0.125)


async def passes(outcome: TaskOutcome) -> str:
    return "checked"


def _complete(outcome: TaskOutcome) -> Accepted[str]:
    async def scenario() -> Accepted[str]:
        fleet = fleet_with("p0")
        future = fleet.submit("p0", task("t1"), passes)
        assert await fleet.pull("p0", 0.0) is not None
        await fleet.complete(outcome)
        settled = await future
        assert isinstance(settled, Accepted)
        return settled

    return asyncio.run(scenario())


def test_an_accepted_task_is_logged_once_with_its_timings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    train = TrainOutcome("b" * 64, 10, 0.5, 3.0)
    with caplog.at_level(logging.INFO, logger="fused.coordinator.fleet"):
        settled = _complete(TaskOutcome("p0", "t1", train=train, timings=TIMINGS))
    assert settled.outcome.timings == TIMINGS
    [entry] = [r for r in caplog.records if "accepted" in r.getMessage()]
    assert entry.getMessage() == (
        "train task t1 accepted: 3.000 s: fetch 0.500, decode 0.250, compute 2.000, "
        "encode 0.125, upload 0.125"
    )
    fields = record_fields(entry)
    assert fields["job"] == "job-1" and fields["round"] == 1 and fields["participant"] == "p0"
    assert fields["compute_s"] == 2.0 and fields["fetch_s"] == 0.5


def test_an_agent_without_timings_is_logged_as_such(caplog: pytest.LogCaptureFixture) -> None:
    train = TrainOutcome("b" * 64, 10, 0.5, 3.0)
    with caplog.at_level(logging.INFO, logger="fused.coordinator.fleet"):
        _complete(TaskOutcome("p0", "t1", train=train))
    assert any(r.getMessage() == "train task t1 accepted: no timings" for r in caplog.records)
