"""Checks that need a round's every result, run once they are in (never inside a PushResult
call): update norms against the round's median and the job's bound, and the cap on one
participant's share of the round's weight. Both go over scalars (norms measured as each upload
arrived, sample counts) in participant order, so a round's outcome depends on its results
alone (a resumed job redoes a round identically)."""

from __future__ import annotations

from fused.common.domain.aggregation_policy import MIN_MEDIAN_ROUND, AggregationPolicy
from fused.common.domain.records import Phase
from fused.common.ml.plausibility import capped_weights, norm_refusals
from fused.coordinator.engine.context import JobContext
from fused.coordinator.engine.round_sum import Received
from fused.coordinator.engine.rounds import RoundResult


def measures_norms(policy: AggregationPolicy) -> bool:
    """Whether uploads' norms are measured as they arrive: whenever a round may need them."""
    return policy.max_norm > 0 or policy.norm_factor > 0


def needs_norms(ctx: JobContext, count: int) -> bool:
    policy = ctx.policy
    return policy.max_norm > 0 or (policy.norm_factor > 0 and count >= MIN_MEDIAN_ROUND)


def _norms(result: RoundResult[Received]) -> dict[str, float]:
    norms: dict[str, float] = {}
    for a in result.in_order():
        if a.payload.norm is None:
            raise RuntimeError("an update's norm was not measured on arrival")
        norms[a.outcome.participant_id] = a.payload.norm
    return norms


def screen_updates(ctx: JobContext, result: RoundResult[Received], phase: Phase, r: int) -> None:
    """Move the updates whose norm (from the round's starting point) is out of bounds from the
    result's accepted ones to its failures, each counted and reported."""
    if not needs_norms(ctx, len(result.accepted)):
        return
    norms = _norms(result)
    policy = ctx.policy
    for pid, refusal in norm_refusals(norms, policy.norm_factor, policy.max_norm).items():
        del result.accepted[pid]
        result.failures[pid] = f"update refused: {refusal.message}"
        ctx.metrics.refused_updates.labels(refusal.reason.value).inc()
        data = {"participant": pid, "reason": refusal.reason.value}
        ctx.emit("update_refused", phase.value, r, f"{pid}: {refusal.message}", data)


def round_weights(
    ctx: JobContext, result: RoundResult[Received], phase: Phase, r: int
) -> list[int]:
    """Each accepted result's weight, in participant order: its sample count, capped to the
    job's max share of the round; each capped one is counted and reported."""
    accepted = result.in_order()
    counts = [a.outcome.train.num_examples if a.outcome.train else 0 for a in accepted]
    weights = capped_weights(counts, ctx.policy.max_weight_share)
    for a, n, w in zip(accepted, counts, weights, strict=True):
        if w != n:
            pid = a.outcome.participant_id
            share = ctx.policy.max_weight_share
            message = f"{pid}: {n} samples count as {w} (at most {share:g} of the round)"
            ctx.metrics.capped_weights.inc()
            ctx.emit("weight_capped", phase.value, r, message, {"participant": pid, "weight": w})
    return weights
