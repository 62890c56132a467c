"""The SQLite store's own behaviour: persistence across reopening, file settings, schema
versions, and choosing a store by location."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fused.coordinator.state import (
    SCHEMA_VERSION,
    InMemoryStateStore,
    JobStatus,
    SchemaVersionError,
    SqliteStateStore,
    StateStore,
    open_store,
)
from tests.unit.test_state_contract import job, participant, round_record, version


def _fill(store: StateStore) -> None:
    store.upsert_participant(participant("p1"))
    store.create_job(job("j1"))
    store.update_job("j1", status=JobStatus.RUNNING, phase="train", round=1, updated_at=150.0)
    store.save_round(round_record("j1", "train", 1))
    store.add_model_version(version("v1", created_at=1.0))
    store.append_event("j1", "job_started", "", 0, "go", {"a": 1}, 1.0)
    store.set_setting("served_version", "v1")


def _snapshot(store: StateStore) -> tuple[object, ...]:
    return (
        store.list_participants(),
        store.list_jobs(),
        store.list_rounds("j1"),
        store.list_model_versions(),
        store.list_events("j1"),
        store.get_setting("served_version"),
    )


def test_sqlite_reopen_shows_everything(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = SqliteStateStore(path)
    _fill(first)
    before = _snapshot(first)
    first.close()

    second = SqliteStateStore(path)
    try:
        assert _snapshot(second) == before
        # numbering continues after a restart
        assert second.append_event("j1", "job_resumed", "", 0, "", {}, 2.0).seq == 2
    finally:
        second.close()

    # the in-memory store returns exactly the same records for the same writes
    memory = InMemoryStateStore()
    _fill(memory)
    assert _snapshot(memory) == before


def test_sqlite_file_settings(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = SqliteStateStore(path)
    s.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert {"participants", "jobs", "rounds", "model_versions", "events", "settings"} <= tables


def test_sqlite_newer_schema_version_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SqliteStateStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaVersionError, match=rf"schema version {SCHEMA_VERSION + 1}"):
        SqliteStateStore(path)


def test_sqlite_in_memory_location() -> None:
    s = SqliteStateStore(":memory:")
    try:
        s.set_setting("k", "v")
        assert s.get_setting("k") == "v"
    finally:
        s.close()


def test_open_store(tmp_path: Path) -> None:
    assert isinstance(open_store("memory"), InMemoryStateStore)
    assert isinstance(open_store(":memory:"), InMemoryStateStore)
    path = tmp_path / "nested" / "dir" / "state.db"
    s = open_store(str(path))
    try:
        assert isinstance(s, SqliteStateStore)
        s.set_setting("k", "v")
    finally:
        s.close()
    assert path.exists()
    reopened = open_store(str(path))
    try:
        assert reopened.get_setting("k") == "v"
    finally:
        reopened.close()
