"""Withdrawing a forget-ledger request: the entry is marked withdrawn, and the served model
comes to forget exactly the requests that remain.

Along the served version's lineage each version forgets a superset of its parent's entries
(`VersionMeta.forgets`). The nearest version that forgets nothing beyond the remaining requests
is the target. If it forgets all the remaining requests the served version forgot, switching
to it is exact (a pointer switch); otherwise an unlearning job applies the missing ones again
on it, and the served version stays until that job publishes (it forgets more, never less).
"""

from __future__ import annotations

import time
from dataclasses import replace

import grpc

from fused.common.domain.ledger import LedgerEntry, LedgerStatus, Withdrawal
from fused.common.domain.records import JobKind, ModelVersion
from fused.common.domain.specs import UnlearningSpec
from fused.coordinator.auth import RequestRefused
from fused.coordinator.engine.manager import TERMINAL, JobManager
from fused.coordinator.state import StateStore
from fused.coordinator.versions import active_version, lineage, set_active


def withdraw(
    store: StateStore, jobs: JobManager, entry_id: str, keep_version: bool, caller: str
) -> Withdrawal:
    """Withdraw `entry_id`; with `keep_version` only the ledger changes. Called again for an
    entry already withdrawn, it finishes what a restart interrupted (idempotent)."""
    entry = _entry(store, entry_id)
    served = active_version(store)
    forgotten_there = served is not None and entry_id in served.meta.forgets
    if entry.status is LedgerStatus.WITHDRAWN:
        running = _rebuild_job(store)
        if running:
            return Withdrawal(entry, "", running, f"{running} is applying the rest again")
        if keep_version or not forgotten_there:
            raise RequestRefused(
                grpc.StatusCode.FAILED_PRECONDITION, f"{entry_id} is already withdrawn"
            )
    else:
        [entry] = store.set_ledger_status([entry_id], LedgerStatus.WITHDRAWN, time.time())
    if keep_version or served is None or not forgotten_there:
        return Withdrawal(entry, "", "", "the served version is unchanged")
    return _rebuild(store, jobs, entry, served, caller)


def _entry(store: StateStore, entry_id: str) -> LedgerEntry:
    entry = next((e for e in store.list_ledger() if e.entry_id == entry_id), None)
    if entry is None:
        raise RequestRefused(grpc.StatusCode.NOT_FOUND, f"no ledger entry {entry_id!r}")
    return entry


def _rebuild(
    store: StateStore, jobs: JobManager, entry: LedgerEntry, served: ModelVersion, caller: str
) -> Withdrawal:
    entries = {e.entry_id: e for e in store.list_ledger() if e.binding}
    target = next((v for v in lineage(store, served) if set(v.meta.forgets) <= set(entries)), None)
    if target is None:
        return Withdrawal(
            entry,
            "",
            "",
            "no version in the served version's lineage forgets only the remaining requests; "
            "the served version still forgets this one: consolidate to retrain without it",
        )
    missing = [e for e in entries if e in served.meta.forgets and e not in target.meta.forgets]
    if not missing:
        set_active(store, target.version_id)
        return Withdrawal(entry, target.version_id, "", f"switched to {target.version_id}")
    spec = _replay_spec(store, entries[missing[-1]], target.version_id, tuple(missing))
    job = jobs.start(JobKind.UNLEARN, spec, caller)
    listed = ", ".join(missing)
    message = f"{job.job_id} applies {listed} again on {target.version_id}"
    return Withdrawal(entry, "", job.job_id, message)


def _replay_spec(
    store: StateStore, last: LedgerEntry, base_version: str, replays: tuple[str, ...]
) -> UnlearningSpec:
    """The last missing request's own job spec (method and budget), on the target version."""
    job = store.get_job(last.job_id)
    spec = UnlearningSpec.from_dict(job.spec) if job is not None else UnlearningSpec(last.forget)
    return replace(spec, forget=last.forget, base_version=base_version, replays=replays)


def _rebuild_job(store: StateStore) -> str:
    """An unfinished job applying requests again after a withdrawal ("" none)."""
    for job in store.list_jobs():
        if job.kind == JobKind.UNLEARN and job.status not in TERMINAL and job.spec.get("replays"):
            return job.job_id
    return ""
