"""In-memory `StateStore`: for tests and throwaway runs. Thread-safe; never aliases callers.

Records are normalized by the same conversion the SQLite store's rows go through
(`record_codec`), so both stores return equal records for equal input.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from fused.common.domain.ledger import ForgetRequest, LedgerEntry, LedgerStatus, RequestStatus
from fused.common.domain.record_codec import normalized
from fused.common.domain.records import (
    BlockedParticipant,
    JobEvent,
    JobRecord,
    ModelVersion,
    ParticipantRecord,
    RoundRecord,
)
from fused.coordinator.state.base import StateStore, UnknownRecordError

__all__ = ["InMemoryStateStore"]

_JOB_FIELDS = frozenset(f.name for f in dataclasses.fields(JobRecord))


def apply_job_update(record: JobRecord, changes: dict[str, Any]) -> JobRecord:
    """`record` with `changes` applied (updated_at defaults to now), normalized.

    Raises ValueError for names that are not JobRecord fields and for a changed job_id."""
    unknown = sorted(set(changes) - _JOB_FIELDS)
    if unknown:
        raise ValueError(f"unknown JobRecord field(s): {', '.join(unknown)}")
    if "job_id" in changes and changes["job_id"] != record.job_id:
        raise ValueError(f"job_id cannot be changed (job {record.job_id!r})")
    if "updated_at" not in changes:
        changes = {**changes, "updated_at": time.time()}
    return normalized(dataclasses.replace(record, **changes))


class InMemoryStateStore(StateStore):
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._participants: dict[str, ParticipantRecord] = {}
        self._jobs: dict[str, JobRecord] = {}
        # dicts keep first-insertion order, also when a key's value is replaced
        self._rounds: dict[tuple[str, str, int], RoundRecord] = {}
        self._versions: dict[str, ModelVersion] = {}
        self._events: dict[str, list[JobEvent]] = {}
        self._settings: dict[str, str] = {}
        self._blocked: dict[str, BlockedParticipant] = {}
        self._ledger: dict[str, LedgerEntry] = {}
        self._requests: dict[str, ForgetRequest] = {}

    # participants
    def upsert_participant(self, record: ParticipantRecord) -> None:
        stored = normalized(record)
        with self._lock:
            self._participants[stored.participant_id] = stored

    def get_participant(self, participant_id: str) -> ParticipantRecord | None:
        with self._lock:
            return copy.deepcopy(self._participants.get(participant_id))

    def list_participants(self) -> list[ParticipantRecord]:
        with self._lock:
            return [copy.deepcopy(self._participants[k]) for k in sorted(self._participants)]

    def touch_participant(self, participant_id: str, when: float) -> None:
        with self._lock:
            record = self._participants.get(participant_id)
            if record is None:
                raise UnknownRecordError(participant_id)
            record.last_seen = float(when)

    def delete_participant(self, participant_id: str) -> bool:
        with self._lock:
            return self._participants.pop(participant_id, None) is not None

    # blocked participants
    def block_participant(self, record: BlockedParticipant) -> None:
        stored = normalized(record)
        with self._lock:
            self._blocked[stored.participant_id] = stored

    def unblock_participant(self, participant_id: str) -> bool:
        with self._lock:
            return self._blocked.pop(participant_id, None) is not None

    def list_blocked(self) -> list[BlockedParticipant]:
        with self._lock:
            return [copy.deepcopy(self._blocked[k]) for k in sorted(self._blocked)]

    # the forget ledger
    def add_ledger_entry(self, entry: LedgerEntry) -> None:
        stored = normalized(entry)
        with self._lock:
            if stored.entry_id in self._ledger:
                raise ValueError(f"ledger entry {stored.entry_id!r} already exists")
            self._ledger[stored.entry_id] = stored

    def list_ledger(self) -> list[LedgerEntry]:
        with self._lock:
            entries = sorted(self._ledger.values(), key=lambda e: (e.requested_at, e.entry_id))
            return [copy.deepcopy(e) for e in entries]

    def set_ledger_status(
        self, entry_ids: Sequence[str], status: LedgerStatus, when: float
    ) -> list[LedgerEntry]:
        with self._lock:
            unknown = [e for e in entry_ids if e not in self._ledger]
            if unknown:
                raise UnknownRecordError(unknown[0])
            for entry_id in entry_ids:
                entry = self._ledger[entry_id]
                entry.status, entry.changed_at = LedgerStatus(status), float(when)
            return [copy.deepcopy(self._ledger[e]) for e in entry_ids]

    # participants' forgetting requests
    def add_forget_request(self, request: ForgetRequest) -> None:
        stored = normalized(request)
        with self._lock:
            if stored.request_id in self._requests:
                raise ValueError(f"forget request {stored.request_id!r} already exists")
            self._requests[stored.request_id] = stored

    def list_forget_requests(self) -> list[ForgetRequest]:
        with self._lock:
            found = sorted(self._requests.values(), key=lambda r: (r.requested_at, r.request_id))
            return [copy.deepcopy(r) for r in found]

    def decide_forget_request(
        self, request_id: str, status: RequestStatus, by: str, reason: str, job_id: str, when: float
    ) -> ForgetRequest:
        with self._lock:
            request = self._requests.get(request_id)
            if request is None:
                raise UnknownRecordError(request_id)
            if request.status is not RequestStatus.PENDING:
                raise ValueError(f"request {request_id} is already {request.status.value}")
            request.status, request.decided_by = RequestStatus(status), by
            request.reason, request.job_id, request.decided_at = reason, job_id, float(when)
            return copy.deepcopy(request)

    # jobs
    def create_job(self, record: JobRecord) -> None:
        stored = normalized(record)
        with self._lock:
            if stored.job_id in self._jobs:
                raise ValueError(f"job {stored.job_id!r} already exists")
            self._jobs[stored.job_id] = stored

    def update_job(self, job_id: str, **fields: Any) -> JobRecord:
        with self._lock:
            current = self._jobs.get(job_id)
            if current is None:
                raise UnknownRecordError(job_id)
            updated = apply_job_update(current, fields)
            self._jobs[job_id] = updated
            return copy.deepcopy(updated)

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return copy.deepcopy(self._jobs.get(job_id))

    def list_jobs(self) -> list[JobRecord]:
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: (j.created_at, j.job_id))
            return copy.deepcopy(jobs)

    # rounds
    def save_round(self, record: RoundRecord) -> None:
        stored = normalized(record)
        with self._lock:
            if stored.job_id not in self._jobs:
                raise UnknownRecordError(stored.job_id)
            self._rounds[(stored.job_id, stored.phase, stored.round)] = stored

    def list_rounds(self, job_id: str) -> list[RoundRecord]:
        with self._lock:
            return copy.deepcopy([r for r in self._rounds.values() if r.job_id == job_id])

    # model versions
    def add_model_version(self, record: ModelVersion) -> None:
        stored = normalized(record)
        with self._lock:
            if stored.version_id in self._versions:
                raise ValueError(f"model version {stored.version_id!r} already exists")
            if stored.job_id is not None and stored.job_id not in self._jobs:
                raise UnknownRecordError(stored.job_id)
            if stored.parent_id is not None and stored.parent_id not in self._versions:
                raise UnknownRecordError(stored.parent_id)
            self._versions[stored.version_id] = stored

    def get_model_version(self, version_id: str) -> ModelVersion | None:
        with self._lock:
            return copy.deepcopy(self._versions.get(version_id))

    def list_model_versions(self) -> list[ModelVersion]:
        with self._lock:
            versions = sorted(self._versions.values(), key=lambda v: (v.created_at, v.version_id))
            return copy.deepcopy(versions)

    def drop_model_versions(self, version_ids: Sequence[str]) -> None:
        with self._lock:
            unknown = [v for v in version_ids if v not in self._versions]
            if unknown:
                raise UnknownRecordError(unknown[0])
            for version_id in version_ids:
                del self._versions[version_id]
            for kept in self._versions.values():
                if kept.parent_id in version_ids:
                    kept.parent_id = None

    # job events
    def _append_event(self, job_id: str, event: Callable[[int], JobEvent]) -> JobEvent:
        with self._lock:
            if job_id not in self._jobs:
                raise UnknownRecordError(job_id)
            events = self._events.setdefault(job_id, [])
            events.append(event(len(events) + 1))
            return copy.deepcopy(events[-1])

    def list_events(self, job_id: str, after_seq: int = 0) -> list[JobEvent]:
        with self._lock:
            events = self._events.get(job_id, [])
            # seq == index + 1, so the tail after `after_seq` is a slice
            return copy.deepcopy(events[max(after_seq, 0) :])

    # settings
    def set_setting(self, key: str, value: str) -> None:
        with self._lock:
            self._settings[key] = value

    def get_setting(self, key: str) -> str | None:
        with self._lock:
            return self._settings.get(key)
