"""The SQLite schema (versioned migrations) and the conversions between rows and records."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from fused.common.domain.records import (
    JobEvent,
    JobRecord,
    JobStatus,
    ModelVersion,
    ParticipantRecord,
    RoundRecord,
)

SCHEMA_VERSION = 1

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
]
assert len(MIGRATIONS) == SCHEMA_VERSION

PARTICIPANT_COLS = (
    "participant_id, class_counts, num_train, num_test, registered_at, last_seen, info"
)
JOB_COLS = "job_id, kind, spec, status, phase, round, reason, created_at, updated_at, result"
ROUND_COLS = "job_id, phase, round, started_at, finished_at, participants, metrics"
VERSION_COLS = "version_id, job_id, parent_id, kind, digest, model, num_params, created_at, meta"
EVENT_COLS = "job_id, seq, time, kind, phase, round, message, data"


class SchemaVersionError(RuntimeError):
    """The database was written by a newer version of the coordinator."""


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# ------------------------------------------------------------------ row <-> record


def participant_row(r: ParticipantRecord) -> tuple[Any, ...]:
    return (
        r.participant_id,
        dumps(r.class_counts),
        r.num_train,
        r.num_test,
        r.registered_at,
        r.last_seen,
        dumps(r.info),
    )


def participant_from_row(row: sqlite3.Row) -> ParticipantRecord:
    return ParticipantRecord(
        participant_id=row["participant_id"],
        class_counts=json.loads(row["class_counts"]),
        num_train=row["num_train"],
        num_test=row["num_test"],
        registered_at=row["registered_at"],
        last_seen=row["last_seen"],
        info=json.loads(row["info"]),
    )


def job_row(r: JobRecord) -> tuple[Any, ...]:
    return (
        r.job_id,
        r.kind,
        dumps(r.spec),
        r.status.value,
        r.phase,
        r.round,
        r.reason,
        r.created_at,
        r.updated_at,
        dumps(r.result),
    )


def job_from_row(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        job_id=row["job_id"],
        kind=row["kind"],
        spec=json.loads(row["spec"]),
        status=JobStatus(row["status"]),
        phase=row["phase"],
        round=row["round"],
        reason=row["reason"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        result=json.loads(row["result"]),
    )


def round_row(r: RoundRecord) -> tuple[Any, ...]:
    return (
        r.job_id,
        r.phase,
        r.round,
        r.started_at,
        r.finished_at,
        dumps(r.participants),
        dumps(r.metrics),
    )


def round_from_row(row: sqlite3.Row) -> RoundRecord:
    return RoundRecord(
        job_id=row["job_id"],
        phase=row["phase"],
        round=row["round"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        participants=json.loads(row["participants"]),
        metrics=json.loads(row["metrics"]),
    )


def version_row(r: ModelVersion) -> tuple[Any, ...]:
    return (
        r.version_id,
        r.job_id,
        r.parent_id,
        r.kind,
        r.digest,
        r.model,
        r.num_params,
        r.created_at,
        dumps(r.meta),
    )


def version_from_row(row: sqlite3.Row) -> ModelVersion:
    return ModelVersion(
        version_id=row["version_id"],
        job_id=row["job_id"],
        parent_id=row["parent_id"],
        kind=row["kind"],
        digest=row["digest"],
        model=row["model"],
        num_params=row["num_params"],
        created_at=row["created_at"],
        meta=json.loads(row["meta"]),
    )


def event_from_row(row: sqlite3.Row) -> JobEvent:
    return JobEvent(
        job_id=row["job_id"],
        seq=row["seq"],
        time=row["time"],
        kind=row["kind"],
        phase=row["phase"],
        round=row["round"],
        message=row["message"],
        data=json.loads(row["data"]),
    )


def placeholders(cols: str) -> str:
    return ", ".join("?" for _ in cols.split(","))


# ------------------------------------------------------------------ store
