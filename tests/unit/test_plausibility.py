"""Plausibility checks over a round: the weight-share cap and the update-norm refusals."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from fused.common.ml.plausibility import (
    RefusalReason,
    capped_weights,
    norm_refusals,
    update_norm,
)

CAPS = [
    # (name, counts, max share, expected)
    ("honest three stay", [400, 350, 300], 0.5, [400, 350, 300]),
    ("two are never capped", [2**62, 100], 0.5, [2**62, 100]),
    ("share 1 is off", [2**62, 1, 1], 1.0, [2**62, 1, 1]),
    ("inflated one gets the others' sum", [100, 2**62, 200], 0.5, [100, 300, 200]),
    ("exactly half stays", [300, 200, 100], 0.5, [300, 200, 100]),
    ("two large ones at a third", [1000, 1000, 10, 20], 0.3, [22, 22, 10, 20]),
    ("infeasible share gives equal weights", [50, 60, 70], 0.2, [50, 50, 50]),
    ("zeros do not count toward the three", [10**9, 5, 0], 0.5, [10**9, 5, 0]),
    ("never below one", [10**9, 1, 1, 0], 0.5, [2, 1, 1, 0]),
]


@pytest.mark.parametrize(("name", "counts", "share", "expected"), CAPS, ids=[c[0] for c in CAPS])
def test_capped_weights(name: str, counts: list[int], share: float, expected: list[int]) -> None:
    weights = capped_weights(counts, share)
    assert weights == expected
    positive = [c for c in counts if c > 0]
    if weights != counts and len(positive) >= 3 and share * len(positive) >= 1:
        assert Fraction(max(weights), sum(weights)) <= Fraction(share)


def test_capped_weights_is_exact_for_huge_counts() -> None:
    counts = [2**62, 2**62 - 1, 3, 5]
    weights = capped_weights(counts, 0.3)
    assert all(Fraction(w, sum(weights)) <= Fraction(0.3) for w in weights)
    assert weights[2:] == [3, 5]


def test_update_norm() -> None:
    ref = {"w": torch.zeros(2), "steps": torch.tensor(7)}
    upd = {"w": torch.tensor([3.0, 4.0]), "steps": torch.tensor(99)}
    assert update_norm(upd, ref) == 5.0  # integer buffers are not counted
    huge = {"w": torch.tensor([3e38, 3e38], dtype=torch.float32), "steps": torch.tensor(0)}
    assert update_norm(huge, ref) == pytest.approx(3e38 * 2**0.5, rel=1e-6)  # float64: finite
    half = {"w": torch.tensor([3.0, 4.0], dtype=torch.bfloat16), "steps": torch.tensor(0)}
    assert update_norm(half, ref) == 5.0


RATIO, BOUND = RefusalReason.NORM_RATIO, RefusalReason.NORM_BOUND
NORM_CASES = [
    # (name, norms, factor, bound, expected {pid: reason})
    ("honest round", {"a": 1.0, "b": 1.5, "c": 2.0}, 10.0, 0.0, {}),
    ("huge among three", {"a": 1.0, "b": 1.2, "m": 4e38}, 10.0, 0.0, {"m": RATIO}),
    ("two cannot tell the outlier", {"a": 1.0, "m": 4e38}, 10.0, 0.0, {}),
    ("bound holds with two", {"a": 1.0, "m": 4e38}, 10.0, 100.0, {"m": BOUND}),
    ("factor off", {"a": 1.0, "b": 1.2, "m": 4e38}, 0.0, 0.0, {}),
    ("not finite", {"a": 1.0, "m": float("inf")}, 10.0, 0.0, {"m": RefusalReason.NOT_FINITE}),
    (
        "median of four is the middle mean",
        {"a": 1, "b": 2, "c": 4, "m": 31},
        10.0,
        0.0,
        {"m": RATIO},
    ),
    ("just at the limit stays", {"a": 1.0, "b": 2.0, "m": 20.0}, 10.0, 0.0, {}),
    ("zero median", {"a": 0.0, "b": 0.0, "m": 1e-9}, 10.0, 0.0, {"m": RATIO}),
]


@pytest.mark.parametrize(
    ("name", "norms", "factor", "bound", "expected"), NORM_CASES, ids=[c[0] for c in NORM_CASES]
)
def test_norm_refusals(
    name: str,
    norms: dict[str, float],
    factor: float,
    bound: float,
    expected: dict[str, RefusalReason],
) -> None:
    refused = norm_refusals(norms, factor, bound)
    assert {pid: r.reason for pid, r in refused.items()} == expected


def test_refusal_messages_name_the_numbers() -> None:
    (ratio,) = norm_refusals({"a": 1.0, "b": 2.0, "m": 3e38}, 10.0, 0.0).values()
    assert ratio.message == "update L2 norm 3e+38 is 1.5e+38x the round's median 2 (limit 10x)"
    (bound,) = norm_refusals({"m": 250.0}, 10.0, 100.0).values()
    assert bound.message == "update L2 norm 250 is above the job's bound of 100"
