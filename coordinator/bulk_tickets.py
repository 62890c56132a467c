"""Single-use tickets for the bulk port. OpenTransfer (an authenticated gRPC call) issues one
after the checks DownloadBlob, or an UploadBlob stream's first chunk, would make; a bulk
connection presents it once, within TICKET_TTL_S. A ticket is 32 random bytes: it is the
only credential of that connection, so it is never logged."""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from fused.common.rpc.bulk_wire import TICKET_BYTES
from fused.common.rpc.metering import CallLabels
from fused.proto.v1 import common_pb2, participant_pb2

TICKET_TTL_S = 30.0
OPEN_PER_PARTICIPANT = 8  # a participant's unused tickets beyond this lapse, oldest first


@dataclass(frozen=True)
class Ticket:
    """What one ticket allows: a download (from an offset) or an upload (as its first chunk
    names it) by one participant, whose bytes count as the OpenTransfer call's did."""

    participant: str
    labels: CallLabels
    expires: float  # on the book's clock
    download: participant_pb2.DownloadBlobRequest | None = None
    upload: common_pb2.BlobChunk | None = None

    @property
    def method(self) -> str:
        """The gRPC method whose wire metrics count this transfer's bytes."""
        return "DownloadBlob" if self.download is not None else "UploadBlob"


@dataclass
class TicketBook:
    ttl_s: float = TICKET_TTL_S
    per_participant: int = OPEN_PER_PARTICIPANT
    clock: Callable[[], float] = time.monotonic
    _open: dict[bytes, Ticket] = field(default_factory=dict)  # oldest first
    _mine: dict[str, deque[bytes]] = field(default_factory=dict)

    def issue(
        self,
        participant: str,
        labels: CallLabels,
        download: participant_pb2.DownloadBlobRequest | None = None,
        upload: common_pb2.BlobChunk | None = None,
    ) -> bytes:
        if (download is None) == (upload is None):
            raise ValueError("a ticket is for one download or one upload")
        self._lapse()
        token = secrets.token_bytes(TICKET_BYTES)
        expires = self.clock() + self.ttl_s
        self._open[token] = Ticket(participant, labels, expires, download, upload)
        mine = self._mine.setdefault(participant, deque())
        mine.append(token)
        if len(mine) > self.per_participant:
            self._drop(mine[0])
        return token

    def redeem(self, token: bytes) -> Ticket | None:
        """The ticket, which is then used up; None for one unknown, used or expired."""
        self._lapse()
        ticket = self._open.get(token)
        if ticket is not None:
            self._drop(token)
        return ticket

    def __len__(self) -> int:
        return len(self._open)

    def _lapse(self) -> None:
        now = self.clock()
        while self._open:
            token, oldest = next(iter(self._open.items()))
            if oldest.expires > now:
                return
            self._drop(token)

    def _drop(self, token: bytes) -> None:
        ticket = self._open.pop(token)
        mine = self._mine[ticket.participant]
        mine.remove(token)
        if not mine:
            del self._mine[ticket.participant]
