"""SQLite `StateStore`: the coordinator's durable state, surviving restarts.

One connection (``check_same_thread=False``) guarded by a lock; every write runs in its
own ``BEGIN IMMEDIATE`` transaction. Files use WAL journaling, foreign keys are enforced,
and the schema version lives in ``PRAGMA user_version``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coordinator.state.base import StateStore, UnknownRecordError
from coordinator.state.memory import (
    apply_job_update,
    normalize_job,
    normalize_model_version,
    normalize_participant,
    normalize_round,
)
from coordinator.state.records import (
    JobEvent,
    JobRecord,
    JobStatus,
    ModelVersion,
    ParticipantRecord,
    RoundRecord,
)

__all__ = ["SCHEMA_VERSION", "SchemaVersionError", "SqliteStateStore"]

SCHEMA_VERSION = 1

# Index i holds the statements that take a database from version i to version i + 1.
_MIGRATIONS: list[list[str]] = [
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
assert len(_MIGRATIONS) == SCHEMA_VERSION

_PARTICIPANT_COLS = (
    "participant_id, class_counts, num_train, num_test, registered_at, last_seen, info"
)
_JOB_COLS = "job_id, kind, spec, status, phase, round, reason, created_at, updated_at, result"
_ROUND_COLS = "job_id, phase, round, started_at, finished_at, participants, metrics"
_VERSION_COLS = "version_id, job_id, parent_id, kind, digest, model, num_params, created_at, meta"
_EVENT_COLS = "job_id, seq, time, kind, phase, round, message, data"


class SchemaVersionError(RuntimeError):
    """The database was written by a newer version of the coordinator."""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# ------------------------------------------------------------------ row <-> record


def _participant_row(r: ParticipantRecord) -> tuple[Any, ...]:
    return (
        r.participant_id,
        _dumps(r.class_counts),
        r.num_train,
        r.num_test,
        r.registered_at,
        r.last_seen,
        _dumps(r.info),
    )


def _participant(row: sqlite3.Row) -> ParticipantRecord:
    return ParticipantRecord(
        participant_id=row["participant_id"],
        class_counts=json.loads(row["class_counts"]),
        num_train=row["num_train"],
        num_test=row["num_test"],
        registered_at=row["registered_at"],
        last_seen=row["last_seen"],
        info=json.loads(row["info"]),
    )


def _job_row(r: JobRecord) -> tuple[Any, ...]:
    return (
        r.job_id,
        r.kind,
        _dumps(r.spec),
        r.status.value,
        r.phase,
        r.round,
        r.reason,
        r.created_at,
        r.updated_at,
        _dumps(r.result),
    )


def _job(row: sqlite3.Row) -> JobRecord:
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


def _round_row(r: RoundRecord) -> tuple[Any, ...]:
    return (
        r.job_id,
        r.phase,
        r.round,
        r.started_at,
        r.finished_at,
        _dumps(r.participants),
        _dumps(r.metrics),
    )


def _round(row: sqlite3.Row) -> RoundRecord:
    return RoundRecord(
        job_id=row["job_id"],
        phase=row["phase"],
        round=row["round"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        participants=json.loads(row["participants"]),
        metrics=json.loads(row["metrics"]),
    )


def _version_row(r: ModelVersion) -> tuple[Any, ...]:
    return (
        r.version_id,
        r.job_id,
        r.parent_id,
        r.kind,
        r.digest,
        r.model,
        r.num_params,
        r.created_at,
        _dumps(r.meta),
    )


def _version(row: sqlite3.Row) -> ModelVersion:
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


def _event(row: sqlite3.Row) -> JobEvent:
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


def _placeholders(cols: str) -> str:
    return ", ".join("?" for _ in cols.split(","))


# ------------------------------------------------------------------ store


class SqliteStateStore(StateStore):
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        # isolation_level=None: no implicit transactions; writes use explicit BEGIN IMMEDIATE.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.execute("PRAGMA busy_timeout = 5000")
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode = WAL")
                # WAL with NORMAL: commits survive a process crash (SIGKILL) and the file stays
                # consistent; only a power loss can drop the last commits, and a resumed job
                # then redoes those rounds. FULL's fsync per commit stalled the event loop
                # under 1,000 participants' heartbeats (bench.load).
                self._conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    def _migrate(self) -> None:
        with self._write():
            version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"state database {self.path!r} has schema version {version}, newer than "
                    f"version {SCHEMA_VERSION} that this coordinator knows; run a newer "
                    "coordinator or point it at another state file"
                )
            for target in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[target]:
                    self._conn.execute(statement)
            if version != SCHEMA_VERSION:
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; rolled back if the block raises."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    @staticmethod
    def _exists(conn: sqlite3.Connection, table: str, column: str, value: str) -> bool:
        row = conn.execute(f"SELECT 1 FROM {table} WHERE {column} = ?", (value,)).fetchone()
        return row is not None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # participants
    def upsert_participant(self, record: ParticipantRecord) -> None:
        row = _participant_row(normalize_participant(record))
        with self._write() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO participants ({_PARTICIPANT_COLS}) "
                f"VALUES ({_placeholders(_PARTICIPANT_COLS)})",
                row,
            )

    def get_participant(self, participant_id: str) -> ParticipantRecord | None:
        rows = self._query(
            f"SELECT {_PARTICIPANT_COLS} FROM participants WHERE participant_id = ?",
            (participant_id,),
        )
        return _participant(rows[0]) if rows else None

    def list_participants(self) -> list[ParticipantRecord]:
        rows = self._query(f"SELECT {_PARTICIPANT_COLS} FROM participants ORDER BY participant_id")
        return [_participant(r) for r in rows]

    def touch_participant(self, participant_id: str, when: float) -> None:
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE participants SET last_seen = ? WHERE participant_id = ?",
                (float(when), participant_id),
            )
            if cursor.rowcount == 0:
                raise UnknownRecordError(participant_id)

    # jobs
    def create_job(self, record: JobRecord) -> None:
        row = _job_row(normalize_job(record))
        with self._write() as conn:
            if self._exists(conn, "jobs", "job_id", record.job_id):
                raise ValueError(f"job {record.job_id!r} already exists")
            conn.execute(f"INSERT INTO jobs ({_JOB_COLS}) VALUES ({_placeholders(_JOB_COLS)})", row)

    def update_job(self, job_id: str, **fields: Any) -> JobRecord:
        with self._write() as conn:
            current = conn.execute(
                f"SELECT {_JOB_COLS} FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
            if current is None:
                raise UnknownRecordError(job_id)
            updated = apply_job_update(_job(current), fields)
            row = _job_row(updated)
            assignments = ", ".join(f"{c.strip()} = ?" for c in _JOB_COLS.split(",")[1:])
            conn.execute(f"UPDATE jobs SET {assignments} WHERE job_id = ?", (*row[1:], job_id))
            return updated

    def get_job(self, job_id: str) -> JobRecord | None:
        rows = self._query(f"SELECT {_JOB_COLS} FROM jobs WHERE job_id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def list_jobs(self) -> list[JobRecord]:
        rows = self._query(f"SELECT {_JOB_COLS} FROM jobs ORDER BY created_at, job_id")
        return [_job(r) for r in rows]

    # rounds
    def save_round(self, record: RoundRecord) -> None:
        row = _round_row(normalize_round(record))
        with self._write() as conn:
            if not self._exists(conn, "jobs", "job_id", record.job_id):
                raise UnknownRecordError(record.job_id)
            # An upsert keeps the row's id, so a replaced round keeps its first-saved position.
            conn.execute(
                f"INSERT INTO rounds ({_ROUND_COLS}) VALUES ({_placeholders(_ROUND_COLS)}) "
                "ON CONFLICT (job_id, phase, round) DO UPDATE SET "
                "started_at = excluded.started_at, finished_at = excluded.finished_at, "
                "participants = excluded.participants, metrics = excluded.metrics",
                row,
            )

    def list_rounds(self, job_id: str) -> list[RoundRecord]:
        rows = self._query(
            f"SELECT {_ROUND_COLS} FROM rounds WHERE job_id = ? ORDER BY id", (job_id,)
        )
        return [_round(r) for r in rows]

    # model versions
    def add_model_version(self, record: ModelVersion) -> None:
        row = _version_row(normalize_model_version(record))
        with self._write() as conn:
            if self._exists(conn, "model_versions", "version_id", record.version_id):
                raise ValueError(f"model version {record.version_id!r} already exists")
            if record.job_id is not None and not self._exists(
                conn, "jobs", "job_id", record.job_id
            ):
                raise UnknownRecordError(record.job_id)
            if record.parent_id is not None and not self._exists(
                conn, "model_versions", "version_id", record.parent_id
            ):
                raise UnknownRecordError(record.parent_id)
            conn.execute(
                f"INSERT INTO model_versions ({_VERSION_COLS}) "
                f"VALUES ({_placeholders(_VERSION_COLS)})",
                row,
            )

    def get_model_version(self, version_id: str) -> ModelVersion | None:
        rows = self._query(
            f"SELECT {_VERSION_COLS} FROM model_versions WHERE version_id = ?", (version_id,)
        )
        return _version(rows[0]) if rows else None

    def list_model_versions(self) -> list[ModelVersion]:
        rows = self._query(
            f"SELECT {_VERSION_COLS} FROM model_versions ORDER BY created_at, version_id"
        )
        return [_version(r) for r in rows]

    # job events
    def append_event(
        self,
        job_id: str,
        kind: str,
        phase: str,
        round: int,
        message: str,
        data: dict[str, Any],
        when: float,
    ) -> JobEvent:
        payload = _dumps(dict(data))
        with self._write() as conn:
            if not self._exists(conn, "jobs", "job_id", job_id):
                raise UnknownRecordError(job_id)
            (last,) = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?", (job_id,)
            ).fetchone()
            event = JobEvent(
                job_id=job_id,
                seq=int(last) + 1,
                time=float(when),
                kind=kind,
                phase=phase,
                round=int(round),
                message=message,
                data=json.loads(payload),
            )
            conn.execute(
                f"INSERT INTO events ({_EVENT_COLS}) VALUES ({_placeholders(_EVENT_COLS)})",
                (
                    event.job_id,
                    event.seq,
                    event.time,
                    event.kind,
                    event.phase,
                    event.round,
                    event.message,
                    payload,
                ),
            )
            return event

    def list_events(self, job_id: str, after_seq: int = 0) -> list[JobEvent]:
        rows = self._query(
            f"SELECT {_EVENT_COLS} FROM events WHERE job_id = ? AND seq > ? ORDER BY seq",
            (job_id, after_seq),
        )
        return [_event(r) for r in rows]

    # settings
    def set_setting(self, key: str, value: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def get_setting(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM settings WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None
