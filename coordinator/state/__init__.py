"""The coordinator's persistent state: records, the abstract store and its implementations."""

from __future__ import annotations

from pathlib import Path

from fused.common.domain.records import (
    BlockedParticipant,
    JobEvent,
    JobRecord,
    JobStatus,
    ModelVersion,
    ParticipantRecord,
    RoundRecord,
)
from fused.coordinator.state.base import StateStore, UnknownRecordError
from fused.coordinator.state.memory import InMemoryStateStore
from fused.coordinator.state.sqlite import SCHEMA_VERSION, SchemaVersionError, SqliteStateStore

__all__ = [
    "SCHEMA_VERSION",
    "BlockedParticipant",
    "InMemoryStateStore",
    "JobEvent",
    "JobRecord",
    "JobStatus",
    "ModelVersion",
    "ParticipantRecord",
    "RoundRecord",
    "SchemaVersionError",
    "SqliteStateStore",
    "StateStore",
    "UnknownRecordError",
    "open_store",
]

_MEMORY_LOCATIONS = frozenset({"memory", ":memory:"})


def open_store(location: str) -> StateStore:
    """Open the store at `location`.

    "memory" or ":memory:" gives an in-memory store; anything else is a SQLite file path
    (parent directories are created)."""
    if location.strip() in _MEMORY_LOCATIONS:
        return InMemoryStateStore()
    path = Path(location).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteStateStore(path)
