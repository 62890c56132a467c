"""The SQLite store's own behaviour: persistence across reopening, file settings, schema
versions, and choosing a store by location."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from fused.common.domain.records import JobKind, Phase, VersionKind
from fused.common.domain.round_metrics import AggregateSummary, ByteSummary, PayloadKind
from fused.common.domain.version_meta import UnlearnedMeta
from fused.coordinator.state import (
    SCHEMA_VERSION,
    InMemoryStateStore,
    JobStatus,
    SchemaVersionError,
    SqliteStateStore,
    StateStore,
    open_store,
)
from fused.coordinator.state.sqlite_rows import ROUND_COLS
from tests.unit.test_state_contract import job, participant, round_record, version


def _fill(store: StateStore) -> None:
    store.upsert_participant(participant("p1"))
    store.create_job(job("j1"))
    store.update_job("j1", status=JobStatus.RUNNING, phase="train", round=1, updated_at=150.0)
    store.save_round(round_record("j1", Phase.TRAIN, 1))
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


# Rows exactly as the release before typed records wrote them (flat JSON metrics and meta).
_OLD_ROUND = (
    "j1",
    "adapter",
    3,
    10.0,
    12.5,
    '["p0","p1"]',
    '{"seconds":2.5,"failures":{"p2":"late"},"bytes":{"up":{"p0":9},"down":{"p0":4},"total":13},'
    '"train_loss":0.25,"values":"' + "ab" * 32 + '","num_examples":640}',
)
_OLD_VERSION = (
    "m1", None, None, "adapter", "cd" * 32, "lenet", 61706, 20.0,
    '{"dataset":"fashion_mnist","num_classes":10,"adapter_digest":"' + "ef" * 32 + '",'
    '"base_digest":"' + "01" * 32 + '","layers":["fc1.weight"],"density":0.1,"mask_seed":7,'
    '"mask_digest":"' + "23" * 32 + '","adapter_params":4800,"method":"fused","ra":0.8,"fa":0.05}',
)  # fmt: skip


def test_sqlite_reads_rows_of_the_previous_release(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SqliteStateStore(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO jobs VALUES ('j1','unlearn','{}','completed','adapter',3,'',"
                     "1.0,2.0,'{}')")  # fmt: skip
        conn.execute(f"INSERT INTO rounds ({ROUND_COLS}) VALUES (?,?,?,?,?,?,?)", _OLD_ROUND)
        conn.execute(f"INSERT INTO model_versions VALUES ({', '.join('?' * 9)})", _OLD_VERSION)
    conn.close()
    store = SqliteStateStore(path)
    try:
        (r,) = store.list_rounds("j1")
        assert r.phase is Phase.ADAPTER and r.metrics.failures == {"p2": "late"}
        assert r.metrics.bytes == ByteSummary(up={"p0": 9}, down={"p0": 4})
        assert r.metrics.aggregate == AggregateSummary(PayloadKind.ADAPTER, "ab" * 32, 0.25, 640)
        v = store.get_model_version("m1")
        assert v is not None and v.kind is VersionKind.ADAPTER
        assert v.meta.adapter is not None and v.meta.adapter.layers == ("fc1.weight",)
        assert v.meta.unlearned == UnlearnedMeta("fused", 0.8, 0.05)
        job_record = store.get_job("j1")
        assert job_record is not None and job_record.kind is JobKind.UNLEARN
        # Written back, the typed record is stored under the same keys.
        store.save_round(r)
        row = sqlite3.connect(path).execute("SELECT metrics FROM rounds").fetchone()
        assert json.loads(row[0]) == json.loads(_OLD_ROUND[-1])
    finally:
        store.close()


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
