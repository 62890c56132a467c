"""Calls without valid credentials refused before their request is read.

Where bearer tokens are the only credential (an auth file, no client CA), who a caller is
shows in the call's metadata, which arrives before its request message. This interceptor runs
first and answers a failed check with a handler that never reads the request: a stranger's
4 MiB messages are neither buffered whole nor parsed, only the transport's flow-control window
of the refused stream arrives. With client certificates the TLS handshake turns strangers away
before any call; in local mode nobody is refused. AuthInterceptor still checks every call that
gets through (certificates, unknown fields) and sets its identity.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from fused.coordinator.auth import SERVICE_ROLES, AuthPolicy, RequestRefused, identify
from fused.coordinator.refusals import REFUSALS

Handler = Any  # grpc.RpcMethodHandler, generic only in the stubs


def _refusal(method: str, refused: RequestRefused) -> Handler:
    """A handler that reads nothing: it answers `refused` as soon as the call starts."""

    async def refuse(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        REFUSALS.refused(
            logging.WARNING, method, refused.code.name, context.peer(), refused.message
        )
        await context.abort(refused.code, refused.message)
        yield  # unreachable: makes this the async generator a stream handler is

    return grpc.stream_stream_rpc_method_handler(refuse)


class EarlyAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses calls whose metadata proves no identity of the service's role, unread."""

    def __init__(self, policy: AuthPolicy, on_reject: Callable[[str], None]) -> None:
        self._policy = policy
        self._on_reject = on_reject
        # Only tokens prove identities here: the metadata alone decides.
        self._active = policy.tokens is not None and not policy.client_certs

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        role = SERVICE_ROLES.get(details.method.lstrip("/").rsplit("/", 1)[0])
        if not self._active or role is None:
            return await continuation(details)
        metadata = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        try:
            identify(self._policy, role, metadata, None)
        except RequestRefused as refused:
            self._on_reject(refused.code.name.lower())
            return _refusal(details.method, refused)
        return await continuation(details)
