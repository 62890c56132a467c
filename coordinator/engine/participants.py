"""Who takes part in a round: online participants, those holding remaining data, a seeded
draw, and the data set they share."""

from __future__ import annotations

import asyncio
import random

from fused.common.domain.tasks import ForgetSpec, TaskOutcome
from fused.common.domain.train_config import task_seed
from fused.coordinator.engine.context import JobContext, JobFailed


async def wait_for_participants(
    ctx: JobContext, needed: int, timeout_s: float, forget: ForgetSpec | None = None
) -> list[str]:
    """Wait until `needed` participants that hold remaining data are online (after a
    restart they reconnect one by one); returns every online participant."""
    deadline = ctx.clock() + timeout_s
    while True:
        usable = len(eligible(ctx, forget))
        if usable >= needed:
            return ctx.fleet.online_ids()
        if ctx.clock() >= deadline:
            raise JobFailed(
                f"only {usable} of the {needed} required participants were online "
                f"after waiting {timeout_s:g} s"
            )
        await asyncio.sleep(0.2)


def federation_data(ctx: JobContext, pids: list[str]) -> tuple[str, int]:
    """The data set and class count the participants share."""
    kinds = set()
    for pid in pids:
        record = ctx.store.get_participant(pid)
        if record is not None:
            kinds.add((record.info.get("dataset", ""), len(record.class_counts)))
    if len(kinds) != 1:
        raise JobFailed(f"participants disagree on data set / class count: {sorted(kinds)}")
    return kinds.pop()


def select_participants(online: list[str], k: int, seed: int, r: int) -> list[str]:
    """k of the online participants (0: all), drawn from (seed, round) alone so a resumed
    job draws the same ones."""
    rng = random.Random(task_seed(seed, r, "select"))
    return sorted(rng.sample(online, k)) if 0 < k < len(online) else list(online)


def eligible(ctx: JobContext, forget: ForgetSpec | None) -> list[str]:
    """Online participants that hold remaining data."""
    return [p for p in ctx.fleet.online_ids() if forget is None or not forget.excludes(p)]


def registered_test(ctx: JobContext, pid: str) -> int:
    record = ctx.store.get_participant(pid)
    return record.num_test if record else 0


def check_examples(ctx: JobContext, outcome: TaskOutcome, n: int) -> None:
    """No more training samples than the participant registered: one participant cannot
    outweigh the others in a sample-weighted mean."""
    record = ctx.store.get_participant(outcome.participant_id)
    registered = record.num_train if record else 0
    if not 0 < n <= registered:
        raise ValueError(
            f"num_examples {n} is not within the {registered} training samples this "
            "participant registered"
        )
