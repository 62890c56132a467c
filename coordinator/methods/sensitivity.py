"""FUSED's first phase: every online participant trains one local round from the base and
reports, per parameter tensor, the L1 distance it moved (critical-layer identification, CLI);
a forget-aware rule also asks the holders of the forgotten data for the same on that data
alone. The selection rule (methods.selection) ranks the tensors from these sample-weighted
means. Only those scalars leave a participant."""

from __future__ import annotations

from collections.abc import Sequence

from fused.common.domain.records import Phase
from fused.common.domain.round_metrics import LayerScore, Ranking, RoundMetrics
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
from fused.coordinator.methods.base import Base, local_training
from fused.coordinator.methods.recorded import holders, recorded_retained
from fused.coordinator.methods.selection import Sensitivity, selection_rule


def sensitivity_check(
    ctx: JobContext, shapes: dict[str, int], forget_only: bool = False
) -> ResultCheck[SensitivityOutcome]:
    async def check(outcome: TaskOutcome) -> SensitivityOutcome:
        sens = outcome.sensitivity
        if sens is None:
            raise ValueError("expected a sensitivity result for a sensitivity task")
        if forget_only:
            if sens.distances or sens.num_examples:
                raise ValueError("a forget-only sensitivity task reports no retained distances")
        else:
            check_examples(ctx, outcome, sens.num_examples)
            _check_distances(sens.distances, shapes, "sensitivity distances")
        if sens.forget_distances or sens.forget_examples:
            check_examples(ctx, outcome, sens.forget_examples)
            _check_distances(sens.forget_distances, shapes, "forget distances")
        return sens

    return check


def _check_distances(distances: dict[str, float], shapes: dict[str, int], what: str) -> None:
    if set(distances) != set(shapes):
        raise ValueError(f"{what} must name exactly the adaptable parameters")
    if not all(v >= 0 and v != float("inf") for v in distances.values()):
        raise ValueError(f"{what} must be finite and non-negative")


async def critical_layers(
    ctx: JobContext, spec: UnlearningSpec, config: FusedConfig, base: Base
) -> Ranking:
    """The ranking by the config's selection rule, with the tensors to adapt selected (top K,
    or the layers named)."""
    done = committed_round(ctx, Phase.SENSITIVITY, 1)
    if done is not None and done.ranking is not None:  # a resumed job keeps its ranking
        return done.ranking
    started = ctx.clock()
    ctx.progress(Phase.SENSITIVITY, 1)
    shapes = adaptable_sizes(base.schema)
    rule = selection_rule(config.selection)
    share = ctx.policy.max_weight_share
    recorded = recorded_retained(ctx, base.version, spec.forget, shapes, share)
    if recorded is None:  # every participant trains a round from the base
        result = await _round(ctx, spec, base, shapes, rule.needs_forget, eligible(ctx, None))
        check_quorum(result, spec.min_participants, Phase.SENSITIVITY, 1)
        ranking = rank(measured(result, shapes, share), shapes, config)
    else:  # only holders of the forgotten data, on that data, if the rule asks
        asked = holders(ctx, spec.forget, eligible(ctx, None)) if rule.needs_forget else []
        result = await _round(ctx, spec, base, shapes, True, asked, forget_only=True)
        sens = Sensitivity(recorded.retained, _forgotten(result, shapes), shapes)
        ranking = rank(sens, shapes, config, recorded.note)
    finish_round(ctx, Phase.SENSITIVITY, 1, started, result, RoundMetrics(ranking=ranking))
    return ranking


async def _round(
    ctx: JobContext,
    spec: UnlearningSpec,
    base: Base,
    shapes: dict[str, int],
    with_forget: bool,
    participants: list[str],
    forget_only: bool = False,
) -> RoundResult[SensitivityOutcome]:
    """The sensitivity tasks from the base (none to run: an empty result)."""
    if not participants:
        return RoundResult()
    plan = RoundPlan(
        Phase.SENSITIVITY,
        1,
        TaskKind.SENSITIVITY,
        participants,
        base.version.digest,
        base.model.name,
        base.model.num_classes,
        spec.round_deadline_s,
        seeded(local_training(spec), spec.seed, 0),
        forget=spec.forget if with_forget else None,  # holders measure it too
        forget_only=forget_only,
    )
    return await run_round(ctx, plan, sensitivity_check(ctx, shapes, forget_only))


def measured(
    result: RoundResult[SensitivityOutcome], shapes: dict[str, int], max_share: float = 1.0
) -> Sensitivity:
    """The round's distances: sample-weighted means (weights capped to `max_share`) over every
    report, and over the forgotten data's holders."""
    reports = [accepted.payload for accepted in result.in_order()]
    weights = capped_weights([s.num_examples for s in reports], max_share)
    retained = _mean([s.distances for s in reports], weights, shapes)
    return Sensitivity(retained, _forgotten(result, shapes), shapes)


def _forgotten(
    result: RoundResult[SensitivityOutcome], shapes: dict[str, int]
) -> dict[str, float] | None:
    """The forgotten data's distances, weighted by how much each holder held; None: none."""
    reports = [a.payload for a in result.in_order() if a.payload.forget_examples > 0]
    if not reports:
        return None
    held = [float(s.forget_examples) for s in reports]
    return _mean([s.forget_distances for s in reports], held, shapes)


def _mean(
    reports: list[dict[str, float]], weights: Sequence[float], shapes: dict[str, int]
) -> dict[str, float]:
    total = sum(weights)
    return {
        name: sum(d[name] * w for d, w in zip(reports, weights, strict=True)) / total
        for name in shapes
    }


def rank(
    sens: Sensitivity, shapes: dict[str, int], config: FusedConfig, source: str = ""
) -> Ranking:
    """Tensors by the selection rule's score; the top K (or the layers named) selected.
    `source`: where the retained distances came from, when not from this job's round."""
    scores = selection_rule(config.selection).scores(sens)
    ranked = sorted(scores.values, key=lambda n: (-scores.values[n], n))
    chosen = set(config.layers) if config.layers else set(ranked[: config.top_k])
    unknown = chosen - set(shapes)
    if unknown:
        raise JobFailed(f"layers the model lacks or keeps fixed: {', '.join(sorted(unknown))}")
    forgotten = sens.forgotten or {}
    layers = [
        LayerScore(n, sens.retained[n], shapes[n], n in chosen, forgotten.get(n), scores.values[n])
        for n in ranked
    ]
    note = "; ".join(n for n in (scores.note, source) if n)
    return Ranking(config.selection, layers, note)
