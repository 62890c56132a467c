"""The one place that builds gRPC servers and channels: limits, keepalive, TLS, interceptors."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

log = logging.getLogger(__name__)

# Artifacts travel in chunks of CHUNK_BYTES, so a modest message limit is enough for any model.
CHUNK_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 4 << 20

_COMMON_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Keepalive pings find dead peers behind NATs and idle load balancers.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
_SERVER_OPTIONS: list[tuple[str, int]] = [
    *_COMMON_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),
]


@dataclass(frozen=True)
class ServerLimits:
    """What one listening port holds: connections (more are closed as they arrive), how long
    a connection may take to handshake or sit without a call, calls per connection and in
    all, and the largest message either way."""

    max_connections: int = 4096
    handshake_timeout_s: float = 5.0
    connection_idle_s: float = 60.0
    max_streams_per_connection: int = 32
    max_concurrent_rpcs: int = 8192
    max_message_bytes: int = MAX_MESSAGE_BYTES

    def options(self) -> list[tuple[str, int]]:
        limits = {
            "grpc.max_send_message_length": self.max_message_bytes,
            "grpc.max_receive_message_length": self.max_message_bytes,
            "grpc.max_allowed_incoming_connections": self.max_connections,
            "grpc.server_handshake_timeout_ms": round(self.handshake_timeout_s * 1000),
            "grpc.max_connection_idle_ms": round(self.connection_idle_s * 1000),
            "grpc.max_concurrent_streams": self.max_streams_per_connection,
        }
        return [(k, v) for k, v in _SERVER_OPTIONS if k not in limits] + list(limits.items())


def create_bare_server(limits: ServerLimits) -> grpc.aio.Server:
    """A grpc.aio server with `limits` and no interceptors, not yet bound (the health port)."""
    return grpc.aio.server(
        options=limits.options(), maximum_concurrent_rpcs=limits.max_concurrent_rpcs
    )


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for TLS; a CA on the server side requires and checks client certificates."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def create_server(
    address: str,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
    tls: TlsFiles | None = None,
    limits: ServerLimits | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server bound to "host:port" (port 0 picks one). Returns (server, port)."""
    limits = limits or ServerLimits()
    server = grpc.aio.server(
        interceptors=list(interceptors),
        options=limits.options(),
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
    )
    if tls is not None and tls.cert is not None and tls.key is not None:
        creds = grpc.ssl_server_credentials(
            [(tls.key.read_bytes(), tls.cert.read_bytes())],
            root_certificates=_read(tls.ca),
            require_client_auth=tls.ca is not None,
        )
        port = server.add_secure_port(address, creds)
    else:
        log.warning("serving %s without TLS: use only on a trusted network", address)
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC server to {address}")
    return server, port


def create_channel(
    target: str, tls: TlsFiles | None = None, token: str | None = None
) -> grpc.Channel:
    """A blocking channel to target with the project's limits and keepalive; with a token,
    every call carries it as `authorization: Bearer <token>`."""
    if tls is not None and tls.ca is not None:
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(tls.ca),
            private_key=_read(tls.key),
            certificate_chain=_read(tls.cert),
        )
        channel = grpc.secure_channel(target, creds, options=_COMMON_OPTIONS)
    else:
        channel = grpc.insecure_channel(target, options=_COMMON_OPTIONS)
    if not token:
        return channel
    if tls is None:
        log.warning(
            "sending a bearer token to %s without TLS: anyone on the path can read it", target
        )
    return grpc.intercept_channel(channel, _BearerToken(token))


class _CallDetails(grpc.ClientCallDetails):
    def __init__(
        self, base: grpc.ClientCallDetails, metadata: tuple[tuple[str, str | bytes], ...]
    ) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


if TYPE_CHECKING:  # generic in grpc's stubs only
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.UnaryStreamClientInterceptor
    _StreamUnary = grpc.StreamUnaryClientInterceptor
    _StreamStream = grpc.StreamStreamClientInterceptor


class _BearerToken(_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream):
    """Adds the bearer token to every call's metadata."""

    def __init__(self, token: str) -> None:
        self._entry = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(details, (*(details.metadata or ()), self._entry))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)
