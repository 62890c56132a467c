"""How a task ends: its outcome pushed, and what went wrong reported, never fatal to the agent.

A task that fails here (a poisoned model, a refused upload, a diverged loss) is pushed as the
task's error outcome with the reason, so the round goes on without it at once. A result the
coordinator refuses is logged and reported the same way; the agent then takes the next task.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import grpc

from fused.common.domain.tasks import TaskOutcome
from fused.common.rpc.task_convert import outcome_to_proto
from fused.participant.retry import Action, Stage, decide
from fused.proto.v1 import common_pb2, participant_pb2, participant_pb2_grpc

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 500  # a reason quotes the coordinator or an exception: keep it short
PUSH_TIMEOUT_S = 60.0

Metadata = tuple[tuple[str, str | bytes], ...]


class Pushed(StrEnum):
    """What became of a pushed outcome (the agent's fused_participant_results label)."""

    ACCEPTED = "accepted"
    LATE = "late"  # the task had closed (deadline passed, job ended): not counted
    REFUSED = "refused"  # the coordinator refused the result; reported as the task's error


def shorten(text: str, limit: int = MAX_REASON_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_outcome(participant_id: str, task_id: str, reason: str) -> TaskOutcome:
    return TaskOutcome(participant_id, task_id, error=shorten(reason))


def failure_reason(exc: Exception) -> str | None:
    """The error to report for what a running task raised; None when it is no failure of the
    task but of the session (the connection), which a new session retries."""
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        if decide(Stage.TASK, code) is not Action.FAIL_TASK:
            return None
        return f"{code.name if code else 'UNKNOWN'}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class PushReply:
    pushed: Pushed
    next: participant_pb2.PullTaskResponse | None  # asked with wait_s > 0 and accepted


def push_outcome(
    stub: participant_pb2_grpc.ParticipantServiceStub,
    outcome: TaskOutcome,
    metadata: Metadata,
    blobs: Sequence[common_pb2.InlineBlob] = (),
    wait_s: float = 0.0,
) -> PushReply:
    """Push a task's outcome, with the artifacts it carries inline; with wait_s > 0 the reply
    may bring the next task. A refused result is reported as the task's error (so its round
    need not wait for the deadline) and answered REFUSED; raises grpc.RpcError only for
    answers that need a new session (the connection, an unknown registration)."""
    request = outcome_to_proto(outcome)
    request.blobs.extend(blobs)
    request.wait_s = wait_s
    try:
        ack = stub.PushResult(request, timeout=PUSH_TIMEOUT_S + wait_s, metadata=metadata)
    except grpc.RpcError as exc:
        reason = _refusal(exc)
        log.warning("result of task %s refused (%s); taking the next task", outcome.task_id, reason)
        if outcome.error is None:
            report = error_outcome(
                outcome.participant_id, outcome.task_id, f"result refused: {reason}"
            )
            _report(stub, report, metadata)
        return PushReply(Pushed.REFUSED, None)
    if not ack.accepted:
        log.warning("result of task %s not counted: %s", outcome.task_id, ack.message)
        return PushReply(Pushed.LATE, None)
    return PushReply(Pushed.ACCEPTED, ack.next if ack.HasField("next") else None)


def _refusal(exc: grpc.RpcError) -> str:
    """The reason of a refused push; re-raises what needs a new session instead."""
    code = exc.code() if hasattr(exc, "code") else None
    if decide(Stage.PUSH, code) is not Action.NEXT_TASK:
        raise exc
    return shorten(f"{code.name if code else 'UNKNOWN'}: {exc.details()}")


def _report(
    stub: participant_pb2_grpc.ParticipantServiceStub, outcome: TaskOutcome, metadata: Metadata
) -> None:
    """Best effort: the task's error after its result was refused (the coordinator may have
    closed the task already, which is the same end)."""
    try:
        stub.PushResult(outcome_to_proto(outcome), timeout=PUSH_TIMEOUT_S, metadata=metadata)
    except grpc.RpcError as exc:
        log.warning("could not report task %s failed: %s", outcome.task_id, _refusal(exc))
