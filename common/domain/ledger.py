"""The forget ledger: every unlearning request the federation has applied, and what it makes
every later job leave out.

An entry is written when its unlearning job publishes the version that forgets it; its status
changes only by an operator's withdrawal or a consolidation. The `ForgetSet` of the active
entries travels with each later task, so no job trains on what was forgotten.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from fused.common.domain.tasks import ForgetSet, ForgetSpec, HeldSamples


class LedgerStatus(StrEnum):
    ACTIVE = "active"  # later jobs leave its data out
    WITHDRAWN = "withdrawn"  # an operator took the request back
    CONSOLIDATED = "consolidated"  # a retrained base forgets it; still left out


@dataclass
class LedgerEntry:
    entry_id: str
    forget: ForgetSpec  # what: a participant, a class, or sample ids with their holder
    requested_by: str  # the caller that started the unlearning job ("" without authentication)
    requested_at: float  # unix seconds the job was created
    job_id: str  # the unlearning job that applied it
    version_id: str  # the version it produced
    status: LedgerStatus
    changed_at: float  # unix seconds of the last status change

    @property
    def binding(self) -> bool:
        """Whether later jobs must leave its data out."""
        return self.status is not LedgerStatus.WITHDRAWN


class RequestStatus(StrEnum):
    PENDING = "pending"  # waiting for an operator
    APPROVED = "approved"  # an unlearning job was started for it
    REJECTED = "rejected"


@dataclass
class ForgetRequest:
    """A participant's own request to be forgotten, or to have some of its samples forgotten
    (`fused-participant --forget-me`, `--forget-samples FILE`). An operator approves or
    rejects it (`fusedctl requests`), or the coordinator approves it by configuration; an
    approval starts the unlearning job whose completion writes the ledger entry."""

    request_id: str
    participant_id: str  # who asked: always the holder of the data named
    forget: ForgetSpec  # that participant, or sample ids it holds
    requested_at: float
    status: RequestStatus
    decided_by: str  # the operator, or "auto" ("" while pending)
    decided_at: float  # 0 while pending
    reason: str  # a rejection's reason
    job_id: str  # the unlearning job an approval started


@dataclass(frozen=True)
class Withdrawal:
    """What withdrawing an entry did."""

    entry: LedgerEntry  # as it is now
    version_id: str  # the version served now, if the withdrawal switched it ("" unchanged)
    job_id: str  # the job that applies the remaining requests again ("" none)
    message: str  # what happened, for the operator


def forget_set(entries: Iterable[LedgerEntry]) -> ForgetSet:
    """The union of the binding entries' requests (sorted, so it has one spelling)."""
    people: set[str] = set()
    classes: set[int] = set()
    held: dict[str, set[int]] = {}
    for entry in entries:
        if not entry.binding:
            continue
        f = entry.forget
        if f.paradigm == "participant":
            people.add(f.participant_id)
        elif f.paradigm == "class":
            classes.add(f.class_label)
        else:
            held.setdefault(f.participant_id, set()).update(f.sample_ids)
    samples = tuple(HeldSamples(p, tuple(sorted(ids))) for p, ids in sorted(held.items()))
    return ForgetSet(tuple(sorted(people)), tuple(sorted(classes)), samples)
