"""A round's uploads folded into its aggregate as they arrive (engine/round_sum.py), through
the real check (`update_check`: artifact store, fleet, decode against the schema): the same
bits in any arrival order, refused and capped updates taken out exactly, huge values through
the old in-order sum, the robust rules on every update."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from fused.common.codecs.tensor_codec import decode_tensors, encode_tensors
from fused.common.domain.aggregation_policy import AggregationPolicy
from fused.common.domain.records import Phase
from fused.common.domain.tasks import TaskOutcome, TrainOutcome
from fused.common.ml.aggregation import median
from fused.common.ml.fedavg import fedavg
from fused.coordinator.engine.context import JobContext
from fused.coordinator.engine.fedavg_loop import update_check
from fused.coordinator.engine.round_sum import Contribution, Load, Received, RoundSum, round_sum
from fused.coordinator.engine.rounds import RoundResult
from fused.coordinator.engine.screening import round_weights, screen_updates
from fused.coordinator.engine.weights import WeightsPayload
from fused.coordinator.fleet import Accepted
from tests.unit.test_round_screening import MLP, context, run

Tensors = dict[str, torch.Tensor]
START: Tensors = {
    "fc.weight": torch.zeros(6, 5),
    "bn.running_var": torch.ones(5),
    "bn.num_batches_tracked": torch.tensor(0),
    "mask": torch.zeros(4, dtype=torch.bool),
}
PAYLOAD = WeightsPayload("mlp", START)


def _update(gen: torch.Generator, scale: float) -> Tensors:
    return {
        "fc.weight": torch.randn(6, 5, generator=gen) * scale,
        "bn.running_var": torch.rand(5, generator=gen) + 0.5,
        "bn.num_batches_tracked": torch.randint(0, 1000, (), generator=gen),
        "mask": torch.rand(4, generator=gen) < 0.5,
    }


Uploads = dict[str, tuple[Tensors, str, int]]  # by participant: tensors, blob, sample count


def _federation(tmp_path: Path, counts: Sequence[int], seed: int = 0) -> tuple[JobContext, Uploads]:
    """Participants p0.. registered with 10 x 100 samples, each with an upload stored."""
    ctx = context(tmp_path, *((f"p{i}", MLP, 100) for i in range(len(counts))))
    gen = torch.Generator().manual_seed(seed)
    uploads: Uploads = {}
    for i, n in enumerate(counts):
        pid = f"p{i}"
        uploads[pid] = _stored(ctx, pid, _update(gen, 10.0 ** (i % 3 * 0.2 - 1)), n)
    return ctx, uploads


def _stored(ctx: JobContext, pid: str, tensors: Tensors, n: int) -> tuple[Tensors, str, int]:
    """An upload by pid: stored, and decoded as the coordinator decodes it (names sorted)."""
    data = encode_tensors(tensors)
    blob = ctx.artifacts.put_bytes(data)
    ctx.fleet.record_upload(pid, blob)
    return decode_tensors(data)[0], blob, n


def _load(ctx: JobContext) -> Load:
    return lambda blob: decode_tensors(ctx.artifacts.get_bytes(blob))[0]


def _arrive(
    ctx: JobContext, uploads: Uploads, order: list[str]
) -> tuple[RoundSum, RoundResult[Received]]:
    """The uploads checked and folded in `order`, concurrently, as PushResult calls do."""
    into = round_sum(ctx.policy, _load(ctx))
    check = update_check(ctx, PAYLOAD, into, START)

    async def main() -> list[Received]:
        outcomes = [
            TaskOutcome(pid, f"t-{pid}", TrainOutcome(uploads[pid][1], uploads[pid][2], 0.1, 1))
            for pid in order
        ]
        return list(await asyncio.gather(*(check(o) for o in outcomes)))

    received = run(main())
    result: RoundResult[Received] = RoundResult()
    for pid, got in zip(order, received, strict=True):
        train = TrainOutcome(got.blob_id, uploads[pid][2], 0.1, 1)
        result.accepted[pid] = Accepted(TaskOutcome(pid, f"t-{pid}", train), got)
    return into, result


def _finish(ctx: JobContext, into: RoundSum, result: RoundResult[Received]) -> Tensors:
    """What `_aggregate` does: checks, capped weights, then the round's sum."""
    screen_updates(ctx, result, Phase.TRAIN, 1)
    weights = round_weights(ctx, result, Phase.TRAIN, 1)
    final = [
        Contribution(a.outcome.participant_id, a.payload.blob_id, w)
        for a, w in zip(result.in_order(), weights, strict=True)
    ]
    return into.finish(final)


def _identical(a: Tensors, b: Tensors) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_arrival_order_does_not_change_a_bit(tmp_path: Path) -> None:
    ctx, uploads = _federation(tmp_path, [50, 80, 20, 70, 90, 60, 30])
    pids = sorted(uploads)
    first = _finish(ctx, *_arrive(ctx, uploads, pids))
    rng = random.Random(5)
    for _ in range(4):
        order = pids[:]
        rng.shuffle(order)
        assert _identical(_finish(ctx, *_arrive(ctx, uploads, order)), first)
    held = fedavg([(uploads[p][0], uploads[p][2]) for p in pids])  # the old path
    for name, value in held.items():
        torch.testing.assert_close(first[name], value, rtol=1e-6, atol=1e-12)


def test_refused_and_capped_updates_are_taken_out_exactly(tmp_path: Path) -> None:
    ctx, uploads = _federation(tmp_path, [900, 50, 60, 70, 80, 40])
    huge = {k: v * 1e4 if v.is_floating_point() else v for k, v in uploads["p5"][0].items()}
    uploads["p5"] = _stored(ctx, "p5", huge, 40)
    order = ["p5", "p0", "p3", "p1", "p4", "p2"]
    into, result = _arrive(ctx, uploads, order)
    out = _finish(ctx, into, result)
    assert sorted(result.accepted) == ["p0", "p1", "p2", "p3", "p4"]  # p5: norm refused
    weights = round_weights(ctx, result, Phase.TRAIN, 1)
    assert weights[0] == 260 < uploads["p0"][2]  # p0 capped to half the round
    kept = [(uploads[p][0], w) for p, w in zip(sorted(result.accepted), weights, strict=True)]
    fresh = round_sum(AggregationPolicy(), _load(ctx))  # the final set alone, folded in order
    final = []
    for (tensors, w), pid in zip(kept, sorted(result.accepted), strict=True):
        share = Contribution(pid, uploads[pid][1], w)
        fresh.fold(share, tensors)
        final.append(share)
    assert _identical(out, fresh.finish(final))
    for name, value in fedavg(kept).items():
        torch.testing.assert_close(out[name], value, rtol=1e-6, atol=1e-12)


def test_concurrent_folds_from_threads_agree(tmp_path: Path) -> None:
    ctx, uploads = _federation(tmp_path, [5, 6, 7, 8, 9, 10, 11, 12], seed=3)
    final = [Contribution(p, uploads[p][1], uploads[p][2]) for p in sorted(uploads)]
    sums = []
    for _ in range(3):
        into = round_sum(ctx.policy, _load(ctx))
        with ThreadPoolExecutor(4) as pool:
            folds = [pool.submit(into.fold, c, uploads[c.participant][0]) for c in final[::-1]]
            for fold in folds:
                fold.result()
        sums.append(into.finish(final))
    assert _identical(sums[0], sums[1]) and _identical(sums[0], sums[2])


def test_a_fold_after_the_round_closed_is_ignored(tmp_path: Path) -> None:
    ctx, uploads = _federation(tmp_path, [5, 6])
    into = round_sum(ctx.policy, _load(ctx))
    p0, p1 = (Contribution(p, uploads[p][1], uploads[p][2]) for p in ("p0", "p1"))
    into.fold(p0, uploads["p0"][0])
    out = into.finish([p0])
    into.fold(p1, uploads["p1"][0])  # a check that ran past the deadline
    assert _identical(into.finish([p0]), out)


def test_values_beyond_the_fixed_point_range_take_the_old_in_order_sum(tmp_path: Path) -> None:
    ctx, uploads = _federation(tmp_path, [3, 4, 5])
    big = {"fc.weight": torch.full((6, 5), 3e38)}
    for pid in uploads:
        uploads[pid] = _stored(ctx, pid, {**uploads[pid][0], **big}, uploads[pid][2])
    into = round_sum(ctx.policy, _load(ctx))
    final = [Contribution(p, uploads[p][1], uploads[p][2]) for p in sorted(uploads)]
    for c in reversed(final):
        into.fold(c, uploads[c.participant][0])
    expected = fedavg([(uploads[c.participant][0], c.weight) for c in final])
    assert _identical(into.finish(final), expected)


@pytest.mark.parametrize("rule", ["median", "trimmed-mean"])
def test_robust_rules_keep_every_update(tmp_path: Path, rule: str) -> None:
    ctx, uploads = _federation(tmp_path, [5, 6, 7, 8])
    into = round_sum(AggregationPolicy(aggregator=rule), _load(ctx))
    final = [Contribution(p, uploads[p][1], 1) for p in sorted(uploads)]
    for c in final[1:]:  # p0 never folded: read back from its blob
        into.fold(c, uploads[c.participant][0])
    out = into.finish(final)
    if rule == "median":
        assert _identical(out, median([(uploads[c.participant][0], 1) for c in final]))
    assert out.keys() == START.keys()
