"""The coordinator's persistent state behind one abstract interface (memory and SQLite)."""

from __future__ import annotations

import abc
import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fused.common.domain.ledger import ForgetRequest, LedgerEntry, LedgerStatus, RequestStatus
from fused.common.domain.records import (
    BlockedParticipant,
    JobEvent,
    JobRecord,
    ModelVersion,
    ParticipantRecord,
    RoundRecord,
)


def json_copy(value: Any) -> Any:
    """A deep copy through JSON; raises TypeError for values that cannot be persisted."""
    return json.loads(json.dumps(value))


class UnknownRecordError(KeyError):
    """A lookup or update named a record that does not exist."""


class StateStore(abc.ABC):
    """Every method is synchronous and short; callers may run it on the event loop."""

    # participants
    @abc.abstractmethod
    def upsert_participant(self, record: ParticipantRecord) -> None: ...

    @abc.abstractmethod
    def get_participant(self, participant_id: str) -> ParticipantRecord | None: ...

    @abc.abstractmethod
    def list_participants(self) -> list[ParticipantRecord]:
        """Sorted by participant_id."""

    @abc.abstractmethod
    def touch_participant(self, participant_id: str, when: float) -> None:
        """Set last_seen; raises UnknownRecordError for an unknown id."""

    def touch_participants(self, seen: Mapping[str, float]) -> None:
        """Set several participants' last_seen at once; ids without a record are skipped
        (removed meanwhile). Stores override it with one transaction."""
        for participant_id, when in seen.items():
            with contextlib.suppress(UnknownRecordError):
                self.touch_participant(participant_id, when)

    @abc.abstractmethod
    def delete_participant(self, participant_id: str) -> bool:
        """Forget the record; False if there was none. Jobs, rounds and blocks stay."""

    # blocked participants (independent of participant records)
    @abc.abstractmethod
    def block_participant(self, record: BlockedParticipant) -> None:
        """Insert or replace the block on record.participant_id."""

    @abc.abstractmethod
    def unblock_participant(self, participant_id: str) -> bool:
        """Lift a block; False if the id was not blocked."""

    @abc.abstractmethod
    def list_blocked(self) -> list[BlockedParticipant]:
        """Sorted by participant_id."""

    # the forget ledger (append-only: entries are added, only their status changes)
    @abc.abstractmethod
    def add_ledger_entry(self, entry: LedgerEntry) -> None:
        """Raises ValueError if the id exists."""

    @abc.abstractmethod
    def list_ledger(self) -> list[LedgerEntry]:
        """Oldest first (requested_at, then entry_id)."""

    @abc.abstractmethod
    def set_ledger_status(
        self, entry_ids: Sequence[str], status: LedgerStatus, when: float
    ) -> list[LedgerEntry]:
        """Change the entries' status all at once (one transaction: all or none); raises
        UnknownRecordError, changing nothing, if any id is unknown."""

    # participants' forgetting requests
    @abc.abstractmethod
    def add_forget_request(self, request: ForgetRequest) -> None:
        """Raises ValueError if the id exists."""

    @abc.abstractmethod
    def list_forget_requests(self) -> list[ForgetRequest]:
        """Oldest first (requested_at, then request_id)."""

    @abc.abstractmethod
    def decide_forget_request(
        self, request_id: str, status: RequestStatus, by: str, reason: str, job_id: str, when: float
    ) -> ForgetRequest:
        """Decide a pending request (one transaction: checked and changed together). Raises
        UnknownRecordError for an unknown id, ValueError if it is already decided."""

    # jobs
    @abc.abstractmethod
    def create_job(self, record: JobRecord) -> None:
        """Raises ValueError if the id exists."""

    @abc.abstractmethod
    def update_job(self, job_id: str, **fields: Any) -> JobRecord:
        """Set the named JobRecord fields (and updated_at if not given); return the new record."""

    @abc.abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    def list_jobs(self) -> list[JobRecord]:
        """Oldest first (created_at, then job_id)."""

    # rounds
    @abc.abstractmethod
    def save_round(self, record: RoundRecord) -> None:
        """Insert or replace the round keyed by (job_id, phase, round)."""

    @abc.abstractmethod
    def list_rounds(self, job_id: str) -> list[RoundRecord]:
        """In the order they were first saved."""

    # model versions
    @abc.abstractmethod
    def add_model_version(self, record: ModelVersion) -> None:
        """Raises ValueError if the id exists."""

    @abc.abstractmethod
    def get_model_version(self, version_id: str) -> ModelVersion | None: ...

    @abc.abstractmethod
    def list_model_versions(self) -> list[ModelVersion]:
        """Oldest first (created_at, then version_id)."""

    @abc.abstractmethod
    def drop_model_versions(self, version_ids: Sequence[str]) -> None:
        """Delete the versions, all at once (one transaction: all or none); a kept version
        whose parent is dropped becomes a root (parent_id None). Raises UnknownRecordError,
        changing nothing, if any id is unknown."""

    # job events (the watch stream replays these)
    def append_event(
        self,
        job_id: str,
        kind: str,
        phase: str,
        round: int,
        message: str,
        data: dict[str, Any],
        when: float,
    ) -> JobEvent:
        """Store an event with the job's next seq (1-based) and return it."""
        payload = json_copy(dict(data))  # before any lock: TypeError for what JSON cannot hold

        def event(seq: int) -> JobEvent:
            return JobEvent(job_id, seq, float(when), kind, phase, int(round), message, payload)

        return self._append_event(job_id, event)

    @abc.abstractmethod
    def _append_event(self, job_id: str, event: Callable[[int], JobEvent]) -> JobEvent:
        """Store `event(next seq)` atomically; UnknownRecordError for an unknown job."""

    @abc.abstractmethod
    def list_events(self, job_id: str, after_seq: int = 0) -> list[JobEvent]:
        """Events with seq > after_seq, in seq order."""

    # settings that outlive jobs, e.g. which model version is served
    @abc.abstractmethod
    def set_setting(self, key: str, value: str) -> None: ...

    @abc.abstractmethod
    def get_setting(self, key: str) -> str | None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
