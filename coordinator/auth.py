"""Who is calling: every coordinator call is authenticated here, in one interceptor.

A caller proves an identity with a client certificate (mutual TLS; the identity is the
certificate's fused:// URI) or a bearer token (checked against the SHA-256 hashes of the
auth file). Each service needs one role: participants call the participant service,
operators the control service. Health and reflection stay open so probes and stock tools
work. Without certificates or an auth file the coordinator runs in local mode: callers are
who they claim to be, and a warning says so at start.

Credentials are never logged: errors name the identity or the failure, never the token.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError, Message

from fused.common.rpc.identity import (
    OPERATOR,
    PARTICIPANT,
    AuthFile,
    Identity,
    identity_from_cert,
    valid_name,
)
from fused.common.rpc.metering import MD_PARTICIPANT, caller_known
from fused.common.runtime.logs import clip, set_log_fields
from fused.coordinator.refusals import REFUSALS

AUTHORIZATION = "authorization"
PEER_CERT_KEY = "x509_pem_cert"
LOCAL_OPERATOR = "local"

SERVICE_ROLES = {
    "fused.v1.ParticipantService": PARTICIPANT,
    "fused.v1.ControlService": OPERATOR,
}

# The identity of the call being handled; set by AuthInterceptor before the handler runs.
current_identity: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "fused_identity", default=None
)


class RequestRefused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class AuthPolicy:
    tokens: AuthFile | None  # bearer tokens accepted, by hash
    client_certs: bool  # TLS requires and verifies client certificates

    @property
    def required(self) -> bool:
        return self.tokens is not None or self.client_certs


def _bearer(metadata: dict[str, str]) -> str | None:
    value = metadata.get(AUTHORIZATION)
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise RequestRefused(
            grpc.StatusCode.UNAUTHENTICATED, "authorization metadata must be 'Bearer <token>'"
        )
    return token.strip()


def _proven_identity(
    policy: AuthPolicy, metadata: dict[str, str], peer_cert: bytes | None
) -> Identity | None:
    """The identity the caller's credentials prove, or None when it presented none."""
    from_cert = None
    if peer_cert is not None:
        from_cert = identity_from_cert(peer_cert)
        if from_cert is None:
            raise RequestRefused(
                grpc.StatusCode.UNAUTHENTICATED,
                "the client certificate carries no fused:// identity; issue one with "
                "`fusedctl certs init`",
            )
    token = _bearer(metadata)
    if token is None:
        return from_cert
    if policy.tokens is None:
        raise RequestRefused(
            grpc.StatusCode.UNAUTHENTICATED, "this coordinator accepts no bearer tokens"
        )
    from_token = policy.tokens.lookup(token)
    if from_token is None:
        raise RequestRefused(grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token")
    if from_cert is not None and from_cert != from_token:
        raise RequestRefused(
            grpc.StatusCode.PERMISSION_DENIED,
            "the client certificate and the bearer token name different identities",
        )
    return from_token


def identify(
    policy: AuthPolicy, role: str, metadata: dict[str, str], peer_cert: bytes | None
) -> Identity | None:
    """The caller's identity for a service that needs `role` (None: an anonymous local-mode
    participant that claims no id); raises RequestRefused."""
    identity = _proven_identity(policy, metadata, peer_cert)
    if identity is None:
        if policy.required:
            raise RequestRefused(
                grpc.StatusCode.UNAUTHENTICATED,
                "this coordinator requires a client certificate or a bearer token "
                "(see `fusedctl certs init`)",
            )
        claimed = metadata.get(MD_PARTICIPANT, "") if role == PARTICIPANT else LOCAL_OPERATOR
        if not valid_name(claimed):
            return None
        identity = Identity(role, claimed)  # local mode: callers are who they claim to be
    if identity.role != role:
        raise RequestRefused(
            grpc.StatusCode.PERMISSION_DENIED,
            f"this call needs {'an' if role == OPERATOR else 'a'} {role} credential; the caller "
            f"is {identity.role} {identity.name!r}",
        )
    claim = metadata.get(MD_PARTICIPANT)
    if role == PARTICIPANT and claim and claim != identity.name:
        raise RequestRefused(
            grpc.StatusCode.PERMISSION_DENIED,
            f"authenticated as {identity.name!r} but the call claims to be {clip(claim, 64)!r}",
        )
    return identity


def unknown_field_numbers(message: Message) -> list[int]:
    """Field numbers this schema does not know, anywhere in the message."""
    unknown: Any = unknown_fields.UnknownFieldSet(message)  # iterable; the stubs lack __iter__
    found = [field.field_number for field in unknown]
    for descriptor, value in message.ListFields():
        sub_type = descriptor.message_type
        if sub_type is None:
            continue
        if sub_type.GetOptions().map_entry:
            has_messages = sub_type.fields_by_name["value"].message_type is not None
            subs = list(value.values()) if has_messages else []
        else:
            subs = list(value) if descriptor.is_repeated else [value]
        for sub in subs:
            found.extend(unknown_field_numbers(sub))
    return found


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a unary request whose bytes did not parse, so the handler's guard can
    answer INVALID_ARGUMENT (a deserializer that raises gets UNKNOWN from grpc)."""

    message_type: str
    error: str


def _tolerant(deserialize: Callable[[bytes], Any], message_type: str) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:
            return Undecodable(message_type, str(exc))

    return parse


def check_known_fields(message: Any) -> None:
    """Raise RequestRefused(INVALID_ARGUMENT) for a request that did not parse or carries
    fields we do not define."""
    if isinstance(message, Undecodable):
        raise RequestRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not a valid {message.message_type} message: {message.error}",
        )
    if isinstance(message, Message):
        numbers = unknown_field_numbers(message)
        if numbers:
            raise RequestRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{message.DESCRIPTOR.name} has unexpected field(s) "
                f"{_first_few(sorted(set(numbers)))}: this coordinator speaks fused.v1",
            )


def _first_few(numbers: list[int], shown: int = 8) -> str:
    """The numbers, or the first few and how many more: a message may carry thousands."""
    more = f" and {len(numbers) - shown} more" if len(numbers) > shown else ""
    return ", ".join(map(str, numbers[:shown])) + more


Handler = Any  # grpc.RpcMethodHandler, generic only in the stubs
Check = Callable[[Any, Any], Awaitable[None]]  # (request, servicer context)


def _guard_unary_request(behavior: Any, check: Check) -> Any:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await check(request, context)
        return await behavior(request, context)

    return guarded


def _guard_streaming_response(behavior: Any, check: Check) -> Any:
    async def guarded(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await check(request, context)
        async for item in behavior(request, context):
            yield item

    return guarded


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Runs `identify` before every handler of a guarded service and rejects on failure."""

    def __init__(self, policy: AuthPolicy, on_reject: Callable[[str], None]) -> None:
        self._policy = policy
        self._on_reject = on_reject

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler: Any = await continuation(details)
        service = details.method.lstrip("/").rsplit("/", 1)[0]
        role = SERVICE_ROLES.get(service)
        if handler is None or role is None:
            return handler  # an unknown method, or an open service
        metadata = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        check = self._checker(role, metadata, details.method)
        kind = ("stream_" if handler.request_streaming else "unary_") + (
            "stream" if handler.response_streaming else "unary"
        )
        behavior = getattr(handler, kind)
        guard = _guard_streaming_response if handler.response_streaming else _guard_unary_request
        changes = {kind: guard(behavior, check)}
        if not handler.request_streaming and handler.request_deserializer is not None:
            message_type = details.method.rsplit("/", 1)[-1] + " request"
            changes["request_deserializer"] = _tolerant(handler.request_deserializer, message_type)
        replaced: Handler = handler._replace(**changes)
        return replaced

    def _checker(self, role: str, metadata: dict[str, str], method: str) -> Check:
        async def check(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            peer = list(context.auth_context().get(PEER_CERT_KEY, ()))
            try:
                identity = identify(self._policy, role, metadata, peer[0] if peer else None)
                check_known_fields(request)
            except RequestRefused as exc:
                self._on_reject(exc.code.name.lower())
                REFUSALS.refused(
                    logging.WARNING, method, exc.code.name, context.peer(), exc.message
                )
                await context.abort(exc.code, exc.message)
            current_identity.set(identity)
            caller_known()  # the wire metrics label this call's request now
            if identity is not None and identity.role == PARTICIPANT:
                set_log_fields(participant=identity.name)  # the handler's records name the caller

        return check
