"""The SQLite store's participant reads come from its write-through cache: they return what
the database holds (a fresh store on the same file agrees) and never alias the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from fused.coordinator.state import ParticipantRecord, SqliteStateStore, UnknownRecordError


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
