"""SQLite `StateStore`: the coordinator's durable state, surviving restarts.

One connection (``check_same_thread=False``) guarded by a lock; every write runs in its
own ``BEGIN IMMEDIATE`` transaction. Files use WAL journaling, foreign keys are enforced,
and the schema version lives in ``PRAGMA user_version``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from fused.common.domain.ledger import ForgetRequest, LedgerEntry, LedgerStatus, RequestStatus
from fused.common.domain.record_codec import normalized
from fused.common.domain.records import (
    BlockedParticipant,
    JobEvent,
    JobRecord,
    ModelVersion,
    ParticipantRecord,
    RoundRecord,
)
from fused.coordinator.state.base import StateStore, UnknownRecordError
from fused.coordinator.state.memory import apply_job_update
from fused.coordinator.state.record_cache import JobCache, ParticipantCache
from fused.coordinator.state.sqlite_rows import (
    BLOCKED_COLS,
    EVENT_COLS,
    JOB_COLS,
    LEDGER_COLS,
    MIGRATIONS,
    PARTICIPANT_COLS,
    REQUEST_COLS,
    ROUND_COLS,
    SCHEMA_VERSION,
    VERSION_COLS,
    SchemaVersionError,
    from_row,
    placeholders,
    to_row,
)

__all__ = ["SCHEMA_VERSION", "SchemaVersionError", "SqliteStateStore"]


class SqliteStateStore(StateStore):
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self._participants = ParticipantCache()  # filled on first read
        self._jobs = JobCache()
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
                for statement in MIGRATIONS[target]:
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

    def _insert_new(self, table: str, cols: str, key: str, record: Any, what: str) -> None:
        """Insert `record`'s row; ValueError if its `key` is taken already."""
        value = getattr(record, key)
        with self._write() as conn:
            if self._exists(conn, table, key, value):
                raise ValueError(f"{what} {value!r} already exists")
            conn.execute(
                f"INSERT INTO {table} ({cols}) VALUES ({placeholders(cols)})", to_row(record)
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # participants: reads come from the write-through cache (record_cache.py)
    def _participant_cache(self) -> ParticipantCache:
        with self._lock:
            if not self._participants.loaded:
                rows = self._query(f"SELECT {PARTICIPANT_COLS} FROM participants")
                self._participants.fill([from_row(ParticipantRecord, r) for r in rows])
            return self._participants

    def upsert_participant(self, record: ParticipantRecord) -> None:
        row = to_row(record)
        with self._lock:  # the cache changes only once the row is committed
            with self._write() as conn:
                conn.execute(
                    f"INSERT OR REPLACE INTO participants ({PARTICIPANT_COLS}) "
                    f"VALUES ({placeholders(PARTICIPANT_COLS)})",
                    row,
                )
            self._participants.put(record)

    def get_participant(self, participant_id: str) -> ParticipantRecord | None:
        with self._lock:
            return self._participant_cache().get(participant_id)

    def list_participants(self) -> list[ParticipantRecord]:
        with self._lock:
            return self._participant_cache().listed()

    def touch_participant(self, participant_id: str, when: float) -> None:
        if self._touch({participant_id: when}) == 0:
            raise UnknownRecordError(participant_id)

    def touch_participants(self, seen: Mapping[str, float]) -> None:
        self._touch(seen)  # one commit for all: the fleet saves liveness in batches

    def _touch(self, seen: Mapping[str, float]) -> int:
        """Set last_seen in one transaction; returns how many rows it updated."""
        rows = [(float(when), pid) for pid, when in seen.items()]
        with self._lock:
            with self._write() as conn:
                cursor = conn.executemany(
                    "UPDATE participants SET last_seen = ? WHERE participant_id = ?", rows
                )
            if self._participants.loaded:
                for when, pid in rows:
                    self._participants.touch(pid, when)
            return cursor.rowcount

    def delete_participant(self, participant_id: str) -> bool:
        with self._lock:
            deleted = self._delete("participants", participant_id)
            if self._participants.loaded:
                self._participants.drop(participant_id)
            return deleted

    def _delete(self, table: str, participant_id: str) -> bool:
        with self._write() as conn:
            cursor = conn.execute(
                f"DELETE FROM {table} WHERE participant_id = ?", (participant_id,)
            )
            return cursor.rowcount > 0

    # blocked participants
    def block_participant(self, record: BlockedParticipant) -> None:
        with self._write() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO blocked_participants ({BLOCKED_COLS}) "
                f"VALUES ({placeholders(BLOCKED_COLS)})",
                to_row(record),
            )

    def unblock_participant(self, participant_id: str) -> bool:
        return self._delete("blocked_participants", participant_id)

    def list_blocked(self) -> list[BlockedParticipant]:
        rows = self._query(
            f"SELECT {BLOCKED_COLS} FROM blocked_participants ORDER BY participant_id"
        )
        return [from_row(BlockedParticipant, r) for r in rows]

    # the forget ledger
    def add_ledger_entry(self, entry: LedgerEntry) -> None:
        self._insert_new("ledger", LEDGER_COLS, "entry_id", entry, "ledger entry")

    def list_ledger(self) -> list[LedgerEntry]:
        rows = self._query(f"SELECT {LEDGER_COLS} FROM ledger ORDER BY requested_at, entry_id")
        return [from_row(LedgerEntry, r) for r in rows]

    def set_ledger_status(
        self, entry_ids: Sequence[str], status: LedgerStatus, when: float
    ) -> list[LedgerEntry]:
        rows = []
        with self._write() as conn:  # one transaction: an unknown id rolls back every change
            for entry_id in entry_ids:
                cursor = conn.execute(
                    "UPDATE ledger SET status = ?, changed_at = ? WHERE entry_id = ?",
                    (LedgerStatus(status).value, float(when), entry_id),
                )
                if cursor.rowcount == 0:
                    raise UnknownRecordError(entry_id)
                rows.append(
                    conn.execute(
                        f"SELECT {LEDGER_COLS} FROM ledger WHERE entry_id = ?", (entry_id,)
                    ).fetchone()
                )
        return [from_row(LedgerEntry, r) for r in rows]

    # participants' forgetting requests
    def add_forget_request(self, request: ForgetRequest) -> None:
        self._insert_new("forget_requests", REQUEST_COLS, "request_id", request, "forget request")

    def list_forget_requests(self) -> list[ForgetRequest]:
        rows = self._query(
            f"SELECT {REQUEST_COLS} FROM forget_requests ORDER BY requested_at, request_id"
        )
        return [from_row(ForgetRequest, r) for r in rows]

    def decide_forget_request(
        self, request_id: str, status: RequestStatus, by: str, reason: str, job_id: str, when: float
    ) -> ForgetRequest:
        select = f"SELECT {REQUEST_COLS} FROM forget_requests WHERE request_id = ?"
        with self._write() as conn:  # checked and changed in one transaction
            row = conn.execute(select, (request_id,)).fetchone()
            if row is None:
                raise UnknownRecordError(request_id)
            if from_row(ForgetRequest, row).status is not RequestStatus.PENDING:
                raise ValueError(f"request {request_id} is already {row['status']}")
            conn.execute(
                "UPDATE forget_requests SET status = ?, decided_by = ?, reason = ?, job_id = ?, "
                "decided_at = ? WHERE request_id = ?",
                (RequestStatus(status).value, by, reason, job_id, float(when), request_id),
            )
            row = conn.execute(select, (request_id,)).fetchone()
        return from_row(ForgetRequest, row)

    # jobs: get_job reads through a cache (record_cache.py) that writes here keep current
    def create_job(self, record: JobRecord) -> None:
        with self._lock:  # the cache changes only once the row is committed
            self._insert_new("jobs", JOB_COLS, "job_id", record, "job")
            self._jobs.put(normalized(record))

    def update_job(self, job_id: str, **fields: Any) -> JobRecord:
        with self._lock:
            with self._write() as conn:
                current = conn.execute(
                    f"SELECT {JOB_COLS} FROM jobs WHERE job_id = ?", (job_id,)
                ).fetchone()
                if current is None:
                    raise UnknownRecordError(job_id)
                updated = apply_job_update(from_row(JobRecord, current), fields)
                row = to_row(updated)
                assignments = ", ".join(f"{c.strip()} = ?" for c in JOB_COLS.split(",")[1:])
                conn.execute(f"UPDATE jobs SET {assignments} WHERE job_id = ?", (*row[1:], job_id))
            self._jobs.put(updated)
            return updated

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._lock:
            cached = self._jobs.get(job_id)
            if cached is not None:
                return cached
            rows = self._query(f"SELECT {JOB_COLS} FROM jobs WHERE job_id = ?", (job_id,))
            if not rows:
                return None
            record = from_row(JobRecord, rows[0])
            self._jobs.put(record)
            return record

    def list_jobs(self) -> list[JobRecord]:
        rows = self._query(f"SELECT {JOB_COLS} FROM jobs ORDER BY created_at, job_id")
        return [from_row(JobRecord, r) for r in rows]

    # rounds
    def save_round(self, record: RoundRecord) -> None:
        row = to_row(record)
        with self._write() as conn:
            if not self._exists(conn, "jobs", "job_id", record.job_id):
                raise UnknownRecordError(record.job_id)
            # An upsert keeps the row's id, so a replaced round keeps its first-saved position.
            conn.execute(
                f"INSERT INTO rounds ({ROUND_COLS}) VALUES ({placeholders(ROUND_COLS)}) "
                "ON CONFLICT (job_id, phase, round) DO UPDATE SET "
                "started_at = excluded.started_at, finished_at = excluded.finished_at, "
                "participants = excluded.participants, metrics = excluded.metrics",
                row,
            )

    def list_rounds(self, job_id: str) -> list[RoundRecord]:
        rows = self._query(
            f"SELECT {ROUND_COLS} FROM rounds WHERE job_id = ? ORDER BY id", (job_id,)
        )
        return [from_row(RoundRecord, r) for r in rows]

    # model versions
    def add_model_version(self, record: ModelVersion) -> None:
        row = to_row(record)
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
                f"INSERT INTO model_versions ({VERSION_COLS}) "
                f"VALUES ({placeholders(VERSION_COLS)})",
                row,
            )

    def get_model_version(self, version_id: str) -> ModelVersion | None:
        rows = self._query(
            f"SELECT {VERSION_COLS} FROM model_versions WHERE version_id = ?", (version_id,)
        )
        return from_row(ModelVersion, rows[0]) if rows else None

    def list_model_versions(self) -> list[ModelVersion]:
        rows = self._query(
            f"SELECT {VERSION_COLS} FROM model_versions ORDER BY created_at, version_id"
        )
        return [from_row(ModelVersion, r) for r in rows]

    def drop_model_versions(self, version_ids: Sequence[str]) -> None:
        with self._write() as conn:  # one transaction: an unknown id rolls back every change
            for version_id in version_ids:
                if not self._exists(conn, "model_versions", "version_id", version_id):
                    raise UnknownRecordError(version_id)
                conn.execute(
                    "UPDATE model_versions SET parent_id = NULL WHERE parent_id = ?", (version_id,)
                )
            conn.executemany(
                "DELETE FROM model_versions WHERE version_id = ?", [(v,) for v in version_ids]
            )

    # job events
    def _append_event(self, job_id: str, event: Callable[[int], JobEvent]) -> JobEvent:
        with self._write() as conn:
            if not self._exists(conn, "jobs", "job_id", job_id):
                raise UnknownRecordError(job_id)
            (last,) = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?", (job_id,)
            ).fetchone()
            new = event(int(last) + 1)
            conn.execute(
                f"INSERT INTO events ({EVENT_COLS}) VALUES ({placeholders(EVENT_COLS)})",
                to_row(new),
            )
            return new

    def list_events(self, job_id: str, after_seq: int = 0) -> list[JobEvent]:
        rows = self._query(
            f"SELECT {EVENT_COLS} FROM events WHERE job_id = ? AND seq > ? ORDER BY seq",
            (job_id, after_seq),
        )
        return [from_row(JobEvent, r) for r in rows]

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
