"""Aggregation rules (FedAvg, coordinate-wise median and trimmed mean) and the policy that
names them: table-driven cases on small tensors whose answers are known."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import torch

from fused.common.domain.aggregation_policy import AggregationPolicy
from fused.common.ml.aggregation import Update, aggregator, median, trimmed_count, trimmed_mean
from fused.common.ml.fedavg import fedavg


def upd(values: list[float], n: int = 1, step: int = 0) -> Update:
    return {"w": torch.tensor(values), "step": torch.tensor(step)}, n


@dataclass(frozen=True)
class RuleCase:
    name: str
    rule: str
    updates: list[Update]
    expected: list[float]
    step: int = 0


RULE_CASES = [
    RuleCase("fedavg weights by counts", "fedavg", [upd([0.0], 1), upd([4.0], 3)], [3.0]),
    RuleCase(
        "median of three",
        "median",
        [upd([1.0, 9.0]), upd([2.0, 0.0]), upd([3e38, 1.0])],
        [2.0, 1.0],
    ),
    RuleCase("median of two is their mean", "median", [upd([1.0]), upd([3.0])], [2.0]),
    RuleCase("median ignores counts", "median", [upd([1.0], 1000), upd([2.0]), upd([5.0])], [2.0]),
    RuleCase(
        "trimmed mean cuts one of five at each end",
        "trimmed-mean",
        [upd([v]) for v in (-1e30, 1.0, 2.0, 3.0, 1e30)],
        [2.0],
    ),
    RuleCase("trimmed mean of two keeps both", "trimmed-mean", [upd([1.0]), upd([3.0])], [2.0]),
    RuleCase(
        "integer buffers round to the nearest",
        "median",
        [upd([0.0], step=1), upd([0.0], step=2), upd([0.0], step=4), upd([0.0], step=5)],
        [0.0],
        step=3,
    ),
]


@pytest.mark.parametrize("case", RULE_CASES, ids=[c.name for c in RULE_CASES])
def test_rules(case: RuleCase) -> None:
    out = aggregator(case.rule)(case.updates)
    assert out["w"].tolist() == pytest.approx(case.expected)
    assert out["w"].dtype == case.updates[0][0]["w"].dtype
    assert out["step"].dtype == torch.int64 and int(out["step"]) == case.step


def test_fedavg_through_the_registry_is_fedavg_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(0)
    updates = [({"w": torch.randn(5, 7, generator=gen)}, n) for n in (13, 7, 101)]
    assert aggregator("fedavg") is fedavg
    assert torch.equal(aggregator("fedavg")(updates)["w"], fedavg(updates)["w"])


@pytest.mark.parametrize(
    ("n", "fraction", "cut"), [(5, 0.2, 1), (10, 0.25, 2), (2, 0.4, 0), (3, 0.49, 1), (1, 0.4, 0)]
)
def test_trimmed_count(n: int, fraction: float, cut: int) -> None:
    assert trimmed_count(n, fraction) == cut


def test_robust_rules_refuse_what_fedavg_refuses() -> None:
    mismatched = [({"w": torch.zeros(2)}, 1), ({"w": torch.zeros(3)}, 1)]
    for rule in (median, trimmed_mean, fedavg):
        with pytest.raises(ValueError, match="shape"):
            rule(mismatched)
        with pytest.raises(ValueError, match="at least one update"):
            rule([])
    with pytest.raises(ValueError, match="real tensors"):
        median([({"w": torch.zeros(2, dtype=torch.complex64)}, 1)])


def test_unknown_rule() -> None:
    with pytest.raises(ValueError, match="aggregator must be one of fedavg, median, trimmed-mean"):
        aggregator("krum")


def test_results_are_fresh_tensors() -> None:
    a = torch.ones(3)
    out = median([({"w": a}, 1)])
    out["w"].add_(1)
    assert a.tolist() == [1.0, 1.0, 1.0]


BAD_POLICIES = [
    (AggregationPolicy(aggregator="krum"), "aggregator must be one of"),
    (AggregationPolicy(trim_fraction=0.5), "trim_fraction must be in [0, 0.5)"),
    (AggregationPolicy(trim_fraction=-0.1), "trim_fraction must be in [0, 0.5)"),
    (AggregationPolicy(max_weight_share=0.0), "max_weight_share must be in (0, 1]"),
    (AggregationPolicy(max_weight_share=1.5), "max_weight_share must be in (0, 1]"),
    (AggregationPolicy(norm_factor=-1.0), "norm_factor must be >= 0"),
    (AggregationPolicy(norm_factor=0.5), "norm_factor must be 0 (off) or >= 1"),
    (AggregationPolicy(norm_factor=float("nan")), "norm_factor must be >= 0"),
    (AggregationPolicy(max_norm=float("inf")), "max_norm must be >= 0"),
]


@pytest.mark.parametrize(("policy", "message"), BAD_POLICIES)
def test_bad_policies(policy: AggregationPolicy, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        policy.validate()


def test_policy_from_stored_specs() -> None:
    AggregationPolicy().validate()
    assert AggregationPolicy.from_dict(None) == AggregationPolicy()  # a spec from before
    custom = AggregationPolicy("median", 0.1, 0.3, 0.0, 5.0)
    assert AggregationPolicy.from_dict(custom.to_dict()) == custom
    assert AggregationPolicy.from_dict({"aggregator": "median", "later": 1}).aggregator == "median"
