"""Small helpers shared by the coordinator's servicers."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
import grpc.aio

from common.wire import MD_PARTICIPANT

Context = grpc.aio.ServicerContext[Any, Any]


async def abort(context: Context, code: grpc.StatusCode, msg: str) -> NoReturn:
    await context.abort(code, msg)
    raise AssertionError("unreachable: abort raises")


def caller_id(context: Context) -> str:
    """The participant id the caller attached as metadata ("" if none)."""
    for key, value in context.invocation_metadata() or ():
        if key == MD_PARTICIPANT and isinstance(value, str):
            return value
    return ""
