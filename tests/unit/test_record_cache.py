"""The SQLite store's participant and job reads come from its write-through caches: they
return what the database holds (a fresh store on the same file agrees) and never alias the
cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from fused.common.domain.records import JobKind
from fused.coordinator.state import (
    JobRecord,
    JobStatus,
    ParticipantRecord,
    SqliteStateStore,
    UnknownRecordError,
)


def participant(pid: str, seen: float = 6.0) -> ParticipantRecord:
    return ParticipantRecord(pid, [3, 7], 10, 4, 5.0, seen, {"dataset": "digits"})


def fresh(path: Path) -> list[ParticipantRecord]:
    other = SqliteStateStore(path)
    try:
        return other.list_participants()
    finally:
        other.close()


def test_reads_match_the_database_after_every_kind_of_write(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStateStore(path)
    store.upsert_participant(participant("b"))
    assert store.get_participant("b") == participant("b")  # fills the cache
    store.upsert_participant(participant("a"))
    store.upsert_participant(participant("b", seen=9.0))  # replaces
    store.touch_participant("a", 12.5)
    assert store.delete_participant("b") is True
    assert store.list_participants() == fresh(path) == [participant("a", seen=12.5)]
    assert store.get_participant("b") is None
    with pytest.raises(UnknownRecordError):
        store.touch_participant("b", 1.0)
    store.close()


def test_records_written_before_the_first_read_are_loaded(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = SqliteStateStore(path)
    first.upsert_participant(participant("x"))
    first.close()
    store = SqliteStateStore(path)
    assert store.get_participant("x") == participant("x")
    store.close()


def test_returned_records_are_copies(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    mine = participant("m")
    store.upsert_participant(mine)
    mine.class_counts.append(99)  # the caller's object is not the cache's
    got = store.get_participant("m")
    assert got is not None
    got.class_counts[0] = 0
    got.info["dataset"] = "changed"
    store.list_participants()[0].info["x"] = "y"
    assert store.get_participant("m") == participant("m")
    store.close()


def job(job_id: str) -> JobRecord:
    spec = {"rounds": 2, "train": {"lr": 0.05}, "excluded": {"participants": []}}
    return JobRecord(job_id, JobKind.TRAIN, spec, JobStatus.RUNNING, "", 0, "", 1.0, 1.0)


def test_job_reads_follow_every_write_and_never_alias(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStateStore(path)
    store.create_job(job("j1"))
    got = store.get_job("j1")
    assert got is not None and got.spec == job("j1").spec
    got.spec["train"]["lr"] = 9.0  # the caller's copy only
    updated = store.update_job("j1", round=2, result={"versions": ["v1"]})
    updated.result["versions"].append("v2")
    again = store.get_job("j1")
    assert again is not None
    assert again.round == 2 and again.result == {"versions": ["v1"]}
    assert again.spec["train"]["lr"] == 0.05
    other = SqliteStateStore(path)  # what the database holds
    assert other.get_job("j1") == again
    assert other.get_job("nope") is None
    with pytest.raises(ValueError):
        store.create_job(job("j1"))
    other.close()
    store.close()
