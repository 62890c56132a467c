"""The agent's failure policy: what each answer at each stage makes it do. Only a refused
registration that retrying cannot fix stops it; a refused result or a failed task never does."""

from __future__ import annotations

import grpc
import pytest
import torch

from fused.participant.handlers import NonFiniteResult, check_finite
from fused.participant.reporting import error_outcome, failure_reason, shorten
from fused.participant.retry import Action, Stage, decide
from fused.participant.training import TrainStats

C = grpc.StatusCode
R, S, T, P = Stage.REGISTER, Stage.SESSION, Stage.TASK, Stage.PUSH

TABLE = [
    # registration: only what we are (id, data summary) or the protocol stops the agent
    (R, C.INVALID_ARGUMENT, Action.STOP),
    (R, C.UNIMPLEMENTED, Action.STOP),
    (R, C.UNAUTHENTICATED, Action.RECONNECT_SLOW),
    (R, C.PERMISSION_DENIED, Action.RECONNECT_SLOW),
    (R, C.UNAVAILABLE, Action.RECONNECT),
    (R, C.RESOURCE_EXHAUSTED, Action.RECONNECT),
    (R, C.INTERNAL, Action.RECONNECT),
    (R, None, Action.RECONNECT),
    # between tasks: never fatal
    (S, C.INVALID_ARGUMENT, Action.RECONNECT),
    (S, C.UNIMPLEMENTED, Action.RECONNECT),
    (S, C.UNAUTHENTICATED, Action.RECONNECT_SLOW),
    (S, C.PERMISSION_DENIED, Action.RECONNECT_SLOW),
    (S, C.FAILED_PRECONDITION, Action.RECONNECT),
    (S, C.DEADLINE_EXCEEDED, Action.RECONNECT),
    (S, C.UNKNOWN, Action.RECONNECT),
    # while a task runs: a refusal fails the task, the connection starts a new session
    (T, C.INVALID_ARGUMENT, Action.FAIL_TASK),
    (T, C.DATA_LOSS, Action.FAIL_TASK),
    (T, C.NOT_FOUND, Action.FAIL_TASK),
    (T, C.PERMISSION_DENIED, Action.FAIL_TASK),
    (T, C.RESOURCE_EXHAUSTED, Action.FAIL_TASK),  # an upload quota
    (T, C.OUT_OF_RANGE, Action.FAIL_TASK),
    (T, C.UNKNOWN, Action.FAIL_TASK),
    (T, C.INTERNAL, Action.FAIL_TASK),
    (T, C.UNAVAILABLE, Action.RECONNECT),
    (T, C.DEADLINE_EXCEEDED, Action.RECONNECT),
    (T, C.CANCELLED, Action.RECONNECT),
    (T, C.ABORTED, Action.RECONNECT),
    (T, C.FAILED_PRECONDITION, Action.RECONNECT),  # not registered: the coordinator restarted
    (T, C.UNAUTHENTICATED, Action.RECONNECT_SLOW),
    (T, None, Action.RECONNECT),
    # a pushed result: refused is reported and the agent takes the next task
    (P, C.INVALID_ARGUMENT, Action.NEXT_TASK),  # e.g. a NaN loss after a poisoned round
    (P, C.PERMISSION_DENIED, Action.NEXT_TASK),
    (P, C.RESOURCE_EXHAUSTED, Action.NEXT_TASK),
    (P, C.NOT_FOUND, Action.NEXT_TASK),
    (P, C.UNIMPLEMENTED, Action.NEXT_TASK),
    (P, C.UNKNOWN, Action.NEXT_TASK),
    (P, C.UNAVAILABLE, Action.RECONNECT),
    (P, C.DEADLINE_EXCEEDED, Action.RECONNECT),
    (P, C.FAILED_PRECONDITION, Action.RECONNECT),
    (P, C.UNAUTHENTICATED, Action.RECONNECT_SLOW),
]


@pytest.mark.parametrize(("stage", "code", "action"), TABLE)
def test_decision_table(stage: Stage, code: grpc.StatusCode | None, action: Action) -> None:
    assert decide(stage, code) is action


def test_only_registration_ever_stops_the_agent() -> None:
    for stage in Stage:
        for code in [*C, None]:
            stops = decide(stage, code) is Action.STOP
            assert stops == (stage is R and code in (C.INVALID_ARGUMENT, C.UNIMPLEMENTED))


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ValueError("shape mismatch"), "ValueError: shape mismatch"),
        (RuntimeError("CUDA out of memory"), "RuntimeError: CUDA out of memory"),
        (KeyError("weight"), "KeyError: 'weight'"),
        (NonFiniteResult("local training diverged"), "NonFiniteResult: local training diverged"),
    ],
)
def test_what_a_task_raises_is_its_reported_error(exc: Exception, reason: str) -> None:
    assert failure_reason(exc) == reason


def test_reported_reasons_are_bounded() -> None:
    outcome = error_outcome("p0", "task-1", "x" * 10_000)
    assert outcome.error is not None and len(outcome.error) == 500
    assert outcome.error.endswith("...") and shorten("short") == "short"


FINITE = {"w": torch.ones(3), "b": torch.zeros(2)}


@pytest.mark.parametrize(
    ("loss", "tensors", "error"),
    [
        (float("nan"), FINITE, "local training diverged: mean loss nan"),
        (float("inf"), FINITE, "local training diverged: mean loss inf"),
        (0.5, {**FINITE, "b": torch.tensor([0.0, float("nan")])}, "in 1 tensor.*first 'b'"),
        (0.5, {"a": torch.tensor([float("-inf")]), **FINITE}, "first 'a'"),
    ],
)
def test_a_non_finite_update_is_caught_before_upload(
    loss: float, tensors: dict[str, torch.Tensor], error: str
) -> None:
    with pytest.raises(NonFiniteResult, match=error):
        check_finite(TrainStats(10, loss, 1), tensors)


def test_a_finite_update_passes() -> None:
    check_finite(TrainStats(10, 0.5, 1), FINITE)
