"""Per-participant limits on uploads: a storage quota, a cap on concurrent streams, and a stream
that must keep moving. Bookkeeping and arithmetic only; transfer.Uploads applies them.

A participant's charge is what it holds in the coordinator's storage and nothing needs: the
part files of its unfinished uploads, the declared size of each stream it has open, and its
finished uploads no accepted result names yet. An upload that would take the charge above the
quota is refused before a byte is written; an accepted result's update stops counting.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import grpc

from fused.coordinator.auth import RequestRefused


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 512 << 20  # one upload's declared size
    quota_bytes: int = 1 << 30  # a participant's charge (see the module doc)
    max_streams: int = 4  # UploadBlob streams one participant may have open at once
    idle_timeout_s: float = 30.0  # the longest wait for a stream's next chunk
    min_rate_bytes_s: int = 32 << 10  # average a stream must keep once its grace is over
    rate_grace_s: float = 10.0
    chunk_bytes: int = 1 << 20  # a chunk arrives whole: the rate allows one in flight

    def check(self) -> None:
        if self.quota_bytes < self.max_bytes:
            raise ValueError(
                f"the upload quota ({self.quota_bytes} bytes) must hold at least one upload "
                f"of the maximum size ({self.max_bytes} bytes)"
            )
        if self.max_streams < 1 or self.idle_timeout_s <= 0 or self.rate_grace_s < 0:
            raise ValueError("upload streams, idle timeout and grace must be positive")


class LimitExceeded(RequestRefused):
    """An upload refused by a limit; `reason` labels fused_upload_refusals."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(code, message)
        self.reason = reason


@dataclass(frozen=True)
class Deadline:
    """When a stream's next chunk must have arrived, and the rule that sets it."""

    at: float
    rule: str  # "idle" or "slow"


def next_chunk_deadline(
    limits: UploadLimits, started: float, now: float, received: int
) -> Deadline:
    """Within the idle timeout, and soon enough that the stream, counting that chunk, still
    averages min_rate_bytes_s once its grace is over (a chunk only arrives whole)."""
    idle = Deadline(now + limits.idle_timeout_s, "idle")
    if limits.min_rate_bytes_s <= 0:
        return idle
    allowed = (received + limits.chunk_bytes) / limits.min_rate_bytes_s
    slow = Deadline(started + limits.rate_grace_s + allowed, "slow")
    return idle if idle.at <= slow.at else slow


def stalled(
    limits: UploadLimits, missed: Deadline, elapsed: float, received: int, offset: int
) -> LimitExceeded:
    """The refusal of a stream whose next chunk missed its deadline."""
    resume = f"resume at offset {offset}"
    if missed.rule == "idle":
        message = f"upload stream sent nothing for {limits.idle_timeout_s:g} s; {resume}"
    else:
        message = (
            f"upload stream too slow: {received} bytes in {elapsed:.0f} s, under "
            f"{limits.min_rate_bytes_s} bytes/s; {resume}"
        )
    return LimitExceeded(grpc.StatusCode.DEADLINE_EXCEEDED, missed.rule, message)


@dataclass
class Stream:
    """One open UploadBlob stream, admitted by the ledger."""

    participant_id: str
    digest: str
    reserved: int  # its declared size: charged while it is open


@dataclass
class UploadLedger:
    """Who holds which open streams and finished, not yet used uploads; the quota's arithmetic."""

    limits: UploadLimits
    _streams: dict[str, list[Stream]] = field(default_factory=lambda: defaultdict(list))
    _stored: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))

    def charge(self, pid: str, parts: int) -> int:
        """pid's charge, given the bytes of its part files no open stream is writing."""
        open_streams = sum(s.reserved for s in self._streams.get(pid, ()))
        return parts + open_streams + sum(self._stored.get(pid, {}).values())

    def admit(self, pid: str, digest: str, total: int, parts: int) -> Stream:
        """Open a stream of `total` declared bytes, or raise LimitExceeded. `parts`: pid's
        part files no open stream is writing, except this digest's (which `total` covers)."""
        streams = self._streams[pid]
        if any(s.digest == digest for s in streams):
            raise LimitExceeded(
                grpc.StatusCode.ABORTED,
                "duplicate",
                "an upload of this blob is already streaming; resume once it has ended",
            )
        if len(streams) >= self.limits.max_streams:
            raise LimitExceeded(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "streams",
                f"too many concurrent uploads: {len(streams)} streams open "
                f"(limit {self.limits.max_streams})",
            )
        held = self.charge(pid, parts)
        if held + total > self.limits.quota_bytes:
            raise LimitExceeded(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "quota",
                f"upload quota exceeded: {held} bytes held and {total} declared, above the "
                f"quota of {self.limits.quota_bytes} bytes (uploads no accepted result names "
                "are kept until no job runs)",
            )
        stream = Stream(pid, digest, total)
        streams.append(stream)
        return stream

    def end(self, stream: Stream) -> None:
        streams = self._streams.get(stream.participant_id, [])
        if stream in streams:
            streams.remove(stream)

    def stored(self, pid: str, digest: str, size: int) -> None:
        """A finished upload: charged until an accepted result names it."""
        self._stored[pid][digest] = size

    def settled(self, pid: str, digest: str) -> None:
        """An accepted result names this upload: it is the job's now, no longer pid's charge."""
        self._stored.get(pid, {}).pop(digest, None)

    def forget_stored(self) -> None:
        """Collection deleted what no job needs: finished uploads no longer take space."""
        self._stored.clear()

    def open_streams(self, pid: str) -> int:
        return len(self._streams.get(pid, ()))
