"""Layer distances a training job recorded in its last round (`LayerDistances`), used by a FUSED
job that unlearns that job's model: the CLI measure of the federation's data without a
sensitivity round on every participant. Only the holders of the forgotten data still train,
on that data alone, when the selection rule asks for it.

The recorded round trained from the model before the last aggregate, on all the data the
training used; a sensitivity round trains from the final model, on the remaining data. The
forgotten participant's own distances are left out; a forgotten class's or samples' share of
the other participants' movement cannot be, and stays in (METHOD.md, section 2).
"""

from __future__ import annotations

from dataclasses import dataclass

from fused.common.domain.records import JobKind, ModelVersion, Phase
from fused.common.domain.round_metrics import LayerDistances
from fused.common.domain.tasks import ForgetSpec
from fused.common.ml.plausibility import capped_weights
from fused.coordinator.engine.context import JobContext


@dataclass(frozen=True)
class Recorded:
    retained: dict[str, float]  # tensor -> sample-weighted mean L1 distance
    note: str  # where it was recorded, for the ranking's note


def recorded_retained(
    ctx: JobContext,
    version: ModelVersion,
    forget: ForgetSpec,
    shapes: dict[str, int],
    max_share: float = 1.0,
) -> Recorded | None:
    """The retained CLI distances `version`'s training recorded, without the forgotten
    participant (and those the ledger forgets); None when the version is not a training
    job's last aggregate as trained, or that round recorded none for these tensors."""
    found = _last_training_round(ctx, version)
    if found is None:
        return None
    recorded, job_id, r = found
    kept = [
        p
        for p in sorted(recorded.distances)
        if not ctx.excluded.excludes(p) and not forget.excludes(p)
    ]
    if not kept or any(set(recorded.distances[p]) != set(shapes) for p in kept):
        return None
    weights = capped_weights([recorded.examples[p] for p in kept], max_share)
    total = sum(weights)
    retained = {
        name: sum(recorded.distances[p][name] * w for p, w in zip(kept, weights, strict=True))
        / total
        for name in shapes
    }
    note = f"retained distances recorded by round {r} of training job {job_id}"
    return Recorded(retained, note)


def _last_training_round(
    ctx: JobContext, version: ModelVersion
) -> tuple[LayerDistances, str, int] | None:
    job = ctx.store.get_job(version.job_id) if version.job_id else None
    if job is None or job.kind != JobKind.TRAIN:
        return None
    rounds = [r for r in ctx.store.list_rounds(job.job_id) if r.phase == Phase.TRAIN]
    if not rounds:
        return None
    last = max(rounds, key=lambda r: r.round)
    aggregate = last.metrics.aggregate
    recorded = last.metrics.layer_distances
    if recorded is None or aggregate is None or aggregate.blob != version.digest:
        return None  # e.g. a model stored by a job whose last round recorded nothing
    return recorded, job.job_id, last.round


def holders(ctx: JobContext, forget: ForgetSpec, candidates: list[str]) -> list[str]:
    """The candidates that hold forgotten training data, by what they registered."""
    if forget.paradigm in ("participant", "samples"):
        return [p for p in candidates if p == forget.participant_id]
    held = []
    for pid in candidates:
        record = ctx.store.get_participant(pid)
        counts = record.class_counts if record else []
        if 0 <= forget.class_label < len(counts) and counts[forget.class_label] > 0:
            held.append(pid)
    return held
