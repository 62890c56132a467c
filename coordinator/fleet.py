"""Participants as the coordinator sees them: registration, liveness and task dispatch.

Participants pull tasks (long poll) and push outcomes; a job awaits a future per task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from fused.common.domain.tasks import TaskOutcome, TaskSpec
from fused.coordinator.state import BlockedParticipant, ParticipantRecord, StateStore

log = logging.getLogger(__name__)

P = TypeVar("P")

# Checks an outcome while its PushResult call is open (so a bad one is refused to the sender)
# and returns what the job needs of it, decoded; raises ValueError for a bad outcome.
ResultCheck = Callable[[TaskOutcome], Awaitable[P]]


@dataclass(frozen=True)
class Accepted(Generic[P]):
    """An outcome that passed its task's check, with the payload the check decoded."""

    outcome: TaskOutcome
    payload: P


@dataclass(frozen=True)
class Refused:
    """A task that produced no usable outcome: the participant's error or a failed check."""

    reason: str


Settled = Accepted[P] | Refused

_TOUCH_EVERY_S = 30.0  # persist last_seen at most this often per participant
_SAVE_EVERY_S = 5.0  # ... in one transaction for everyone due (10,000 agents: 2,000 rows)


class NotRegisteredError(LookupError):
    """A call named a participant that has not registered with this coordinator process."""


class TaskClosedError(LookupError):
    """An outcome arrived for a task that is unknown, finished, or past its deadline."""


class ParticipantBlockedError(PermissionError):
    """A blocked participant called (answered PERMISSION_DENIED)."""

    def __init__(self, pid: str) -> None:
        super().__init__(
            f"participant {pid!r} is blocked by the coordinator's operator; it takes no part "
            "until unblocked (fusedctl participants unblock)"
        )


class TaskHeldError(RuntimeError):
    """A participant record cannot be removed while the participant holds an open task."""


@dataclass
class _OpenTask:
    spec: TaskSpec
    participant_id: str
    future: asyncio.Future[Settled[Any]]
    check: ResultCheck[Any]
    pulled: bool = False


def _log_accepted(spec: TaskSpec, outcome: TaskOutcome) -> None:
    """One record per accepted task, with where its time went on the participant."""
    timings = outcome.timings
    took = "no timings" if timings is None else timings.describe()
    fields: dict[str, object] = {"job": spec.job_id, "phase": spec.phase, "round": spec.round}
    fields["participant"] = outcome.participant_id
    fields.update({} if timings is None else timings.to_dict())
    log.info("%s task %s accepted: %s", spec.kind.value, spec.task_id, took, extra=fields)


class Fleet:
    def __init__(
        self,
        store: StateStore,
        offline_after_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._offline_after_s = offline_after_s
        self._clock = clock
        self._last_seen: dict[str, float] = {}  # registered in this process
        self._persisted_seen: dict[str, float] = {}
        self._unsaved_seen: dict[str, float] = {}  # last_seen due to be persisted
        self._saved_at = clock()
        self._queues: dict[str, deque[str]] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._open: dict[str, _OpenTask] = {}
        self._open_by_pid: dict[str, dict[str, _OpenTask]] = {}  # the same tasks, by holder
        self._polling: dict[str, int] = {}  # open PullTask calls: a waiting agent is alive
        self._grants: dict[str, Counter[str]] = {}  # blobs a participant's open tasks name
        self._uploads: dict[str, set[str]] = {}  # blobs each participant sent in full
        self._offline: set[str] = set()  # marked offline by reap(); cleared when heard from
        self._blocked = {b.participant_id for b in store.list_blocked()}
        self._closing = False

    # liveness
    def register(self, record: ParticipantRecord) -> None:
        """Record (or refresh) a participant; tasks it had pulled are offered again.
        Raises ParticipantBlockedError for a blocked one."""
        pid = record.participant_id
        if pid in self._blocked:
            raise ParticipantBlockedError(pid)
        previous = self._store.get_participant(pid)
        if previous is not None:
            record.registered_at = previous.registered_at
        self._store.upsert_participant(record)
        self._last_seen[pid] = self._persisted_seen[pid] = record.last_seen
        self._unsaved_seen.pop(pid, None)
        queue = self._queues.setdefault(pid, deque())
        for task_id, open_task in self._tasks_of(pid).items():
            if open_task.pulled:
                open_task.pulled = False  # a restarted agent lost it: hand it out again
                queue.append(task_id)
        self._wake(pid)

    def heartbeat(self, pid: str) -> bool:
        """False if pid is not registered here (it should register again)."""
        if pid not in self._last_seen:
            return False
        now = self._clock()
        self._last_seen[pid] = now
        self._offline.discard(pid)
        if now - self._persisted_seen.get(pid, 0.0) >= _TOUCH_EVERY_S:
            self._unsaved_seen[pid] = now
        if now - self._saved_at >= _SAVE_EVERY_S:
            self.save_liveness()
        return True

    def save_liveness(self) -> None:
        """Persist the last_seen of everyone due, in one transaction: a commit per agent
        every 30 s took a third of the event loop at 10,000 agents (bench.load)."""
        self._saved_at = self._clock()
        due, self._unsaved_seen = self._unsaved_seen, {}
        if due:
            self._store.touch_participants(due)
            self._persisted_seen.update(due)

    def is_registered(self, pid: str) -> bool:
        return pid in self._last_seen

    # operators' say: remove a record, block a participant
    def is_blocked(self, pid: str) -> bool:
        return pid in self._blocked

    def open_tasks(self, pid: str) -> list[str]:
        return list(self._tasks_of(pid))

    def remove(self, pid: str) -> bool:
        """Forget a participant (record and liveness); False if unknown. Raises TaskHeldError
        while it holds an open task. A running agent registers again: block it to keep it out."""
        held = self.open_tasks(pid)
        if held:
            raise TaskHeldError(f"participant {pid!r} holds {len(held)} open task(s)")
        self._drop(pid)
        return self._store.delete_participant(pid)

    def block(self, record: BlockedParticipant) -> None:
        """Refuse a participant from now on: its open tasks fail, its calls are refused, no
        job selects it. Persisted, so it outlives restarts."""
        pid = record.participant_id
        self._store.block_participant(record)
        self._blocked.add(pid)
        for task_id in self.open_tasks(pid):
            self._resolve(task_id, Refused(f"participant {pid} was blocked by an operator"))
        self._drop(pid)

    def unblock(self, pid: str) -> bool:
        """Lift a block (the agent registers again on its own); False if pid was not blocked."""
        self._blocked.discard(pid)
        return self._store.unblock_participant(pid)

    def _drop(self, pid: str) -> None:
        """No longer registered in this process; a long poll of pid ends."""
        tables = (self._last_seen, self._persisted_seen, self._unsaved_seen, self._queues)
        for table in (*tables, self._uploads):
            table.pop(pid, None)
        self._offline.discard(pid)
        self._wake(pid)

    def allow_silence(self, seconds: float) -> None:
        """Count agents offline only after `seconds` of silence, if longer than before."""
        self._offline_after_s = max(self._offline_after_s, seconds)

    def is_online(self, pid: str) -> bool:
        seen = self._last_seen.get(pid)
        if seen is None:
            return False
        return self._polling.get(pid, 0) > 0 or self._clock() - seen <= self._offline_after_s

    def online_ids(self) -> list[str]:
        """is_online for everyone, inlined: jobs ask several times a second while waiting."""
        since = self._clock() - self._offline_after_s
        polling = self._polling
        return sorted(
            pid for pid, seen in self._last_seen.items() if seen >= since or polling.get(pid, 0)
        )

    def last_seen(self, pid: str) -> float | None:
        return self._last_seen.get(pid)

    def tasks_in_flight(self) -> int:
        return len(self._open)

    def reap(self) -> dict[str, list[str]]:
        """Mark silent participants offline and fail their open tasks at once, instead of
        letting rounds wait for their deadlines. Returns {newly offline id: failed task ids}."""
        reaped: dict[str, list[str]] = {}
        self.save_liveness()  # the reaper's period paces the saves when no one beats
        for pid in self._last_seen:
            if pid in self._offline or self.is_online(pid):
                continue
            self._offline.add(pid)
            silent_s = self._clock() - self._last_seen[pid]
            why = f"participant {pid} went silent ({silent_s:.0f} s without a heartbeat)"
            reaped[pid] = list(self._tasks_of(pid))
            for task_id in reaped[pid]:
                self._resolve(task_id, Refused(why))
        return reaped

    # what a participant may read and has written
    def may_download(self, pid: str, blob_id: str) -> bool:
        """Participants read only the blobs their own open tasks name, and their own uploads."""
        return self._grants.get(pid, Counter())[blob_id] > 0 or self.uploaded(pid, blob_id)

    def record_upload(self, pid: str, blob_id: str) -> None:
        self._uploads.setdefault(pid, set()).add(blob_id)

    def forget_uploads(self) -> None:
        self._uploads.clear()

    def uploaded(self, pid: str, blob_id: str) -> bool:
        """Whether pid itself sent every byte of blob_id (to this coordinator process)."""
        return blob_id in self._uploads.get(pid, ())

    def has_open_task(self, pid: str, job_id: str, round_number: int) -> bool:
        """Whether pid holds an open task of that job and round (an upload must belong to one)."""
        return any(
            o.spec.job_id == job_id and o.spec.round == round_number
            for o in self._tasks_of(pid).values()
        )

    def _grant(self, open_task: _OpenTask, delta: int) -> None:
        grants = self._grants.setdefault(open_task.participant_id, Counter())
        for blob in open_task.spec.blob_ids():
            grants[blob] += delta
            if grants[blob] <= 0:
                del grants[blob]

    # dispatch
    def submit(self, pid: str, spec: TaskSpec, check: ResultCheck[P]) -> asyncio.Future[Settled[P]]:
        future: asyncio.Future[Settled[Any]] = asyncio.get_running_loop().create_future()
        open_task = self._open[spec.task_id] = _OpenTask(spec, pid, future, check)
        self._open_by_pid.setdefault(pid, {})[spec.task_id] = open_task
        self._grant(open_task, +1)
        self._queues.setdefault(pid, deque()).append(spec.task_id)
        self._wake(pid)
        return cast("asyncio.Future[Settled[P]]", future)

    def close(self, task_id: str) -> None:
        """Stop accepting an outcome for task_id (deadline passed or job ended)."""
        open_task = self._take(task_id)
        if open_task is not None and not open_task.future.done():
            open_task.future.cancel()

    async def pull(self, pid: str, wait_s: float) -> TaskSpec | None:
        if pid in self._blocked:
            raise ParticipantBlockedError(pid)
        if pid not in self._last_seen:
            raise NotRegisteredError(pid)
        self.heartbeat(pid)
        self._polling[pid] = self._polling.get(pid, 0) + 1
        try:
            return await self._wait_for_task(pid, wait_s)
        finally:
            self._polling[pid] -= 1
            self.heartbeat(pid)  # the call ends now: count the agent alive until here

    def shutdown(self) -> None:
        """Answer every open long poll now (empty), so the server can stop without waiting."""
        self._closing = True
        for event in self._wakeups.values():
            event.set()

    async def _wait_for_task(self, pid: str, wait_s: float) -> TaskSpec | None:
        deadline = self._clock() + wait_s
        queue = self._queues.setdefault(pid, deque())
        while not self._closing:
            if pid not in self._last_seen:  # blocked or removed while waiting
                if pid in self._blocked:
                    raise ParticipantBlockedError(pid)
                return None
            while queue:
                open_task = self._open.get(queue.popleft())
                if open_task is not None:  # closed tasks are skipped
                    open_task.pulled = True
                    return open_task.spec
            remaining = deadline - self._clock()
            if remaining <= 0:
                return None
            event = self._wakeups.setdefault(pid, asyncio.Event())
            event.clear()
            try:
                async with asyncio.timeout(remaining):  # no task per wait, as wait_for makes
                    await event.wait()
            except TimeoutError:
                return None
        return None

    async def complete(self, outcome: TaskOutcome) -> None:
        """Resolve a task with a participant's outcome.

        Raises NotRegisteredError, TaskClosedError, PermissionError (the task belongs to
        another participant) or ValueError (the outcome failed its check; the task then
        counts as failed so the round goes on without it).
        """
        pid = outcome.participant_id
        if pid in self._blocked:
            raise ParticipantBlockedError(pid)
        if pid not in self._last_seen:
            raise NotRegisteredError(pid)
        open_task = self._open.get(outcome.task_id)
        if open_task is None:
            raise TaskClosedError(f"task {outcome.task_id} is not open (unknown or past deadline)")
        if open_task.participant_id != pid:
            raise PermissionError(f"task {outcome.task_id} was not assigned to {pid}")
        self.heartbeat(pid)
        if outcome.error is not None:
            self._resolve(outcome.task_id, Refused(outcome.error))
            return
        try:
            payload = await open_task.check(outcome)
        except ValueError as exc:
            self._resolve(outcome.task_id, Refused(str(exc)))
            raise
        self._resolve(outcome.task_id, Accepted(outcome, payload))
        _log_accepted(open_task.spec, outcome)

    def _resolve(self, task_id: str, settled: Settled[Any]) -> None:
        open_task = self._take(task_id)
        if open_task is not None and not open_task.future.done():
            open_task.future.set_result(settled)

    def _take(self, task_id: str) -> _OpenTask | None:
        """Remove an open task from both indexes and withdraw its download grants."""
        open_task = self._open.pop(task_id, None)
        if open_task is not None:
            mine = self._open_by_pid[open_task.participant_id]
            del mine[task_id]
            if not mine:
                del self._open_by_pid[open_task.participant_id]
            self._grant(open_task, -1)
        return open_task

    def _tasks_of(self, pid: str) -> dict[str, _OpenTask]:
        """pid's open tasks by id, in the order they were given (no scan of everyone's)."""
        return self._open_by_pid.get(pid, {})

    def _wake(self, pid: str) -> None:
        event = self._wakeups.get(pid)
        if event is not None:
            event.set()

    def open_task(self, pid: str, task_id: str) -> TaskSpec | None:
        """pid's open task of that id, if any."""
        open_task = self._tasks_of(pid).get(task_id)
        return None if open_task is None else open_task.spec

    def held_task(self, pid: str, job_id: str, phase: str, round_number: int) -> TaskSpec | None:
        """pid's open task of that job, phase and round, if any: what the bytes of its calls
        may be charged to (coordinator/accounting.py)."""
        wanted = (job_id, phase, round_number)
        for open_task in self._tasks_of(pid).values():
            spec = open_task.spec
            if (spec.job_id, spec.phase, spec.round) == wanted:
                return spec
        return None
