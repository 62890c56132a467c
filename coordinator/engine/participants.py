"""Who takes part in a round: online participants that hold the job's data set (the others are
left out of the job and reported, not fatal), those holding remaining data, a seeded draw."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from fused.common.domain.records import ModelVersion
from fused.common.domain.tasks import ForgetSpec, TaskOutcome
from fused.common.domain.train_config import task_seed
from fused.coordinator.engine.context import Federation, JobContext, JobFailed


async def join_federation(
    ctx: JobContext,
    needed: int,
    timeout_s: float,
    forget: ForgetSpec | None = None,
    reference: Federation | None = None,
) -> Federation:
    """Wait until `needed` participants holding remaining data of the job's data set are
    online (after a restart they reconnect one by one), and fix that data set for the job:
    `reference` (the base version's), else that of most online participants."""
    deadline = ctx.clock() + timeout_s
    while True:
        found = reference or _majority(ctx)
        if isinstance(found, Federation):
            ctx.federation = found
            usable = len(eligible(ctx, forget))
            if usable >= needed:
                return found
        if ctx.clock() >= deadline:
            raise JobFailed(_not_enough(ctx, found, needed, timeout_s, forget))
        await asyncio.sleep(0.2)


def version_federation(version: ModelVersion | None) -> Federation | None:
    """The data a stored version was trained on, when it records it."""
    if version is None or not version.meta.dataset or version.meta.num_classes <= 0:
        return None
    return Federation(version.meta.dataset, version.meta.num_classes)


def _not_enough(
    ctx: JobContext,
    found: Federation | str,
    needed: int,
    timeout_s: float,
    forget: ForgetSpec | None,
) -> str:
    waited = f"after waiting {timeout_s:g} s"
    if not isinstance(found, Federation):
        return f"no data set to run on {waited}: {found}"
    usable = len(eligible(ctx, forget))
    other = f"; {len(ctx.left_out)} left out for other data" if ctx.left_out else ""
    return (
        f"only {usable} of the {needed} required participants were online {waited} "
        f"(holding {found}{other})"
    )


def _declared(ctx: JobContext, pid: str) -> Federation | None:
    record = ctx.store.get_participant(pid)
    if record is None:
        return None
    return Federation(record.info.get("dataset", ""), len(record.class_counts))


def _majority(ctx: JobContext) -> Federation | str:
    """The data set most online participants registered, or why there is none (a tie)."""
    declared = (_declared(ctx, pid) for pid in ctx.fleet.online_ids())
    kinds = Counter(f for f in declared if f is not None)
    ranked = sorted(
        kinds.items(), key=lambda item: (-item[1], item[0].dataset, item[0].num_classes)
    )
    if not ranked:
        return "no participant is online"
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        split = ", ".join(f"{n} with {f}" for f, n in ranked[:4])
        return (
            f"online participants are split evenly between data sets ({split}); block or "
            "remove the ones that do not belong (fusedctl participants block ID)"
        )
    return ranked[0][0]


def members(ctx: JobContext) -> list[str]:
    """Online participants that hold the job's data set; each other one is reported once as
    left out of the job (an event), and never given a task of it."""
    fed = ctx.federation
    if fed is None:
        return ctx.fleet.online_ids()
    out = []
    for pid in ctx.fleet.online_ids():
        declared = _declared(ctx, pid)
        if declared == fed:
            out.append(pid)
        elif declared is not None and pid not in ctx.left_out:
            _leave_out(ctx, pid, declared, fed)
    return out


def _leave_out(ctx: JobContext, pid: str, declared: Federation, fed: Federation) -> None:
    ctx.left_out.add(pid)
    message = f"{pid} left out of this job: it registered {declared}, the job uses {fed}"
    data = {"participant": pid, "dataset": declared.dataset[:40], "classes": declared.num_classes}
    ctx.emit("participant_left_out", "", 0, message, data)


def select_participants(online: list[str], k: int, seed: int, r: int) -> list[str]:
    """k of the online participants (0: all), drawn from (seed, round) alone so a resumed
    job draws the same ones."""
    rng = random.Random(task_seed(seed, r, "select"))
    return sorted(rng.sample(online, k)) if 0 < k < len(online) else list(online)


def eligible(ctx: JobContext, forget: ForgetSpec | None) -> list[str]:
    """Members of the job that hold remaining data."""
    return [p for p in members(ctx) if forget is None or not forget.excludes(p)]


def registered_test(ctx: JobContext, pid: str) -> int:
    record = ctx.store.get_participant(pid)
    return record.num_test if record else 0


def registered_samples(ctx: JobContext, pid: str) -> int:
    """Training plus test samples the participant registered (bounds its forgotten set)."""
    record = ctx.store.get_participant(pid)
    return record.num_train + record.num_test if record else 0


def check_examples(ctx: JobContext, outcome: TaskOutcome, n: int) -> None:
    """No more training samples than the participant registered; a round's weights are also
    capped per participant (`plausibility.capped_weights`) once all results are in."""
    record = ctx.store.get_participant(outcome.participant_id)
    registered = record.num_train if record else 0
    if not 0 < n <= registered:
        raise ValueError(
            f"num_examples {n} is not within the {registered} training samples this "
            "participant registered"
        )
