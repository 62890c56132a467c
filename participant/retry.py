"""Which gRPC answers an agent retries, and how: a new session, the same task, or never."""

from __future__ import annotations

import grpc

# A session that ends with one of these cannot succeed by retrying: the agent stops. Any other
# failure (the network, a restarting or buggy coordinator) starts a new session after a
# backoff, so an edge agent outlives the coordinator's troubles.
PERMANENT = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED})
# Transport trouble: an interrupted upload resumes in the same session.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.FAILED_PRECONDITION,  # not registered (e.g. the coordinator restarted)
        grpc.StatusCode.CANCELLED,
    }
)

# Answers that retrying the same task cannot change (a corrupt artifact, a refused upload):
# the task is reported failed instead of retried until its deadline.
TASK_FATAL = frozenset(
    {
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)

# The coordinator refused who we are: retried at the longest backoff, since the fix (its auth
# file, our token) may come from either side.
REFUSED_CREDENTIALS = frozenset(
    {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
)
