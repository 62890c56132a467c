"""Who takes part in a round: online participants that serve the job's workload with its tensor
schema (the others are left out of the job and reported, not fatal), those holding remaining
data, a seeded draw."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from fused.common.domain.records import ModelVersion
from fused.common.domain.tasks import ForgetSpec, TaskOutcome
from fused.common.domain.train_config import task_seed
from fused.coordinator.engine.context import Federation, JobContext, JobFailed, shown


async def join_federation(
    ctx: JobContext,
    needed: int,
    timeout_s: float,
    forget: ForgetSpec | None = None,
    reference: Federation | None = None,
    workload: str = "",
) -> Federation:
    """Wait until `needed` participants holding remaining data for the job are online (after
    a restart they reconnect one by one), and fix what they must serve: `reference` (the
    base version's), else what most online participants serving `workload` (any, if "")
    declared."""
    deadline = ctx.clock() + timeout_s
    while True:
        found = reference or _majority(ctx, workload)
        if isinstance(found, Federation):
            ctx.federation = found
            usable = len(eligible(ctx, forget))
            if usable >= needed:
                return found
        if ctx.clock() >= deadline:
            raise JobFailed(_not_enough(ctx, found, needed, timeout_s, forget))
        await asyncio.sleep(0.2)


def version_federation(version: ModelVersion | None) -> Federation | None:
    """What a stored version's participants served."""
    if version is None:
        return None
    return Federation(version.model, version.meta.schema_digest, version.meta.num_classes)


def _not_enough(
    ctx: JobContext,
    found: Federation | str,
    needed: int,
    timeout_s: float,
    forget: ForgetSpec | None,
) -> str:
    waited = f"after waiting {timeout_s:g} s"
    if not isinstance(found, Federation):
        return f"no workload to run {waited}: {found}"
    usable = len(eligible(ctx, forget))
    why = "; ".join(_why_left_out(ctx, pid, found) for pid in sorted(ctx.left_out)[:3])
    other = f"; left out: {why}" if why else ""
    more = f" and {len(ctx.left_out) - 3} more" if len(ctx.left_out) > 3 else ""
    return (
        f"only {usable} of the {needed} required participants were online {waited} "
        f"(serving {found}{other}{more})"
    )


def _declared(ctx: JobContext, pid: str) -> Federation | str | None:
    """What a participant serves, or why its workload cannot run (None: unknown id)."""
    record = ctx.store.get_participant(pid)
    if record is None:
        return None
    if record.offer("workload_error"):
        return record.offer("workload_error")
    workload, digest = record.offer("workload"), record.offer("schema_digest")
    return Federation(workload, digest, len(record.class_counts))


def _majority(ctx: JobContext, workload: str) -> Federation | str:
    """What most online participants serving `workload` (any if "") declared, or why there
    is no such thing (none, or a tie)."""
    declared = (_declared(ctx, pid) for pid in ctx.fleet.online_ids())
    kinds = Counter(
        f for f in declared if isinstance(f, Federation) and f.workload == (workload or f.workload)
    )
    ranked = sorted(kinds.items(), key=lambda item: (-item[1], str(item[0])))
    if not ranked:
        serving = f" serves workload {shown(workload)}" if workload else " serves a workload"
        return f"no online participant{serving}"
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        split = ", ".join(f"{n} with {f}" for f, n in ranked[:4])
        return (
            f"online participants are split evenly between workloads and schemas ({split}); "
            "block or remove the ones that do not belong (fusedctl participants block ID)"
        )
    return ranked[0][0]


def members(ctx: JobContext) -> list[str]:
    """Online participants that serve the job's workload and schema; each other one is
    reported once as left out of the job (an event, saying how it differs), and never given
    a task of it."""
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


def _why_left_out(ctx: JobContext, pid: str, fed: Federation | str) -> str:
    declared = _declared(ctx, pid)
    if isinstance(declared, str):
        return f"{pid}: its workload cannot run there: {shown(declared, 200)}"
    if declared is None or not isinstance(fed, Federation):
        return f"{pid}: not registered"
    if declared.workload != fed.workload:
        return f"{pid}: serves workload {shown(declared.workload)}, not {shown(fed.workload)}"
    if declared.schema_digest != fed.schema_digest:
        return (
            f"{pid}: its model's tensor schema {declared.schema_digest[:12]} differs from the "
            f"job's {fed.schema_digest[:12]} (another version of the workload?)"
        )
    return f"{pid}: has {declared.num_classes} classes, the job {fed.num_classes}"


def _leave_out(ctx: JobContext, pid: str, declared: Federation | str, fed: Federation) -> None:
    ctx.left_out.add(pid)
    message = f"left out of this job: {_why_left_out(ctx, pid, fed)}"
    workload = declared.workload if isinstance(declared, Federation) else ""
    data = {"participant": pid, "workload": workload[:40]}
    ctx.emit("participant_left_out", "", 0, message, data)


def select_participants(online: list[str], k: int, seed: int, r: int) -> list[str]:
    """k of the online participants (0: all), drawn from (seed, round) alone so a resumed
    job draws the same ones."""
    rng = random.Random(task_seed(seed, r, "select"))
    return sorted(rng.sample(online, k)) if 0 < k < len(online) else list(online)


def eligible(ctx: JobContext, forget: ForgetSpec | None) -> list[str]:
    """Members of the job that may train: not forgotten by this request nor by the forget
    ledger (a forgotten participant still evaluates, for the forgotten set's accuracy)."""
    return [
        p
        for p in members(ctx)
        if not ctx.excluded.excludes(p) and (forget is None or not forget.excludes(p))
    ]


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


def federation_source(ctx: JobContext) -> str:
    """What the members' data is, as the first of them declared it (for listings)."""
    for pid in members(ctx):
        record = ctx.store.get_participant(pid)
        if record is not None and record.offer("dataset"):
            return record.offer("dataset")
    return ""
