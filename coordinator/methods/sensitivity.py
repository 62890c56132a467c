"""Critical-layer identification (CLI), FUSED's first phase: every online participant trains
one local round from the base and reports, per parameter tensor, the L1 distance it moved;
tensors are ranked by the sample-weighted mean distance. Only those scalars leave a
participant."""

from __future__ import annotations

from fused.common.domain.records import Phase
from fused.common.domain.round_metrics import LayerScore, RoundMetrics
from fused.common.domain.specs import FusedConfig, UnlearningSpec
from fused.common.domain.tasks import SensitivityOutcome, TaskKind, TaskOutcome
from fused.common.ml.plausibility import capped_weights
from fused.coordinator.engine.checkpoints import committed_round
from fused.coordinator.engine.context import JobContext, JobFailed
from fused.coordinator.engine.participants import check_examples, eligible
from fused.coordinator.engine.rounds import (
    RoundPlan,
    RoundResult,
    check_quorum,
    finish_round,
    run_round,
    seeded,
)
from fused.coordinator.engine.schemas import adaptable_sizes
from fused.coordinator.fleet import ResultCheck
from fused.coordinator.methods.base import Base


def sensitivity_check(ctx: JobContext, shapes: dict[str, int]) -> ResultCheck[SensitivityOutcome]:
    async def check(outcome: TaskOutcome) -> SensitivityOutcome:
        sens = outcome.sensitivity
        if sens is None:
            raise ValueError("expected a sensitivity result for a sensitivity task")
        check_examples(ctx, outcome, sens.num_examples)
        if set(sens.distances) != set(shapes):
            raise ValueError("sensitivity distances must name exactly the adaptable parameters")
        if not all(v >= 0 and v != float("inf") for v in sens.distances.values()):
            raise ValueError("sensitivity distances must be finite and non-negative")
        return sens

    return check


async def critical_layers(
    ctx: JobContext, spec: UnlearningSpec, config: FusedConfig, base: Base
) -> list[LayerScore]:
    """The ranking, with the tensors to adapt selected (top K, or the layers named)."""
    done = committed_round(ctx, Phase.SENSITIVITY, 1)
    if done is not None and done.ranking is not None:  # a resumed job keeps its ranking
        return done.ranking
    started = ctx.clock()
    ctx.progress(Phase.SENSITIVITY, 1)
    shapes = adaptable_sizes(base.schema)
    plan = RoundPlan(
        Phase.SENSITIVITY,
        1,
        TaskKind.SENSITIVITY,
        eligible(ctx, None),  # this request's participant too, not earlier ones
        base.version.digest,
        base.model.name,
        base.model.num_classes,
        spec.round_deadline_s,
        seeded(spec.train, spec.seed, 0),
    )
    result = await run_round(ctx, plan, sensitivity_check(ctx, shapes))
    check_quorum(result, spec.min_participants, Phase.SENSITIVITY, 1)
    ranking = rank(result, shapes, config, ctx.policy.max_weight_share)
    finish_round(ctx, Phase.SENSITIVITY, 1, started, result, RoundMetrics(ranking=ranking))
    return ranking


def rank(
    result: RoundResult[SensitivityOutcome],
    shapes: dict[str, int],
    config: FusedConfig,
    max_share: float = 1.0,
) -> list[LayerScore]:
    """Tensors by their mean distance, weighted by sample counts capped to `max_share`."""
    reports = [accepted.payload for accepted in result.in_order()]
    weights = capped_weights([s.num_examples for s in reports], max_share)
    total = sum(weights)
    scores = {
        name: sum(s.distances[name] * w for s, w in zip(reports, weights, strict=True)) / total
        for name in shapes
    }
    ranked = sorted(scores, key=lambda n: (-scores[n], n))
    chosen = set(config.layers) if config.layers else set(ranked[: config.top_k])
    unknown = chosen - set(shapes)
    if unknown:
        raise JobFailed(f"layers the model lacks or keeps fixed: {', '.join(sorted(unknown))}")
    return [LayerScore(n, scores[n], shapes[n], n in chosen) for n in ranked]
