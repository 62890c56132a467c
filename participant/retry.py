"""What an agent does with each gRPC answer: the one decision table of its failure policy.

An agent never exits because of a peer or a round: a refused result, a failed task or a
poisoned model is logged, reported as the task's error, and the agent takes the next task.
Only a refused registration that retrying cannot fix stops it. Everything else starts a new
session after a backoff, so an edge agent outlives the coordinator's troubles.
"""

from __future__ import annotations

from enum import StrEnum

import grpc

Code = grpc.StatusCode


class Stage(StrEnum):
    """Where in the agent's loop the answer came."""

    REGISTER = "register"  # the Register call that opens a session
    SESSION = "session"  # PullTask and Heartbeat between tasks
    TASK = "task"  # downloads and uploads while a task runs
    PUSH = "push"  # PushResult, the end of a task


class Action(StrEnum):
    STOP = "stop"  # the agent exits: only for a registration retrying cannot fix
    RECONNECT = "reconnect"  # a new session after a backoff (the task is offered again)
    RECONNECT_SLOW = "reconnect slowly"  # the same at the longest backoff: refused credentials
    FAIL_TASK = "fail the task"  # push the task's error outcome, take the next task
    NEXT_TASK = "next task"  # the result was refused: report the reason, take the next task


# Transport trouble: an interrupted upload resumes in the same session.
RETRYABLE = frozenset(
    {
        Code.UNAVAILABLE,
        Code.DEADLINE_EXCEEDED,
        Code.FAILED_PRECONDITION,  # not registered (e.g. the coordinator restarted)
        Code.CANCELLED,
    }
)
# The connection or the session, not the request: a new session may succeed.
TRANSIENT = RETRYABLE | {Code.ABORTED}
# The coordinator refused who we are: retried at the longest backoff, since the fix (its auth
# file, our token) may come from either side.
REFUSED_CREDENTIALS = frozenset({Code.UNAUTHENTICATED, Code.PERMISSION_DENIED})
# A registration refused for what we are: our id or data summary (INVALID_ARGUMENT), or a
# coordinator that does not speak our protocol (UNIMPLEMENTED). Retrying cannot help.
REGISTRATION_FATAL = frozenset({Code.INVALID_ARGUMENT, Code.UNIMPLEMENTED})


def decide(stage: Stage, code: grpc.StatusCode | None) -> Action:
    """The agent's answer to a failed call at `stage` (code None: no status, e.g. a reset)."""
    if stage is Stage.REGISTER and code in REGISTRATION_FATAL:
        return Action.STOP
    if code == Code.UNAUTHENTICATED or (
        code == Code.PERMISSION_DENIED and stage in (Stage.REGISTER, Stage.SESSION)
    ):
        return Action.RECONNECT_SLOW
    if code is None or code in TRANSIENT or stage in (Stage.REGISTER, Stage.SESSION):
        return Action.RECONNECT
    # What this task sent or asked for was refused, or the coordinator failed on it (a
    # corrupt artifact, a quota, a poisoned update, a bug): retrying the same task cannot
    # change that, and the agent must not die of it.
    return Action.FAIL_TASK if stage is Stage.TASK else Action.NEXT_TASK


class RegistrationRefused(Exception):
    """The coordinator refused this participant for good; the agent stops."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
