"""What a bug tells a caller: nothing but INTERNAL. Innermost interceptor of the gRPC server.

An exception no handler answers would reach the caller as grpc's UNKNOWN "Unexpected <class>:
<message>", and the message of an OSError or a library's error can hold internal paths. Here
it is logged, with its traceback, and the caller gets INTERNAL with a fixed message instead.
Refusals (context.abort) pass through untouched.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
import grpc.aio

log = logging.getLogger(__name__)

Handler = Any  # grpc.RpcMethodHandler, generic only in the stubs
Context = grpc.aio.ServicerContext[Any, Any]
MESSAGE = "internal error; the coordinator logged it"


async def _internal(method: str, exc: Exception, context: Context) -> NoReturn:
    log.error("%s failed: %s", method, type(exc).__name__, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, MESSAGE)
    raise AssertionError("unreachable: abort raises")


def _unary_response(method: str, behavior: Any) -> Any:
    async def guarded(request: Any, context: Context) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _internal(method, exc, context)

    return guarded


def _streaming_response(method: str, behavior: Any) -> Any:
    async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            async for item in behavior(request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _internal(method, exc, context)

    return guarded


class InternalErrors(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler: Any = await continuation(details)
        if handler is None:
            return handler
        kind = ("stream_" if handler.request_streaming else "unary_") + (
            "stream" if handler.response_streaming else "unary"
        )
        behavior = getattr(handler, kind)
        if handler.response_streaming and inspect.isasyncgenfunction(behavior):
            return handler._replace(**{kind: _streaming_response(details.method, behavior)})
        if not handler.response_streaming and inspect.iscoroutinefunction(behavior):
            return handler._replace(**{kind: _unary_response(details.method, behavior)})
        return handler  # a handler of another style (context.write): left as it is
