"""What the client library returns: the coordinator's typed records (common.domain), with what
a listing adds to them (a job's rounds, whether a version is served, a participant's state)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fused.common.domain.ledger import LedgerEntry, Withdrawal
from fused.common.domain.record_codec import to_json
from fused.common.domain.records import (
    JobEvent,
    JobRecord,
    JobStatus,
    ModelVersion,
    ParticipantRecord,
    RoundRecord,
)
from fused.common.domain.round_metrics import LayerScore, Ranking

__all__ = [
    "Job",
    "JobEvent",
    "LayerScore",
    "LedgerEntry",
    "Participant",
    "Ranking",
    "Version",
    "Withdrawal",
    "as_json",
]


@dataclass(frozen=True)
class Job:
    record: JobRecord
    rounds: tuple[RoundRecord, ...] = ()  # the committed rounds, when the call lists them

    @property
    def job_id(self) -> str:
        return self.record.job_id

    @property
    def status(self) -> JobStatus:
        return self.record.status

    @property
    def finished(self) -> bool:
        return self.status in (JobStatus.COMPLETED, JobStatus.FAILED)

    @property
    def result(self) -> dict[str, Any]:
        """The job's result (empty until it completes)."""
        return self.record.result

    def to_json(self) -> dict[str, Any]:
        return {**to_json(self.record), "rounds": [to_json(r) for r in self.rounds]}


@dataclass(frozen=True)
class Version:
    record: ModelVersion
    active: bool  # the served version

    @property
    def version_id(self) -> str:
        return self.record.version_id

    def to_json(self) -> dict[str, Any]:
        return {**to_json(self.record), "active": self.active}


@dataclass(frozen=True)
class Participant:
    record: ParticipantRecord  # registration data (only the id for a blocked stranger)
    online: bool
    blocked: bool
    blocked_reason: str

    @property
    def participant_id(self) -> str:
        return self.record.participant_id

    def to_json(self) -> dict[str, Any]:
        return {
            **to_json(self.record),
            "online": self.online,
            "blocked": self.blocked,
            "blocked_reason": self.blocked_reason,
        }


def as_json(value: Any) -> Any:
    """A record (or a list of them) as the JSON `fusedctl --json` prints."""
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, Job | Version | Participant):
        return value.to_json()
    if isinstance(value, Withdrawal):
        return {
            **{k: getattr(value, k) for k in ("version_id", "job_id", "message")},
            "entry": to_json(value.entry),
        }
    if isinstance(value, Ranking):
        layers = [dataclasses.asdict(score) for score in value.layers]
        return {"rule": value.rule, "note": value.note, "layers": layers}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json(value)
    return value  # plain JSON already
