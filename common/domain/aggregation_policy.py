"""How a job combines what participants send, and the plausibility bounds it holds them to.

Part of both job specs (`TrainingSpec.policy`, `UnlearningSpec.policy`). The defaults leave an
honest federation's results bit-identical to plain FedAvg: weights are capped only in rounds of
at least `MIN_CAPPED_ROUND` results, and updates are compared with the round's median only when
there are at least `MIN_MEDIAN_ROUND` of them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

AGGREGATOR_NAMES = ("fedavg", "median", "trimmed-mean")
MIN_CAPPED_ROUND = 3  # with fewer results a share cap would force equal weights
MIN_MEDIAN_ROUND = 3  # with fewer updates the median cannot tell which one is the outlier


@dataclass(frozen=True)
class AggregationPolicy:
    aggregator: str = "fedavg"  # one of AGGREGATOR_NAMES
    trim_fraction: float = 0.2  # trimmed-mean: share of values cut at each end, per coordinate
    max_weight_share: float = 0.5  # one participant's most share of a round's weight (1 = off)
    norm_factor: float = 10.0  # refuse an update > factor x the round's median norm (0 = off)
    max_norm: float = 0.0  # refuse an update whose L2 norm is above this (0 = off)

    def validate(self) -> None:
        """Raise ValueError naming the bad field."""
        checks = [
            (
                self.aggregator in AGGREGATOR_NAMES,
                f"aggregator must be one of {', '.join(AGGREGATOR_NAMES)}",
            ),
            (0 <= self.trim_fraction < 0.5, "trim_fraction must be in [0, 0.5)"),
            (0 < self.max_weight_share <= 1, "max_weight_share must be in (0, 1]"),
            (_finite(self.norm_factor) and self.norm_factor >= 0, "norm_factor must be >= 0"),
            (
                self.norm_factor == 0 or self.norm_factor >= 1,
                "norm_factor must be 0 (off) or >= 1",
            ),
            (_finite(self.max_norm) and self.max_norm >= 0, "max_norm must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> AggregationPolicy:
        """From the stored form; a spec stored before policies existed gets the defaults."""
        own = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in own})


def _finite(value: float) -> bool:
    return math.isfinite(value)
