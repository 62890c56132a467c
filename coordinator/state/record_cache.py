"""Participant records as committed, held in memory by the SQLite store.

Jobs read every online participant's record each time they pick a round's members (and
while they wait for a federation, several times a second): at 10,000 participants a SELECT
and a JSON decode per record kept the event loop busy for seconds at a time (bench.load).
The store writes through this cache after each commit, so a read is a copy of a dict entry.
Copies are cheap because a record holds only a list of ints and a dict of strings.
"""

from __future__ import annotations

from fused.common.domain.record_codec import normalized
from fused.common.domain.records import ParticipantRecord


def copy_record(r: ParticipantRecord) -> ParticipantRecord:
    """A copy sharing nothing mutable with `r` (its nested values are immutable)."""
    return ParticipantRecord(
        r.participant_id,
        list(r.class_counts),
        r.num_train,
        r.num_test,
        r.registered_at,
        r.last_seen,
        dict(r.info),
    )


class ParticipantCache:
    """Committed participant records by id; the caller holds the store's lock."""

    def __init__(self) -> None:
        self._records: dict[str, ParticipantRecord] | None = None

    @property
    def loaded(self) -> bool:
        return self._records is not None

    def fill(self, records: list[ParticipantRecord]) -> None:
        self._records = {r.participant_id: r for r in records}

    def get(self, participant_id: str) -> ParticipantRecord | None:
        record = self._all().get(participant_id)
        return None if record is None else copy_record(record)

    def listed(self) -> list[ParticipantRecord]:
        records = self._all()
        return [copy_record(records[pid]) for pid in sorted(records)]

    def put(self, record: ParticipantRecord) -> None:
        """After a commit: what a read of the row returns."""
        if self._records is not None:
            self._records[record.participant_id] = normalized(record)

    def touch(self, participant_id: str, when: float) -> None:
        record = self._all().get(participant_id)  # None: no row had that id
        if record is not None:
            record.last_seen = float(when)

    def drop(self, participant_id: str) -> None:
        self._all().pop(participant_id, None)

    def _all(self) -> dict[str, ParticipantRecord]:
        if self._records is None:
            raise RuntimeError("participant cache read before it was filled")
        return self._records
