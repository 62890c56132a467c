"""What the client library raises: one exception type per failure class.

A coordinator's refusal keeps its status code and its message word for word (the coordinator
words them for operators). Failures on this side (an unreadable file, a workload that cannot
build its model, a damaged download) are `LocalError`s.
"""

from __future__ import annotations

import grpc


class FusedError(Exception):
    """Every failure the client library raises."""


class LocalError(FusedError):
    """A failure on the caller's side, before or after the coordinator's answer."""


class CoordinatorError(FusedError):
    """The coordinator refused or failed a call; `message` is its own words."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class InvalidRequest(CoordinatorError):
    """The request is malformed or out of bounds (INVALID_ARGUMENT, OUT_OF_RANGE)."""


class NotFound(CoordinatorError):
    """It names a job, version, entry or participant the coordinator does not have."""


class Conflict(CoordinatorError):
    """The coordinator's state forbids it now (FAILED_PRECONDITION, ALREADY_EXISTS, ABORTED)."""


class Unauthenticated(CoordinatorError):
    """No credential, or one the coordinator does not accept."""


class PermissionDenied(CoordinatorError):
    """The credential is valid but not an operator's."""


class Unavailable(CoordinatorError):
    """The coordinator could not be reached (after the client's retries)."""


class Timeout(CoordinatorError):
    """The call's deadline passed (DEADLINE_EXCEEDED)."""


class ResourceExhausted(CoordinatorError):
    """A limit on the coordinator's side (message size, quota)."""


class DataLoss(CoordinatorError):
    """A stored artifact is damaged on the coordinator."""


class ServerError(CoordinatorError):
    """The coordinator failed internally (INTERNAL, UNKNOWN, UNIMPLEMENTED, CANCELLED)."""


_BY_CODE: dict[grpc.StatusCode, type[CoordinatorError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: Conflict,
    grpc.StatusCode.ALREADY_EXISTS: Conflict,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Timeout,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DATA_LOSS: DataLoss,
}


def coordinator_error(exc: grpc.RpcError) -> CoordinatorError:
    """The library's exception for a failed call."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    message = " ".join(str(details or code.name).split())  # grpc's details may span lines
    return _BY_CODE.get(code, ServerError)(code, message)
