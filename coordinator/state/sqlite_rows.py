"""The SQLite schema (versioned migrations) and rows <-> records.

A table's columns are its record's fields in declaration order; `record_codec` converts each
value, and structured fields (lists, dicts, typed metrics and meta) are stored as JSON text.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, TypeVar

from fused.common.domain.ledger import ForgetRequest, LedgerEntry
from fused.common.domain.record_codec import field_codecs, from_json, is_structured, to_json
from fused.common.domain.records import (
    BlockedParticipant,
    JobEvent,
    JobRecord,
    ModelVersion,
    ParticipantRecord,
    RoundRecord,
)

R = TypeVar("R")

SCHEMA_VERSION = 4

# Index i holds the statements that take a database from version i to version i + 1.
MIGRATIONS: list[list[str]] = [
    [
        """
        CREATE TABLE participants (
            participant_id TEXT PRIMARY KEY,
            class_counts   TEXT NOT NULL,   -- JSON list[int]
            num_train      INTEGER NOT NULL,
            num_test       INTEGER NOT NULL,
            registered_at  REAL NOT NULL,
            last_seen      REAL NOT NULL,
            info           TEXT NOT NULL    -- JSON object
        )
        """,
        """
        CREATE TABLE jobs (
            job_id     TEXT PRIMARY KEY,
            kind       TEXT NOT NULL,
            spec       TEXT NOT NULL,       -- JSON object
            status     TEXT NOT NULL,
            phase      TEXT NOT NULL,
            round      INTEGER NOT NULL,
            reason     TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            result     TEXT NOT NULL        -- JSON object
        )
        """,
        "CREATE INDEX jobs_by_created ON jobs (created_at, job_id)",
        """
        CREATE TABLE rounds (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,  -- first-saved order
            job_id       TEXT NOT NULL REFERENCES jobs (job_id),
            phase        TEXT NOT NULL,
            round        INTEGER NOT NULL,
            started_at   REAL NOT NULL,
            finished_at  REAL,
            participants TEXT NOT NULL,     -- JSON list[str]
            metrics      TEXT NOT NULL,     -- JSON object
            UNIQUE (job_id, phase, round)
        )
        """,
        """
        CREATE TABLE model_versions (
            version_id TEXT PRIMARY KEY,
            job_id     TEXT REFERENCES jobs (job_id),
            parent_id  TEXT REFERENCES model_versions (version_id),
            kind       TEXT NOT NULL,
            digest     TEXT NOT NULL,
            model      TEXT NOT NULL,
            num_params INTEGER NOT NULL,
            created_at REAL NOT NULL,
            meta       TEXT NOT NULL        -- JSON object
        )
        """,
        "CREATE INDEX model_versions_by_created ON model_versions (created_at, version_id)",
        """
        CREATE TABLE events (
            job_id  TEXT NOT NULL REFERENCES jobs (job_id),
            seq     INTEGER NOT NULL,
            time    REAL NOT NULL,
            kind    TEXT NOT NULL,
            phase   TEXT NOT NULL,
            round   INTEGER NOT NULL,
            message TEXT NOT NULL,
            data    TEXT NOT NULL,          -- JSON object
            PRIMARY KEY (job_id, seq)
        )
        """,
        """
        CREATE TABLE settings (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )
        """,
    ],
    [  # 2: operators block participants (fusedctl participants block ID)
        """
        CREATE TABLE blocked_participants (
            participant_id TEXT PRIMARY KEY,
            blocked_at     REAL NOT NULL,
            reason         TEXT NOT NULL
        )
        """,
    ],
    [  # 3: the forget ledger (every applied unlearning request; only its status changes)
        """
        CREATE TABLE ledger (
            entry_id     TEXT PRIMARY KEY,
            forget       TEXT NOT NULL,   -- JSON ForgetSpec
            requested_by TEXT NOT NULL,
            requested_at REAL NOT NULL,
            job_id       TEXT NOT NULL,
            version_id   TEXT NOT NULL,
            status       TEXT NOT NULL,
            changed_at   REAL NOT NULL
        )
        """,
    ],
    [  # 4: participants' own forgetting requests, pending until an operator decides
        """
        CREATE TABLE forget_requests (
            request_id     TEXT PRIMARY KEY,
            participant_id TEXT NOT NULL,
            forget         TEXT NOT NULL,   -- JSON ForgetSpec
            requested_at   REAL NOT NULL,
            status         TEXT NOT NULL,
            decided_by     TEXT NOT NULL,
            decided_at     REAL NOT NULL,
            reason         TEXT NOT NULL,
            job_id         TEXT NOT NULL
        )
        """,
    ],
]
assert len(MIGRATIONS) == SCHEMA_VERSION


def columns(cls: type) -> str:
    """The column list of `cls`'s table: its fields in declaration order."""
    return ", ".join(c.name for c in field_codecs(cls))


PARTICIPANT_COLS = columns(ParticipantRecord)
JOB_COLS = columns(JobRecord)
ROUND_COLS = columns(RoundRecord)
VERSION_COLS = columns(ModelVersion)
EVENT_COLS = columns(JobEvent)
BLOCKED_COLS = columns(BlockedParticipant)
LEDGER_COLS = columns(LedgerEntry)
REQUEST_COLS = columns(ForgetRequest)


class SchemaVersionError(RuntimeError):
    """The database was written by a newer version of the coordinator."""


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def to_row(record: Any) -> tuple[Any, ...]:
    """The record's column values, in `columns` order."""
    values = to_json(record)
    return tuple(
        dumps(values[c.name]) if is_structured(c) else values[c.name]
        for c in field_codecs(type(record))
    )


def from_row(cls: type[R], row: sqlite3.Row) -> R:
    return from_json(
        cls,
        {
            c.name: json.loads(row[c.name]) if is_structured(c) else row[c.name]
            for c in field_codecs(cls)
        },
    )


def placeholders(cols: str) -> str:
    return ", ".join("?" for _ in cols.split(","))
