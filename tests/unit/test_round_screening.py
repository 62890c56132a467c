"""The job engine's isolation and plausibility checks on a real JobContext (in-memory store, a
real fleet and metrics registry): who is left out of a job for other data, updates refused once
a round is in, weights and evaluation counts capped to a share of the round."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from prometheus_client import CollectorRegistry

from fused.common.domain.aggregation_policy import AggregationPolicy
from fused.common.domain.records import JobEvent, JobKind, JobStatus, Phase
from fused.common.domain.tasks import EvalOutcome, TaskOutcome, TrainOutcome
from fused.common.ml.adapters import build_layout
from fused.common.ml.membership import BINS
from fused.common.ml.plausibility import update_norm
from fused.coordinator.artifacts import ArtifactStore
from fused.coordinator.engine.context import Federation, JobContext, JobFailed, RoundBytes
from fused.coordinator.engine.evaluation import eval_check, merge_eval
from fused.coordinator.engine.participants import join_federation, members
from fused.coordinator.engine.round_sum import Received
from fused.coordinator.engine.rounds import RoundResult
from fused.coordinator.engine.screening import round_weights, screen_updates
from fused.coordinator.engine.weights import WeightsPayload
from fused.coordinator.fleet import Accepted, Fleet
from fused.coordinator.methods.fused import AdapterPayload
from fused.coordinator.metrics import CoordinatorMetrics
from fused.coordinator.state import InMemoryStateStore, JobRecord, ParticipantRecord
from fused.coordinator.versions import save_weights

T = TypeVar("T")
Tensors = dict[str, torch.Tensor]
MLP_SCHEMA = "0" * 64
DIGITS = Federation("mlp", MLP_SCHEMA, 10)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def offer(workload: str, schema: str = MLP_SCHEMA, error: str = "") -> dict[str, str]:
    """What a registration declares (ParticipantRecord.info)."""
    return {"workload": workload, "schema_digest": schema, "workload_error": error}


def context(tmp_path: Path, *participants: tuple[str, dict[str, str], int]) -> JobContext:
    """A job's context with (id, declared workload, classes) participants registered, online."""
    store = InMemoryStateStore()
    store.create_job(JobRecord("job-1", JobKind.TRAIN, {}, JobStatus.RUNNING, "", 0, "", 0, 0))
    fleet = Fleet(store, offline_after_s=15)
    for pid, info, classes in participants:
        now = time.time()
        counts = [10] * classes
        fleet.register(ParticipantRecord(pid, counts, sum(counts), 20, now, now, info))

    def emit(kind: str, phase: str, r: int, message: str, data: Any = None) -> JobEvent:
        return store.append_event("job-1", kind, phase, r, message, data or {}, 0.0)

    artifacts = ArtifactStore(tmp_path / "artifacts")
    metrics = CoordinatorMetrics(CollectorRegistry())
    return JobContext("job-1", store, artifacts, fleet, metrics, emit, lambda p, r: RoundBytes())


def events(ctx: JobContext, kind: str) -> list[str]:
    return [e.message for e in ctx.store.list_events("job-1") if e.kind == kind]


# --------------------------------------------------------------------------- isolation


MLP, OTHER = offer("mlp"), offer("cnn", "1" * 64)


def test_the_majority_workload_wins_and_the_other_is_left_out(tmp_path: Path) -> None:
    ctx = context(tmp_path, ("p0", MLP, 10), ("p1", MLP, 10), ("m", OTHER, 10))
    assert run(join_federation(ctx, 2, 0.0)) == DIGITS
    assert members(ctx) == ["p0", "p1"]
    assert members(ctx) == ["p0", "p1"]  # reported once
    assert events(ctx, "participant_left_out") == [
        "left out of this job: m: serves workload 'cnn', not 'mlp'"
    ]


def test_another_schema_or_class_count_is_left_out_saying_how(tmp_path: Path) -> None:
    wide = offer("mlp", "2" * 64)
    ctx = context(tmp_path, ("p0", MLP, 10), ("p1", MLP, 10), ("m", MLP, 3), ("w", wide, 10))
    assert run(join_federation(ctx, 1, 0.0)) == DIGITS and members(ctx) == ["p0", "p1"]
    assert events(ctx, "participant_left_out") == [
        "left out of this job: m: has 3 classes, the job 10",
        "left out of this job: w: its model's tensor schema 222222222222 differs from the "
        "job's 000000000000 (another version of the workload?)",
    ]


def test_a_job_naming_a_workload_takes_the_participants_serving_it(tmp_path: Path) -> None:
    ctx = context(tmp_path, ("p0", MLP, 10), ("m1", OTHER, 10), ("m2", OTHER, 10))
    assert run(join_federation(ctx, 1, 0.0, workload="mlp")) == DIGITS
    assert members(ctx) == ["p0"]


def test_a_base_version_fixes_the_workload(tmp_path: Path) -> None:
    ctx = context(tmp_path, ("p0", MLP, 10), ("m1", OTHER, 10), ("m2", OTHER, 10))
    assert run(join_federation(ctx, 1, 0.0, reference=DIGITS)) == DIGITS
    assert members(ctx) == ["p0"] and len(events(ctx, "participant_left_out")) == 2


def test_too_few_matching_participants_fail_the_job_saying_who_and_why(tmp_path: Path) -> None:
    broken = offer("mlp", "", "workload 'mlp': loading data from d failed: no rows")
    ctx = context(tmp_path, ("p0", MLP, 10), ("m", OTHER, 10), ("b", broken, 0))
    with pytest.raises(JobFailed) as failed:
        run(join_federation(ctx, 3, 0.0, reference=DIGITS))
    assert str(failed.value) == (
        "only 1 of the 3 required participants were online after waiting 0 s (serving workload "
        "'mlp' (schema 000000000000, 10 classes); left out: b: its workload cannot run there: "
        "\"workload 'mlp': loading data from d failed: no rows\"; m: serves workload 'cnn', "
        "not 'mlp')"
    )


def test_an_even_split_fails_the_job_clearly(tmp_path: Path) -> None:
    ctx = context(tmp_path, ("p0", MLP, 10), ("m", offer("x" * 100), 10))
    with pytest.raises(JobFailed) as failed:
        run(join_federation(ctx, 1, 0.0))
    assert str(failed.value) == (
        "no workload to run after waiting 0 s: online participants are split evenly between "
        "workloads and schemas (1 with workload 'mlp' (schema 000000000000, 10 classes), 1 with "
        f"workload '{'x' * 40}'... (schema 000000000000, 10 classes)); block or remove the ones "
        "that do not belong (fusedctl participants block ID)"
    )


# --------------------------------------------------------------------------- updates


def accepted(pid: str, values: list[float], n: int = 50) -> Accepted[Received]:
    """An upload of `values` from a round starting at zeros, as update_check keeps it."""
    train = TrainOutcome("b" * 64, n, 0.5, 1.0)
    norm = update_norm({"w": torch.tensor(values)}, {"w": torch.zeros(len(values))})
    return Accepted(TaskOutcome(pid, f"t-{pid}", train=train), Received("b" * 64, norm))


def round_of(*items: Accepted[Received]) -> RoundResult[Received]:
    return RoundResult(accepted={a.outcome.participant_id: a for a in items})


def refused(ctx: JobContext, reason: str) -> float | None:
    return ctx.metrics.registry.get_sample_value("fused_refused_updates_total", {"reason": reason})


def test_a_huge_update_is_refused_once_the_round_is_in(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    result = round_of(accepted("p0", [1, 0]), accepted("p1", [0, 1.5]), accepted("m", [3e38, 0]))
    screen_updates(ctx, result, Phase.TRAIN, 2)
    assert sorted(result.accepted) == ["p0", "p1"]
    assert result.failures == {
        "m": "update refused: update L2 norm 3e+38 is 2e+38x the round's median 1.5 (limit 10x)"
    }
    assert refused(ctx, "norm_ratio") == 1.0
    assert events(ctx, "update_refused") == [f"m: {result.failures['m'][16:]}"]


def test_two_updates_are_judged_by_the_absolute_bound_only(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    result = round_of(accepted("p0", [1, 0]), accepted("m", [3e38, 0]))
    screen_updates(ctx, result, Phase.TRAIN, 1)
    assert sorted(result.accepted) == ["m", "p0"]
    ctx.policy = AggregationPolicy(max_norm=100.0)
    screen_updates(ctx, result, Phase.TRAIN, 1)
    assert sorted(result.accepted) == ["p0"] and refused(ctx, "norm_bound") == 1.0


def test_weights_are_capped_to_half_the_round(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    result = round_of(
        accepted("a", [0, 0], 100), accepted("b", [0, 0], 200), accepted("m", [0, 0], 2**62)
    )
    assert round_weights(ctx, result, Phase.TRAIN, 1) == [100, 200, 300]
    assert events(ctx, "weight_capped") == [
        f"m: {2**62} samples count as 300 (at most 0.5 of the round)"
    ]
    honest = round_of(
        accepted("a", [0, 0], 100), accepted("b", [0, 0], 90), accepted("c", [0, 0], 80)
    )
    assert round_weights(ctx, honest, Phase.TRAIN, 2) == [100, 90, 80]


# --------------------------------------------------------------------------- evaluation


def report(
    pid: str, correct: list[int], total: list[int], forget_correct: int = 0, forget_total: int = 0
) -> Accepted[EvalOutcome]:
    ev = EvalOutcome(tuple(correct), tuple(total), 1.0, forget_correct, forget_total)
    return Accepted(TaskOutcome(pid, f"t-{pid}", eval=ev), ev)


def test_inflated_evaluation_counts_are_capped(tmp_path: Path) -> None:
    big = 2**40
    result: RoundResult[EvalOutcome] = RoundResult(
        accepted={
            "p0": report("p0", [1, 0], [10, 10]),
            "p1": report("p1", [0, 2], [10, 10]),
            "m": report("m", [big, big], [big, big]),
        }
    )
    assert merge_eval(result, 2).accuracy > 0.99  # what an uncapped sum reported
    capped = merge_eval(result, 2, max_share=0.5)
    assert capped.total == [40, 40] and capped.correct == [21, 22]
    assert capped.accuracy == pytest.approx(43 / 80)
    assert capped.per_participant == {"p0": 0.05, "p1": 0.1, "m": 1.0}


def test_evaluation_counts_are_bounded_by_registration(tmp_path: Path) -> None:
    ctx = context(tmp_path, ("p0", offer("mlp"), 2))  # 20 training, 20 test samples registered
    check = eval_check(ctx, 2)
    ok = report("p0", [1, 2], [10, 10], forget_correct=3, forget_total=40).outcome
    assert run(check(ok)).forget_total == 40
    for ev, message in (
        (report("p0", [1, 1], [20, 1]), "evaluation counts cover 21 test samples"),
        (report("p0", [0, 0], [1, 1], forget_total=41), "forget counts cover 41 samples"),
    ):
        with pytest.raises(ValueError, match=message):
            run(check(ev.outcome))


def test_loss_histograms_count_exactly_the_evaluated_examples(tmp_path: Path) -> None:
    ctx = context(tmp_path, ("p0", offer("mlp"), 2))
    check = eval_check(ctx, 2)
    twenty = (20,) + (0,) * (BINS - 1)
    honest = EvalOutcome((1, 2), (10, 10), 1.0, 3, 5, twenty, (5,) + (0,) * (BINS - 1))
    assert run(check(TaskOutcome("p0", "t", eval=honest))) == honest
    for bad, message in (
        (dataclasses.replace(honest, test_losses=(20,)), "test_losses: want 64 bins counting 20"),
        (
            dataclasses.replace(honest, forget_losses=twenty),
            "forget_losses: want 64 bins counting 5",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            run(check(TaskOutcome("p0", "t", eval=bad)))


# --------------------------------------------------------------------------- references


def test_updates_are_measured_from_the_round_start(tmp_path: Path) -> None:
    """Full weights from the aggregate; adapter values from theirs, zeros before the first."""
    ctx = context(tmp_path)
    ctx.artifacts.ensure()
    layout = build_layout({"fc.weight": (4, 8)}, 0.25, 7)
    payload = AdapterPayload(layout, 7, "c" * 64, "float16")
    start = run(payload.reference(ctx, ""))
    size = layout.num_values
    assert {n: t.tolist() for n, t in start.items()} == {"fc.weight": [0.0] * size}
    values = {"fc.weight": torch.arange(size, dtype=torch.float32)}
    blob = run(payload.store(ctx, values))
    assert torch.equal(run(payload.reference(ctx, blob))["fc.weight"], values["fc.weight"])
    weights = {"w": torch.ones(2, 3), "n": torch.tensor(4)}
    full = WeightsPayload("mlp", weights)
    saved = run(save_weights(ctx.artifacts, weights, "mlp"))
    assert all(torch.equal(t, weights[n]) for n, t in run(full.reference(ctx, saved)).items())
