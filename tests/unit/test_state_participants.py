"""The StateStore contract for an operator's say over participants (removing a record, blocking
an id), on both implementations; and the SQLite migration that added the blocks."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fused.coordinator.state import (
    SCHEMA_VERSION,
    BlockedParticipant,
    ParticipantRecord,
    SqliteStateStore,
    StateStore,
)
from fused.coordinator.state.sqlite_rows import MIGRATIONS


def participant(pid: str) -> ParticipantRecord:
    return ParticipantRecord(pid, [3, 7], 10, 4, 5.0, 6.0, {"dataset": "digits"})


def test_delete_participant(store: StateStore) -> None:
    store.upsert_participant(participant("a"))
    store.upsert_participant(participant("b"))
    assert store.delete_participant("a") is True
    assert store.get_participant("a") is None
    assert [p.participant_id for p in store.list_participants()] == ["b"]
    assert store.delete_participant("a") is False
    assert store.delete_participant("never") is False


def test_block_unblock(store: StateStore) -> None:
    assert store.list_blocked() == []
    store.block_participant(BlockedParticipant("z", 1.0, "sent 3e38"))
    store.block_participant(BlockedParticipant("m", 2.0))
    assert store.list_blocked() == [
        BlockedParticipant("m", 2.0, ""),
        BlockedParticipant("z", 1.0, "sent 3e38"),
    ]
    store.block_participant(BlockedParticipant("z", 3.0, "again"))  # replaces
    assert store.list_blocked()[1] == BlockedParticipant("z", 3.0, "again")
    assert store.unblock_participant("z") is True
    assert store.unblock_participant("z") is False
    assert [b.participant_id for b in store.list_blocked()] == ["m"]


def test_blocks_and_records_are_independent(store: StateStore) -> None:
    store.upsert_participant(participant("m"))
    store.block_participant(BlockedParticipant("m", 1.0))
    assert store.delete_participant("m")
    assert [b.participant_id for b in store.list_blocked()] == ["m"]  # the block outlives it
    store.upsert_participant(participant("m"))
    assert store.unblock_participant("m")
    assert store.get_participant("m") == participant("m")


def test_returned_blocks_are_copies(store: StateStore) -> None:
    store.block_participant(BlockedParticipant("m", 1.0, "x"))
    store.list_blocked()[0].reason = "changed"
    assert store.list_blocked()[0].reason == "x"


def test_blocks_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = SqliteStateStore(path)
    s.block_participant(BlockedParticipant("m", 1.5, "poisoned"))
    s.close()
    again = SqliteStateStore(path)
    try:
        assert again.list_blocked() == [BlockedParticipant("m", 1.5, "poisoned")]
    finally:
        again.close()


def test_a_version_1_database_is_migrated(tmp_path: Path) -> None:
    """A state directory written before blocks existed opens, keeps its rows, gains the
    tables of every later version (blocks, the forget ledger, participants' requests)."""
    assert SCHEMA_VERSION == 4
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    with conn:
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO participants VALUES ('p0', '[3,7]', 10, 4, 5.0, 6.0, "
            '\'{"dataset":"digits"}\')'
        )
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    store = SqliteStateStore(path)
    try:
        assert store.schema_version == 4
        assert store.get_participant("p0") == participant("p0")
        assert store.list_blocked() == [] and store.list_ledger() == []
        assert store.list_forget_requests() == []
        store.block_participant(BlockedParticipant("p0", 1.0))
        assert [b.participant_id for b in store.list_blocked()] == ["p0"]
    finally:
        store.close()
