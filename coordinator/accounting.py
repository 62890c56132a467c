"""Whose bytes a call moves: each call's labels on the wire metrics and its key in a job
round's byte accounting come from the caller's authenticated identity and the task the
coordinator gave it, never from what the call's metadata claims.

An agent's task calls name their task in metadata (job, phase, round). That is only a hint:
when the call starts it is looked up among the open tasks of the participant the metadata
names, and the task found (the coordinator's own record) supplies the key, once
authentication shows the caller is that participant. A refused call charges nothing; a call
naming no task of its caller counts under phase "none" and is charged to no job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from fused.common.rpc.identity import PARTICIPANT
from fused.common.rpc.metering import (
    MD_JOB,
    MD_PARTICIPANT,
    MD_PHASE,
    MD_ROUND,
    CallLabels,
    Resolve,
)
from fused.coordinator.auth import current_identity
from fused.coordinator.fleet import Fleet
from fused.coordinator.limits import PARTICIPANT_LABELS

UNKNOWN = "unknown"  # the label of a caller that is not registered here (but registering)
OTHER = "other"  # the label of registered participants beyond PARTICIPANT_LABELS


@dataclass(frozen=True)
class ByteKey:
    """Where a call's bytes are charged: a job round, and the participant that moved them."""

    job_id: str
    phase: str
    round: int
    participant: str


Charge = Callable[[ByteKey, str, int], None]  # (key, direction, bytes)


class BoundedLabels:
    """Label values as they come, until `cap` distinct ones; later ones share OTHER."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._seen: set[str] = set()

    def get(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._cap:
            return OTHER
        self._seen.add(value)
        return value


class CallAccounting:
    """The coordinator's labeller for CountingServerInterceptor (see the module's text)."""

    def __init__(self, fleet: Fleet, charge: Charge, label_cap: int = PARTICIPANT_LABELS):
        self._fleet = fleet
        self._charge = charge
        self._labels = BoundedLabels(label_cap)

    def __call__(self, method: str, metadata: Mapping[str, str]) -> Resolve:
        # Now, at the call's start: a result's task closes before its answer is counted.
        return partial(self._resolve, self._named_task(metadata), method == "Register")

    def _named_task(self, metadata: Mapping[str, str]) -> ByteKey | None:
        """The open task the metadata names, as the fleet records it; None if there is none."""
        pid, job_id, phase, number = (
            metadata.get(key, "") for key in (MD_PARTICIPANT, MD_JOB, MD_PHASE, MD_ROUND)
        )
        if not (pid and job_id and phase and number.isascii() and number.isdigit()):
            return None
        if len(number) > 10:  # a round number is a uint32
            return None
        task = self._fleet.held_task(pid, job_id, phase, int(number))
        return None if task is None else ByteKey(task.job_id, task.phase, task.round, pid)

    def _resolve(self, task: ByteKey | None, registering: bool) -> CallLabels | None:
        identity = current_identity.get()
        if identity is None:
            return None  # not authenticated yet, or never: the tally decides when it ends
        if identity.role != PARTICIPANT:
            return CallLabels()  # operators' calls
        known = registering or self._fleet.is_registered(identity.name)
        label = self._labels.get(identity.name) if known else UNKNOWN
        if task is None or task.participant != identity.name:
            return CallLabels(label)
        return CallLabels(label, task.phase, partial(self._charge, task))
