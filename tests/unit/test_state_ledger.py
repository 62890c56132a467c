"""The forget ledger in the state store, for every implementation (the `store` fixture)."""

from __future__ import annotations

import pytest

from fused.common.domain.ledger import (
    ForgetRequest,
    LedgerEntry,
    LedgerStatus,
    RequestStatus,
    forget_set,
)
from fused.common.domain.tasks import ForgetSet, ForgetSpec, HeldSamples
from fused.coordinator.state import StateStore, UnknownRecordError


def ledger_entry(entry_id: str, forget: ForgetSpec, at: float) -> LedgerEntry:
    return LedgerEntry(
        entry_id, forget, "admin", at, f"job-{entry_id}", f"m-{entry_id}", LedgerStatus.ACTIVE, at
    )


def test_ledger_entries_are_appended_and_only_their_status_changes(store: StateStore) -> None:
    samples = ForgetSpec("samples", participant_id="p1", sample_ids=(7, 3))
    store.add_ledger_entry(ledger_entry("f2", samples, 20.0))
    store.add_ledger_entry(ledger_entry("f1", ForgetSpec("participant", "p0"), 10.0))
    with pytest.raises(ValueError, match="already exists"):
        store.add_ledger_entry(ledger_entry("f1", ForgetSpec("class", class_label=2), 30.0))
    entries = store.list_ledger()
    assert [e.entry_id for e in entries] == ["f1", "f2"]  # oldest first
    assert entries[1].forget == samples and entries[1].status is LedgerStatus.ACTIVE
    [changed] = store.set_ledger_status(["f1"], LedgerStatus.WITHDRAWN, 40.0)
    assert (changed.status, changed.changed_at, changed.requested_at) == ("withdrawn", 40.0, 10.0)
    assert store.list_ledger()[0].status is LedgerStatus.WITHDRAWN
    with pytest.raises(UnknownRecordError):
        store.set_ledger_status(["nope"], LedgerStatus.WITHDRAWN, 1.0)


def test_several_entries_change_together_or_not_at_all(store: StateStore) -> None:
    for i in (1, 2):
        store.add_ledger_entry(ledger_entry(f"f{i}", ForgetSpec("class", class_label=i), i))
    with pytest.raises(UnknownRecordError):
        store.set_ledger_status(["f1", "nope", "f2"], LedgerStatus.CONSOLIDATED, 9.0)
    assert {e.status for e in store.list_ledger()} == {LedgerStatus.ACTIVE}  # nothing changed
    changed = store.set_ledger_status(["f2", "f1"], LedgerStatus.CONSOLIDATED, 9.0)
    assert [e.entry_id for e in changed] == ["f2", "f1"]
    assert [(e.status, e.changed_at) for e in store.list_ledger()] == [("consolidated", 9.0)] * 2


def test_the_binding_entries_make_one_forget_set(store: StateStore) -> None:
    store.add_ledger_entry(ledger_entry("f1", ForgetSpec("participant", "p0"), 1.0))
    store.add_ledger_entry(ledger_entry("f2", ForgetSpec("class", class_label=3), 2.0))
    store.add_ledger_entry(
        ledger_entry("f3", ForgetSpec("samples", participant_id="p1", sample_ids=(9, 4)), 3.0)
    )
    store.add_ledger_entry(ledger_entry("f4", ForgetSpec("participant", "p2"), 4.0))
    store.set_ledger_status(["f4"], LedgerStatus.WITHDRAWN, 5.0)
    store.set_ledger_status(["f2"], LedgerStatus.CONSOLIDATED, 6.0)
    excluded = forget_set(store.list_ledger())
    assert excluded == ForgetSet(("p0",), (3,), (HeldSamples("p1", (4, 9)),))
    assert excluded.for_participant("p2").samples == ()
    assert ForgetSet.from_dict(excluded.to_dict()) == excluded


def forget_request(rid: str, pid: str, when: float) -> ForgetRequest:
    return ForgetRequest(
        rid, pid, ForgetSpec("participant", pid), when, RequestStatus.PENDING, "", 0.0, "", ""
    )


def test_forget_requests_are_decided_once(store: StateStore) -> None:
    store.add_forget_request(forget_request("r2", "p2", 2.0))
    store.add_forget_request(forget_request("r1", "p1", 1.0))
    with pytest.raises(ValueError, match="already exists"):
        store.add_forget_request(forget_request("r1", "p9", 3.0))
    assert [r.request_id for r in store.list_forget_requests()] == ["r1", "r2"]
    done = store.decide_forget_request("r1", RequestStatus.APPROVED, "admin", "", "job-7", 5.0)
    assert (done.status, done.decided_by, done.job_id, done.decided_at) == (
        "approved",
        "admin",
        "job-7",
        5.0,
    )
    with pytest.raises(ValueError, match="already approved"):
        store.decide_forget_request("r1", RequestStatus.REJECTED, "admin", "no", "", 6.0)
    with pytest.raises(UnknownRecordError):
        store.decide_forget_request("nope", RequestStatus.REJECTED, "admin", "", "", 6.0)
    rejected = store.decide_forget_request("r2", RequestStatus.REJECTED, "admin", "dup", "", 7.0)
    assert (rejected.status, rejected.reason) == ("rejected", "dup")
    assert [r.status for r in store.list_forget_requests()] == ["approved", "rejected"]
