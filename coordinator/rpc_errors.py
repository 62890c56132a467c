"""How the coordinator's servicers answer failures: one table from exception to status.

Handlers raise; the `answers` decorator turns what they raise into the call's status code and
message, logs it (rate-limited: refusals.py), and counts rejected requests. A handler that
needs its own code or wording for a failure raises RequestRefused (a code and an exact
message) instead. Before a handler runs, the decorator holds its request, each chunk of a
streamed request and the call's metadata to limits.py's table: the one place inputs are
bounded.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypeVar, cast

import grpc
import grpc.aio
from google.protobuf.message import Message

from fused.coordinator.artifacts import CorruptArtifactError, MissingArtifactError
from fused.coordinator.auth import RequestRefused, current_identity
from fused.coordinator.fleet import NotRegisteredError
from fused.coordinator.limits import check_metadata, check_request
from fused.coordinator.refusals import REFUSALS
from fused.coordinator.transfer import OffsetOutOfRange

Context = grpc.aio.ServicerContext[Any, Any]
Code = grpc.StatusCode
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Wording:
    """A handler's own words around the table's."""

    rejected: str = ""  # prefix of its INVALID_ARGUMENT messages, e.g. "upload rejected: "
    count: str = ""  # fused_rejected_results reason counted for each INVALID_ARGUMENT answer
    doing: str = "serve the call"  # UNAVAILABLE: "the coordinator could not <doing> now"


@dataclass(frozen=True)
class Rule:
    kind: type[Exception]
    code: grpc.StatusCode
    message: Callable[[Any, Wording], str] = lambda exc, _: str(exc)
    applies: Callable[[Any], bool] = lambda exc: True


def _unavailable(exc: OSError, words: Wording) -> str:
    return f"the coordinator could not {words.doing} now ({exc.strerror}); retry"


# Checked in order, so a subclass comes before its base: PermissionError is an OSError,
# CorruptArtifactError and OffsetOutOfRange are ValueErrors. RequestRefused carries its own.
RULES: tuple[Rule, ...] = (
    Rule(
        NotRegisteredError,
        Code.FAILED_PRECONDITION,
        lambda exc, _: f"participant {exc.args[0]!r} is not registered; call Register first",
    ),
    # Refusals our checks raise (no errno); the file system's are server faults, below.
    Rule(PermissionError, Code.PERMISSION_DENIED, applies=lambda exc: exc.errno is None),
    Rule(OSError, Code.UNAVAILABLE, _unavailable),  # our disk or file limit: worth a retry
    Rule(MissingArtifactError, Code.NOT_FOUND, lambda exc, _: f"no artifact {exc.args[0]}"),
    Rule(CorruptArtifactError, Code.DATA_LOSS),
    Rule(OffsetOutOfRange, Code.OUT_OF_RANGE),
    Rule(ValueError, Code.INVALID_ARGUMENT),  # SpecError and every bad-request check
)
SERVER_FAULTS = frozenset({Code.UNAVAILABLE, Code.DATA_LOSS})


def status_of(exc: Exception, words: Wording) -> tuple[grpc.StatusCode, str] | None:
    """The code and message that answer `exc`; None when no rule covers it (a bug)."""
    if isinstance(exc, RequestRefused):
        code, message = exc.code, exc.message
    else:
        rule = next((r for r in RULES if isinstance(exc, r.kind) and r.applies(exc)), None)
        if rule is None:
            return None
        code, message = rule.code, rule.message(exc, words)
    if code == Code.INVALID_ARGUMENT:
        message = words.rejected + message
    return code, message


class CountsRejections(Protocol):
    def count_rejected(self, reason: str) -> None: ...


async def _refuse(
    name: str, words: Wording, servicer: Any, context: Context, exc: Exception
) -> None:
    """Abort the call as the table says; return (so the caller re-raises) if it has no rule."""
    status = status_of(exc, words)
    if status is None:
        return
    code, message = status
    level = logging.ERROR if code in SERVER_FAULTS else logging.WARNING
    REFUSALS.refused(level, name, code.name, context.peer(), message)
    if words.count and code == Code.INVALID_ARGUMENT:
        cast(CountsRejections, servicer).count_rejected(words.count)
    await abort(context, code, message)


def answers(*, rejected: str = "", count: str = "", doing: str = "") -> Callable[[F], F]:
    """Decorate a servicer method (unary or streaming response) so that what it raises is
    answered through RULES; `rejected`, `count` and `doing` as in Wording (count needs a
    servicer with count_rejected)."""
    words = Wording(rejected, count, doing) if doing else Wording(rejected, count)

    def decorate(handler: F) -> F:
        name = handler.__name__
        if inspect.isasyncgenfunction(handler):

            @functools.wraps(handler)
            async def streaming(self: Any, request: Any, context: Context) -> AsyncIterator[Any]:
                try:
                    async for item in handler(self, bounded(request, context), context):
                        yield item
                except Exception as exc:
                    await _refuse(name, words, self, context, exc)
                    raise

            return cast(F, streaming)

        @functools.wraps(handler)
        async def unary(self: Any, request: Any, context: Context) -> Any:
            try:
                return await handler(self, bounded(request, context), context)
            except Exception as exc:
                await _refuse(name, words, self, context, exc)
                raise

        return cast(F, unary)

    return decorate


def bounded(request: Any, context: Context) -> Any:
    """The request, held to limits.py's table with the call's metadata: a message now, a
    stream of them (an upload) chunk by chunk as the handler reads it. LimitError is a
    ValueError, so RULES answer it INVALID_ARGUMENT."""
    check_metadata(context.invocation_metadata() or ())
    if isinstance(request, Message):
        check_request(request)
        return request
    return _bounded_stream(request) if hasattr(request, "__aiter__") else request


async def _bounded_stream(chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for chunk in chunks:
        if isinstance(chunk, Message):
            check_request(chunk)
        yield chunk


async def abort(context: Context, code: grpc.StatusCode, msg: str) -> NoReturn:
    await context.abort(code, msg)
    raise AssertionError("unreachable: abort raises")


def caller_id() -> str:
    """The participant the call was authenticated as ("" if it named none in local mode)."""
    identity = current_identity.get()
    return identity.name if identity is not None else ""


def bound_participant(named: str) -> str:
    """`named` (a request's participant_id) if it is the caller; PERMISSION_DENIED if not."""
    caller = caller_id()
    if caller and named != caller:
        raise RequestRefused(
            Code.PERMISSION_DENIED,
            f"authenticated as {caller!r}; the request names participant {named!r}",
        )
    return named
