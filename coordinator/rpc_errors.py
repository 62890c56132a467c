"""Small helpers shared by the coordinator's servicers."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
import grpc.aio

from fused.coordinator.auth import current_identity

Context = grpc.aio.ServicerContext[Any, Any]


async def abort(context: Context, code: grpc.StatusCode, msg: str) -> NoReturn:
    await context.abort(code, msg)
    raise AssertionError("unreachable: abort raises")


def caller_id(context: Context) -> str:
    """The participant the call was authenticated as ("" if it named none in local mode)."""
    identity = current_identity.get()
    return identity.name if identity is not None else ""


async def bound_participant(context: Context, named: str) -> str:
    """`named` (a request's participant_id) if it is the caller; PERMISSION_DENIED if not."""
    caller = caller_id(context)
    if caller and named != caller:
        await abort(
            context,
            grpc.StatusCode.PERMISSION_DENIED,
            f"authenticated as {caller!r}; the request names participant {named!r}",
        )
    return named
