"""The bulk port's tickets: single use, short-lived, a few per participant."""

from __future__ import annotations

from fused.common.rpc.metering import CallLabels
from fused.coordinator.bulk_tickets import TicketBook
from fused.proto.v1 import participant_pb2

DOWNLOAD = participant_pb2.DownloadBlobRequest(blob_id="a" * 64)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_ticket_is_good_once_and_only_within_its_time() -> None:
    clock = Clock()
    book = TicketBook(ttl_s=30, clock=clock)
    first = book.issue("p0", CallLabels("p0", "train"), download=DOWNLOAD)
    ticket = book.redeem(first)
    assert ticket is not None and ticket.participant == "p0" and ticket.method == "DownloadBlob"
    assert ticket.labels.phase == "train"
    assert book.redeem(first) is None
    late = book.issue("p0", CallLabels(), download=DOWNLOAD)
    clock.now += 30
    assert book.redeem(late) is None
    assert len(book) == 0


def test_a_participants_oldest_unused_tickets_lapse() -> None:
    book = TicketBook(per_participant=2)
    tickets = [book.issue("p0", CallLabels(), download=DOWNLOAD) for _ in range(3)]
    other = book.issue("p1", CallLabels(), download=DOWNLOAD)
    assert book.redeem(tickets[0]) is None
    assert all(book.redeem(t) is not None for t in (*tickets[1:], other))
    assert len(book) == 0
