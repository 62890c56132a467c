"""The coordinator's resource limits as configuration: connections and uploads.

CoordinatorConfig inherits these fields, so each is a flag, an environment variable and a
TOML key like every other setting; the typed records the server and the transfers take are
built here.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
from dataclasses import dataclass
from typing import TypeVar

from fused.common.rpc.channels import ServerLimits
from fused.coordinator.upload_limits import UploadLimits

log = logging.getLogger(__name__)

FD_RESERVE = 256  # descriptors kept for state, artifacts, logs and the metrics server


T = TypeVar("T")


def _setting(default: T, text: str) -> T:
    """A config field with its `--help` text."""
    return dataclasses.field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class LimitsConfig:
    max_connections: int = _setting(
        4096,
        "TCP connections the gRPC port holds at once; more are closed as they arrive "
        f"(capped at the open-files limit less {FD_RESERVE})",
    )
    handshake_timeout_s: float = _setting(
        5.0, "a new connection that has not finished its TLS/HTTP2 handshake by then is closed"
    )
    connection_idle_s: float = _setting(60.0, "a connection without a call for this long is closed")
    max_streams_per_connection: int = _setting(32, "concurrent calls one connection may carry")
    max_concurrent_rpcs: int = _setting(
        8192, "calls in progress on the gRPC port; more answer RESOURCE_EXHAUSTED"
    )
    health_max_connections: int = _setting(
        16, "connections the plaintext health port holds at once"
    )
    upload_quota_mb: int = _setting(
        1024,
        "a participant's storage: its unfinished uploads plus finished ones no accepted "
        "result names (kept until no job runs); at least max_upload_mb",
    )
    upload_max_streams: int = _setting(4, "upload streams one participant may have open at once")
    upload_idle_timeout_s: float = _setting(
        30.0, "an upload stream without a chunk for this long is cut"
    )
    upload_min_rate_kib_s: int = _setting(
        32, "average KiB/s an upload stream must keep after its grace; 0 = any"
    )
    upload_rate_grace_s: float = _setting(10.0, "seconds an upload stream may start slowly")

    def server_limits(self, max_message_bytes: int) -> ServerLimits:
        return ServerLimits(
            max_connections=connection_cap(self.max_connections),
            handshake_timeout_s=self.handshake_timeout_s,
            connection_idle_s=self.connection_idle_s,
            max_streams_per_connection=self.max_streams_per_connection,
            max_concurrent_rpcs=self.max_concurrent_rpcs,
            max_message_bytes=max_message_bytes,
        )

    def health_limits(self) -> ServerLimits:
        """The health port: a few connections, one call each, tiny messages."""
        return ServerLimits(
            max_connections=self.health_max_connections,
            handshake_timeout_s=self.handshake_timeout_s,
            connection_idle_s=self.connection_idle_s,
            max_streams_per_connection=4,
            max_concurrent_rpcs=4 * self.health_max_connections,
            max_message_bytes=1024,
        )

    def upload_limits(self, max_upload_bytes: int, chunk_bytes: int) -> UploadLimits:
        return UploadLimits(
            max_bytes=max_upload_bytes,
            quota_bytes=self.upload_quota_mb << 20,
            max_streams=self.upload_max_streams,
            idle_timeout_s=self.upload_idle_timeout_s,
            min_rate_bytes_s=self.upload_min_rate_kib_s << 10,
            rate_grace_s=self.upload_rate_grace_s,
            chunk_bytes=chunk_bytes,
        )


def connection_cap(configured: int) -> int:
    """`configured`, lowered so that a full house of connections leaves descriptors free."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or configured + FD_RESERVE <= soft:
        return configured
    capped = max(1, soft - FD_RESERVE)
    log.warning(
        "max_connections %d is above what %d open files allow: holding at most %d",
        configured,
        soft,
        capped,
    )
    return capped
