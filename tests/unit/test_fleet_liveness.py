"""Liveness at scale (coordinator/fleet.py): last_seen is persisted in batches, not one commit
per heartbeat, and online_ids agrees with is_online."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fused.coordinator.fleet import Fleet
from fused.coordinator.state import ParticipantRecord, SqliteStateStore, StateStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(pid: str) -> ParticipantRecord:
    return ParticipantRecord(pid, [1], 1, 1, 0.0, 0.0, {"workload": "mlp"})


def seen(store: StateStore, pid: str) -> float:
    got = store.get_participant(pid)
    assert got is not None
    return got.last_seen


def test_last_seen_is_saved_in_batches(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    clock = Clock()
    fleet = Fleet(store, offline_after_s=15, clock=clock)
    for pid in ("a", "b"):
        fleet.register(record(pid))
    clock.now = 31.0
    assert fleet.heartbeat("a")  # due, and the last save was long ago: saved now
    assert seen(store, "a") == 31.0
    clock.now = 32.0
    assert fleet.heartbeat("b")  # due, but a save just ran: it waits for the next batch
    assert seen(store, "b") == 0.0
    fleet.reap()  # the reaper's tick saves what is due
    assert seen(store, "b") == 32.0
    clock.now = 40.0
    assert fleet.heartbeat("a")  # saved 9 s ago: not due
    fleet.save_liveness()
    assert seen(store, "a") == 31.0
    assert store.list_participants() == SqliteStateStore(tmp_path / "state.db").list_participants()


def test_a_removed_participant_is_not_saved(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    clock = Clock()
    fleet = Fleet(store, offline_after_s=15, clock=clock)
    fleet.register(record("a"))
    fleet.register(record("b"))
    fleet.save_liveness()
    clock.now = 31.0
    assert fleet.heartbeat("a")
    fleet.remove("a")
    store.touch_participants({"gone": 3.0})  # unknown ids are skipped
    fleet.save_liveness()
    assert store.get_participant("a") is None


def test_online_ids_agree_with_is_online() -> None:
    async def scenario() -> None:
        clock = Clock()
        fleet = Fleet(SqliteStateStore(":memory:"), offline_after_s=15, clock=clock)
        for pid in ("a", "b", "c"):
            fleet.register(record(pid))
        clock.now = 10.0
        fleet.heartbeat("b")
        clock.now = 20.0  # a and c silent for 20 s, b for 10 s
        polling = asyncio.create_task(fleet.pull("c", 5.0))  # a waiting agent is alive
        await asyncio.sleep(0)
        assert fleet.online_ids() == ["b", "c"]
        assert fleet.online_ids() == sorted(p for p in "abc" if fleet.is_online(p))
        clock.now = 100.0
        await polling

    asyncio.run(scenario())
